"""Renamed names are a contract (issue 29 §1): old params keys, values and stage names still work, with a one-line
deprecation message naming the new one, and a run directory written under the old names (fingerprints, params copy,
the pass column, the captions' decoding column, the filter's name in the curation tables, the captions/ folder,
provenance records) resumes in place, and lends its folders to a new run."""

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sgid_utils.augment.prompts import with_decoding_column
from sgid_utils.cli import main
from sgid_utils.core import catalog, code_hashes
from sgid_utils.core.files import read_fingerprint, read_json, write_json
from sgid_utils.core.fingerprints import fingerprint, recorded_differences
from sgid_utils.core.provenance import stage_seconds
from sgid_utils.core.registry import NAMES, OLD_FOLDERS, RENAMED_STAGES, get, writer
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.runner import check_stage, run_stage
from sgid_utils.core.sharing import reuse_run, variant_params
from sgid_utils.params.load import (
    RENAMED_KEYS,
    RENAMED_VALUES,
    load_params,
    load_run_params,
    renamed_key,
    upgrade_fingerprint,
)
from sgid_utils.stages.captioning import CAPTION_COLUMNS

from .conftest import copy_stages

BASE = {"run": {"name": "x", "dir": "runs/x", "reports_dir": "reports/x"},
        "dataset": {"source": "imagefolder", "path": "data"}}
TABLES = [{"label": "Paper", "source": "the report", "values": {"Baseline": 0.9}}]


OLD_FILTER_KEYS = {"source_similarity_threshold": "similarity_threshold",
                   "source_similarity_quantile": "similarity_quantile"}


def _old_filters(section: dict) -> dict:
    """A filters section as the code before the filter ``source_similarity`` was renamed wrote it (``similarity``)."""
    return {OLD_FILTER_KEYS.get(k, k): [{"source_similarity": "similarity"}.get(f, f) for f in v] if k == "apply" else v
            for k, v in section.items()}


def _old_names(doc: dict) -> dict:
    """A params mapping (or a stage fingerprint) as the code before the renames wrote it."""
    doc = dict(doc)
    if "filters" in doc:
        doc["quality"] = {("filters" if k == "apply" else k): v for k, v in _old_filters(doc.pop("filters")).items()}
    if "references" in doc:
        doc["results"] = {("references" if k == "tables" else k): v for k, v in doc.pop("references").items()}
    return doc


def _deprecations(err: str) -> list[str]:
    return [line for line in err.splitlines() if "deprecated params key" in line]


def _dotted(doc: dict, prefix: str = "") -> dict:
    """Every key of a nested mapping, dotted, with its value."""
    out = {}
    for key, value in doc.items():
        out[prefix + key] = value
        if isinstance(value, dict):
            out.update(_dotted(value, f"{prefix}{key}."))
    return out


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
    assert got == {**want, "filters": {**want["filters"], "source_similarity_quantile": 0.1}}
    for old, new_key, where in [("quality.filters", "filters.apply", "parent.yaml"),
                                ("results.references", "references.tables", "parent.yaml"),
                                ("quality", "filters", "child.yaml"), ("results", "references", "child.yaml"),
                                ("quality.similarity_quantile", "filters.source_similarity_quantile", "override")]:
        said = [line for line in lines if f"'{old}'" in line]
        assert len(said) == 1 and f"now '{new_key}'" in said[0] and where in said[0], (old, lines)


def _value_deprecations(err: str) -> list[str]:
    return [line for line in err.splitlines() if "deprecated params value" in line]


def _said_once_each(err: str, olds: list[str], where: str) -> None:
    """Each old name in ``olds`` has one deprecation line of ``err``, and there is no other; each names ``where``."""
    said = _deprecations(err) + _value_deprecations(err)
    assert len(said) == len(olds) and all(where in line for line in said), (olds, said)
    assert all(sum(old in line for line in said) == 1 for old in olds), (olds, said)


FILTERS_NOW = {"apply": ["source_similarity", "label"], "source_similarity_threshold": 0.2,
               "source_similarity_quantile": 0.1}
