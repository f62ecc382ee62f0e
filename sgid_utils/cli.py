"""``python -m sgid_utils run STAGE --params FILE [--run-dir DIR] [--set key.path=value ...]``.

Runs one stage with exactly the functions the notebooks call: what a cluster job,
``accelerate launch`` or a test that kills and resumes a stage uses.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .params import ParamsError, load_params, parse_override


def _stages() -> dict[str, Callable[[Any], Any]]:
    from .ablations import run_ablations
    from .captioning import run_captions
    from .curation import run_curation
    from .generation import run_generation
    from .pipeline import ensure_inputs
    from .results import run_results
    from .similarity import run_similarity
    from .training import run_training

    return {
        "data": ensure_inputs,
        "captions": run_captions,
        "similarity": run_similarity,
        "generate": run_generation,
        "curate": run_curation,
        "train": run_training,
        "results": run_results,
        "ablations": run_ablations,
    }


STAGES = ["data", "captions", "similarity", "generate", "curate", "train", "results"]
EXTRA = ["ablations"]  # not part of 'all': a separate profile (params/*_ablations.yaml)


def _shard_arg(text: str) -> str:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/2, got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"expected 0 <= I < N, got {text!r}")
    return text


def _run_stage(name: str, stage: Callable[[Any], Any], params: Any) -> None:
    """Run a stage; under a distributed launch, wait for every process and let the main one finish the table."""
    result = stage(params)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not os.environ.get("SGID_SHARD"):
        from accelerate import PartialState

        state = PartialState()
        state.wait_for_everyone()
        if result is None and state.is_main_process:
            result = stage(params)  # every item is done now: this only assembles the stage's table
        state.wait_for_everyone()
    elif result is None:
        print(f"[sgid] stage {name}: this shard's items are done; other shards are still working. The last shard to "
              "finish writes the stage's table (or rerun the stage without --shard once all are done).", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sgid_utils", description="Run SGID pipeline stages.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one stage, or 'all' in order")
    run.add_argument("stage", choices=STAGES + EXTRA + ["all"])
    run.add_argument("--params", required=True, help="params YAML file (params/pets.yaml, params/smoke.yaml, ...)")
    run.add_argument("--run-dir", help="override run.dir (e.g. a Google Drive folder)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a params key, e.g. generation.strength=0.3")
    run.add_argument("--shard", metavar="I/N", type=_shard_arg,
                     help="run only this process's share, e.g. 0/2 (accelerate launch / torchrun set it themselves)")
    nb = sub.add_parser("notebooks", help="execute the numbered notebooks in order through papermill")
    nb.add_argument("--params", required=True)
    nb.add_argument("--only", nargs="*", help="notebook names, e.g. 06_results (default: all seven)")
    nb.add_argument("--notebooks-dir", default="notebooks", help="folder holding the numbered notebooks")
    args = parser.parse_args(argv)

    from .data import DatasetError
    from .io import StaleOutputsError
    from .models import ModelLoadError
    from .pipeline import StageError

    if getattr(args, "shard", None):
        os.environ["SGID_SHARD"] = args.shard
    try:
        overrides = dict(parse_override(s) for s in getattr(args, "set", []))
        if getattr(args, "run_dir", None):
            overrides["run.dir"] = str(Path(args.run_dir).resolve())
        if args.command == "notebooks":
            from .notebook import run_notebooks

            run_notebooks(args.params, Path(args.notebooks_dir).resolve(), args.only)
            return 0
        params = load_params(args.params, overrides)
        stages = _stages()
        for name in STAGES if args.stage == "all" else [args.stage]:
            print(f"[sgid] stage {name}: run dir {params.run.dir}", file=sys.stderr)
            _run_stage(name, stages[name], params)
    except (ParamsError, ModelLoadError, DatasetError, StaleOutputsError, StageError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS):
            print(f"error: cannot write {exc.filename or 'the run directory'}: {exc.strerror}. Files already "
                  "written are complete (writes are atomic); free space or fix permissions and rerun to resume.", file=sys.stderr)
            return 2
        raise
    return 0
