"""How long and how much disk a full run takes, from a canary's measurements and the run's item counts.

Kept apart from ``preflight`` so the arithmetic is plain functions a unit test can check by hand:
per-stage seconds = measured seconds per item x the full run's items; disk = generated PNGs
(measured bytes per pixel x pixels x k) + one training checkpoint (parameters x 4 bytes x the
optimizer factor) + the smaller files (measured bytes per training image).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from sgid_utils.augment.generation import raw_pass
from sgid_utils.core import catalog
from sgid_utils.core.files import read_table
from sgid_utils.core.fingerprints import fingerprint
from sgid_utils.core.registry import RECORDED_UNITS, STAGES, get
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.sharing import SHARED_STAGES, lenders
from sgid_utils.params.backbones import GENERATIVE, backbones, configs
from sgid_utils.params.methods import AUGMENTATIONS, METHOD_STAGES, idle_stages, made_per_real
from sgid_utils.params.schema import Params

# Official split sizes (images), used when the data stage has not run yet. Pets: the trainval/test lists of
# Parkhi et al. 2012 as served by timm/oxford-iiit-pet; Flowers102: Nilsback & Zisserman 2008, 10 per class in
# train and in validation, the rest in test.
SPLIT_SIZES = {"pets": {"train": 3680, "test": 3669}, "flowers": {"train": 1020, "validation": 1020, "test": 6149}}
CLASS_COUNTS = {"pets": 37, "flowers": 102}
# Without the size list (the data stage has not run): the README's assumption for Pets (~90 % of sources under
# 512 px short side) and Flowers (every short side is 500 px), and a typical image of each set in pixels.
SMALL_FRACTION = {"pets": 0.9, "flowers": 1.0}
TYPICAL_PIXELS = {"pets": 500 * 375, "flowers": 500 * 670}
ADAM_FACTOR = 3  # weights + Adam's two moment estimates, all float32
BYTES_PER_PARAM = 4
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class Counts:
    """The items of a full run that each stage's time scales with, and where they came from."""

    train_images: int
    raw_sources: int
    small_sources: int
    raw_pixels: float
    small_pixels: float
    train_image_epochs: int
    source: str
    notes: list[str] = field(default_factory=list)
    methods: dict[str, float] = field(default_factory=dict)  # items of the compared methods' stages (method_items)

    def items(self, stage: str) -> float:
        """The items a stage's seconds-per-item multiplies, by its registry ``unit`` ("once": a fixed cost); a compared
        method's stage counts its own (``method_items``: 1 while it skips)."""
        if stage in self.methods:
            return self.methods[stage]
        unit = get(stage).unit
        per_unit = {"once": 1, "per training image": self.train_images, "per raw source": self.raw_sources,
                    "per small source": self.small_sources, "per image-epoch": self.train_image_epochs}
        if unit not in per_unit:
            raise KeyError(f"stage '{stage}' counts '{unit}', which only a compared method's stage counts "
                           "(method_items)")
        return per_unit[unit]


def method_items(params: Params, n_train: int, classes: int) -> dict[str, float]:
    """The items of the compared methods' stages, by their registry unit: Real Guidance's training images, DA-Fusion's
    inversion steps (every class's) and its M images per training image. A stage whose method is not trained is a
    fixed cost (it skips)."""
    idle = idle_stages(params.training.methods)
    return {s: 1 if s in idle else _method_stage_items(params, s, n_train, classes) for s in METHOD_STAGES}


def _method_stage_items(params: Params, stage: str, n_train: int, classes: int) -> float:
    """A trained compared method's stage: its inversion steps, or its images (per real image: ``made_per_real``)."""
    if get(stage).unit == "per class-step":
        return classes * params.da_fusion.inversion_steps
    section = next(a.section for a in AUGMENTATIONS if stage in a.stages and a.method != "sgid")
    return n_train * made_per_real(params, section)


def image_epochs(params: Params, n_train: int) -> list[int]:
    """Training images each (backbone, method, proportion, seed) sees over its epochs: the set, plus p x one curated
    image per source, times its backbone's epochs. Under ``training.equal_steps`` every configuration takes the
    Baseline's steps, batches of the same size: the Baseline's images x epochs."""
    epochs = {b.name: b.epochs for b in backbones(params)}
    equal = params.training.equal_steps
    return [(n_train + (int(c.proportion * n_train + 0.5)
                        if c.method in GENERATIVE and c.proportion is not None and not equal else 0))
            * epochs[c.backbone] for c in configs(params)]