OLD_VALUE = "value 'similarity' of 'filters.apply'"


def test_the_old_filter_name_and_its_keys_load_with_one_message_each(tmp_path, capsys):
    """``similarity`` in filters.apply is ``source_similarity``, its keys too: in a file (under either section name),
    an ``extends:`` parent, a ``--set`` override and an ablation's ``set:``, each old name said once."""
    (tmp_path / "data").mkdir()
    files = {"new": {**BASE, "filters": FILTERS_NOW}, "old": {**BASE, "filters": _old_filters(FILTERS_NOW)},
             "older": _old_names({**BASE, "filters": FILTERS_NOW}), "child": {"extends": "old.yaml"}}
    for name, doc in files.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    assert files["older"]["quality"]["filters"] == ["similarity", "label"] and "filters" not in files["older"]
    capsys.readouterr()
    want = load_params(tmp_path / "new.yaml").model_dump(exclude={"source_file"})
    _said_once_each(capsys.readouterr().err, [], "")  # today's names: no message
    for name, section in [("old", "filters"), ("older", "quality"), ("child", "filters")]:
        assert load_params(tmp_path / f"{name}.yaml").model_dump(exclude={"source_file"}) == want, name
        olds = [f"'{section}.similarity_threshold'", f"'{section}.similarity_quantile'", OLD_VALUE]
        _said_once_each(capsys.readouterr().err, olds + ["'quality.filters'"] * (section == "quality"),
                        "old.yaml" if name == "child" else f"{name}.yaml")
    sets = {"filters.apply": ["similarity", "label"], "filters.similarity_threshold": 0.2,
            "quality.similarity_quantile": 0.1}
    assert load_params(tmp_path / "new.yaml", sets).model_dump(exclude={"source_file"}) == want
    _said_once_each(capsys.readouterr().err, [*(f"'{k}'" for k in sets if "apply" not in k), OLD_VALUE], "override")
    variant = variant_params(load_params(tmp_path / "new.yaml"), "v", {"filters.apply": ["label", "similarity"]})
    assert variant.filters.apply == ["label", "source_similarity"]  # an ablation's ``set:``
    _said_once_each(capsys.readouterr().err, [OLD_VALUE], "override")


def test_every_renamed_key_is_a_key_of_today(tmp_path):
    """The table's targets exist in the schema, and its old names do not (an old name cannot shadow a new one)."""
    (tmp_path / "data").mkdir()
    file = tmp_path / "p.yaml"
    file.write_text(yaml.safe_dump(BASE))
    params = load_params(file).model_dump()
    keys = _dotted(params)
    for old, new in RENAMED_KEYS.items():
        assert new in keys and old not in keys, old


def test_a_fingerprint_recorded_under_the_old_names_reads_as_today(make_params):
    params = make_params()
    now = json.loads(json.dumps(fingerprint(params, "training"), default=str))
    old = _old_names(now)
    assert "quality" in old and "filters" not in old
    assert upgrade_fingerprint(old) == now


def test_a_curation_fingerprint_recorded_before_the_filter_rename_reads_as_today(make_params, tmp_path, capsys):
    """A finished curation recorded ``filters.apply: [similarity, ...]`` and ``similarity_quantile``: read as today's
    (silently: a recorded fingerprint is no file a user edits), under either section name."""
    params = make_params()
    now = json.loads(json.dumps(fingerprint(params, "curation"), default=str))
    old = {**now, "filters": _old_filters(now["filters"])}
    assert old["filters"]["apply"][0] == "similarity" and "similarity_quantile" in old["filters"]
    for recorded in (old, _old_names(now)):
        write_json(tmp_path / "_params.json", recorded)
        assert read_fingerprint(tmp_path / "_params.json") == upgrade_fingerprint(recorded) == now
    assert capsys.readouterr().err == ""


