"""``python -m sgid_utils run STAGE --params FILE [--run-dir DIR] [--set key.path=value ...] [--shard I/N]``.

``run all`` takes ``--from-stage``/``--to-stage``; ``run ablations`` takes ``--jobs N``. Every command that works on
a run (``run``, ``notebooks``, ``report``, ``export``, ``preflight``) takes ``--params`` / ``--run-dir`` / ``--set``
with one meaning; ``--run-dir`` alone uses the params the run recorded. ``notebooks``, ``report`` and ``export``
refuse params that disagree with what the run's stages recorded (``core.fingerprints.check_recorded``).

Runs stages through the same runner the notebooks call: what a cluster job,
``accelerate launch`` or a test that kills and resumes a stage uses. Also
``notebooks`` (papermill, in stage order), ``stages`` (the registry, for the Makefile),
``report`` (the run's HTML page), ``export`` (the curated set as a Hugging Face image folder) and
``preflight`` (checks, a canary and the projected wall-clock and disk; exit status 1 when a
check fails, 2 for an unusable params file, like every command).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

# Only the registry and the error types at import: `stages` (which the Makefile asks on every call) stays instant,
# and each command imports the libraries it needs (torch, diffusers, ...) when it runs.
from sgid_utils.core.registry import NAMES, RENAMED_STAGES, STAGES, between, current, notebooks
from sgid_utils.errors import USER_ERRORS


def _shard_arg(text: str) -> str:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/2, got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"expected 0 <= I < N, got {text!r}")
    return text


def _stage_arg(text: str) -> str:
    """A stage named on the command line under today's name: an old one (``run generate``, ``--to-stage train``)
    still runs, with one deprecation line (``registry.current``)."""
    return current(text) if text in RENAMED_STAGES else text


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _check_run_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Options that belong to one kind of ``run`` say so, instead of being ignored."""
    if (args.from_stage or args.to_stage) and args.stage != "all":
        parser.error(f"--from-stage and --to-stage go with 'run all', not 'run {args.stage}'")
    if args.from_stage and args.to_stage and NAMES.index(args.from_stage) > NAMES.index(args.to_stage):
        parser.error(f"--from-stage {args.from_stage} comes after --to-stage {args.to_stage}; the stages run in the "
                     f"order {', '.join(NAMES)}")
    if args.jobs != 1 and args.stage != "ablations":
        parser.error(f"--jobs goes with 'run ablations', not 'run {args.stage}' (shard a stage with --shard)")


def _run_options() -> argparse.ArgumentParser:
    """The options every command that works on a run takes, with one meaning (``params.load.load_run_params``)."""
    common = argparse.ArgumentParser(add_help=False)
    opts = common.add_argument_group("the run (the same for every command)")
    opts.add_argument("--params", help="params YAML file (params/pets.yaml, params/smoke.yaml, ...); optional with "
                                       "--run-dir, which then uses the params that run recorded (<run>/params.yaml)")
    opts.add_argument("--run-dir", help="the run directory (replaces run.dir; e.g. a Google Drive folder)")
    opts.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a params key, e.g. generation.strength=0.3 (repeatable)")
    return common


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sgid_utils", description="Run SGID pipeline stages.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = [_run_options()]
    run = sub.add_parser("run", parents=common,
                         help="run one stage, 'all' in order, or 'ablations' (an ablation profile's variants)")
    run.add_argument("stage", type=_stage_arg, choices=NAMES + ["ablations", "all"])
    run.add_argument("--shard", metavar="I/N", type=_shard_arg,
                     help="run only this process's share, e.g. 0/2 (accelerate launch / torchrun set it themselves)")
    run.add_argument("--from-stage", type=_stage_arg, choices=NAMES, help="with 'all': start with this stage")
    run.add_argument("--to-stage", type=_stage_arg, choices=NAMES, help="with 'all': end with this stage")
    run.add_argument("--jobs", type=_positive, default=1, metavar="N",
                     help="with 'ablations': run the variants on N processes (on a CPU, up to its cores; on one "
                          "GPU, 1: each process loads its own models)")
    nb = sub.add_parser("notebooks", parents=common,
                        help="execute the numbered notebooks in stage order through papermill")
    nb.add_argument("--only", nargs="*", help="notebook names, e.g. 06_results (default: all of them)")
    nb.add_argument("--from-stage", type=_stage_arg, choices=NAMES, help="start with the notebook of this stage")
    nb.add_argument("--to-stage", type=_stage_arg, choices=NAMES, help="end with the notebook of this stage")
    nb.add_argument("--notebooks-dir", default="notebooks", help="folder holding the numbered notebooks")
    sub.add_parser("report", parents=common,
                   help="write reports/<run>/index.html from the run's tables, figures and notebooks")
    exp = sub.add_parser("export", parents=common,
                         help="write the curated generated set as a Hugging Face `datasets` image folder")
    exp.add_argument("--to", required=True, type=Path,
                     help="a new (or empty) folder: DIR/train/<class>/*.png, metadata.csv, README.md")
    st = sub.add_parser("stages", help="list the registered stages in order (with --notebooks: their notebooks)")
    st.add_argument("--notebooks", action="store_true", help="print the notebook of each stage, once each, in order")
    st.add_argument("--files", action="store_true", help="print each stage's input and output files and their paths")
    st.add_argument("--from-stage", type=_stage_arg, choices=NAMES)
    st.add_argument("--to-stage", type=_stage_arg, choices=NAMES)
    pf = sub.add_parser("preflight", parents=common,
                        help="check ids, versions, device and disk, run a tiny canary, project time and disk")
    pf.add_argument("--no-canary", action="store_true", help="only the checks that start nothing (no stage, no model)")
    rep = sub.add_parser("reproduce", parents=common,
                         help="one data set's stages, notebooks, ablation profile and page, in order (make reproduce)")
    rep.add_argument("--jobs", type=_positive, default=1, metavar="N",
                     help="N > 1: the notebooks beside the training stage and N ablation variants at a time beside "
                          "the training notebook (on a CPU with cores to spare; on one GPU, 1)")
    rep.add_argument("--compare", metavar="FILE",
                     help="also run this methods profile (params/*_methods.yaml, whose run.reuse is this run) as "
                          "`make compare` does, beside this run's steps once its stages up to curation are done")
    rep.add_argument("--dry-run", action="store_true", help="print the commands and what each waits for; run none")
    ch = sub.add_parser("code-hashes", help="check the stages' method code against sgid_utils/core/code_hashes.json")
    ch.add_argument("--accept", metavar="REASON",
                    help="record the code as it is now: after bumping CODE_VERSIONS where outputs change, or saying "
                         "why they do not")
    return parser


