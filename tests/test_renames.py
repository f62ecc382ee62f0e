"""Renamed names are a contract (issue 29 §1): old params keys still load, with a one-line deprecation message naming
the new key, and a run directory written under the old names (fingerprints, params copy, the pass column, the captions'
decoding column) resumes."""

import json
import os
from pathlib import Path

import pandas as pd
import yaml

from sgid_utils.augment.prompts import with_decoding_column
from sgid_utils.core import catalog
from sgid_utils.core.files import read_fingerprint
from sgid_utils.core.fingerprints import fingerprint, recorded_differences
from sgid_utils.core.registry import NAMES, get, writer
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.runner import check_stage, run_stage
from sgid_utils.params.load import RENAMED_KEYS, load_params, load_run_params, upgrade_fingerprint
from sgid_utils.stages.captions import CAPTION_COLUMNS

from .conftest import copy_stages

BASE = {"run": {"name": "x", "dir": "runs/x", "reports_dir": "reports/x"},
        "dataset": {"source": "imagefolder", "path": "data"}}
TABLES = [{"label": "Paper", "source": "the report", "values": {"Baseline": 0.9}}]


def _old_names(doc: dict) -> dict:
    """A params mapping (or a stage fingerprint) as the code before the renames wrote it."""
    doc = dict(doc)
    if "filters" in doc:
        doc["quality"] = {("filters" if k == "apply" else k): v for k, v in doc.pop("filters").items()}
    if "references" in doc:
        doc["results"] = {("references" if k == "tables" else k): v for k, v in doc.pop("references").items()}
    return doc


def _deprecations(err: str) -> list[str]:
    return [line for line in err.splitlines() if "deprecated params key" in line]


def test_old_keys_load_from_a_file_a_parent_and_an_override(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump({**BASE, "filters": {"apply": ["label"], "class_noun": "pet"},
                                   "references": {"tables": TABLES, "grid_examples": 3}}))
    parent = tmp_path / "parent.yaml"
    parent.write_text(yaml.safe_dump({**BASE, "quality": {"filters": ["label"]}, "results": {"references": TABLES}}))
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"extends": "parent.yaml", "quality": {"class_noun": "pet"},
                                     "results": {"grid_examples": 3}}))
    capsys.readouterr()
    want = load_params(new).model_dump(exclude={"source_file"})
    assert _deprecations(capsys.readouterr().err) == []  # today's names: no message
    got = load_params(child, {"quality.similarity_quantile": 0.1}).model_dump(exclude={"source_file"})
    lines = _deprecations(capsys.readouterr().err)
    assert got == {**want, "filters": {**want["filters"], "similarity_quantile": 0.1}}
    for old, new_key, where in [("quality.filters", "filters.apply", "parent.yaml"),
                                ("results.references", "references.tables", "parent.yaml"),
                                ("quality", "filters", "child.yaml"), ("results", "references", "child.yaml"),
                                ("quality.similarity_quantile", "filters.similarity_quantile", "override")]:
        said = [line for line in lines if f"'{old}'" in line]
        assert len(said) == 1 and f"now '{new_key}'" in said[0] and where in said[0], (old, lines)


def test_every_renamed_key_is_a_key_of_today(tmp_path):
    """The table's targets exist in the schema, and its old names do not (an old name cannot shadow a new one)."""
    (tmp_path / "data").mkdir()
    file = tmp_path / "p.yaml"
    file.write_text(yaml.safe_dump(BASE))
    params = load_params(file).model_dump()
    for old, new in RENAMED_KEYS.items():
        node = params
        for part in new.split("."):
            node = node[part]
        assert old.split(".")[0] not in params


def test_a_fingerprint_recorded_under_the_old_names_reads_as_today(make_params):
    params = make_params()
    now = json.loads(json.dumps(fingerprint(params, "train"), default=str))
    old = _old_names(now)
    assert "quality" in old and "filters" not in old
    assert upgrade_fingerprint(old) == now


def test_the_pass_column_upgrade_merges_records_of_both_ages():
    mixed = pd.DataFrame([{"image_id": "a", "variant": "raw"}, {"image_id": "b", "generation_pass": "upscaled"}])
    assert catalog.with_pass_column(mixed).to_dict("records") == [
        {"image_id": "a", "generation_pass": "raw"}, {"image_id": "b", "generation_pass": "upscaled"}]
    old = pd.DataFrame({"image_id": ["a"], "variant": ["raw"], "k": [0]})
    assert list(catalog.with_pass_column(old).columns) == ["image_id", "generation_pass", "k"]  # in place


def _age(run: RunDir) -> None:
    """Rewrite a run directory as the code before the renames wrote it: fingerprints and the params copy under the
    old keys, the generation tables and per-source records with the pass column ``variant``."""
    for file in run.root.rglob("_params.json"):
        file.write_text(json.dumps(_old_names(json.loads(file.read_text())), indent=1, sort_keys=True))
    run.params_copy.write_text(yaml.safe_dump(_old_names(yaml.safe_load(run.params_copy.read_text())),
                                              sort_keys=False))
    for table in [*run.root.rglob("manifest.parquet"), *run.stage("curate").glob("*.parquet")]:
        pd.read_parquet(table).rename(columns={"generation_pass": "variant"}).to_parquet(table)
    for record in [*run.root.glob("generation/*/items/*.json"), *run.stage("curate").glob("scores_*/*.json")]:
        rows = json.loads(record.read_text())
        record.write_text(json.dumps([{("variant" if k == "generation_pass" else k): v for k, v in r.items()}
                                      for r in rows], indent=1, sort_keys=True))