def test_a_curation_table_or_summary_written_before_the_filter_rename_reads_as_today():
    table = pd.DataFrame({"similarity": [0.9, 0.1, 0.5], "kept_by_similarity": pd.array([True, False, True]),
                          "dropped_by": [None, "similarity", "label"]})
    now = catalog.with_filter_names(table)
    assert list(now.columns) == ["similarity", "kept_by_source_similarity", "dropped_by"]  # the score keeps its name
    assert now.dropped_by.fillna("-").tolist() == ["-", "source_similarity", "label"]
    summary = {"detector": {"cv_accuracy": 0.5}, "similarity_threshold": 0.3, "filters": ["similarity", "label"]}
    assert catalog.with_filter_names(summary) == {"detector": {"cv_accuracy": 0.5}, "source_similarity_threshold": 0.3,
                                                  "filters": ["source_similarity", "label"]}
    assert catalog.with_filter_names(catalog.with_filter_names(summary)) == catalog.with_filter_names(summary)


def test_the_pass_column_upgrade_merges_records_of_both_ages():
    mixed = pd.DataFrame([{"image_id": "a", "variant": "raw"}, {"image_id": "b", "generation_pass": "upscaled"}])
    assert catalog.with_pass_column(mixed).to_dict("records") == [
        {"image_id": "a", "generation_pass": "raw"}, {"image_id": "b", "generation_pass": "upscaled"}]
    old = pd.DataFrame({"image_id": ["a"], "variant": ["raw"], "k": [0]})
    assert list(catalog.with_pass_column(old).columns) == ["image_id", "generation_pass", "k"]  # in place


def _age(run: RunDir) -> None:
    """Rewrite a run directory as the code before the renames wrote it: fingerprints and the params copy under the
    old keys, the generation tables and per-source records with the pass column ``variant``, the curation tables and
    filters summary with the filter ``similarity``."""
    for file in run.root.rglob("_params.json"):
        file.write_text(json.dumps(_old_names(json.loads(file.read_text())), indent=1, sort_keys=True))
    run.params_copy.write_text(yaml.safe_dump(_old_names(yaml.safe_load(run.params_copy.read_text())),
                                              sort_keys=False))
    for table in [*run.root.rglob("manifest.parquet"), *run.stage("curation").glob("*.parquet")]:
        old = pd.read_parquet(table).rename(columns={"generation_pass": "variant",
                                                     "kept_by_source_similarity": "kept_by_similarity"})
        if "dropped_by" in old:
            old["dropped_by"] = old.dropped_by.replace({"source_similarity": "similarity"})
        old.to_parquet(table)
    summary = read_json(catalog.path(run, "filters_summary"))
    write_json(catalog.path(run, "filters_summary"), {
        ("similarity_threshold" if k == "source_similarity_threshold" else k): _old_filters({"apply": v})["apply"]
        if k == "filters" else v for k, v in summary.items()})
    for record in [*run.root.glob("generation/*/items/*.json"), *run.stage("curation").glob("scores_*/*.json")]:
        rows = json.loads(record.read_text())
        record.write_text(json.dumps([{("variant" if k == "generation_pass" else k): v for k, v in r.items()}
                                      for r in rows], indent=1, sort_keys=True))


def _age_stages(run: RunDir) -> None:
    """Rewrite a run directory's layout as the code before the stage and file renames wrote it: each file with an
    old name under it (``best.parquet``, ``generation/raw/manifest.parquet``, ...), the captioning folder as captions/,
    each provenance record under its stage's old name."""
    for e in catalog.ENTRIES:
        if e.old_file and e.path(run).exists():
            e.path(run).rename(e.path(run).with_name(e.old_file))
    for old, new in RENAMED_STAGES.items():
        record = run.root / "provenance" / f"{new}.json"
        if record.exists():
            write_json(run.root / "provenance" / f"{old}.json", {**read_json(record), "stage": old})
            record.unlink()
    for stage, old in OLD_FOLDERS.items():
        run.stage(stage).rename(run.root / old)


def _deprecated_stages(err: str) -> list[str]:
    return [line for line in err.splitlines() if "deprecated stage name" in line]


