#!/usr/bin/env bash
# Run bench/gpu_report.py on a GPU machine without this project's venv and without internet (bench/README.md).
#
#   bash bench/gpu_setup.sh --out "$OUT/gpu_report.md"          # any gpu_report.py options pass through
#
# Uses the machine's python3 (its torch, transformers, timm, ...). Libraries it lacks travel as wheels in .whl/
# (installed here with --no-index into /tmp/site); sgid_utils is imported from this checkout (PYTHONPATH), not
# installed. Before measuring anything it checks that every library the report imports is importable, and names
# the wheels to carry (the versions constraints.txt pins) when one is not.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false

"$PYTHON" - <<'EOF'
import importlib, re, sys
from importlib import metadata

# import name -> distribution; what gpu_report.py's imports reach (sgid_utils, bench.py) beyond the standard library
NEEDED = {"torch": "torch", "torchvision": "torchvision", "diffusers": "diffusers", "transformers": "transformers",
          "timm": "timm", "compel": "compel", "pydantic": "pydantic", "pydantic_core": "pydantic-core",
          "annotated_types": "annotated-types", "typing_inspection": "typing-inspection", "datasets": "datasets",
          "dill": "dill", "multiprocess": "multiprocess", "yaml": "PyYAML", "pandas": "pandas", "pyarrow": "pyarrow",
          "cv2": "opencv-python-headless", "PIL": "pillow", "tabulate": "tabulate", "matplotlib": "matplotlib",
          "safetensors": "safetensors", "huggingface_hub": "huggingface-hub", "tqdm": "tqdm",
          "accelerate": "accelerate"}
pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", open("constraints.txt").read(), re.M))
missing = []
for module, dist in NEEDED.items():
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any failure to import is a missing or broken library here
        missing.append(f"{dist}=={pins.get(dist, '?')}  ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
have = ", ".join(f"{d} {metadata.version(d)}" for d in ("torch", "diffusers", "transformers", "timm", "compel")
                 if importlib.util.find_spec(d.replace("-", "_")))
print(f"[gpu-setup] python {sys.version.split()[0]}; {have}", flush=True)
if missing:
    sys.exit("[gpu-setup] missing libraries; carry these wheels in .whl/ (bench/README.md says how):\n  "
             + "\n  ".join(missing))
EOF

exec "$PYTHON" bench/gpu_report.py "$@"
