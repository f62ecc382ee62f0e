"""Kill every stage with SIGKILL at a seeded point, rerun it, and compare with an uninterrupted run.

The kill point is the N-th atomic write of the stage's process (``SGID_FAULT_KILL_AFTER_WRITES``,
read by ``sgid_utils.io``), N drawn from a fixed seed: the same point on every machine and
every run, with no timing window.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from sgid_utils.rundir import RunDir
from sgid_utils.stages import NAMES, get, upstream_closure

from .conftest import REPO, copy_stages

# 'data' is made by every stage's start; 'upscale' runs inside 'curate', which is killed here instead.
KILLED = [name for name in NAMES if name not in ("data", "upscale")]


def _run(params, stage: str, kill_after: int | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SGID_FAULT_KILL_AFTER_WRITES"}
    if kill_after is not None:
        env["SGID_FAULT_KILL_AFTER_WRITES"] = str(kill_after)
    return subprocess.run([sys.executable, "-m", "sgid_utils", "run", stage, "--params", str(params.source_file)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _kill_point(ref: RunDir, stage: str) -> int:
    """A seeded write count inside the stage's own work.

    The runner writes first (the params copy, then the fingerprint of a stage with keys); after those, N of the
    stage's own files, N below the number its folder holds in the reference run (at least 1: a stage that writes
    only report tables is killed after its first).
    """
    runner_writes = 1 + (1 if get(stage).keys else 0)
    try:
        own = sum(1 for p in ref.stage(stage).rglob("*") if p.is_file() and p.name != "_params.json")
    except KeyError:
        own = 1
    return runner_writes + random.Random(f"resume-{stage}").randint(1, max(1, own - 1))


def _rel(df: pd.DataFrame, root) -> pd.DataFrame:
    """Paths relative to the run directory, so two run directories compare equal."""
    out = df.copy()
    for col in ("path", "source_path"):
        if col in out:
            out[col] = out[col].str.replace(str(root), "<run>", regex=False)
    return out.reset_index(drop=True)


def _same(a, b, ref: RunDir, run: RunDir) -> None:
    pd.testing.assert_frame_equal(_rel(pd.read_parquet(a), ref.root), _rel(pd.read_parquet(b), run.root))


def _same_images(ref: RunDir, run: RunDir, variant: str) -> None:
    manifest = pd.read_parquet(ref.manifest(variant))
    assert len(manifest)
    for rel in manifest.path:
        assert (ref.root / rel).read_bytes() == (run.root / rel).read_bytes(), rel


@pytest.mark.parametrize("stage", KILLED)
def test_kill_and_resume_matches_an_uninterrupted_run(stage, make_params, pipeline_run):
    ref, params = RunDir.of(pipeline_run), make_params(f"kill-{stage}")
    run = RunDir.of(params)
    inside = {"upscale"} if stage == "curate" else set()  # curate runs the upscaled regeneration itself
    copy_stages(pipeline_run, params, *[s for s in upstream_closure(stage)[:-1] if s not in inside])
    kill_after = _kill_point(ref, stage)
    killed = _run(params, stage, kill_after)
    assert killed.returncode == -signal.SIGKILL, f"stage {stage} was not killed at write {kill_after}: {killed.stderr[-2000:]}"
    done = _run(params, stage)
    assert done.returncode == 0, done.stderr[-2000:]
    if stage == "captions":
        _same(ref.captions_table, run.captions_table, ref, run)
    elif stage == "similarity":
        _same(ref.scores_table, run.scores_table, ref, run)
        _same(ref.best_table, run.best_table, ref, run)
    elif stage in ("generate", "curate"):
        variant = "raw" if stage == "generate" else "upscaled"
        _same(ref.manifest(variant), run.manifest(variant), ref, run)
        _same_images(ref, run, variant)
        if stage == "curate":
            _same(ref.curated_table(), run.curated_table(), ref, run)
    elif stage == "train":
        cols = ["config", "setting", "seed", "test_acc", "train_images", "generated_images"]
        results = pd.read_parquet(ref.results_table)
        pd.testing.assert_frame_equal(results[cols], pd.read_parquet(run.results_table)[cols])
        for config in results.config:
            _same(ref.predictions(config), run.predictions(config), ref, run)
            assert not run.checkpoint(config).exists()
    elif stage == "results":
        pd.testing.assert_frame_equal(pd.read_csv(ref.table("accuracy.csv")), pd.read_csv(run.table("accuracy.csv")))
        _same(ref.significance_table, run.significance_table, ref, run)
    else:
        for table in ("set_metrics.csv", "per_class_change.csv"):
            a, b = (pd.read_csv(d.table(table)) for d in (ref, run))
            assert a.shape == b.shape and list(a.columns) == list(b.columns), table
            np.testing.assert_allclose(a.select_dtypes("number"), b.select_dtypes("number"), rtol=1e-6)