def _preflight(params, canary: bool) -> int:
    from sgid_utils.preflight.command import preflight

    report = preflight(params, canary=canary)
    print(report.markdown(), end="")
    return 0 if report.ok else 1


def _reproduce(args: argparse.Namespace) -> int:
    from sgid_utils.reproduce import plan, run_steps

    options = (*(("--run-dir", args.run_dir) if args.run_dir else ()), *(o for kv in args.set for o in ("--set", kv)))
    steps = plan(args.params, args.jobs, options, args.compare)
    if args.dry_run:
        for i, step in enumerate(steps):
            print(f"{i}: python -m sgid_utils {' '.join(step.args)}"
                  + (f"  (after {', '.join(map(str, sorted(step.after)))})" if step.after else ""))
        return 0
    return run_steps(steps)


def _code_hashes(reason: str | None) -> int:
    from sgid_utils.core import code_hashes

    if reason is None:
        differences = code_hashes.changed()
        print(code_hashes.stale_message(differences) if differences else "[sgid] code hashes match the method code")
        return 1 if differences else 0
    try:
        kinds = code_hashes.accept(reason)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for stage, kind in kinds.items():
        print(f"[sgid] {stage}: {kind}")
    print(f"[sgid] {code_hashes.HASHES_FILE} written" if kinds else "[sgid] code hashes already match")
    return 0


def _list_stages(args: argparse.Namespace) -> None:
    if args.notebooks:
        print("\n".join(notebooks(args.from_stage, args.to_stage)))
        return
    if args.files:
        from sgid_utils.core.catalog import files_table

        print(files_table(), end="")
        return
    for stage in STAGES:
        print(f"{stage.name:<13} {stage.notebook:<28} upstream: {', '.join(stage.upstream) or '-'}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        _check_run_args(parser, args)
    if args.command == "stages":
        _list_stages(args)
        return 0
    if args.command == "code-hashes":
        return _code_hashes(args.accept)
    if args.command == "reproduce":
        return _reproduce(args)
    if getattr(args, "shard", None):
        os.environ["SGID_SHARD"] = args.shard
    try:
        if args.command == "notebooks":
            from sgid_utils.core.notebooks import run_notebooks

            names = args.only or notebooks(args.from_stage, args.to_stage)
            run_notebooks(args.params, Path(args.notebooks_dir).resolve(), names, run_dir=args.run_dir,
                          sets=args.set)
            return 0
        from sgid_utils.params.load import load_run_params

        params = load_run_params(args.params, args.run_dir, args.set)
        if args.command == "preflight":
            return _preflight(params, not args.no_canary)
        if args.command == "report":
            from sgid_utils.reporting.page import build_report

            print(f"[sgid] report: {build_report(params)}")
        elif args.command == "export":
            from sgid_utils.reporting.export import export_curated

            print(f"[sgid] curated set exported to {export_curated(params, args.to)}")
        elif args.stage == "ablations":
            from sgid_utils.stages import ablations

            ablations.run(params, args.jobs)
        else:
            from sgid_utils.core.runner import run_all

            chosen = [s.name for s in between(args.from_stage or NAMES[0], args.to_stage or NAMES[-1])]
            run_all(params, chosen if args.stage == "all" else [args.stage])
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS):
            print(f"error: cannot write {exc.filename or 'the run directory'}: {exc.strerror}. Files already "
                  "written are complete (writes are atomic); free space or fix permissions and rerun to resume.",
                  file=sys.stderr)
            return 2
        raise
    return 0
