"""The generation stages themselves (``generation``, ``upscaling``) timed end to end: this tree against another one.

    python bench/stage_levers.py                          # this tree only, tiny models on the CPU
    python bench/stage_levers.py --before /tmp/base       # and a checkout of an older sgid_utils, alternating

bench/bench.py times the denoising loop alone; this times what a user waits for: the stage, with its source
loading and upscaling, prompt encoding, the loop, the resize back to the source's size, the PNG writes and the item
records. It builds tiny random models and a folder of Pets-like mixed sizes (short sides 256-1023, a share below the
512 px upscale threshold: ``sgid_utils.models.tiny``), runs the upstream stages once, then each tree's stage in a fresh
run directory (a subprocess with that tree first on PYTHONPATH), timing ``run_stage`` only (not imports). Trees
alternate, ``--repeats`` times; the best time counts. The tiny UNet costs little, so on the CPU the stage's own work
(loading, resizing, PNG encoding) is most of what is timed: the levers that keep a GPU busy during that work show
here as a CPU gain, and the GPU gain is for a GPU run to measure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
STAGES = ("generation", "upscaling")
# A tree from before the stage renames knows these stages by their old names (``registry.RENAMED_STAGES``).
TIMED = """
import json, sys, time
from sgid_utils.params.load import load_params
from sgid_utils.core.registry import NAMES
from sgid_utils.core.runner import run_stage
params = load_params(sys.argv[1])
stage = sys.argv[2] if sys.argv[2] in NAMES else {"generation": "generate", "upscaling": "upscale"}[sys.argv[2]]
start = time.perf_counter()
table = run_stage(stage, params)
print(json.dumps({"seconds": time.perf_counter() - start, "candidates": len(table)}))
"""


def write_params(folder: Path, steps: int, per_class: int, extra: dict) -> Path:
    """A params file over shared tiny models and images in ``folder``; its run directory is folder/run."""
    doc = {
        "run": {"name": "bench", "dir": str(folder / "run"), "reports_dir": str(folder / "reports"), "seed": 0,
                "device": "cpu"},
        "dataset": {"source": "imagefolder", "path": str(folder.parent / "data" / "train"),
                    "test_path": str(folder.parent / "data" / "test")},
        "models": {name: str(folder.parent / "models" / sub) for name, sub in
                   (("captioner", "blip"), ("clip", "clip"), ("diffusion", "sd"), ("controlnet", "controlnet"))}
        | {"classifier": f"local-dir:{folder.parent / 'models' / 'vit'}"},
        "captioning": {"num_nucleus": 2, "num_beam": 2, "num_beams": 2, "max_new_tokens": 6, "batch_size": 8},
        "generation": {"num_inference_steps": steps, "num_candidates": 3} | extra,
        "curation": {"upscale_threshold": 512},
        "smoke": {"build_models": True, "build_dataset": True, "images_per_class": per_class},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def upstream_folders(run: Path) -> list[Path]:
    """The prepared run's stage folders (data, captioning, similarity), which every timed run starts from."""
    return [d for d in run.iterdir() if d.is_dir() and d.name.split("_", 1)[-1] in ("data", "captioning", "similarity")]


def timed_stage(tree: Path, params: Path, stage: str, threads: int) -> dict:
    env = os.environ | {"PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
                        "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-c", TIMED, str(params), stage], env=env, check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1]) | {"log": out.stderr}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, default=None, help="another tree holding sgid_utils/ (e.g. a git "
                        "archive of an older commit)")
    parser.add_argument("--images-per-class", type=int, default=8, help="training images per class (3 classes)")
    parser.add_argument("--steps", type=int, default=10, help="num_inference_steps (x strength 0.3 run)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the stage processes")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="generation.* settings for this tree's runs, e.g. png_compress_level=6")
    args = parser.parse_args()
    extra = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    trees = {"this tree": REPO} | ({"before": args.before.resolve()} if args.before else {})
    with tempfile.TemporaryDirectory(prefix="sgid-stage-bench-") as tmp:
        root = Path(tmp)
        prep = write_params(root / "prep", args.steps, args.images_per_class, {})
        for stage in ("captioning", "similarity"):
            timed_stage(REPO, prep, stage, args.threads)
        best: dict[tuple[str, str], dict] = {}
        for repeat in range(args.repeats):
            for name, tree in trees.items():
                for stage in STAGES:
                    folder = root / f"{name.replace(' ', '_')}-{stage}-{repeat}"
                    params = write_params(folder, args.steps, args.images_per_class,
                                          extra if tree == REPO else {})
                    for upstream in upstream_folders(root / "prep" / "run"):
                        shutil.copytree(upstream, folder / "run" / upstream.name)
                    result = timed_stage(tree, params, stage, args.threads)
                    if (name, stage) not in best or result["seconds"] < best[name, stage]["seconds"]:
                        best[name, stage] = result
    print(f"\n== generation stages, tiny models, CPU ({args.threads} thread(s)), {3 * args.images_per_class} training "
          f"images, k = 3, {args.steps} steps at strength 0.3; best of {args.repeats}\n")
    print("| stage | tree | candidates | seconds | candidates/s |\n|---|---|---|---|---|")
    for (name, stage), r in sorted(best.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"| {stage} | {name} | {r['candidates']} | {r['seconds']:.2f} | {r['candidates'] / r['seconds']:.2f} |")
    for stage in STAGES:
        if ("before", stage) in best:
            print(f"{stage}: {best['before', stage]['seconds'] / best['this tree', stage]['seconds']:.2f}x")


if __name__ == "__main__":
    main()
