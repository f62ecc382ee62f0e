"""Helpers for the numbered notebooks: set-up banner, and running them all through papermill."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from sgid_utils.core.fingerprints import check_recorded
from sgid_utils.core.provenance import versions
from sgid_utils.core.registry import notebooks
from sgid_utils.core.rundir import RunDir
from sgid_utils.params.load import Params, load_params, load_run_params, parse_override


def setup(params_file: str, run_dir: str | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """Load and validate params, quiet the progress bars of model loading, print versions and device."""
    quiet_libraries()
    overrides = dict(overrides or {})
    if run_dir:
        overrides["run.dir"] = str(Path(run_dir).resolve())
    params = load_params(params_file, overrides)
    import torch  # here, not at import: `python -m sgid_utils notebooks` only needs papermill

    print(", ".join(f"{name} {version}" for name, version in versions().items()))
    if torch.cuda.is_available():
        print(f"Device: CUDA, {torch.cuda.get_device_name(0)}")
    else:
        print("Device: CPU (no GPU found). Fine for params/smoke.yaml; the full profiles want a CUDA GPU "
              "(on Colab: Runtime > Change runtime type > GPU).")
    print(f"Params: {params.source_file}\nRun directory: {params.run.dir}\nReports: {params.run.reports_dir}")
    return params


def quiet_libraries() -> None:
    """Errors only, and no progress bars, from transformers and diffusers while they load models.

    Through their environment variables, read when they are first imported (by the stage that needs them), so a
    notebook whose stage never loads diffusers does not spend a second and a half importing it here; a library this
    kernel imported already is quieted directly. ``models.loading`` turns off diffusers' loading bars, which no
    variable controls.
    """
    for name, value in {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false",
                        "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error"}.items():
        os.environ.setdefault(name, value)
    if "huggingface_hub" in sys.modules:  # it read the variable when imported
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].logging.disable_progress_bar()
        sys.modules["transformers"].logging.set_verbosity_error()
    if "diffusers" in sys.modules:
        sys.modules["diffusers"].utils.logging.disable_progress_bar()
        sys.modules["diffusers"].utils.logging.set_verbosity_error()


def run_notebooks(params_file: str | None, notebooks_dir: Path, names: list[str] | None = None,
                  kernel: str = "python3", run_dir: str | None = None,
                  sets: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """Execute the numbered notebooks (default: every stage's, in order) with papermill; copies go to the reports.

    ``params_file`` / ``run_dir`` / ``sets`` mean what ``--params`` / ``--run-dir`` / ``--set`` mean on the command
    line, and each notebook receives them; params that disagree with what the run's stages recorded are refused.
    """
    import papermill

    params = load_run_params(params_file, run_dir, sets)
    check_recorded(params, "notebooks")
    run = RunDir.of(params)
    run.notebooks.mkdir(parents=True, exist_ok=True)
    parameters = {"params_file": str(params.source_file), "run_dir": str(params.run.dir) if run_dir else None,
                  "overrides": dict(parse_override(s) for s in sets)}
    done = []
    for name in names or notebooks():
        out = run.executed_notebook(name)
        print(f"[sgid] {name} -> {out}", flush=True)
        papermill.execute_notebook(
            str(Path(notebooks_dir) / f"{name}.ipynb"), str(out), parameters=parameters,
            cwd=str(notebooks_dir), kernel_name=kernel, progress_bar=False,
        )
        done.append(out)
    return done