def image_epochs_by_backbone(params: Params, n_train: int) -> dict[str, int]:
    """``image_epochs`` summed per backbone name."""
    out: dict[str, int] = {}
    for cfg, n in zip(configs(params), image_epochs(params, n_train)):
        out[cfg.backbone] = out.get(cfg.backbone, 0) + n
    return out


def train_seconds_by_backbone(canary: Params, total: float) -> dict[str, float]:
    """The canary's train-stage seconds split among its backbones in proportion to their runs' measured epoch seconds
    (metrics.csv), so that model loading and image caching are shared out the same way. Backbones differ several-fold
    in cost per image (a ResNet-50's forward is a quarter of a ViT-B/16's), so each is projected at its own rate."""
    run, measured = RunDir.of(canary), {}
    for cfg in configs(canary):
        measured[cfg.backbone] = (measured.get(cfg.backbone, 0.0)
                                  + float(read_table(catalog.path(run, "metrics", config=cfg.name)).seconds.sum()))
    whole = sum(measured.values())
    return {name: total * s / whole if whole else total / len(measured) for name, s in measured.items()}


def _folder_sizes(params: Params) -> pd.DataFrame:
    """An image folder's training files (header reads only), capped per class as the data stage caps them."""
    rows, root, cap = [], Path(params.dataset.path), params.dataset.max_per_class
    for label, cls in enumerate(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))):
        files = [f for f in sorted((root / cls).rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
        for i, f in enumerate(files[:cap] if cap else files):
            with Image.open(f) as img:
                rows.append({"image_id": f"train_{label:03d}_{i:05d}", "label": label, "width": img.width,
                             "height": img.height})
    return pd.DataFrame(rows, columns=["image_id", "label", "width", "height"])


def _counts_from_sizes(params: Params, train: pd.DataFrame, source: str) -> Counts:
    small = train[["width", "height"]].min(axis=1) < params.curation.upscale_threshold
    raw = raw_pass(params, train)
    pixels = train.width * train.height
    epochs = sum(image_epochs(params, len(train)))
    return Counts(len(train), int(raw.sum()), int(small.sum()), float(pixels[raw].sum()), float(pixels[small].sum()),
                  epochs, source, methods=method_items(params, len(train), train.label.nunique()))


def full_run_counts(params: Params, images: pd.DataFrame | None = None) -> Counts:
    """Item counts of the full run: from its data table when given, else an image folder's headers, else split sizes."""
    ds = params.dataset
    if images is not None:
        return _counts_from_sizes(params, images[images.split == "train"], "the run's data table (measured)")
    if ds.source == "imagefolder" and Path(ds.path).is_dir():
        return _counts_from_sizes(params, _folder_sizes(params), f"image headers in {ds.path} (measured)")
    if ds.source == "imagefolder":
        raise FileNotFoundError(f"dataset.path {ds.path} does not exist: nothing to count")
    classes = CLASS_COUNTS[ds.source]
    n = sum(SPLIT_SIZES[ds.source].get(s, 0) for s in ds.train_splits)
    if ds.max_per_class:
        n = min(n, ds.max_per_class * classes)
    small = round(n * SMALL_FRACTION[ds.source])
    sample = (small if params.curation.error_analysis_sample == "all"
              else min(small, params.curation.error_analysis_sample * classes))
    raw = n - small + sample
    typical = TYPICAL_PIXELS[ds.source]
    epochs = sum(image_epochs(params, n))
    notes = [f"{ds.source}: {n} training images from the official split sizes; {SMALL_FRACTION[ds.source]:.0%} assumed "
             f"under {params.curation.upscale_threshold} px and {typical:,} px per image assumed (the size "
             "list comes with the data stage: rerun preflight after `run data` for measured counts)"]
    return Counts(n, raw, small, float(raw * typical), float(small * typical), epochs,
                  "split sizes (extrapolated)", notes, method_items(params, n, classes))


def project_seconds(per_item: dict[str, float], counts: Counts) -> dict[str, float]:
    """Expected seconds per stage: measured seconds per item x the full run's items of that stage."""
    return {stage: seconds * counts.items(stage) for stage, seconds in per_item.items()}


def checkpoint_bytes(n_params: int, optimizer_factor: int = ADAM_FACTOR) -> int:
    """A training checkpoint: every parameter in float32 for the weights and each optimizer state."""
    return n_params * BYTES_PER_PARAM * optimizer_factor


def disk_need_bytes(bytes_per_pixel: float, k: int, raw_pixels: float, small_pixels: float, n_params: int,
                    other_bytes_per_image: float, n_train: int, optimizer_factor: int = ADAM_FACTOR) -> float:
    """Bytes the full run writes: k PNG candidates per raw and per upscaled source (kept at the source's size),
    one checkpoint at a time (a finished configuration deletes its own), and the tables and records."""
    images = bytes_per_pixel * k * (raw_pixels + small_pixels)
    return images + checkpoint_bytes(n_params, optimizer_factor) + other_bytes_per_image * n_train


def png_bytes_per_pixel(canary: RunDir) -> float:
    """Bytes per pixel of a canary's own generated PNGs (0 when it generated none)."""
    files = [p for stage in ("generation", "upscaling") for p in canary.files(stage) if p.suffix == ".png"]
    pixels = 0
    for path in files:
        with Image.open(path) as img:
            pixels += img.width * img.height
    return sum(p.stat().st_size for p in files) / pixels if pixels else 0.0


# The stages whose files (other than PNGs) a full run writes per training image: every stage with a folder, less the
# generation passes (their PNGs are counted by pixels) and the compared methods' stages (not in the disk need).
OTHER_BYTES_STAGES = tuple(s.name for s in STAGES
                           if s.folder and s.unit not in RECORDED_UNITS and s.name not in METHOD_STAGES)


def other_bytes(canary: RunDir, stages: list[str] | tuple[str, ...] = OTHER_BYTES_STAGES) -> int:
    """Bytes of a canary's files other than generated PNGs (hub image copies, records, tables, embeddings) in
    ``stages`` (those a full run writes itself: not the ones run.reuse links)."""
    return sum(f.stat().st_size for stage in stages for f in canary.files(stage) if f.suffix != ".png")


def hms(seconds: float) -> str:
    """'2 h 05 min', '3 min 20 s', '4.2 s'."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds:.1f} s"


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**27 else f"{n_bytes / 2**20:.1f} MiB"


@dataclass
class VariantCost:
    """What one ablation variant computes itself: items per stage (as ``Counts.items`` counts them), and its pixels."""

    name: str
    items: dict[str, float]
    raw_pixels: float
    small_pixels: float


def variant_costs(params: Params, variants: list[tuple[str, Params]], images: pd.DataFrame | None = None,
                  ) -> list[VariantCost]:
    """Per variant, in the order ``run ablations`` runs them, the stages it computes itself and their items.

    A stage is linked when the base run or an earlier variant made it with the same fingerprint (``sharing.lenders``),
    so it costs nothing. The training stage counts the variant's SGID runs, and its Baselines unless an earlier run
    trained them with the same Baseline fingerprint on the same first backbone.
    ``images``: the base run's data table, used for a variant on the same data.
    """
    out = []
    # Who lends what, as ``run ablations`` decides it, with the base run as its params would make it.
    lent = lenders(params, [variant for _, variant in variants], recorded=False)
    for (name, variant), mine in zip(variants, lent):
        same_data = fingerprint(variant, "data") == fingerprint(params, "data")
        counts = full_run_counts(variant, images if same_data else None)
        own = [s for s in SHARED_STAGES if mine[s] is None and s not in idle_stages(variant.training.methods)]
        items = {s: float(counts.items(s)) for s in own}
        shared = mine["baselines"] is not None
        items["training"] = float(sum(n for c, n in zip(configs(variant), image_epochs(variant, counts.train_images))
                                   if not (shared and c.method == "baseline")))
        items["results"] = 1.0
        out.append(VariantCost(name, items, counts.raw_pixels if "generation" in own else 0.0,
                               counts.small_pixels if "upscaling" in own else 0.0))
    return out
