"""The data catalog and the registry agree: every file read is written earlier, once, at a path of its own; upstream
is derived from the files; an unreadable file is a clear error naming the file, its stage and what to delete."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sgid_utils.core import catalog
from sgid_utils.core.registry import ABLATIONS_READ, ABLATIONS_WRITE, NAMES, STAGES, get, writer
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.runner import run_stage
from sgid_utils.errors import CorruptFileError

from .conftest import REPO, copy_stages


def test_every_file_a_stage_reads_is_written_by_an_earlier_stage():
    for stage in STAGES:
        for name in stage.reads:
            assert NAMES.index(writer(name)) < NAMES.index(stage.name), (stage.name, name)
    assert all(writer(name) in NAMES for name in ABLATIONS_READ)  # `run ablations` reads what the chain wrote


def test_every_entry_has_exactly_one_writer_and_a_path_of_its_own():
    written = [n for s in STAGES for n in s.writes] + list(ABLATIONS_WRITE)
    assert sorted(written) == sorted(catalog.BY_NAME), "an entry no stage writes, or one written twice"
    run = RunDir(Path("/run"), Path("/reports"))
    paths = [catalog.entry(n).path(run, **{k: "c" for k in catalog.entry(n).keys}) for n in catalog.BY_NAME]
    assert len(set(paths)) == len(paths), "two names share a path"


def test_upstream_is_derived_from_the_files():
    assert {s.name: s.upstream for s in STAGES} == {
        "data": (), "captions": ("data",), "similarity": ("captions",), "generate": ("similarity",),
        "upscale": ("similarity",), "real_guidance": ("data",), "inversion": ("data",),
        "da_fusion": ("inversion",), "curate": ("generate", "upscale"),
        "train": ("real_guidance", "da_fusion", "curate"),
        "results": ("train",), "quality": ("train",), "compare": ("results",)}
    assert all(callable(get(n).function) for n in NAMES)


def test_the_runs_doc_shows_the_files_the_registry_declares():
    doc = (REPO / "docs" / "RUNS.md").read_text()
    assert catalog.files_table() in doc, "regenerate with `python -m sgid_utils stages --files`"
    out = subprocess.run([sys.executable, "-m", "sgid_utils", "stages", "--files"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert out == catalog.files_table()


def test_save_and_load_by_name_round_trip_each_kind(make_params):
    params = make_params()
    table = pd.DataFrame({"image_id": ["a"], "path": [str(RunDir.of(params).root / "data" / "a.png")]})
    catalog.save(params, "images", table)
    assert catalog.load(params, "images").path[0] == table.path[0]  # stored relative, read back absolute
    assert pd.read_parquet(catalog.path(params, "images")).path[0] == "data/a.png"
    catalog.save(params, "quality_summary", {"kept": 3})
    assert catalog.load(params, "quality_summary") == {"kept": 3}
    with pytest.raises(KeyError, match="needs config"):
        catalog.path(params, "predictions")
    with pytest.raises(FileNotFoundError, match="run stage 'similarity' first"):
        catalog.load(params, "best_captions")


@pytest.mark.parametrize("name, damage", [("best_captions", "truncate"), ("quality_summary", "garble"),
                                          ("skipped", "garble")])
def test_an_unreadable_file_names_itself_its_stage_and_what_to_delete(name, damage, make_params, pipeline_run):
    params = make_params()
    copy_stages(pipeline_run, params, "data", "captions", "similarity", "generate", "upscale", "curate")
    file = catalog.path(params, name)
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00\xff{garbled" + data[5:])
    with pytest.raises(CorruptFileError) as caught:
        catalog.load(params, name)
    message = str(caught.value)
    assert str(file) in message and f"stage '{writer(name)}'" in message and f"Delete {file}" in message


def test_a_truncated_table_stops_the_next_stage_with_one_line(make_params, pipeline_run):
    """The issue's case: truncate similarity/best.parquet of a finished run, then `run generate`."""
    params = make_params()
    copy_stages(pipeline_run, params, "data", "captions", "similarity")
    best = catalog.path(params, "best_captions")
    best.write_bytes(best.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match="similarity"):
        run_stage("generate", params)
    out = subprocess.run([sys.executable, "-m", "sgid_utils", "run", "generate", "--params", str(params.source_file)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr and str(best) in out.stderr


def test_a_damaged_per_configuration_file_says_to_delete_its_folder(tmp_path):
    """A configuration with a result is skipped on a rerun: deleting only the damaged file would never redo it."""
    run = RunDir(tmp_path / "run", tmp_path / "reports")
    file = catalog.path(run, "predictions", config="baseline_seed0")
    file.parent.mkdir(parents=True)
    file.write_bytes(b"PAR1 garbled")
    with pytest.raises(CorruptFileError, match=f"Delete {file.parent} and rerun"):
        catalog.load(run, "predictions", config="baseline_seed0")
