"""When and on what machine each stage of a run started: a small JSON record per stage, written by the runner.

The report page says where its numbers came from. The machine that builds the page is not
the one that ran the stages (a GPU job, then a laptop), so the runner records the device,
the library versions and the time as each stage starts (``RunDir.provenance``); the page
reads those records and never asks the machine it runs on.
"""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pandas as pd

from sgid_utils.core.files import read_json, reason, set_aside, write_json
from sgid_utils.core.registry import get
from sgid_utils.core.rundir import RunDir
from sgid_utils.params.schema import Params

PACKAGES = ["torch", "torchvision", "transformers", "diffusers", "compel", "timm", "datasets"]


def versions() -> dict[str, str]:
    """Python and the libraries whose versions change the outputs."""
    return {"python": platform.python_version(), **{p: metadata.version(p) for p in PACKAGES}}


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one (Linux), else what ``platform`` knows."""
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> dict[str, str | int]:
    """The hardware this process sees: its GPUs (name and count) or none, and the CPU."""
    import torch  # here: the report page reads these records and needs no torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {"gpu": torch.cuda.get_device_name(0) if gpus else "none", "gpus": gpus,
            "cuda": torch.version.cuda or "none", "cpu": _cpu_name(), "cpu_cores": os.cpu_count() or 0,
            "platform": platform.platform()}


def record_stage(params: Params, stage: str) -> Path:
    """Add this start (UTC time, requested device, machine, versions, shard) to the stage's record.

    Every start is kept, so a stage that ran on a GPU and was later rerun (resumed, or only reread by its
    notebook) on a laptop shows both. Shards starting together may each rewrite the file; a start can then be
    missing from the list, but the file is always whole (atomic write).
    """
    path = RunDir.of(params).provenance(stage)
    starts = _starts(path, set_aside_damaged=True) or []
    starts.append({"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run.device": params.run.device,
                   "shard": os.environ.get("SGID_SHARD") or os.environ.get("RANK", "-"), **machine(), **versions()})
    return write_json(path, {"stage": stage, "starts": starts})


def _starts(path: Path, set_aside_damaged: bool = False) -> list[dict] | None:
    """A stage's recorded starts; None when it has no record or the record is damaged. The record is rebuilt, not
    refused: it describes the machines, and no output depends on it. ``set_aside_damaged``: move a damaged one aside
    (the stage that starts writes it again, beginning with this start)."""
    try:
        record = read_json(path) if path.exists() else None
        return list(record["starts"]) if record is not None else None
    except (ValueError, UnicodeDecodeError, TypeError, KeyError) as exc:
        if set_aside_damaged:
            set_aside(path, reason(exc))
        return None


def record_seconds(params: Params, stage: str, seconds: float) -> Path:
    """Add the seconds the stage's own work took (after the runner's set-up) to this process's latest start: a
    method's measured cost is the sum over the starts of the stages it needs (``reporting.comparison``)."""
    path = RunDir.of(params).provenance(stage)
    record = read_json(path)
    record["starts"][-1]["seconds"] = round(record["starts"][-1].get("seconds", 0.0) + seconds, 3)
    return write_json(path, record)


def stage_seconds(params: Params, stage: str) -> tuple[float, list[str]]:
    """Device seconds a stage took over all its starts, and the machines they ran on (``describe``); (0, []) for a
    stage without a record. A stage folder linked from another run (``core.sharing``) is counted at what it took
    there: the lender's record, found through the link."""
    run = RunDir.of(params)
    path = run.provenance(stage)
    folder = run.stage(stage) if get(stage).folder else None
    if folder is not None and folder.is_symlink():
        lender = Path(os.path.realpath(folder)).parents[len(Path(get(stage).folder).parts) - 1]
        path = RunDir(lender, run.reports).provenance(stage)
    starts = _starts(path)
    if starts is None:
        return 0.0, []
    return (float(sum(s.get("seconds", 0.0) for s in starts)),
            list(dict.fromkeys(describe(s) for s in starts if s.get("seconds"))))


def describe(start: dict) -> str:
    """One start's machine in words: its GPUs, or the CPU when there were none."""
    if start["gpus"]:
        return f"{start['gpus']} × {start['gpu']} (CUDA {start['cuda']})"
    return f"CPU only ({start['cpu']}, {start['cpu_cores']} cores)"


def load_provenance(params: Params, stages: list[str]) -> pd.DataFrame:
    """One row per stage that left a record, in the order given: its first and last start, how many starts,
    and each distinct machine and torch version among them (empty for a run made before records existed)."""
    run = RunDir.of(params)
    rows = []
    for stage in stages:
        starts = _starts(run.provenance(stage))
        if not starts:  # none yet (a run made before records existed), or damaged (its stage's next start rebuilds it)
            continue
        rows.append({"stage": stage, "first started": starts[0]["started"], "last started": starts[-1]["started"],
                     "starts": len(starts), "machine": " / ".join(dict.fromkeys(describe(s) for s in starts)),
                     "torch": " / ".join(dict.fromkeys(s["torch"] for s in starts))})
    return pd.DataFrame(rows)
