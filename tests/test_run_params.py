"""A run directory speaks for itself: every command takes --params / --run-dir / --set alike, the page and the export
refuse params that did not make the run, ``extends:`` reaches any file or a shipped profile, and
``training.deterministic`` sets PyTorch's flags."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from sgid_utils.core.files import read_json
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.runner import run_stage
from sgid_utils.core.seeding import CUBLAS_WORKSPACE, deterministic_torch
from sgid_utils.errors import ParamsError, StaleOutputsError
from sgid_utils.params.load import load_params, load_run_params
from sgid_utils.reporting.facts import reproducibility
from sgid_utils.reporting.page import build_report

from .conftest import REPO, copy_stages, write_params

COMMANDS = ("run", "notebooks", "report", "export", "preflight")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sgid_utils", *args], capture_output=True, text=True, cwd=REPO)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_the_same_run_options(command):
    shown = _cli(command, "--help").stdout
    assert "the run (the same for every command)" in shown
    for option in ("--params", "--run-dir", "--set KEY=VALUE"):
        assert option in shown, (command, option)


def test_a_command_needs_params_or_a_run_dir(tmp_path):
    with pytest.raises(ParamsError, match="--params FILE"):
        load_run_params(None, None)
    with pytest.raises(ParamsError, match="not a run directory"):
        load_run_params(None, tmp_path)
    out = _cli("report", "--run-dir", str(tmp_path))
    assert out.returncode == 2 and "not a run directory" in out.stderr and "Traceback" not in out.stderr


@pytest.fixture(scope="module")
def copied_run(pipeline_run, assets, tmp_path_factory):
    """A copy of the pipeline run (run dir and reports), so pages built here leave the shared run as it was."""
    params = load_params(write_params(tmp_path_factory.mktemp("copied"), *assets))
    src, dst = RunDir.of(pipeline_run), RunDir.of(params)
    shutil.copytree(src.root, dst.root, symlinks=True)
    shutil.copytree(src.reports, dst.reports)
    return params


def test_the_page_refuses_params_that_did_not_make_the_run(copied_run):
    """As after `run all --set generation.strength=...`: the params file alone no longer describes the run."""
    run = RunDir.of(copied_run)
    out = _cli("report", "--params", str(copied_run.source_file), "--set", "generation.strength=0.9",
               "--set", "captioning.batch_size=1")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "generation.strength: the run used 0.3 (generation/raw/_params.json), these params give 0.9" in out.stderr
    assert "captioning.batch_size" not in out.stderr  # a batch size changes no output
    assert f"--run-dir {run.root}" in out.stderr  # what to do instead
    assert not run.report_page.exists()
    out = _cli("export", "--params", str(copied_run.source_file), "--set", "generation.strength=0.9",
               "--to", str(run.root.parent / "exported"))
    assert out.returncode == 2 and "generation.strength" in out.stderr
    out = _cli("notebooks", "--params", str(copied_run.source_file), "--set", "generation.strength=0.9",
               "--only", "06_results")
    assert out.returncode == 2 and "generation.strength" in out.stderr


def test_the_run_dir_alone_builds_the_page_from_the_params_it_recorded(copied_run, tmp_path):
    run = RunDir.of(copied_run)
    moved = tmp_path / "moved"  # a run directory that travelled (Drive, NFS): --run-dir points at its new place
    shutil.copytree(run.root, moved, symlinks=True)
    out = _cli("report", "--run-dir", str(moved), "--set", f"run.reports_dir={run.reports}")
    assert out.returncode == 0, out.stderr
    params = load_run_params(None, moved, [f"run.reports_dir={run.reports}"])
    assert params.source_file == (moved / "params.yaml").resolve() and params.run.dir == moved.resolve()
    # the page names the params it was built with (relative to the run directory they came from)
    assert "<dt>Params file</dt><dd>params.yaml</dd>" in run.report_page.read_text()


def test_an_ablation_variants_page_states_the_variants_settings(make_params, pipeline_run):
    """The issue's case: a page for a variant's run directory asked with the base params file."""
    from sgid_utils.core.sharing import variant_params
    from sgid_utils.stages import ablations

    params = make_params("abl", ablations=[{"name": "strength-0.5", "set": {"generation.strength": 0.5}}])
    copy_stages(pipeline_run, params, "data", "captioning", "similarity", "training")
    ablations.run(params)
    variant = variant_params(params, "strength-0.5", {"generation.strength": 0.5})
    base_file_on_variant = load_params(params.source_file, {"run.dir": str(variant.run.dir),
                                                           "run.reports_dir": str(variant.run.reports_dir)})
    with pytest.raises(StaleOutputsError, match=r"generation.strength: the run used 0.5 .*these params give 0.3"):
        build_report(base_file_on_variant)
    page = build_report(load_run_params(None, variant.run.dir)).read_text()
    assert ("generation.strength", "0.5") in _settings_rows(page)


def _settings_rows(page: str) -> set[tuple[str, str]]:
    """(setting, value) of the page's "Settings that differ" table."""
    from .test_page import Page

    header, *rows = Page(page).tables["settings"]
    return {(r[header.index("setting")], r[header.index("this run")]) for r in rows}


