"""Kill every stage with SIGKILL at a random point, rerun it, and compare with an uninterrupted run."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from .conftest import REPO

# stage -> (folders of earlier stages to copy in, files whose count shows progress)
STAGES = {
    "captions": (["data"], "captions/items/*.json"),
    "similarity": (["data", "captions"], "similarity/items/*.json"),
    "generate": (["data", "captions", "similarity"], "generation/raw/images/*.png"),
    "curate": (["data", "captions", "similarity", "generation"], "generation/upscaled/images/*.png"),
    "train": (["data", "captions", "similarity", "generation", "curation"], "training/*/result.json"),
    "results": (["data", "captions", "similarity", "generation", "curation", "training"], None),
}
SEED = int(os.environ.get("SGID_KILL_SEED", time.time_ns() % 10_000))


def _stage(params_file: Path, stage: str, kill_after: int | None, progress: str | None, run_dir: Path) -> str:
    """Run a stage in a subprocess; SIGKILL it once `kill_after` progress files exist. Returns what happened."""
    proc = subprocess.Popen([sys.executable, "-m", "sgid_utils", "run", stage, "--params", str(params_file)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    if kill_after is None:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
        return "finished"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        done = len(list(run_dir.glob(progress))) if progress else 0
        if (progress and done >= kill_after) or (not progress and time.time() > kill_after):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return f"killed after {done} progress files"
        time.sleep(0.01)
    proc.wait()
    return "finished before the kill point"


def _rel(df: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """Paths relative to the run directory, so two run directories compare equal."""
    out = df.copy()
    for col in ("path", "source_path"):
        if col in out:
            out[col] = out[col].str.replace(str(run_dir), "<run>", regex=False)
    return out.reset_index(drop=True)


def _same_tables(a: Path, b: Path, a_dir: Path, b_dir: Path) -> None:
    pd.testing.assert_frame_equal(_rel(pd.read_parquet(a), a_dir), _rel(pd.read_parquet(b), b_dir))


@pytest.mark.parametrize("stage", list(STAGES))
def test_kill_and_resume_matches_an_uninterrupted_run(stage, make_params, pipeline_run):
    ref = pipeline_run.run.dir
    params = make_params(f"kill-{stage}")
    run = params.run.dir
    earlier, progress = STAGES[stage]
    for folder in earlier:
        shutil.copytree(ref / folder, run / folder)
    if stage == "curate":  # the upscaled regeneration belongs to this stage
        shutil.rmtree(run / "generation" / "upscaled")
    rng = random.Random(f"{SEED}-{stage}")
    total = len(list(ref.glob(progress))) if progress else 0
    kill_after = rng.randint(1, max(1, total - 1)) if progress else time.time() + rng.uniform(1.0, 4.0)
    what = _stage(params.source_file, stage, kill_after, progress, run)
    msg = f"stage {stage}, {what} (SGID_KILL_SEED={SEED})"
    assert what.startswith("killed"), msg  # otherwise this test would not have tested resuming
    _stage(params.source_file, stage, None, None, run)
    if stage == "captions":
        _same_tables(ref / "captions/captions.parquet", run / "captions/captions.parquet", ref, run)
    elif stage == "similarity":
        for name in ("scores", "best"):
            _same_tables(ref / f"similarity/{name}.parquet", run / f"similarity/{name}.parquet", ref, run)
    elif stage in ("generate", "curate"):
        variant = "raw" if stage == "generate" else "upscaled"
        _same_tables(ref / f"generation/{variant}/manifest.parquet", run / f"generation/{variant}/manifest.parquet", ref, run)
        pngs = sorted((ref / f"generation/{variant}/images").glob("*.png"))
        assert pngs, msg
        for png in pngs:
            assert png.read_bytes() == (run / f"generation/{variant}/images" / png.name).read_bytes(), msg
        if stage == "curate":
            _same_tables(ref / "curation/curated.parquet", run / "curation/curated.parquet", ref, run)
    elif stage == "train":
        cols = ["config", "setting", "seed", "test_acc", "train_images", "generated_images"]
        pd.testing.assert_frame_equal(pd.read_parquet(ref / "training/results.parquet")[cols],
                                      pd.read_parquet(run / "training/results.parquet")[cols])
        for folder in (ref / "training").glob("*_seed*"):
            _same_tables(folder / "predictions.parquet", run / "training" / folder.name / "predictions.parquet", ref, run)
        assert not list((run / "training").glob("*/checkpoint.pt")), msg
    else:
        a = pd.read_csv(pipeline_run.run.reports_dir / "tables/accuracy.csv")
        b = pd.read_csv(params.run.reports_dir / "tables/accuracy.csv")
        pd.testing.assert_frame_equal(a, b)
    print(msg)
