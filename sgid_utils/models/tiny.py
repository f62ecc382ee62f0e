"""The offline smoke profile's assets: the tiny models (``builders``) and a small image folder.

The data set is an image folder of three classes whose images have varied
sizes, some below the upscaling threshold, so every code path runs.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from sgid_utils.params.schema import Params


def _smoke_image(rng: np.random.Generator, label: int, size: tuple[int, int]) -> Image.Image:
    """A photo-like synthetic image: a noisy gradient background and a class-specific shape."""
    w, h = size
    base = rng.uniform(60, 200, size=3)
    grad = np.linspace(0, 1, h)[:, None, None] * rng.uniform(-60, 60, size=3)
    arr = np.clip(base + grad + rng.normal(0, 12, size=(h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    colour = [(200, 40, 40), (40, 160, 60), (60, 60, 210), (200, 180, 40)][label % 4]
    r = int(min(w, h) * rng.uniform(0.2, 0.35))
    cx, cy = int(rng.uniform(r, w - r)), int(rng.uniform(r, h - r))
    if label % 3 == 0:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif label % 3 == 1:
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return img


def build_smoke_dataset(params: Params) -> None:
    """Write dataset.path/<class>/*.jpg (and dataset.test_path) unless already there."""
    root = Path(params.dataset.path)
    marker = root / ".complete"
    if marker.exists():
        return
    rng = np.random.default_rng(params.run.seed)
    n = params.smoke.images_per_class
    threshold = params.curation.upscale_threshold
    for split_root, count in ((root, n), (params.dataset.test_path, max(2, n // 2))):
        if split_root is None:
            continue
        for label, cls in enumerate(params.smoke.classes):
            folder = Path(split_root) / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                # Alternate small sources (below the upscaling threshold) and larger ones.
                short = (int(rng.integers(threshold // 2, threshold)) if i % 2 == 0
                         else int(rng.integers(threshold, threshold * 2)))
                long = int(short * rng.uniform(1.0, 1.5))
                size = (long, short) if i % 3 else (short, long)
                _smoke_image(rng, label, size).save(folder / f"{cls.replace(' ', '_')}_{i:03d}.jpg", quality=92)
    marker.write_text("built by sgid_utils.models.tiny\n")


def save_tiny_models(params: Params) -> None:
    """Write each tiny model to the folder its models.* entry names, unless it is already there.

    The ControlNet is optional: left as a hub id it is skipped unless the generator needs it.
    """
    for family in type(params.models).model_fields:  # each models.* entry has a tiny model
        ref = getattr(params.models, family).removeprefix("local-dir:")
        folder = Path(ref)
        if family == "controlnet" and not folder.is_absolute() and params.generation.generator != "controlnet":
            continue
        if not folder.is_absolute():
            raise ValueError(f"smoke.build_models needs models.{family} to be a folder path (./ or ../), got '{ref}'")
        if (folder / ".complete").exists():
            continue
        from sgid_utils.models import builders  # imported only to build: diffusers and timm take seconds

        torch.manual_seed(0)  # each model's weights independent of which others were built
        builders.save_tiny(family, folder)
        (folder / ".complete").write_text("built by sgid_utils.models.builders\n")
    models = {b.name: b.model for b in params.training.backbones}
    for name, real in params.smoke.tiny_backbones.items():
        if not models[name].startswith("local-dir:"):  # the schema checked that the name is a listed backbone
            raise ValueError(f"smoke.tiny_backbones names '{name}', whose training.backbones model must be "
                             "local-dir:FOLDER")
        folder = Path(models[name].removeprefix("local-dir:"))
        if not (folder / ".complete").exists():
            from sgid_utils.models import builders

            torch.manual_seed(0)
            builders.save_tiny_classifier(real, folder)
            (folder / ".complete").write_text(f"built by sgid_utils.models.builders: tiny {real}\n")


def ensure_smoke_assets(params: Params, lock: Path) -> None:
    """Build what the smoke section asks for: the tiny models and the image folder.

    Under ``lock`` (the run directory's ``RunDir.assets_lock``): processes of a sharded or ``accelerate launch`` run
    start together, and the first builds while the others wait and then find the assets complete.
    """
    if not (params.smoke.build_models or params.smoke.build_dataset):
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if params.smoke.build_models:
            save_tiny_models(params)
        if params.smoke.build_dataset:
            build_smoke_dataset(params)
