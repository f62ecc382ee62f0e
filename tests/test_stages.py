"""Stage-level guarantees: stale params are refused, bad run dirs stop early, shards match one process."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from sgid_utils.captioning import run_captions
from sgid_utils.generation import load_manifest, run_generation
from sgid_utils.io import StaleOutputsError
from sgid_utils.pipeline import StageError, ensure_inputs, gpu_memory_hint


def test_changed_output_params_are_refused_but_speed_params_are_not(make_params):
    import shutil

    from sgid_utils.similarity import run_similarity

    run_captions(make_params("stale"))
    run_similarity(make_params("stale"))
    with pytest.raises(StaleOutputsError, match=r"captioning: was .*'top_p': 0.9.*now .*'top_p': 0.5"):
        run_captions(make_params("stale", captioning={"top_p": 0.5}))
    run_captions(make_params("stale", captioning={"batch_size": 1}))  # speed only: reuses the work
    # Recomputing captions with new params must not let similarity reuse scores of the old captions.
    changed = make_params("stale", captioning={"top_p": 0.5})
    shutil.rmtree(changed.run.dir / "captions")
    run_captions(changed)
    with pytest.raises(StaleOutputsError, match="similarity.*captioning"):
        run_similarity(changed)


def test_training_batch_size_is_not_a_speed_only_key(make_params):
    a, b = make_params("x"), make_params("x", training={"batch_size": 8})
    c = make_params("x", training={"eval_batch_size": 8, "seeds": [5]})
    assert a.stage_fingerprint("train") != b.stage_fingerprint("train")
    assert a.stage_fingerprint("train") == c.stage_fingerprint("train")


def test_unwritable_run_dir_and_full_disk_stop_before_work(make_params, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(StageError, match="not writable"):
        ensure_inputs(make_params("w", run={"dir": str(blocker / "run")}))
    with pytest.raises(StageError, match="run.min_free_gb"):
        ensure_inputs(make_params("d", run={"min_free_gb": 1e9}))


def test_gpu_out_of_memory_names_the_setting_to_lower():
    with pytest.raises(StageError, match="Lower training.batch_size \\(now 32\\)"):
        with gpu_memory_hint("training x", "Lower training.batch_size (now 32)."):
            raise torch.OutOfMemoryError("CUDA out of memory")


def test_two_shards_give_what_one_process_gives(make_params, pipeline_run, monkeypatch):
    import shutil

    params = make_params("shards")
    for folder in ("data", "captions", "similarity"):
        shutil.copytree(pipeline_run.run.dir / folder, params.run.dir / folder)
    shutil.rmtree(params.run.dir / "captions")
    monkeypatch.setenv("SGID_SHARD", "0/2")
    assert run_captions(params) is None  # half done: no table yet
    assert run_generation(params) is None
    monkeypatch.setenv("SGID_SHARD", "1/2")
    captions = run_captions(params)
    run_generation(params)
    ref = pd.read_parquet(pipeline_run.run.dir / "captions" / "captions.parquet")
    pd.testing.assert_frame_equal(captions.reset_index(drop=True), ref)
    one, two = load_manifest(pipeline_run), load_manifest(params)
    for a, b in zip(one.sort_values("path").path, two.sort_values("path").path):
        assert open(a, "rb").read() == open(b, "rb").read()


def test_sharded_curation_is_finished_by_the_last_shard(make_params, pipeline_run, monkeypatch):
    import shutil

    from sgid_utils.curation import run_curation

    params = make_params("curate-shards")
    for folder in ("data", "captions", "similarity"):
        shutil.copytree(pipeline_run.run.dir / folder, params.run.dir / folder)
    shutil.copytree(pipeline_run.run.dir / "generation" / "raw", params.run.dir / "generation" / "raw")
    monkeypatch.setenv("SGID_SHARD", "0/2")
    assert run_curation(params) is None
    monkeypatch.setenv("SGID_SHARD", "1/2")
    curated = run_curation(params)
    ref = pd.read_parquet(pipeline_run.run.dir / "curation" / "curated.parquet")
    got = pd.read_parquet(params.run.dir / "curation" / "curated.parquet")
    pd.testing.assert_frame_equal(got.drop(columns=["source_path"]), ref.drop(columns=["source_path"]))
    assert curated is not None and len(curated) == len(ref)


def test_accelerate_launch_with_two_processes_gives_what_one_process_gives(make_params, pipeline_run):
    """The README's multi-GPU command, on the CPU: ``--multi_gpu`` starts the same torch elastic launcher
    (RANK, WORLD_SIZE, a gloo process group) that accelerate uses on a machine with several GPUs."""
    import os
    import shutil
    import socket
    import subprocess
    import sys
    from pathlib import Path

    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip("accelerate's launcher is not installed beside this Python")
    params = make_params("acc")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("SGID_SHARD", "RANK", "WORLD_SIZE")}
    env["CUDA_VISIBLE_DEVICES"] = ""  # with a GPU visible accelerate would pick NCCL and put both processes on it
    for stage in ("captions", "similarity", "generate"):
        done = subprocess.run(
            [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
             "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
             "-m", "sgid_utils", "run", stage, "--params", str(params.source_file)],
            env=env, capture_output=True, text=True, timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stderr.count(f"[sgid] stage {stage}") == 2  # both processes ran the stage
    run_dir = params.run.dir
    for table in ("captions/captions.parquet", "similarity/best.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(run_dir / table), pd.read_parquet(pipeline_run.run.dir / table))
    got = pd.read_parquet(run_dir / "generation" / "raw" / "manifest.parquet")
    ref = pd.read_parquet(pipeline_run.run.dir / "generation" / "raw" / "manifest.parquet")
    assert list(got.path) == list(ref.path)
    import numpy as np
    from PIL import Image

    # torchrun gives each process one thread (OMP_NUM_THREADS=1): other summation orders, the same images to 1/255
    for rel in ref.path:
        a, b = (np.asarray(Image.open(d / rel), dtype=np.int16) for d in (run_dir, pipeline_run.run.dir))
        assert np.abs(a - b).max() <= 1, rel
    shutil.rmtree(run_dir)
