"""Glue shared by every stage: start-of-stage checks, the data table, sharding, GPU memory errors."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch
import yaml

from .io import write_text
from .params import Params


class StageError(RuntimeError):
    """A stage cannot start or go on (disk, permissions, GPU memory); the message says what to change."""


def ensure_writable(folder: Path, min_free_gb: float) -> None:
    """Fail before any work when the run directory cannot be written or the disk is nearly full."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise StageError(f"Run directory {folder} is not writable ({exc.strerror}); set run.dir or --run-dir to a folder you can write.") from None
    free = shutil.disk_usage(folder).free / 2**30
    if free < min_free_gb:
        raise StageError(
            f"Only {free:.2f} GiB free under {folder}, below run.min_free_gb ({min_free_gb}); free some space "
            "or point run.dir elsewhere. Finished work in the run directory is kept."
        )


def ensure_inputs(params: Params) -> pd.DataFrame:
    """Start of every stage: writable run dir, smoke assets if asked, params copy; returns the images table."""
    from .data import prepare_dataset
    from .tiny import ensure_smoke_assets

    run_dir = Path(params.run.dir)
    ensure_writable(run_dir, params.run.min_free_gb)
    ensure_smoke_assets(params)
    write_text(run_dir / "params.yaml", yaml.safe_dump(params.model_dump(mode="json", exclude={"source_file"}), sort_keys=False))
    return prepare_dataset(params)


def shard() -> tuple[int, int]:
    """(index, count) of this process among the workers of a stage.

    SGID_SHARD="i/n" (set by ``--shard``) wins; otherwise torchrun's / ``accelerate launch``'s
    RANK and WORLD_SIZE; otherwise a single process.
    """
    if os.environ.get("SGID_SHARD"):
        index, count = (int(v) for v in os.environ["SGID_SHARD"].split("/"))
    else:
        index, count = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= index < count:
        raise StageError(f"Invalid shard {index}/{count}: expected 0 <= index < count")
    return index, count


def my_share(items: Iterable[str]) -> list[str]:
    """This process's items: every count-th of the full, ordered list (stable while items finish)."""
    index, count = shard()
    return [item for n, item in enumerate(items) if n % count == index]


@contextmanager
def gpu_memory_hint(what: str, advice: str) -> Iterator[None]:
    """Turn a CUDA out-of-memory error into a message saying which setting to lower."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise StageError(f"GPU out of memory while {what}. {advice} Finished items are kept; rerun to resume.") from None


def in_batches(total: int, batch: int, work: Callable[[int, int], None], shrink: bool, what: str, setting: str,
               other: str = "") -> None:
    """Call ``work(start, stop)`` over consecutive chunks of ``batch`` items.

    With ``shrink`` (a batch size chosen automatically) a CUDA out-of-memory error halves the
    batch and retries the same chunk, down to one item. Otherwise, or at one item, it becomes a
    StageError naming ``setting`` (and ``other``, further settings to lower). A chunk's results
    are kept only once ``work`` returns, so a retried chunk is not done twice.
    """
    start = 0
    while start < total:
        stop = min(start + batch, total)
        failed = 0
        try:
            work(start, stop)
        except torch.OutOfMemoryError:
            failed = stop - start
        if not failed:
            start = stop
            continue
        if not shrink or failed == 1:
            lower = "Even one item does not fit: free GPU memory" if shrink else f"Lower {setting} below {failed}"
            raise StageError(f"GPU out of memory while {what} ({failed} per batch). {lower}{other}. "
                             "Finished items are kept; rerun to resume.")
        batch = failed // 2
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # outside the except block, where the failed attempt's tensors are already released
        print(f"[sgid] GPU out of memory while {what} at {failed} per batch; retrying at {batch}.", file=sys.stderr)