def test_an_old_run_directory_resumes_under_the_new_names(pipeline_run, make_params, capsys):
    params = make_params("old")
    done = [s for s in NAMES if get(s).folder and s != "results"]  # every stage folder up to training
    copy_stages(pipeline_run, params, *done)
    run = RunDir.of(params)
    shutil.copytree(RunDir.of(pipeline_run).root / "provenance", run.root / "provenance")
    run.params_copy.write_text(yaml.safe_dump(params.model_dump(mode="json", exclude={"source_file"})))
    _age_stages(run)
    _age(run)
    assert (run.root / "captions").is_dir() and not (run.root / "captioning").exists()
    old_files = {e.name: e.path(run) for e in catalog.ENTRIES if e.old_file}
    assert {name: path.name for name, path in old_files.items()} == {
        e.name: e.old_file for e in catalog.ENTRIES if e.old_file} and all(p.exists() for p in old_files.values())
    assert run.stage("captioning") == run.root / "captions"  # read in place
    assert run.provenance("training") == run.root / "provenance" / "train.json"
    starts = {old: len(read_json(run.provenance(new))["starts"]) for old, new in RENAMED_STAGES.items()
              if get(new).folder}
    assert "variant" in pd.read_parquet(run.stage("curation") / "curated.parquet")
    assert "similarity" in set(pd.read_parquet(catalog.path(run, "candidates")).dropped_by)
    assert "kept_by_similarity" in pd.read_parquet(catalog.path(run, "curated_filtered"))
    assert read_json(catalog.path(run, "filters_summary"))["filters"][0] == "similarity"
    keys = ["image_id", "generation_pass", "k", "similarity"]
    filtered = catalog.load(pipeline_run, "curated_filtered").drop(columns=["path", "source_path"])
    pd.testing.assert_frame_equal(catalog.load(params, "curated_filtered").drop(columns=["path", "source_path"]),
                                  filtered)  # the catalog's upgrade on load: today's columns and names
    capsys.readouterr()
    recorded = load_run_params(None, run.root)  # ``--run-dir`` alone reads the old params copy
    assert "now 'filters.apply'" in capsys.readouterr().err
    assert recorded.filters == params.filters and recorded.references == params.references
    assert "quality" in json.loads(run.fingerprint_file("training").read_text())  # recorded under the old name
    assert read_fingerprint(run.fingerprint_file("training")) == json.loads(json.dumps(fingerprint(params, "training"),
                                                                                     default=str))
    assert recorded_differences(params) == []
    for stage in NAMES:
        check_stage(params, stage)  # what the runner does before a stage: no stale-outputs error
    images = sorted([*run.root.glob("generation/*/images/*.png"), *run.root.glob("curation/embeddings_*/*")])
    assert any("curation" in str(p) for p in images)
    stamps = [os.stat(p).st_mtime_ns for p in [*images, *run.root.glob("captions/items/*.json")]]
    assert "generation_pass" in catalog.load(params, "manifest_raw")  # the catalog's upgrade on load
    capsys.readouterr()
    captions = catalog.load(params, "captions")
    assert main(["run", "captions", "--params", str(params.source_file)]) == 0  # an old name on the command line
    for old in ("generate", "upscale", "curate", "train"):  # and in Python (a user's notebook)
        run_stage(old, params)
    said = _deprecated_stages(capsys.readouterr().err)
    assert said == [f"[sgid] deprecated stage name '{old}': it is now '{RENAMED_STAGES[old]}' (the old name still "
                    "runs; rename it)" for old in ("captions", "generate", "upscale", "curate", "train")]
    assert [os.stat(p).st_mtime_ns for p in [*images, *run.root.glob("captions/items/*.json")]] == stamps
    assert not (run.root / "captioning").exists()  # nothing regenerated, nothing moved: the old folder goes on
    assert {e.name: e.path(run) for e in catalog.ENTRIES if e.old_file} == old_files  # and the old file names
    assert not [e.name for e in catalog.ENTRIES if e.old_file and e.path(run).with_name(e.file).exists()]
    pd.testing.assert_frame_equal(catalog.load(params, "captions"), captions)
    for old, new in RENAMED_STAGES.items():  # each start recorded under its old name, once more
        if get(new).folder:
            assert not (run.root / "provenance" / f"{new}.json").exists(), new
            assert len(read_json(run.root / "provenance" / f"{old}.json")["starts"]) == starts[old] + 1, old
    for name in ("manifest_raw", "candidates", "curated"):
        table = pd.read_parquet(catalog.path(params, name))
        assert "variant" not in table and "generation_pass" in table, name
    pd.testing.assert_frame_equal(catalog.load(params, "curated")[keys], catalog.load(pipeline_run, "curated")[keys])
    pd.testing.assert_frame_equal(catalog.load(params, "curated_filtered")[keys], filtered[keys])  # the same set
    for name in ("candidates", "curated_filtered"):  # rewritten under today's filter name
        table = pd.read_parquet(catalog.path(params, name))
        assert "kept_by_similarity" not in table and "similarity" not in set(table.dropped_by), name
    assert "kept_by_source_similarity" in pd.read_parquet(catalog.path(params, "curated_filtered"))
    assert read_json(catalog.path(params, "filters_summary")) == catalog.load(pipeline_run, "filters_summary")
    assert recorded_differences(params) == []

    # A new run that names the old one in run.reuse links its old folder under the new name, and counts its cost.
    borrower = make_params("borrower", run={"reuse": str(run.root)})
    assert reuse_run(borrower)[:2] == ["data", "captioning"]
    mine = RunDir.of(borrower).stage("captioning")
    assert mine.name == "captioning" and os.readlink(mine) == str((run.root / "captions").resolve())
    pd.testing.assert_frame_equal(catalog.load(borrower, "captions"), captions)
    assert stage_seconds(borrower, "captioning") == stage_seconds(params, "captioning")
    assert stage_seconds(borrower, "captioning")[0] > 0


