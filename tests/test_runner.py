"""Stage-level guarantees: stale params are refused, bad run dirs stop early, shards match one process."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from sgid_utils.core import catalog
from sgid_utils.core.fingerprints import baseline_fingerprint, fingerprint
from sgid_utils.core.registry import NAMES, STAGES, notebooks, upstream_closure
from sgid_utils.core.resumable import gpu_memory_hint
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.runner import run_stage
from sgid_utils.errors import StageError, StaleOutputsError

from .conftest import copy_stages


def test_changed_output_params_are_refused_but_speed_params_are_not(make_params):
    run_stage("captioning", make_params("stale"))
    run_stage("similarity", make_params("stale"))
    with pytest.raises(StaleOutputsError, match=r"captioning: was .*'top_p': 0.9.*now .*'top_p': 0.5"):
        run_stage("captioning", make_params("stale", captioning={"top_p": 0.5}))
    run_stage("captioning", make_params("stale", captioning={"batch_size": 1}))  # speed only: reuses the work
    # Recomputing captions with new params must not let similarity reuse scores of the old captions.
    changed = make_params("stale", captioning={"top_p": 0.5})
    shutil.rmtree(RunDir.of(changed).stage("captioning"))
    run_stage("captioning", changed)
    with pytest.raises(StaleOutputsError, match="similarity.*captioning"):
        run_stage("similarity", changed)


def test_training_batch_size_is_not_a_speed_only_key(make_params):
    a, b = make_params("x"), make_params("x", training={"batch_size": 8})
    c = make_params("x", training={"eval_batch_size": 8, "seeds": [5]})
    assert fingerprint(a, "training") != fingerprint(b, "training")
    assert fingerprint(a, "training") == fingerprint(c, "training")


def test_the_registry_orders_stages_notebooks_and_fingerprint_chains(make_params):
    assert NAMES[0] == "data" and NAMES.index("upscaling") < NAMES.index("curation") < NAMES.index("training")
    for stage in STAGES:  # upstream stages come earlier, and every entry resolves to a function
        assert all(NAMES.index(u) < NAMES.index(stage.name) for u in stage.upstream) and callable(stage.function)
    assert notebooks() == sorted(notebooks()) and len(notebooks()) == 8
    assert notebooks(last="training")[-1] == "05_training" and notebooks(first="results")[0] == "06_results"
    assert upstream_closure("similarity") == ["data", "captioning", "similarity"]
    params = make_params("fp")
    # The chain: a key inside a section already in the fingerprint is not repeated.
    assert {"curation.upscale_threshold", "curation.upscale_to"} <= set(fingerprint(params, "upscaling"))
    assert "curation" in fingerprint(params, "curation")
    assert "curation.upscale_to" not in fingerprint(params, "curation")
    baseline = fingerprint(params, "training", upstream=("data",))
    assert set(baseline) == {"dataset", "run.seed", "models.classifier", "training", "da_fusion.synthetic_probability",
                             "dataset.code_version", "training.code_version"}  # the test chain trains DA-Fusion
    assert "da_fusion.synthetic_probability" not in baseline_fingerprint(params)  # no Baseline replaces images


def test_unwritable_run_dir_and_full_disk_stop_before_work(make_params, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(StageError, match="not writable"):
        run_stage("data", make_params("w", run={"dir": str(blocker / "run")}))
    with pytest.raises(StageError, match="run.min_free_gb"):
        run_stage("data", make_params("d", run={"min_free_gb": 1e9}))


def test_gpu_out_of_memory_names_the_setting_to_lower():
    with pytest.raises(StageError, match="Lower training.batch_size \\(now 32\\)"):
        with gpu_memory_hint("training x", "Lower training.batch_size (now 32)."):
            raise torch.OutOfMemoryError("CUDA out of memory")


def test_two_shards_give_what_one_process_gives(make_params, pipeline_run, monkeypatch):
    params = make_params("shards")
    copy_stages(pipeline_run, params, "data", "similarity")
    monkeypatch.setenv("SGID_SHARD", "0/2")
    assert run_stage("captioning", params) is None  # half done: no table yet
    assert run_stage("generation", params) is None
    monkeypatch.setenv("SGID_SHARD", "1/2")
    captions = run_stage("captioning", params)
    run_stage("generation", params)
    ref = pd.read_parquet(catalog.path(RunDir.of(pipeline_run), "captions"))
    pd.testing.assert_frame_equal(captions.reset_index(drop=True), ref)
    one, two = catalog.load(pipeline_run, "manifest_raw"), catalog.load(params, "manifest_raw")
    for a, b in zip(one.sort_values("path").path, two.sort_values("path").path):
        assert open(a, "rb").read() == open(b, "rb").read()


def test_sharded_upscale_is_finished_by_the_last_shard_then_curated(make_params, pipeline_run, monkeypatch):
    params = make_params("curate-shards")
    copy_stages(pipeline_run, params, "data", "captioning", "similarity", "generation")
    monkeypatch.setenv("SGID_SHARD", "0/2")
    with pytest.raises(FileNotFoundError, match="run stage 'upscaling' first"):
        run_stage("curation", params)  # no shard has started the upscaled regeneration: curate says so, never a no-op
    assert run_stage("upscaling", params) is None  # the other shard's sources are not regenerated yet
    assert run_stage("curation", params) is None  # so curation waits for the last shard
    monkeypatch.setenv("SGID_SHARD", "1/2")
    assert run_stage("upscaling", params) is not None
    curated = run_stage("curation", params)
    ref = pd.read_parquet(catalog.path(RunDir.of(pipeline_run), "curated"))
    got = pd.read_parquet(catalog.path(RunDir.of(params), "curated"))
    pd.testing.assert_frame_equal(got.drop(columns=["source_path"]), ref.drop(columns=["source_path"]))
    assert curated is not None and len(curated) == len(ref)


def test_accelerate_launch_with_two_processes_gives_what_one_process_gives(make_params, pipeline_run):
    """The README's multi-GPU command, on the CPU: ``--multi_gpu`` starts the same torch elastic launcher
    (RANK, WORLD_SIZE, a gloo process group) that accelerate uses on a machine with several GPUs."""
    import os
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
    # One launch for the three stages (`run all`, a barrier after each): each launch starts two processes that import
    # torch and the model libraries afresh.
    done = subprocess.run(
        [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
         "-m", "sgid_utils", "run", "all", "--to-stage", "generation", "--params", str(params.source_file)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in ("captioning", "similarity", "generation"):
        assert done.stderr.count(f"[sgid] stage {stage}:") == 2  # both processes ran the stage
    run, reference = RunDir.of(params), RunDir.of(pipeline_run)
    for table in ("captions", "best_captions"):
        pd.testing.assert_frame_equal(pd.read_parquet(catalog.path(run, table)),
                                      pd.read_parquet(catalog.path(reference, table)))
    got, ref = (pd.read_parquet(catalog.path(r, "manifest_raw")) for r in (run, reference))
    assert list(got.path) == list(ref.path)
    import numpy as np
    from PIL import Image

    # torchrun gives each process one thread (OMP_NUM_THREADS=1): other summation orders, the same images to 1/255
    for rel in ref.path:
        a, b = (np.asarray(Image.open(d.root / rel), dtype=np.int16) for d in (run, reference))
        assert np.abs(a - b).max() <= 1, rel
    shutil.rmtree(run.root)
