"""Calls on worker processes in dependency order (core.workers): what `run ablations --jobs N` schedules with."""

import time
from functools import partial
from pathlib import Path

import pytest

from sgid_utils.core.workers import _priority, run_ordered


def _logged(log: Path, i: int, seconds: float) -> int:
    """Record the start and end of call i (module level: the workers import it)."""
    with log.open("a") as f:
        f.write(f"start {i} {time.monotonic()}\n")
    time.sleep(seconds)
    with log.open("a") as f:
        f.write(f"end {i} {time.monotonic()}\n")
    return i * 10


def _fails(message: str) -> None:
    raise ValueError(message)


def _times(log: Path) -> dict[tuple[str, int], float]:
    return {(kind, int(i)): float(t) for kind, i, t in (line.split() for line in log.read_text().splitlines())}


def test_calls_start_after_the_calls_they_wait_for_and_return_in_order(tmp_path):
    log = tmp_path / "log"
    after = [set(), set(), {0}, {2}, set()]
    calls = [partial(_logged, log, i, 0.3) for i in range(5)]
    assert run_ordered(calls, after, jobs=2) == [0, 10, 20, 30, 40]
    times = _times(log)
    for i, deps in enumerate(after):
        assert all(times["end", j] <= times["start", i] for j in deps), (i, deps)
    # two at a time: some calls overlapped (the pool is not serial) and never three at once
    starts = sorted(times[k] for k in times if k[0] == "start")
    ends = sorted(times[k] for k in times if k[0] == "end")
    assert any(times["start", i] < times["end", j] and times["start", j] < times["end", i]
               for i in range(5) for j in range(i))
    assert all(sum(s <= t for s in starts) - sum(e <= t for e in ends) <= 2 for t in starts)


def test_one_job_runs_the_calls_here_in_order(tmp_path):
    log = tmp_path / "log"
    assert run_ordered([partial(_logged, log, i, 0) for i in range(3)], [set(), {0}, set()], jobs=1) == [0, 10, 20]
    assert [line.split()[:2] for line in log.read_text().splitlines()][::2] == [["start", "0"], ["start", "1"],
                                                                                 ["start", "2"]]


def test_the_first_error_stops_new_starts_and_is_raised_once_the_running_calls_end(tmp_path):
    log = tmp_path / "log"
    # 0 fails at once while 1 runs beside it; 2 (independent) and 3 (waiting for 0) have not started
    calls = [partial(_fails, "variant 0 broke"), partial(_logged, log, 1, 1.0), partial(_logged, log, 2, 0),
             partial(_logged, log, 3, 0)]
    with pytest.raises(ValueError, match="variant 0 broke"):
        run_ordered(calls, [set(), set(), set(), {0}], jobs=2, sizes=[0, 2, 1, 0])
    assert set(_times(log)) == {("start", 1), ("end", 1)}


def test_a_call_may_wait_only_for_earlier_ones():
    with pytest.raises(ValueError, match="before it"):
        run_ordered([partial(_fails, "x")] * 2, [{1}, set()], jobs=2)


def test_chains_and_long_calls_start_first():
    # 3 waits for 1, which waits for 0: that chain first; then the longest of the free calls
    assert _priority([set(), {0}, set(), {1}, set()], [1, 1, 1, 1, 5]) == [0, 1, 3, 4, 2]
