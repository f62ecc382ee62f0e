"""The loop every per-item stage shares: this process's share, per-item records, batches, out-of-memory back-off.

A per-item stage (captions, similarity, generation, candidate scoring) only says how to
process a batch of items (``BatchPlan.process``). ``run_items`` does the rest:

- skips the items that already have a record, so a rerun resumes and a finished stage is free (a damaged record, or
  a damaged file it stands for, is moved aside and its item redone: ``core.files.ItemStore``);
- takes this process's share under ``--shard`` / ``accelerate launch``;
- runs batches, halving a batch that runs out of GPU memory and retrying it (the same
  halving and message for every stage; like accelerate's ``find_executable_batch_size``,
  but per chunk, so finished chunks are kept);
- writes one record per item as soon as its batch is done, so a kill loses only the batch in flight; a batch whose
  files are still being written on other threads (``Pending``, generation's PNG writers) gets its records once they
  are, while the next batch already runs, so a record never names a file that is not there yet;
- returns every record, in item order, once all items (of every process) are done.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sgid_utils.core.files import ItemStore
from sgid_utils.errors import StageError


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


def launched_worker() -> bool:
    """True in a process of ``accelerate launch`` / torchrun other than the main one (not under ``--shard``)."""
    return not os.environ.get("SGID_SHARD") and int(os.environ.get("WORLD_SIZE", 1)) > 1 and shard()[0] != 0


def my_share(items: Iterable[str]) -> list[str]:
    """This process's items: every count-th of the full, ordered list (stable while items finish)."""
    index, count = shard()
    return [item for n, item in enumerate(items) if n % count == index]


@contextmanager
def gpu_memory_hint(what: str, advice: str) -> Iterator[None]:
    """Turn a CUDA out-of-memory error of work that cannot be split (a training run) into advice."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise StageError(f"GPU out of memory while {what}. {advice} Finished items are kept; "
                         "rerun to resume.") from None


def in_batches(total: int, batch: int, work: Callable[[int, int], None], what: str, setting: str,
               other: str = "") -> None:
    """Call ``work(start, stop)`` over consecutive chunks of at most ``batch`` items.

    A CUDA out-of-memory error halves the failed chunk and retries it, down to one item; at one
    item it becomes a StageError naming ``setting`` (and ``other``, further settings to lower). A
    chunk's results are kept only once ``work`` returns, so a retried chunk is not done twice.
    """
    start = 0
    while start < total:
        stop = min(start + batch, total)
        try:
            work(start, stop)
        except torch.OutOfMemoryError:
            failed = stop - start
        else:
            start = stop
            continue
        if failed == 1:
            raise StageError(f"GPU out of memory while {what}, even at 1 per batch ({setting} was halved down to 1). "
                             f"Free GPU memory (another process may hold it){other}. "
                             "Finished items are kept; rerun to resume.")
        batch = failed // 2
        if torch.cuda.is_available():
            # outside the except block, where the failed attempt's tensors are already released
            torch.cuda.empty_cache()
        print(f"[sgid] GPU out of memory while {what} at {failed} per batch; retrying at {batch}.", file=sys.stderr)


@dataclass
class Pending:
    """A batch's records, final once ``futures`` (the writes of its files, on other threads) are done."""

    records: Mapping[str, Any]
    futures: Sequence[Future]

    def result(self) -> Mapping[str, Any]:
        """The records, once every write has finished; a write's error is raised here."""
        wait(self.futures)
        for future in self.futures:
            future.result()
        return self.records


@dataclass
class BatchPlan:
    """How a stage processes its items, made once there is work (models load only then)."""

    process: Callable[[list[str]], Mapping[str, Any] | Pending]  # a batch of item ids -> the record of each
    size: int  # items per batch to start with
    what: str  # for the progress bar and messages, e.g. "captioning"
    setting: str  # the params key that sets ``size``
    order: Sequence[str] | None = None  # processing order of the items to do (default: as given)
    other: str = ""  # further settings to lower on out-of-memory, e.g. ", or lower generation.max_side"
    in_flight: int = 1  # at most this many batches still writing their files (``Pending``) while the next one runs


def run_items(folder: Path, item_ids: Sequence[str], start: Callable[[list[str]], BatchPlan],
              sharded: bool = True, outputs: Callable[[str, Any], Iterable[Path]] | None = None) -> list[Any] | None:
    """Process the items of ``item_ids`` that have no whole record in ``folder`` yet; every record once all are done.

    ``start(todo)`` is called only when this process has items to do; it loads what the stage
    needs and returns the ``BatchPlan`` plan. Returns None while other shards are still working.
    ``outputs(item_id, record)``: the files an item's record stands for; a damaged or missing one redoes the item
    (``core.files.ItemStore``), as does a damaged record.
    """
    store = ItemStore(folder, outputs)
    todo = store.todo(my_share(item_ids) if sharded else item_ids)
    if todo:
        plan = start(todo)
        order = list(plan.order if plan.order is not None else todo)
        bar = tqdm(total=len(order), desc=plan.what, unit="item")
        writing: deque[tuple[list[str], Pending]] = deque()

        def put(ids: list[str], records: Mapping[str, Any]) -> None:
            for item_id in ids:
                store.put(item_id, records[item_id])
            bar.update(len(ids))

        def settle(keep: int) -> None:
            """Record the oldest batches still writing until at most ``keep`` are left."""
            while len(writing) > keep:
                ids, pending = writing.popleft()
                put(ids, pending.result())

        def work(first: int, stop: int) -> None:
            ids = order[first:stop]
            records = plan.process(ids)
            if isinstance(records, Pending):
                writing.append((ids, records))
                settle(plan.in_flight)
            else:
                put(ids, records)

        try:
            in_batches(len(order), plan.size, work, plan.what, plan.setting, plan.other)
        finally:  # also when a batch fails: the batches before it keep their files and records
            settle(0)
        bar.close()
    return store.records(item_ids) if store.complete(item_ids) else None
