"""``python -m sgid_utils reproduce``: one data set's chain, notebooks, ablation profile and page (``make reproduce``).

The steps are commands of this same command line, each in its own process (a stage's models leave with it):

1. the stages up to training in one process, their progress on the terminal (``run all``);
2. the notebooks of those stages, which find the stages finished and show them;
3. the data set's ablation profile, ``<params>_ablations.yaml`` beside the params file, if there is one;
4. the notebooks from the results stage on (they show the ablations), then the run's page (``report``);
5. with ``--compare FILE`` (a methods profile whose ``run.reuse`` is this run: ``make smoke``), that profile's steps as
   ``make compare`` runs them: its stages, its ablations, notebook 08 and its page.

With ``--jobs N`` (N > 1), for a CPU with cores to spare (not one GPU: each process loads its own models), the
notebooks up to curation run beside the training stage, and the ablation variants N at a time beside the training
notebook, which starts once the training is done; the notebooks from the results stage on run side by side where
neither reads the other's stage (06 beside 07, 08 after 06); the compared methods' steps start as soon as this run's
stages up to curation (all that ``run.reuse`` links) are done, beside the rest. A step starts once the steps it needs
have ended; when one fails, none starts after it, the running ones end (their finished work is kept, as any stage's)
and the exit status is the failed step's.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sgid_utils.core.registry import NAMES, between, get, upstream_closure, writer


@dataclass(frozen=True)
class Step:
    """One command (``python -m sgid_utils`` + ``args``), started once the steps in ``after`` have ended."""

    args: tuple[str, ...]
    after: frozenset[int] = frozenset()


def ablation_profile(params_file: str | None) -> Path | None:
    """``params/pets.yaml`` -> ``params/pets_ablations.yaml`` when that file exists (None for no profile)."""
    if params_file is None:
        return None
    profile = Path(params_file).with_name(f"{Path(params_file).stem}_ablations.yaml")
    return profile if profile.is_file() else None


def compare_steps(profile: str, jobs: int, after: int, first: int) -> list[Step]:
    """``make compare``'s commands for one methods profile (its own params: --run-dir and --set are the main run's),
    each after the one before; the first after step ``after``. ``first``: the index the first of them gets."""
    given = ("--params", profile)
    args = [("run", "all", "--to-stage", "quality", *given),
            ("run", "ablations", *given, *(("--jobs", str(jobs)) if jobs > 1 else ())),
            ("notebooks", "--from-stage", "comparison", *given), ("report", *given)]
    return [Step(a, frozenset({first + i - 1} if i else {after})) for i, a in enumerate(args)]


def plan(params_file: str | None, jobs: int, options: tuple[str, ...] = (), compare: str | None = None) -> list[Step]:
    """The steps of ``reproduce`` in start order. Every command gets ``--params params_file`` (when given) and
    ``options`` (--run-dir, --set); the ablations get the ablation profile as their --params. ``compare``: a methods
    profile run too (one job: at the end; more: once the stages up to curation are done)."""
    train = writer("training_results")
    before, results = NAMES[NAMES.index(train) - 1], NAMES[NAMES.index(train) + 1]
    given = (*(("--params", params_file) if params_file else ()), *options)
    profile = ablation_profile(params_file)
    ablations = (("run", "ablations", "--params", str(profile), *options, *(("--jobs", str(jobs)) if jobs > 1 else ()))
                 if profile else None)
    if jobs == 1:
        args = [("run", "all", "--to-stage", train, *given), ("notebooks", "--to-stage", train, *given),
                *([ablations] if ablations else []), ("notebooks", "--from-stage", results, *given),
                ("report", *given)]
        steps = [Step(a, frozenset({i - 1} if i else ())) for i, a in enumerate(args)]
        return steps + (compare_steps(compare, jobs, len(steps) - 1, len(steps)) if compare else [])
    steps = [Step(("run", "all", "--to-stage", before, *given)),
             Step(("notebooks", "--to-stage", before, *given), frozenset({0})),
             Step(("run", train, *given), frozenset({0}))]
    if ablations:
        steps.append(Step(ablations, frozenset({2})))
    steps.append(Step(("notebooks", "--from-stage", train, "--to-stage", train, *given), frozenset({1, 2})))
    late = late_notebooks(results, frozenset({len(steps) - 1, *({3} if ablations else ())}), len(steps), given)
    steps += late
    steps.append(Step(("report", *given), frozenset(range(len(steps) - len(late), len(steps)))))
    return steps + (compare_steps(compare, jobs, 0, len(steps)) if compare else [])


def late_notebooks(first: str, after: frozenset[int], index: int, given: tuple[str, ...]) -> list[Step]:
    """One step per notebook from stage ``first`` on (they show the ablations: after the steps ``after``), each also
    after the notebooks of the stages it reads, so that those that read only the training run side by side (06 and
    07; 08 after 06). ``index``: the index the first of them gets."""
    steps, by_notebook = [], {}
    for stage in between(first, NAMES[-1]):
        if stage.notebook in by_notebook:
            continue
        needs = {by_notebook[get(n).notebook] for n in upstream_closure(stage.name) if get(n).notebook in by_notebook}
        by_notebook[stage.notebook] = index + len(steps)
        steps.append(Step(("notebooks", "--from-stage", stage.name, "--to-stage", stage.name, *given),
                          frozenset(needs) or after))
    return steps


def command(step: Step) -> list[str]:
    return [sys.executable, "-m", "sgid_utils", *step.args]


def run_steps(steps: list[Step], commands: list[list[str]] | None = None) -> int:
    """Run the steps' commands (``commands``: other commands in their place, for the tests), each once the steps it
    needs have ended with status 0; returns 0, or the status of the first step that failed once the running ones
    end. Interrupted (Ctrl-C), it stops the running commands first."""
    commands = commands or [command(s) for s in steps]
    waiting, running, done, failed = list(range(len(steps))), {}, set(), 0
    started = time.monotonic()
    try:
        while waiting or running:
            for i in [i for i in waiting if steps[i].after <= done] if not failed else []:
                waiting.remove(i)
                print(f"[sgid] reproduce: at {time.monotonic() - started:.0f} s: {' '.join(steps[i].args)}", flush=True)
                running[i] = subprocess.Popen(commands[i])
            if not running:
                break
            i = _wait_any(running)
            status = running.pop(i).returncode
            if status == 0:
                done.add(i)
                print(f"[sgid] reproduce: at {time.monotonic() - started:.0f} s, done: {' '.join(steps[i].args)}",
                      flush=True)
            elif not failed:
                failed = status if status > 0 else 1  # killed by a signal
                print(f"[sgid] reproduce: `{' '.join(steps[i].args)}` failed (exit status {status}); "
                      f"{'waiting for the running steps to end' if running else 'stopping'}", file=sys.stderr,
                      flush=True)
    except KeyboardInterrupt:
        for process in running.values():
            process.terminate()
        for process in running.values():
            process.wait()
        raise
    return failed


def _wait_any(running: dict[int, subprocess.Popen]) -> int:
    """The index of a running command that has ended (blocking on the oldest until one has)."""
    while True:
        for i, process in running.items():
            if process.poll() is not None:
                return i
        try:
            next(iter(running.values())).wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