def test_old_stage_names_give_the_same_stages_with_one_line_each(capsys):
    assert [get(old).name for old in RENAMED_STAGES] == list(RENAMED_STAGES.values())
    assert len(_deprecated_stages(capsys.readouterr().err)) == len(RENAMED_STAGES)
    assert not set(RENAMED_STAGES) & set(NAMES)  # an old name never shadows a stage of today
    assert main(["stages", "--notebooks", "--from-stage", "upscaling", "--to-stage", "training"]) == 0
    new = capsys.readouterr()
    assert main(["stages", "--notebooks", "--from-stage", "upscale", "--to-stage", "train"]) == 0
    old = capsys.readouterr()
    assert old.out == new.out == "04_curation\n03_generation\n05_training\n"
    assert _deprecated_stages(new.err) == [] and len(_deprecated_stages(old.err)) == 2
    assert "'upscale': it is now 'upscaling'" in old.err and "'train': it is now 'training'" in old.err
    with pytest.raises(KeyError, match="no stage 'generating'"):
        get("generating")


def test_a_code_hashes_record_written_before_the_stage_renames_reads_under_the_new_names(tmp_path):
    path = tmp_path / "code_hashes.json"
    data = json.loads(code_hashes.HASHES_FILE.read_text())
    old = {new: old for old, new in RENAMED_STAGES.items()}
    data["stages"] = {old.get(name, name): entry for name, entry in data["stages"].items()}
    path.write_text(json.dumps(data))
    assert "captions" in data["stages"] and code_hashes.recorded(path) == code_hashes.recorded()


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
    """No old key (a section or a field) nor an old value, in a profile or an ablation's ``set:``."""
    for file in sorted(Path(__file__).resolve().parents[1].glob("params/*.yaml")):
        doc = yaml.safe_load(file.read_text())
        keys = _dotted(doc)
        for ablation in doc.get("ablations") or []:
            keys.update(ablation.get("set") or {})
        assert [k for k in keys if renamed_key(k) != k] == [], file
        for dotted, renames in RENAMED_VALUES.items():
            value = keys.get(dotted, [])
            assert not set(value if isinstance(value, list) else [value]) & set(renames), file
    assert "filters.apply" in _dotted(yaml.safe_load((Path(__file__).resolve().parents[1] / "params/smoke.yaml")
                                                     .read_text()))  # the check looks where the value is
