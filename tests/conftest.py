"""Shared fixtures: tiny real-class models and a small image folder, built once per test session.

Nothing reaches a model hub: the HF variables below make any hub access fail at once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                  HF_HUB_DISABLE_PROGRESS_BARS="1")
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="sgid-hf-home-")
os.environ.pop("SGID_RUN_DIR", None)
os.environ.pop("SGID_REPORTS_DIR", None)

REPO = Path(__file__).resolve().parent.parent


def write_params(folder: Path, models: Path, data: Path, **sections) -> Path:
    """A small params file for the tiny models: 3 classes x 4 training images, 2 seeds, 1 epoch."""
    doc = {
        "run": {"name": "test", "dir": str(folder / "run"), "reports_dir": str(folder / "reports"), "seed": 0,
                "device": "cpu"},
        "dataset": {"source": "imagefolder", "path": str(data / "train"), "test_path": str(data / "test")},
        "models": {"captioner": str(models / "blip"), "clip": str(models / "clip"),
                   "diffusion": str(models / "sd"), "classifier": f"local-dir:{models / 'vit'}",
                   "controlnet": str(models / "controlnet")},
        "captioning": {"num_nucleus": 3, "num_beam": 2, "num_beams": 2, "max_new_tokens": 8, "batch_size": 4},
        "generation": {"num_inference_steps": 10, "num_candidates": 2, "max_side": 128},
        "curation": {"upscale_threshold": 48, "error_analysis_sample": 1},
        "filters": {"apply": ["source_similarity", "label", "detector"], "class_noun": "pet", "detector_folds": 3},
        "training": {"seeds": [0, 1], "epochs": 1, "batch_size": 4, "num_workers": 0,
                     "methods": ["baseline", "cutmix", "randaugment", "sgid", "sgid_filtered", "real_guidance",
                                 "da_fusion", "da_fusion_recipe"],
                     "sgid_proportions": [0.5, 1.0], "filtered_proportions": [1.0]},
        "real_guidance": {"resolution": 64, "num_inference_steps": 10},
        "da_fusion": {"inversion_steps": 4, "inversion_batch_size": 2, "resolution": 64, "num_synthetic": 2,
                      "num_inference_steps": 10},
        "smoke": {"build_models": True, "build_dataset": True, "images_per_class": 4},
    }
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def copy_stages(source, target, *stages: str) -> None:
    """Copy finished stage folders from one run into another (the upstream of the stage a test runs)."""
    from sgid_utils.core.rundir import RunDir

    for stage in stages:
        shutil.copytree(RunDir.of(source).stage(stage), RunDir.of(target).stage(stage))


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> tuple[Path, Path]:
    """(models folder, data folder), built once."""
    from sgid_utils.core.rundir import RunDir
    from sgid_utils.models.tiny import ensure_smoke_assets
    from sgid_utils.params.load import load_params

    root = tmp_path_factory.mktemp("assets")
    params = load_params(write_params(root / "p", root / "models", root / "data"))
    ensure_smoke_assets(params, RunDir.of(params).assets_lock)
    return root / "models", root / "data"


@pytest.fixture
def make_params(assets, tmp_path):
    """Factory: params for a fresh run directory over the shared tiny assets, with section overrides."""
    from sgid_utils.params.load import load_params

    def make(name: str = "p", **sections):
        return load_params(write_params(tmp_path / name, *assets, **sections))

    return make


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: the tiny models' ops are too small to gain from threads (on a busy 2-CPU machine
    2 threads ran the batched tests 4x slower). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory) -> Path:
    """Tiny ResNet-50 and CLIP ViT-B/16 (timm's own architectures, random weights), saved as local-dir folders."""
    import torch

    from sgid_utils.models import builders

    root = tmp_path_factory.mktemp("backbones")
    for folder, name in (("resnet50", "resnet50"), ("clip-vit", "vit_base_patch16_clip_224.laion2b")):
        torch.manual_seed(0)
        builders.save_tiny_classifier(name, root / folder)
    return root


def resnet_scratch_entry(tiny_backbones: Path) -> dict:
    """A training.backbones entry: the tiny ResNet from scratch with the ResNet-50 recipe's shape (SGD, warm-up,
    cosine)."""
    return {"name": "resnet", "label": "ResNet (scratch)", "model": f"local-dir:{tiny_backbones / 'resnet50'}",
            "pretrained": False, "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "schedule": "cosine",
            "warmup_epochs": 1}


# The batched-generation tests' shared settings (img2img in test_batched, the ControlNet in test_controlnet).
STRENGTH, STEPS = 0.3, 10
GUIDANCE = [0.8, 1.2, 7.5]  # no CFG, SGID's typical f(s*), SD's usual scale
PROMPTS = ["(a dog on grass)0.9. A picture of (pug)1.5", "(a red flower)0.9. A picture of (rose)1.5",
           "(two kittens)0.9. A picture of (cat)1.5"]
ATOL = 1e-4  # batched against per-image, on [0, 1] float images; observed differences are ~1e-6


def seeds_for(i: int, k: int = 2) -> list[int]:
    """Candidate seeds of a test source, derived as the generation stage derives them."""
    from sgid_utils.core.seeding import derive_seed

    return [derive_seed(0, f"img{i}", j, purpose="generate") for j in range(k)]


@pytest.fixture(scope="module")
def prompts(pipe):
    """PROMPTS as compel embeddings from the requesting module's own ``pipe`` fixture."""
    from sgid_utils.augment.generation import PromptEncoder

    encode = PromptEncoder(pipe)
    return [encode(p, "") for p in PROMPTS]


@pytest.fixture(scope="session")
def pipeline_run(assets, tmp_path_factory):
    """The whole chain once (every registered stage, in order) on the tiny assets; tests read its files."""
    from sgid_utils.core.runner import run_all
    from sgid_utils.params.load import load_params

    params = load_params(write_params(tmp_path_factory.mktemp("pipeline"), *assets))
    run_all(params)
    return params


# The longest tests (processes killed and resumed, a two-process accelerate launch, the GPU report's tiny run, the
# ablations run twice) go first, so that on two xdist workers (`make test`) none of them starts last and leaves one
# core idle.
SLOW_FIRST = ("test_resume.py", "test_runner.py::test_accelerate", "test_gpu_report.py", "one_or_two_processes")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not any(slow in item.nodeid for slow in SLOW_FIRST))
