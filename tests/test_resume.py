"""Kill every stage with SIGKILL at a seeded point, rerun it, and compare with an uninterrupted run.

The kill point is the N-th atomic write of the stage's process (``SGID_FAULT_KILL_AFTER_WRITES``,
read by ``sgid_utils.core.files``), N drawn from a fixed seed: the same point on every machine and
every run, with no timing window. The killed run is a process of its own, forked from the test's process
with the libraries already imported (a fresh ``python -m sgid_utils run`` pays 4-6 CPU-s of imports before its
first write); it runs what ``run STAGE`` runs (``cli.main``). The rerun that resumes it runs in the test's process.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import signal

import numpy as np
import pandas as pd
import pytest

from sgid_utils.cli import main
from sgid_utils.core import catalog, files
from sgid_utils.core.registry import NAMES, get, upstream_closure
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.runner import run_all

from .conftest import copy_stages

# Columns that measure the machine, not the results: time taken (the comparison's hours and where they ran).
MEASURED = ["seconds", "Device hours", "Points per device hour", "Device"]
# 'data' is made by every stage's start (and tested in test_data).
KILLED = [name for name in NAMES if name != "data"]


def _run_killed(params, stage: str, kill_after: int) -> int:
    """``run STAGE`` in a forked process that kills itself (SIGKILL) at its ``kill_after``-th atomic write; the wait
    status. The fork arms the fault injection that ``SGID_FAULT_KILL_AFTER_WRITES`` arms in a new process."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 3
        try:
            files._KILL_AFTER, files._writes = kill_after, itertools.count(1)
            status = 0 if main(["run", stage, "--params", str(params.source_file)]) == 0 else 4
        finally:
            os._exit(status)
    return os.waitpid(pid, 0)[1]


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


def _same(name: str, ref: RunDir, run: RunDir, **keys: str) -> None:
    """A catalog file of the resumed run equals the uninterrupted run's: tables to 1e-6 in their numbers (set metrics
    sum float32 embeddings in another order), the rest exactly; every image a manifest lists byte for byte."""
    if catalog.path(ref, name, **keys).suffix == ".png":
        assert catalog.exists(run, name, **keys), name
        return
    a, b = catalog.load(ref, name, **keys), catalog.load(run, name, **keys)
    if not isinstance(a, pd.DataFrame):
        assert a == b, name
        return
    a, b = _rel(a, ref.root), _rel(b, run.root)
    numbers = list(a.select_dtypes("number").columns)
    assert list(a.columns) == list(b.columns) and a.shape == b.shape, name
    pd.testing.assert_frame_equal(a.drop(columns=numbers + MEASURED, errors="ignore"),
                                  b.drop(columns=numbers + MEASURED, errors="ignore"), obj=name)
    np.testing.assert_allclose(a[numbers].drop(columns=MEASURED, errors="ignore").to_numpy(float),
                               b[numbers].drop(columns=MEASURED, errors="ignore").to_numpy(float), rtol=1e-6,
                               err_msg=name)
    if name.startswith("manifest_"):
        assert len(a), name
        for rel in a.path.str.replace("<run>/", "", regex=False):
            assert (ref.root / rel).read_bytes() == (run.root / rel).read_bytes(), rel


@pytest.mark.parametrize("stage", KILLED)
def test_kill_and_resume_matches_an_uninterrupted_run(stage, make_params, pipeline_run):
    """Generic over the registry and the catalog: every file the stage writes, per configuration where keyed."""
    ref, params = RunDir.of(pipeline_run), make_params(f"kill-{stage}")
    run = RunDir.of(params)
    copy_stages(pipeline_run, params, *upstream_closure(stage)[:-1])
    shutil.copytree(ref.root / "provenance", run.root / "provenance")  # the runner's records: the measured costs
    kill_after = _kill_point(ref, stage)
    killed = _run_killed(params, stage, kill_after)
    assert os.WIFSIGNALED(killed) and os.WTERMSIG(killed) == signal.SIGKILL, (
        f"stage {stage} was not killed at write {kill_after} (wait status {killed}; its output is above)")
    run_all(params, [stage])  # resumes: what `python -m sgid_utils run STAGE` does
    for name in get(stage).writes:
        if catalog.entry(name).keys == ("config",):
            for config in catalog.load(ref, "training_results").config:
                _same(name, ref, run, config=config)
                assert not run.checkpoint(config).exists()  # a finished configuration keeps no checkpoint
        else:
            _same(name, ref, run)
