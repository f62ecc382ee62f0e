"""The stage runner: what happens around every stage, whoever starts it (notebook, command line, test).

``run_stage(name, params)``: the run directory must be writable with room to spare, the
smoke profile's assets are built if asked, the params are copied into the run
directory, the stage's start is recorded (time, machine, versions: ``provenance``), the data stage's table is made (or
reused), the stage's fingerprint is checked against its folder, and then the stage's function runs. Under a distributed
launch every process runs its share and the main one assembles the stage's table.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sgid_utils.core.files import pin_fingerprint, write_text
from sgid_utils.core.fingerprints import fingerprint
from sgid_utils.core.provenance import record_seconds, record_stage
from sgid_utils.core.registry import NAMES, get
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.sharing import reuse_run
from sgid_utils.errors import StageError
from sgid_utils.models.loading import release_models
from sgid_utils.models.tiny import ensure_smoke_assets
from sgid_utils.params.schema import Params

BARRIER_TIMEOUT = timedelta(hours=48)


def ensure_writable(folder: Path, min_free_gb: float) -> None:
    """Fail before any work when the run directory cannot be written or the disk is nearly full."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)  # one per process: shards do not race
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StageError(f"Run directory {folder} is not writable ({exc.strerror}); set run.dir or --run-dir "
                         "to a folder you can write.") from None
    free = shutil.disk_usage(folder).free / 2**30
    if free < min_free_gb:
        raise StageError(
            f"Only {free:.2f} GiB free under {folder}, below run.min_free_gb ({min_free_gb}); free some space "
            "or point run.dir elsewhere. Finished work in the run directory is kept."
        )


def prepare_run(params: Params) -> None:
    """Start of every stage: a writable run dir with room, smoke assets if asked, the params copied in."""
    run = RunDir.of(params)
    ensure_writable(run.root, params.run.min_free_gb)
    ensure_smoke_assets(params, run.assets_lock)
    if params.run.reuse is not None:
        reuse_run(params)
    dump = yaml.safe_dump(params.model_dump(mode="json", exclude={"source_file"}), sort_keys=False)
    write_text(run.params_copy, dump)


def check_stage(params: Params, name: str) -> None:
    """Refuse to add to a stage folder made with other params (a stage without keys keeps no fingerprint)."""
    if get(name).keys:
        pin_fingerprint(RunDir.of(params).fingerprint_file(name), fingerprint(params, name), name)


def run_stage(name: str, params: Params) -> Any:
    """Run one registered stage in this process; its result (usually its table), or None while shards work. An old
    stage name (``registry.RENAMED_STAGES``, a user's notebook) runs the stage under its new name."""
    stage = get(name)
    name = stage.name
    prepare_run(params)
    record_stage(params, name)
    check_stage(params, "data")
    images: pd.DataFrame = get("data").function(params)  # every stage reads the data stage's table
    if name == "data":
        return images
    check_stage(params, name)
    began = time.perf_counter()
    result = stage.function(params, images)
    record_seconds(params, name, time.perf_counter() - began)  # the stage's cost (a stage that raised costs nothing)
    return result


def run_distributed(name: str, params: Params) -> Any:
    """``run_stage`` for one of several processes; under ``accelerate launch`` the main one finishes the table."""
    result = run_stage(name, params)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not os.environ.get("SGID_SHARD"):
        import torch
        from accelerate import PartialState  # seconds to import: only under a distributed launch

        # Shards can finish hours apart (a resumed run, training configurations of unequal size): the barrier waits,
        # instead of the process group's default 30-minute timeout aborting the early ones. Without a GPU, accelerate
        # sees no distributed launch unless told `cpu` (its barrier was then a no-op and `run all`'s next stage started
        # before the last shard's table was written); with `cpu` it joins a gloo process group.
        state = PartialState(cpu=not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)
        state.wait_for_everyone()
        if result is None and state.is_main_process:
            result = run_stage(name, params)  # every item is done now: this only assembles the stage's table
        state.wait_for_everyone()
    elif result is None:
        print(f"[sgid] stage {name}: this shard's items are done; other shards are still working. The last shard to "
              "finish writes the stage's table (or rerun the stage without --shard once all are done).",
              file=sys.stderr)
    return result


def run_all(params: Params, names: list[str] | None = None) -> None:
    """Every stage in registry order (or the ``names`` given), as ``python -m sgid_utils run all`` does."""
    for name in names or NAMES:
        print(f"[sgid] stage {name}: run dir {params.run.dir}", file=sys.stderr)
        run_distributed(name, params)
        release_models()  # each stage loads what it needs: one stage's models do not crowd the next one's GPU memory