def test_an_old_run_directory_resumes_under_the_new_names(pipeline_run, make_params, capsys):
    params = make_params("old")
    done = [s for s in NAMES if get(s).folder and s != "results"]  # every stage folder up to training
    copy_stages(pipeline_run, params, *done)
    run = RunDir.of(params)
    run.params_copy.write_text(yaml.safe_dump(params.model_dump(mode="json", exclude={"source_file"})))
    _age(run)
    assert "variant" in pd.read_parquet(run.stage("curate") / "curated.parquet")
    capsys.readouterr()
    recorded = load_run_params(None, run.root)  # ``--run-dir`` alone reads the old params copy
    assert "now 'filters.apply'" in capsys.readouterr().err
    assert recorded.filters == params.filters and recorded.references == params.references
    assert "quality" in json.loads(run.fingerprint_file("train").read_text())  # recorded under the old name
    assert read_fingerprint(run.fingerprint_file("train")) == json.loads(json.dumps(fingerprint(params, "train"),
                                                                                     default=str))
    assert recorded_differences(params) == []
    for stage in NAMES:
        check_stage(params, stage)  # what the runner does before a stage: no stale-outputs error
    images = sorted(run.stage("generate").glob("images/*.png"))
    stamps = [os.stat(p).st_mtime_ns for p in images]
    assert "generation_pass" in catalog.load(params, "manifest_raw")  # the catalog's upgrade on load
    for stage in ("generate", "upscale", "curate"):
        run_stage(stage, params)
    assert [os.stat(p).st_mtime_ns for p in images] == stamps  # finished: nothing regenerated
    for name in ("manifest_raw", "candidates", "curated"):
        table = pd.read_parquet(catalog.path(params, name))
        assert "variant" not in table and "generation_pass" in table, name
    keys = ["image_id", "generation_pass", "k", "similarity"]
    pd.testing.assert_frame_equal(catalog.load(params, "curated")[keys], catalog.load(pipeline_run, "curated")[keys])


def test_the_decoding_column_upgrade_merges_records_of_both_ages():
    mixed = pd.DataFrame([{"image_id": "a", "method": "beam"}, {"image_id": "b", "decoding": "nucleus"}])
    assert with_decoding_column(mixed).to_dict("records") == [
        {"image_id": "a", "decoding": "beam"}, {"image_id": "b", "decoding": "nucleus"}]
    old = pd.DataFrame({"image_id": ["a"], "method": ["beam"], "rank": [0]})
    assert list(with_decoding_column(old).columns) == ["image_id", "decoding", "rank"]  # in place


CAPTION_TABLES = ("captions", "scores", "best_captions")


def _age_captions(run: RunDir) -> None:
    """Rewrite a run's caption tables as the code before the rename wrote them (the column ``method``), and every other
    per-image record of the captioning and similarity stages (a stage resumed across the rename holds both ages)."""
    for name in CAPTION_TABLES:
        file = catalog.path(run, name)
        pd.read_parquet(file).rename(columns={"decoding": "method"}).to_parquet(file)
    for stage in (writer("captions"), writer("scores")):
        for record in sorted(run.items(stage).glob("*.json"))[::2]:
            rows = json.loads(record.read_text())
            record.write_text(json.dumps([{("method" if k == "decoding" else k): v for k, v in r.items()}
                                          for r in rows], indent=1, sort_keys=True))


def test_an_old_captions_table_loads_as_todays(pipeline_run, make_params):
    params = make_params("old_tables")
    copy_stages(pipeline_run, params, writer("captions"), writer("scores"))
    _age_captions(RunDir.of(params))
    for name in CAPTION_TABLES:
        assert "method" in pd.read_parquet(catalog.path(params, name)), name
        pd.testing.assert_frame_equal(catalog.load(params, name), catalog.load(pipeline_run, name), check_like=True)
    assert list(catalog.load(params, "captions").columns) == CAPTION_COLUMNS  # the column where it was
    oldest = catalog.path(params, "captions")  # older still: before the duplicate column too
    pd.read_parquet(oldest).drop(columns="duplicate").to_parquet(oldest)
    pd.testing.assert_frame_equal(catalog.load(params, "captions"), catalog.load(pipeline_run, "captions"))


def test_a_run_captioned_before_the_decoding_rename_resumes(pipeline_run, make_params):
    params = make_params("old_captions")
    captioning, similarity = writer("captions"), writer("scores")
    copy_stages(pipeline_run, params, "data", captioning, similarity)
    run = RunDir.of(params)
    _age_captions(run)
    records = sorted([*run.items(captioning).glob("*.json"), *run.items(similarity).glob("*.json")])
    stamps = [os.stat(p).st_mtime_ns for p in records]
    for stage in (captioning, similarity):
        run_stage(stage, params)
    assert [os.stat(p).st_mtime_ns for p in records] == stamps  # finished: nothing captioned or scored again
    for name in CAPTION_TABLES:
        table = pd.read_parquet(catalog.path(params, name))
        assert "method" not in table and "decoding" in table, name
    pd.testing.assert_frame_equal(catalog.load(params, "captions"), catalog.load(pipeline_run, "captions"))
    # the similarity stage's columns follow its records' keys, so a merge of both ages may order them otherwise
    pd.testing.assert_frame_equal(catalog.load(params, "best_captions"), catalog.load(pipeline_run, "best_captions"),
                                  check_like=True)


def test_no_old_name_is_left_in_the_shipped_profiles():
    for file in sorted(Path(__file__).resolve().parents[1].glob("params/*.yaml")):
        doc = yaml.safe_load(file.read_text())
        assert not {old.split(".")[0] for old in RENAMED_KEYS} & set(doc), file