def test_extends_takes_a_path_relative_to_the_file_or_a_shipped_profile(tmp_path):
    drive = tmp_path / "drive" / "sgid"
    drive.mkdir(parents=True)
    (drive / "mine.yaml").write_text(yaml.safe_dump({"extends": "smoke", "generation": {"strength": 0.4}}))
    params = load_params(drive / "mine.yaml")
    smoke = load_params(REPO / "params" / "smoke.yaml")
    assert params.generation.strength == 0.4 and params.generation.num_candidates == smoke.generation.num_candidates
    # the shipped file's relative paths mean what they mean in the shipped file, not in the folder that extends it
    assert params.run.dir == smoke.run.dir and params.models.clip == smoke.models.clip
    (drive / "nested").mkdir()
    (drive / "nested" / "child.yaml").write_text(yaml.safe_dump({"extends": "../mine.yaml", "run": {"seed": 3}}))
    child = load_params(drive / "nested" / "child.yaml")
    assert child.generation.strength == 0.4 and child.run.seed == 3
    (drive / "bad.yaml").write_text(yaml.safe_dump({"extends": "no-such-profile"}))
    with pytest.raises(ParamsError, match="shipped profile .*smoke.*got 'no-such-profile'"):
        load_params(drive / "bad.yaml")


def test_training_deterministic_sets_the_flags_and_is_recorded(make_params, pipeline_run):
    params = make_params("det", training={"deterministic": True, "methods": ["baseline"], "seeds": [0]})
    copy_stages(pipeline_run, params, "data", "captioning", "similarity", "generation", "upscaling", "curation")
    before = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        run_stage("training", params)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
        recorded = read_json(RunDir.of(params).fingerprint_file("training"))
        assert recorded["training"]["deterministic"] is True  # the page reads it from here
        on_gpu = pd.DataFrame({"machine": ["1 × NVIDIA H100 (CUDA 13.0)"]})
        assert "training ran with training.deterministic" in reproducibility(params, on_gpu)
    finally:
        deterministic_torch(False)
        if before is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    # off (the default) is not recorded, so runs made before the setting existed stay valid
    assert "deterministic" not in read_json(RunDir.of(pipeline_run).fingerprint_file("training"))["training"]


def test_the_page_says_what_a_rerun_reproduces(copied_run):
    cpu = pd.DataFrame({"machine": ["CPU only (x, 2 cores)"]})
    gpu = pd.DataFrame({"machine": ["CPU only (x, 2 cores) / 1 × NVIDIA H100 (CUDA 13.0)"]})
    assert "byte for byte" in reproducibility(copied_run, cpu)
    assert "within seed noise, not the files" in reproducibility(copied_run, gpu)
    assert reproducibility(copied_run, pd.DataFrame()).startswith("not recorded")


def test_a_damaged_executed_notebook_is_a_clear_error(copied_run):
    from sgid_utils.errors import CorruptFileError

    run = RunDir.of(copied_run)
    run.notebooks.mkdir(parents=True, exist_ok=True)
    damaged = run.executed_notebook("06_results")
    damaged.write_text('{"cells": [')  # cut short
    try:
        with pytest.raises(CorruptFileError, match="06_results.ipynb cannot be read.*--only 06_results"):
            build_report(copied_run)
    finally:
        damaged.unlink()
