"""``python -m sgid_utils reproduce`` (``make reproduce``): which commands run, in what order, which side by side,
and what a failure stops."""

from __future__ import annotations

import sys
from pathlib import Path

from sgid_utils.cli import main
from sgid_utils.reproduce import Step, plan, run_steps

from .conftest import REPO

SMOKE = str(REPO / "params" / "smoke.yaml")
ABLATIONS = str(REPO / "params" / "smoke_ablations.yaml")


def _args(steps: list[Step]) -> list[tuple[tuple[str, ...], set[int]]]:
    return [(s.args, set(s.after)) for s in steps]


def test_one_job_runs_the_chain_the_notebooks_the_ablations_and_the_page_in_order():
    p = ("--params", SMOKE)
    assert _args(plan(SMOKE, 1)) == [
        (("run", "all", "--to-stage", "training", *p), set()),
        (("notebooks", "--to-stage", "training", *p), {0}),
        (("run", "ablations", "--params", ABLATIONS), {1}),
        (("notebooks", "--from-stage", "results", *p), {2}),
        (("report", *p), {3}),
    ]


def test_jobs_run_the_early_notebooks_beside_training_and_the_ablations_beside_its_notebook():
    p = ("--params", SMOKE, "--set", "run.seed=1")
    assert _args(plan(SMOKE, 3, ("--set", "run.seed=1"))) == [
        (("run", "all", "--to-stage", "curation", *p), set()),
        (("notebooks", "--to-stage", "curation", *p), {0}),
        (("run", "training", *p), {0}),
        (("run", "ablations", "--params", ABLATIONS, "--set", "run.seed=1", "--jobs", "3"), {2}),
        (("notebooks", "--from-stage", "training", "--to-stage", "training", *p), {1, 2}),
        (("notebooks", "--from-stage", "results", "--to-stage", "results", *p), {3, 4}),
        (("notebooks", "--from-stage", "quality", "--to-stage", "quality", *p), {3, 4}),  # 07 beside 06
        (("notebooks", "--from-stage", "comparison", "--to-stage", "comparison", *p), {5}),  # 08 reads 06's table
        (("report", *p), {5, 6, 7}),
    ]


def test_a_methods_profile_runs_as_make_compare_does_once_the_curated_stages_it_links_are_done():
    methods = str(REPO / "params" / "smoke_methods.yaml")
    m = ("--params", methods)
    compare = [("run", "all", "--to-stage", "quality", *m), ("run", "ablations", *m),
               ("notebooks", "--from-stage", "comparison", *m), ("report", *m)]
    one = _args(plan(SMOKE, 1, compare=methods))
    assert one[:5] == _args(plan(SMOKE, 1)) and one[5:] == [(a, {i + 4}) for i, a in enumerate(compare)]
    two = _args(plan(SMOKE, 2, ("--set", "run.seed=1"), compare=methods))  # --set and --run-dir are the main run's
    assert two[:9] == _args(plan(SMOKE, 2, ("--set", "run.seed=1")))
    compare[1] = (*compare[1], "--jobs", "2")
    assert two[9:] == [(compare[0], {0}), *((a, {i + 9}) for i, a in enumerate(compare[1:]))]
    assert two[0][0][:4] == ("run", "all", "--to-stage", "curation")  # all that run.reuse links: then it starts


def test_a_params_file_without_an_ablation_profile_runs_none(tmp_path):
    params = tmp_path / "mine.yaml"
    params.write_text(f"extends: {SMOKE}\n")
    for jobs in (1, 2):
        assert not [s for s in plan(str(params), jobs) if s.args[:2] == ("run", "ablations")]
    assert [s.args for s in plan(None, 1, ("--run-dir", "runs/x"))][-1] == ("report", "--run-dir", "runs/x")


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _wait_for(path: Path) -> str:
    """Code that waits (at most a minute, so a broken scheduler fails instead of hanging) for ``path`` to exist."""
    return (f"import pathlib, sys, time\nfor _ in range(600):\n    if pathlib.Path({str(path)!r}).exists(): break\n"
            "    time.sleep(0.1)\nelse:\n    sys.exit(9)\n")


def test_steps_without_an_order_between_them_run_side_by_side_and_a_step_waits_for_its_inputs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    steps = [Step(("a",)), Step(("b",)), Step(("c",), frozenset({0, 1}))]
    commands = [
        _python(_wait_for(tmp_path / "b.started") + f"pathlib.Path({str(a)!r}).touch()"),  # needs b running beside it
        _python(f"import pathlib; pathlib.Path({str(tmp_path / 'b.started')!r}).touch()\n" + _wait_for(a)
                + f"pathlib.Path({str(b)!r}).touch()"),
        _python(f"import pathlib, sys; sys.exit(0 if pathlib.Path({str(a)!r}).exists() and "
                f"pathlib.Path({str(b)!r}).exists() else 5)"),
    ]
    assert run_steps(steps, commands) == 0


def test_a_failed_step_starts_nothing_after_it_lets_the_running_ones_end_and_gives_its_status(tmp_path, capsys):
    steps = [Step(("fails",)), Step(("beside",)), Step(("after",), frozenset({0}))]
    commands = [
        _python("import sys; sys.exit(3)"),
        _python(f"import pathlib, time; time.sleep(1); pathlib.Path({str(tmp_path / 'beside')!r}).touch()"),
        _python(f"import pathlib; pathlib.Path({str(tmp_path / 'after')!r}).touch()"),
    ]
    assert run_steps(steps, commands) == 3
    assert (tmp_path / "beside").exists() and not (tmp_path / "after").exists()
    assert "`fails` failed (exit status 3)" in capsys.readouterr().err


def test_the_command_line_prints_the_plan_without_running_it(capsys):
    assert main(["reproduce", "--params", SMOKE, "--jobs", "2", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 9 and lines[3].startswith("3: python -m sgid_utils run ablations")
    assert lines[5].endswith("(after 3, 4)") and lines[8].endswith("(after 5, 6, 7)")
