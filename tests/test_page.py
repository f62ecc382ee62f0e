"""The run's HTML page: built from the run's files, every reference resolves, its numbers are the tables' numbers."""

from __future__ import annotations

import html
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pandas as pd
import pytest

from sgid_utils.core import catalog
from sgid_utils.core.files import read_json, write_table
from sgid_utils.core.provenance import load_provenance, record_stage
from sgid_utils.core.registry import NAMES
from sgid_utils.core.rundir import RunDir
from sgid_utils.params.load import load_params
from sgid_utils.params.settings import changed_settings
from sgid_utils.params.sources import source_of
from sgid_utils.reporting.page import build_report, project_root
from sgid_utils.reporting.tables import DELTA, JOINT, OURS, SIGNIFICANT, SIGNIFICANT_HOLM, TEST_SET_P

from .conftest import write_params


class Page(HTMLParser):
    """What a page references (img src, a href) and its tables by class: header and rows of cell texts."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text
        self.refs: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table = self._row = self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.refs.append(attrs["src"])
        elif tag == "a":
            self.refs.append(attrs["href"])
        elif tag == "table":
            self._table = self.tables.setdefault(attrs.get("class", "").split()[-1], [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def frame(self, name: str) -> pd.DataFrame:
        """A table of the page by its class; the first row is the header."""
        header, *rows = self.tables[name]
        return pd.DataFrame(rows, columns=header)


@pytest.fixture(scope="module")
def report_params(pipeline_run, assets, tmp_path_factory):
    """A copy of the pipeline run (run dir and reports) with one executed notebook, so building the page
    leaves the shared run as it was."""
    params = load_params(write_params(tmp_path_factory.mktemp("report"), *assets))
    src, dst = RunDir.of(pipeline_run), RunDir.of(params)
    shutil.copytree(src.root, dst.root, symlinks=True)
    shutil.copytree(src.reports, dst.reports)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "print('executed')", execution_count=1,
        outputs=[nbformat.v4.new_output("stream", name="stdout", text="executed cell output\n")])])
    dst.notebooks.mkdir(parents=True)
    nbformat.write(notebook, dst.executed_notebook("06_results"))
    return params


@pytest.fixture(scope="module")
def page(report_params) -> Page:
    return Page(build_report(report_params).read_text())


def test_every_image_and_link_of_the_page_exists(report_params, page):
    run = RunDir.of(report_params)
    local = [r for r in page.refs if not r.startswith("#") and not urlparse(r).scheme]
    for ref in local:
        assert (run.report_page.parent / ref).is_file(), ref
    # the figures and the rendered notebook the page must show, linked relative to it
    for figure in ("accuracy_by_method", "consistency_vs_diversity", "originals_vs_sgid"):
        assert f"figures/{figure}.png" in local
    assert "notebooks/06_results.html" in local and "notebooks/06_results.ipynb" in local
    assert "executed cell output" in run.notebook_html("06_results").read_text()
    assert not any(Path(r).is_absolute() for r in local)  # the folder can be zipped and moved


def _shown(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        f"{value:.4f}" if isinstance(value, float) else str(value))


def test_the_page_numbers_are_the_run_tables(report_params, page):
    accuracy = catalog.load(report_params, "accuracy")
    header, sub, *rows = page.tables["wide"]
    labels = list(dict.fromkeys(accuracy.Backbone))
    assert header[0] == "Method" and header[1:1 + len(labels)] == labels  # one column group per backbone
    assert sub[:3] == ["acc. (%)", "Δ (points, 95% CI)", "sig.: unadj. / Holm"]
    assert [r[0] for r in rows] == list(dict.fromkeys(accuracy.Method))  # one row per method, not per backbone
    for row in rows:
        for i, label in enumerate(labels):
            mine = accuracy[(accuracy.Backbone == label) & (accuracy.Method == row[0])].iloc[0]
            acc, delta, verdicts = row[1 + 3 * i: 4 + 3 * i]
            assert (acc, delta) == (mine[OURS], _shown(mine[DELTA]))
            # percent
            assert "±" not in acc or float(acc.split(" ±")[0]) == pytest.approx(100 * mine["mean"], abs=0.006)
            plain = mine[SIGNIFICANT]
            assert verdicts == ("–" if plain == "–" else "undetermined" if plain.startswith("undetermined")
                                else f"{plain} / {mine[SIGNIFICANT_HOLM]}")
    metrics = catalog.load(report_params, "set_metrics", missing=None)
    shown = page.frame("set-metrics")
    assert shown.columns.tolist() == metrics.columns.tolist()
    for column in metrics.columns:
        assert shown[column].tolist() == [_shown(v) for v in metrics[column]], column


def test_the_top_of_the_page_gives_the_verdict_in_percent_and_points(page, report_params):
    top = page.frame("headline")
    assert top.columns.tolist() == ["Backbone", "Comparison", "Gain (points, 95% CI)",
                                    "Test-set check (McNemar p, pooled over seeds)",
                                    "Verdict, seeds and test set: unadjusted / Holm",
                                    "SGID vs Baseline (points, 95% CI)",
                                    "Paper's gain, abstract (% read as points; no data set named)",
                                    "Paper's gain, this data set (points, assumed ViT-B/16)"]
    gains = catalog.load(report_params, "backbone_gains")
    assert top["Test-set check (McNemar p, pooled over seeds)"].tolist() == [str(p) for p in gains[TEST_SET_P]]
    assert gains[TEST_SET_P].ne("–").all()  # the results stage ran the check from the saved predictions
    for joint, shown in zip(gains[JOINT], top["Verdict, seeds and test set: unadjusted / Holm"]):
        assert shown.startswith(joint)  # the verdict of both checks, never the seed interval's alone
    assert page.text.index('id="verdict"') < page.text.index('id="facts"') < page.text.index('id="results"')
    controls = page.frame("controls")  # the controls in their own small table, not a paragraph in a cell
    assert controls.Result.tolist() == ["not run", "not run"]  # no ablation profile has run for this copy
    assert "equal steps" in controls.iloc[0, 0] and "second generation draw" in controls.iloc[1, 0]
    # the forest plot leads the verdict; the captions stay short and the rest is in one "How to read" block
    verdict = page.text.split('id="verdict"', 1)[1].split("</section>", 1)[0]
    assert verdict.index('id="fig-gain_forest"') < verdict.index('class="numbers headline"')
    assert 'src="figures/gain_forest.png"' in verdict
    captions = re.findall(r'<p class="caption">(.*?)</p>', verdict, re.S)
    assert captions and all(len(re.findall(r"[.!?](\s|$)", c)) <= 3 for c in captions), captions
    how = html.unescape(page.text.split('id="how-to-read"', 1)[1].split("</section>", 1)[0])
    assert "test images" in how and "biases SGID's gain down" in how and page.text.count('id="how-to-read"') == 1
    assert "covers training seeds on one generation draw" in page.text
    assert "Li, Xu" not in page.text and "Li et al." in page.text
    # points, not fractions
    assert "0." not in " ".join(top["Gain (points, 95% CI)"]).replace("+0.", "").replace("-0.", "")


def test_provenance_and_settings_come_from_the_run(report_params, pipeline_run, page):
    run = RunDir.of(pipeline_run)
    records = [read_json(run.provenance(stage))["starts"] for stage in NAMES]  # the runner recorded every stage's start
    shown = page.frame("provenance")
    assert shown.stage.tolist() == NAMES
    assert shown["first started"].tolist() == [r[0]["started"] for r in records]
    assert shown.starts.tolist() == [str(len(r)) for r in records]
    assert shown.torch.tolist() == [r[0]["torch"] for r in records]
    first, last = min(r[0]["started"] for r in records), max(r[-1]["started"] for r in records)
    assert f"stages started {first} to {last} (UTC)" in page.text  # the key facts' one line
    settings = page.frame("settings").set_index("setting")
    assert settings.columns.tolist() == ["this run", "package default", "origin", "source"]
    assert (settings.loc["training.epochs", "this run"] == "1"
            and settings.loc["training.epochs", "package default"] == "10")
    assert settings.loc["generation.num_candidates", "this run"] == "2"
    expected = changed_settings(report_params).set_index("setting")
    shown = [k for k in expected.index if not k.startswith(("references.tables", "references.headline", "ablations"))]
    assert settings.index.tolist() == shown  # every changed setting, without the reference numbers and variants
    for key in ("training.epochs", "generation.num_candidates"):  # each setting's source, from sources.py
        assert settings.loc[key, "origin"] == source_of(key).origin == expected.loc[key, "origin"]
        assert (settings.loc[key, "source"] == expected.loc[key, "source"]
                and source_of(key).where in settings.loc[key, "source"])
    assert "paper (schema default)" not in page.text
    every = page.frame("all-settings").set_index("setting")  # unchanged settings too, each with its default's source
    assert settings.index.isin(every.index).all()
    strength = every.loc["generation.strength"]
    assert (strength.origin, strength.source) == ("report", source_of("generation.strength").text())
    assert every.loc["curation.select", "package default"] == "most_similar"
    root = str(project_root(report_params))
    assert any(root in v for v in changed_settings(report_params)["this run"])  # the run's folders lie under it ...
    assert not any(root in v for v in settings["this run"])  # ... and the page writes them relative to it


def test_every_start_of_a_stage_is_kept(make_params, monkeypatch):
    params = make_params("prov")
    record_stage(params, "captioning")
    monkeypatch.setenv("SGID_SHARD", "1/2")
    record_stage(params, "captioning")
    starts = read_json(RunDir.of(params).provenance("captioning"))["starts"]
    assert [s["shard"] for s in starts] == ["-", "1/2"] and starts[0]["run.device"] == "cpu"
    row = load_provenance(params, ["data", "captioning"]).iloc[0]  # 'data' has no record: no row
    assert (row.stage, row.starts, row["first started"]) == ("captioning", 2, starts[0]["started"])
    assert row.machine.startswith("CPU only") or " × " in row.machine


def test_ablation_table_is_shown_when_the_profile_has_run(report_params, page):
    assert "ablations" not in page.tables and "No ablation profile has run" in build_report(report_params).read_text()
    table = pd.DataFrame([
        {"Variant": "label-only", "Changes": "generation.prompt=label_only", "Baseline": "50.00 ± 10.00 (n=2)",
         "SGID (100%)": "40.00 ± 5.00 (n=2)", "Δ (95% CI)": "-10.00 [-30.00, +10.00]", "Significant": "no",
         "Baseline − published Baselines (points, 95% CI)": "–"},
        {"Variant": "sgid-equal-steps", "Changes": "training.equal_steps=True", "Baseline": "50.00 ± 10.00 (n=2)",
         "SGID (100%)": "52.00 ± 5.00 (n=2)", "Δ (95% CI)": "+2.00 [-1.00, +5.00]", "Significant": "no",
         "Baseline − published Baselines (points, 95% CI)": "–"}])
    path = write_table(catalog.path(RunDir.of(report_params), "ablations"), table)
    try:
        shown = Page(build_report(report_params).read_text())
    finally:
        path.unlink()
    pd.testing.assert_frame_equal(shown.frame("ablations"), table.astype(str))
    controls = shown.frame("controls").set_index(shown.frame("controls").columns[0]).Result  # no second draw
    assert (controls["equal steps (SGID trained for the Baseline's steps)"]
            .startswith("SGID (100%) − Baseline +2.00 [-1.00, +5.00] points"))
    assert controls["second generation draw (captions, candidates, selection redrawn)"] == "not run"
