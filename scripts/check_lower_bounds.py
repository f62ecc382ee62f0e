"""Does the package run with every direct dependency at its lower bound? (``make check-lower-bounds``)

Builds a throwaway virtual environment with each dependency of pyproject.toml pinned at its
``>=`` bound (torch and torchvision as the Makefile installs them: Colab keeps its own), then runs
the whole smoke chain (``python -m sgid_utils run all --params params/smoke.yaml``) and the unit
tests, and prints pass or fail for each step. Not part of ``make test``: it downloads and installs
a second set of libraries (a few minutes). A lower bound that fails here must be raised.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
MAKEFILE_PINS = ["torch==2.14.1", "torchvision==0.29.1"]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}


def lower_bounds() -> list[str]:
    """``name==bound`` for every dependency with a ``>=`` bound, except torch and torchvision."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = []
    for text in deps:
        req = Requirement(text)
        bound = [s.version for s in req.specifier if s.operator == ">="]
        if req.name in ("torch", "torchvision"):
            continue
        if not bound:
            raise SystemExit(f"{req.name} has no lower bound in pyproject.toml: give it one")
        pins.append(f"{req.name}=={bound[0]}")
    return pins


def step(name: str, command: list[str], env: dict[str, str], log: Path) -> bool:
    began = time.time()
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        ok = subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT).returncode == 0
    print(f"{'PASS' if ok else 'FAIL'}  {name}  ({time.time() - began:.0f} s)", flush=True)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=str(Path(tempfile.gettempdir()) / "sgid-lower-bounds"))
    parser.add_argument("--log", default=str(Path(tempfile.gettempdir()) / "sgid-lower-bounds.log"))
    args = parser.parse_args()
    venv, log = Path(args.venv), Path(args.log)
    log.write_text("")
    py = venv / "bin" / "python"
    pins = lower_bounds()
    print("lower bounds:", " ".join(pins), flush=True)
    env = {**os.environ, **OFFLINE}
    env.pop("PYTHONPATH", None)
    run = tempfile.mkdtemp(prefix="sgid-lower-run-")
    steps = [
        ("create the venv", [sys.executable, "-m", "venv", str(venv)]),
        ("install torch as the Makefile does", [str(py), "-m", "pip", "install", "-q", *MAKEFILE_PINS]),
        ("install every dependency at its lower bound",
         [str(py), "-m", "pip", "install", "-q", *pins, "pytest", "nbformat"]),
        ("install sgid itself (no dependency changes)", [str(py), "-m", "pip", "install", "-q", "--no-deps", "."]),
        ("pip check", [str(py), "-m", "pip", "check"]),
        ("smoke chain: run all --params params/smoke.yaml",
         [str(py), "-m", "sgid_utils", "run", "all", "--params", "params/smoke.yaml", "--run-dir", f"{run}/run"]),
        ("unit tests", [str(py), "-m", "pytest", "-q", "-x", "tests"]),
    ]
    env_run = {**env, "SGID_REPORTS_DIR": f"{run}/reports"}
    for name, command in steps:
        if not step(name, command, env_run, log):
            print(f"see {log}")
            return 1
    versions = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    wanted = {p.split("==")[0].lower() for p in pins}
    print("installed:", " ".join(v for v in versions.split() if v.split("==")[0].lower().replace("_", "-") in wanted))
    print("lower bounds: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
