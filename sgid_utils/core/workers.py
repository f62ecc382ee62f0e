"""Calls on several worker processes, each started once the calls it depends on have returned.

``concurrent.futures`` runs calls on a pool but knows no order between them; the ablation variants need one (a
variant that links an earlier variant's stages starts after it), so this adds it. Workers are forked from a fresh
server process that imported the calls' modules once (``forkserver``), not from this process: a child forked from a
process that initialised CUDA or an OpenMP pool can hang, and spawning would import torch and diffusers once per
worker.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any


def _share_cores(threads: int) -> None:
    """Each worker's part of the cores for torch's threads (and its children's), unless OMP_NUM_THREADS says."""
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:  # imported by the server before this worker was forked
            sys.modules["torch"].set_num_threads(threads)


def _priority(after: Sequence[set[int]], sizes: Sequence[float]) -> list[int]:
    """Calls in the order to start them when ready: those that others wait for (directly or not) first, then those
    deeper in a chain, then the largest, then in order; so neither a chain nor a long call starts last and runs
    alone."""
    waiting_on: list[set[int]] = [set() for _ in after]
    depth = [0] * len(after)
    for i, deps in enumerate(after):  # deps are below i: one pass in order
        depth[i] = 1 + max((depth[j] for j in deps), default=-1)
    for i in reversed(range(len(after))):
        for j in after[i]:
            waiting_on[j] |= {i} | waiting_on[i]
    return sorted(range(len(after)), key=lambda i: (-len(waiting_on[i]), -depth[i], -sizes[i], i))


def run_ordered(calls: Sequence[Callable[[], Any]], after: Sequence[set[int]], jobs: int,
                sizes: Sequence[float] | None = None) -> list[Any]:
    """Every call, on ``jobs`` processes (in this one, in order, when ``jobs`` is 1); call i starts once every call
    in ``after[i]`` (indices below i) has returned. ``sizes``: a guess of each call's length, to start long ones
    early. The calls must pickle: module-level functions, or
    ``functools.partial`` of them. Returns the results in the order of ``calls``; the first call that raises stops
    new starts and its error is raised once the running calls end (their finished work is kept, like any stage's)."""
    if any(j >= i for i, deps in enumerate(after) for j in deps):
        raise ValueError("a call can only wait for calls before it")
    if jobs == 1:
        return [call() for call in calls]
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(sorted({getattr(c, "func", c).__module__ for c in calls}))
    results: dict[int, Any] = {}
    running: dict[Future, int] = {}
    waiting = _priority(after, sizes or [0] * len(calls))
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_share_cores,
                             initargs=(max(1, (os.cpu_count() or 1) // jobs),)) as pool:
        while waiting or running:
            for i in [i for i in waiting if after[i] <= results.keys()][:jobs - len(running)]:
                waiting.remove(i)
                running[pool.submit(calls[i])] = i
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                i = running.pop(future)
                if future.exception() is not None:  # leaving the pool waits for the running calls to end
                    raise future.exception()
                results[i] = future.result()
    return [results[i] for i in range(len(calls))]
