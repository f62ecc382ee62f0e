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
import torch

from .io import read_json, write_json
from .rundir import RunDir
from .schema import Params

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
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {"gpu": torch.cuda.get_device_name(0) if gpus else "none", "gpus": gpus, "cuda": torch.version.cuda or "none",
            "cpu": _cpu_name(), "cpu_cores": os.cpu_count() or 0, "platform": platform.platform()}


def record_stage(params: Params, stage: str) -> Path:
    """Write this stage's start record (time in UTC, requested device, machine, versions, shard)."""
    record = {"stage": stage, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "run.device": params.run.device, "shard": os.environ.get("SGID_SHARD") or os.environ.get("RANK", "-"),
              **machine(), **versions()}
    return write_json(RunDir.of(params).provenance(stage), record)


def load_provenance(params: Params, stages: list[str]) -> pd.DataFrame:
    """One row per stage that left a record, in the order given (empty for a run made before records existed)."""
    run = RunDir.of(params)
    rows = [read_json(run.provenance(s)) for s in stages if run.provenance(s).exists()]
    return pd.DataFrame(rows)
