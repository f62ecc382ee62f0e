"""Every setting of the params schema says where its default comes from, and the docs agree with that data."""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel, create_model

from sgid_utils.params import schema, training
from sgid_utils.params.load import load_params
from sgid_utils.params.origins import Source
from sgid_utils.params.schema import Params
from sgid_utils.params.settings import changed_settings, schema_keys, settings_table
from sgid_utils.params.sources import COLUMNS, SOURCES, source_of

from .conftest import REPO

# The paper (Li et al., arXiv 2302.02070) is reachable only through its abstract and what the report quotes as the
# paper's: of the schema's defaults, only the guidance mapping's coefficients ("defined as in the original paper").
PAPER_KEYS = {"generation.guidance.coefficients"}
REPORT_SECTIONS = ("Methodology", "Generation of Augmented Images", "Experimentation and Results",
                   "Comparison of Augmentation Techniques and Model Training")
ANNOTATED = re.compile(r"`([a-z_]+(?:\[\])?(?:\.[a-z_]+(?:\[\])?)+)` \((paper|report|package)\)")


def minimal(**sections) -> Params:
    run = {"name": "t", "dir": "runs/t", "reports_dir": "reports/t"}
    return Params(run=run, dataset={"source": "pets"}, **sections)


def test_every_setting_of_the_schema_has_a_source():
    missing = [k for k in schema_keys() if k not in SOURCES]
    assert not missing, f"give these settings a Source in sgid_utils/params/sources.py: {missing}"


def test_no_source_names_a_key_the_schema_lacks():
    assert not sorted(set(SOURCES) - set(schema_keys()))


def test_the_walk_reaches_every_field_of_every_section():
    # Independent of the walk's recursion: every field of every section class is a part of some key.
    parts = {part for k in schema_keys() for part in re.split(r"[.\[\]]+", k)}
    for module in (schema, training):
        for section in vars(module).values():
            if isinstance(section, type) and issubclass(section, BaseModel) and section.__module__ == module.__name__:
                for name, field in section.model_fields.items():
                    if not field.exclude:
                        assert name in parts, f"{section.__name__}.{name}"


def test_a_new_field_without_a_source_is_caught():
    extended = create_model("Extended", __base__=Params, brand_new=(int, 3))
    assert [k for k in schema_keys(extended) if k not in SOURCES] == ["brand_new"]


def test_paper_origins_are_only_the_allowed_few():
    assert {k for k, s in SOURCES.items() if s.origin == "paper"} == PAPER_KEYS
    assert "as quoted by the report" in SOURCES["generation.guidance.coefficients"].where


def test_report_sources_name_a_section_of_the_report():
    for key, source in SOURCES.items():
        if source.origin == "report":
            assert any(s in source.where for s in REPORT_SECTIONS), key


@pytest.mark.parametrize(("key", "origin", "words"), [
    ("generation.strength", "report", "read as diffusers img2img strength"),
    ("generation.guidance.mode", "package", "a reading"),
    ("curation.select", "package", "hypothesis"),
    ("training.epochs", "package", "no epoch count"),
    ("training.batch_size", "package", "no batch size"),
    ("training.lr", "report", "0.0001"),
    ("captioning.top_p", "package", "duplicate captions are kept"),
    ("captioning.num_beams", "package", "forced"),
    ("generation.caption_weight", "report", "0.90 to captions"),
    ("training.equal_steps", "package", "twice"),
])
def test_what_the_issue_names_is_credited_as_stated(key, origin, words):
    assert source_of(key).origin == origin
    assert words in source_of(key).where


def test_the_package_defaults_are_the_documented_ones():
    defaults = minimal()
    assert defaults.curation.select == "most_similar"
    assert defaults.generation.guidance.mode == "direct"


def test_source_of_takes_table_keys_and_rejects_unknown_ones():
    assert source_of("training.backbones[resnet50_scratch].lr") == SOURCES["training.backbones[].lr"]
    with pytest.raises(KeyError, match="did you mean generation.strength"):
        source_of("generation.strenght")
    with pytest.raises(ValueError, match="unknown origin"):
        Source("paper's", "x")  # type: ignore[arg-type]


def test_settings_table_has_one_row_per_setting_with_its_source():
    table = settings_table(minimal())
    assert list(table.columns) == COLUMNS
    flat = [k for k in schema_keys() if "[]" not in k and not k.startswith("references.headline.")]
    assert table.setting.tolist() == flat
    row = table.set_index("setting").loc["generation.strength"]
    assert (row["this run"], row["package default"], row.origin) == ("0.3", "0.3", "report")
    assert row.source.startswith("report — Generation of Augmented Images §6: 'Gaussian noise of 0.3'")
    assert table.set_index("setting").loc["run.name", "package default"].startswith("(required")


def test_changed_settings_shows_an_override_and_what_it_replaced():
    params = minimal(generation={"strength": 0.5}, curation={"select": "most_diverse_consistent"})
    changed = changed_settings(params).set_index("setting")
    assert set(changed.index) == {"run.name", "run.dir", "run.reports_dir", "dataset.source",
                                  "generation.strength", "curation.select"}
    strength = changed.loc["generation.strength", ["this run", "package default", "origin"]]
    assert strength.tolist() == ["0.5", "0.3", "report"]
    assert changed.loc["curation.select", "package default"] == "most_similar"


def test_listed_backbones_get_a_row_per_field_under_their_name():
    params = load_params(REPO / "params" / "pets_backbones.yaml")
    changed = changed_settings(params).set_index("setting")
    row = changed.loc["training.backbones[resnet50_scratch].optimizer"]
    assert (row["this run"], row["package default"], row.origin) == ("sgd", "adam", "report")
    assert "training.backbones[vit_b16_in21k].optimizer" not in changed.index  # Adam, the default
    assert changed.loc["training.backbones", "this run"] == "[vit_b16_in21k, resnet50_scratch, clip_vit_b16_laion2b]"


@pytest.mark.parametrize("doc", ["docs/CHOICES.md", "docs/ARCHITECTURE.md", "README.md"])
def test_origins_written_in_the_docs_agree_with_sources(doc):
    text = (REPO / doc).read_text()
    stated = ANNOTATED.findall(text)
    for key, origin in stated:
        assert source_of(key).origin == origin, f"{doc} says `{key}` ({origin}); sources.py: {source_of(key).origin}"
    if doc == "docs/CHOICES.md":
        assert len(stated) >= 20


def test_every_row_of_the_ambiguity_table_states_its_origins():
    text = (REPO / "docs" / "CHOICES.md").read_text()
    table = text.split("## Choices where the report is ambiguous", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in table.splitlines() if r.startswith("| ") and not r.startswith("| question")]
    assert len(rows) >= 15
    for row in rows:
        parameter = row.rstrip(" |").rsplit(" | ", 1)[1]
        named = re.findall(r"`([a-z_.\[\]]+\.[a-z_.\[\]*]+)`", parameter)
        assert parameter.strip() == "—" or (named and len(ANNOTATED.findall(parameter)) == len(named)), row[:80]
