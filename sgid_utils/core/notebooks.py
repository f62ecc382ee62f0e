"""Helpers for the numbered notebooks: set-up banner, and running them all through papermill."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sgid_utils.config.load import Params, load_params
from sgid_utils.core.provenance import versions
from sgid_utils.core.registry import notebooks
from sgid_utils.core.rundir import RunDir


def setup(params_file: str, run_dir: str | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """Load and validate params, quiet the progress bars of model loading, print versions and device."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    overrides = dict(overrides or {})
    if run_dir:
        overrides["run.dir"] = str(Path(run_dir).resolve())
    params = load_params(params_file, overrides)
    import torch  # here, not at import: `python -m sgid_utils notebooks` only needs papermill
    import transformers
    from diffusers.utils import logging as diffusers_logging

    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    print(", ".join(f"{name} {version}" for name, version in versions().items()))
    if torch.cuda.is_available():
        print(f"Device: CUDA, {torch.cuda.get_device_name(0)}")
    else:
        print("Device: CPU (no GPU found). Fine for params/smoke.yaml; the full profiles want a CUDA GPU "
              "(on Colab: Runtime > Change runtime type > GPU).")
    print(f"Params: {params.source_file}\nRun directory: {params.run.dir}\nReports: {params.run.reports_dir}")
    return params


def run_notebooks(params_file: str, notebooks_dir: Path, names: list[str] | None = None,
                  kernel: str = "python3") -> list[Path]:
    """Execute the numbered notebooks (default: every stage's, in order) with papermill; copies go to the reports."""
    import papermill

    run = RunDir.of(load_params(params_file))
    run.notebooks.mkdir(parents=True, exist_ok=True)
    done = []
    for name in names or notebooks():
        out = run.executed_notebook(name)
        print(f"[sgid] {name} -> {out}", flush=True)
        papermill.execute_notebook(
            str(Path(notebooks_dir) / f"{name}.ipynb"), str(out),
            parameters={"params_file": str(Path(params_file).resolve())},
            cwd=str(notebooks_dir), kernel_name=kernel, progress_bar=False,
        )
        done.append(out)
    return done
