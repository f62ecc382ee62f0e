"""Stage 05: train each backbone with Baseline, CutMix, RandAugment, SGID and SGID combined with CutMix/RandAugment.

A backbone is a timm classifier with its own recipe (``schema.BackboneParams``): by default the report's
ViT-B/16 (ImageNet-21k) with Adam at a constant learning rate of 1e-4 (what the report gives), for 10 epochs
at batch size 32 (this package's choice: the report gives neither), or the ones ``training.backbones`` lists
(ResNet-50 from scratch, CLIP-ViT, ...). Within a backbone every method shares the recipe, batch size and the
model's own resize-only preprocessing; methods differ only in the augmentation and the generated images added.

With the same number of epochs, SGID at 100 % (twice the images) takes twice the Baseline's optimisation
steps. ``training.equal_steps`` separates the two: every method then stops after its backbone's Baseline
step count, ceil(n_real / batch size) x epochs, its last pass over the larger set partial, with the learning
rate schedule (warm-up, cosine) laid over those same steps (``step_plan``). Each result records its steps.

Each (backbone, method, proportion, seed) checkpoints at every epoch boundary and resumes there; a finished
one is not retrained. Images are decoded and resized once per process and shared by all configurations.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .augmentations import cutmix_batch, mixed_loss, randaugment
from .curation import load_curated
from .data import load_images_table
from .fingerprints import backbone_fingerprint
from .image_cache import CachedImages, shared_cache
from .io import check_fingerprint, read_json, read_table, write_atomic, write_json, write_table
from .models import create_classifier, preprocessing, resolve_device
from .resumable import gpu_memory_hint, my_share
from .rundir import RunDir
from .schema import INHERITED, BackboneParams, Params, TrainingParams
from .seeding import derive_seed, seed_everything

METHOD_NAMES = {"baseline": "Baseline", "cutmix": "CutMix", "randaugment": "RandAugment", "sgid": "SGID",
                "sgid_filtered": "SGID filtered", "sgid_cutmix": "SGID + CutMix", "sgid_randaugment": "SGID + RandAugment"}
NON_GENERATIVE = ("baseline", "cutmix", "randaugment")
GENERATIVE = ("sgid", "sgid_filtered", "sgid_cutmix", "sgid_randaugment")
CUTMIX = ("cutmix", "sgid_cutmix")  # CutMix on every training batch (with its probability)
RANDAUGMENT = ("randaugment", "sgid_randaugment")  # RandAugment on every training image, generated ones included
COMBINED = ("sgid_cutmix", "sgid_randaugment")
_TAGS = {"sgid": "sgid", "sgid_filtered": "sgidf", "sgid_cutmix": "sgidcm", "sgid_randaugment": "sgidra"}


def backbones(params: Params) -> list[BackboneParams]:
    """The backbones to train, each with its recipe resolved (``training.*`` fills what it leaves unset).

    None listed: the one implicit backbone, ``models.classifier`` with ``training.*`` (Adam at a constant 1e-4 as the
    report gives; epochs and batch size this package's), named "" so that its runs keep their unprefixed names
    (``baseline_seed0``).
    """
    t = params.training
    listed = t.backbones or [BackboneParams.model_construct(
        name="", model=params.models.classifier,
        source="training.* (Adam, constant lr 1e-4: the reproduction report; epochs, batch size: this package)")]
    return [b.model_copy(update={"label": b.label or b.name or b.model,
                                 **{k: getattr(t, k) for k in INHERITED if getattr(b, k) is None}}) for b in listed]


def recipe(bb: BackboneParams) -> str:
    """One line for tables, the report page and the notebooks: 'ResNet-50 (from scratch): sgd lr 0.05 cosine, ...'."""
    warmup = f" (warm-up {bb.warmup_epochs:g} epochs)" if bb.warmup_epochs else ""
    return (f"{bb.label}: {'pretrained' if bb.pretrained else 'from scratch'}, {bb.optimizer} lr {bb.lr:g} {bb.schedule}"
            f"{warmup}, {bb.epochs} epochs, batch size {bb.batch_size}")


def backbone(params: Params, name: str) -> BackboneParams:
    return next(b for b in backbones(params) if b.name == name)


@dataclass(frozen=True)
class TrainConfig:
    method: str
    seed: int
    proportion: float | None = None
    backbone: str = ""

    @property
    def setting(self) -> str:
        """Row name in a backbone's results table: 'Baseline', 'SGID (25%)', 'SGID + CutMix (100%)', ..."""
        name = METHOD_NAMES[self.method]
        return f"{name} ({self.proportion:.0%})" if self.method in GENERATIVE else name

    @property
    def name(self) -> str:
        prefix = _TAGS.get(self.method)
        tag = f"{prefix}{round(self.proportion * 100):03d}" if prefix else self.method
        return f"{self.backbone}-{tag}_seed{self.seed}" if self.backbone else f"{tag}_seed{self.seed}"


def configs(params: Params) -> list[TrainConfig]:
    """Every (backbone, method, proportion, seed) the params ask for, backbone by backbone."""
    t = params.training
    out = []
    proportions = {"sgid": t.sgid_proportions, "sgid_filtered": t.filtered_proportions,
                   "sgid_cutmix": t.combined_proportions, "sgid_randaugment": t.combined_proportions}
    for bb in backbones(params):
        for method in t.methods:
            for proportion in proportions.get(method, [None]):
                out += [TrainConfig(method, seed, proportion, bb.name) for seed in t.seeds]
    return out


def sgid_subset(curated: pd.DataFrame, proportion: float, run_seed: int) -> pd.DataFrame:
    """round(proportion * n) curated images, nested across proportions (25% is inside 50%, ...).

    The order is a seeded hash of the image id, so it is fixed for a run and independent of the
    training seed: seeds then measure training noise, not which images were drawn. The caller passes
    ``run.seed``, not the generation draw's seed: a second draw (``run.draw``) subsets the same sources.
    """
    order = curated.assign(_key=[derive_seed(run_seed, i, purpose="sgid-subset") for i in curated.image_id])
    order = order.sort_values("_key", kind="stable").drop(columns="_key")
    return order.head(int(proportion * len(curated) + 0.5)).reset_index(drop=True)  # half rounds up


def train_step(model, optimizer, scaler, x: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: float,
               use_amp: bool) -> tuple[torch.Tensor, bool]:
    """One optimisation step on a batch (CutMix-ed when lam < 1), under AMP when asked; returns the loss and whether
    the optimizer stepped (fp16's loss scaler skips a step whose gradients overflowed, and lowers its scale)."""
    with torch.autocast(x.device.type, enabled=use_amp):
        logits = model(x)
    loss = mixed_loss(logits, y_a, y_b, lam)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return loss, scaler.get_scale() >= scale


def _rng_state(loader_gen: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "loader": loader_gen.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict, loader_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    loader_gen.set_state(state["loader"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.inference_mode()
def evaluate(model, loader, device, use_amp: bool) -> tuple[float, float, list[int]]:
    """Test accuracy, mean loss and per-image predictions; under autocast only when training used it."""
    model.eval()
    correct, loss_sum, preds = 0, 0.0, []
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=use_amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        p = logits.argmax(1)
        correct += (p == y).sum().item()
        preds += p.cpu().tolist()
    n = len(loader.dataset)
    return correct / n, loss_sum / n, preds


@dataclass
class Loop:
    """What one configuration's training needs from step to step; saved whole at every epoch boundary."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loader_gen: torch.Generator
    history: list[dict]
    epoch: int = 0
    steps: int = 0  # optimisation steps taken (batches trained on), over all epochs

    def save(self, path: Path) -> None:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "rng": _rng_state(self.loader_gen), "history": self.history, "epoch": self.epoch, "steps": self.steps}
        write_atomic(path, lambda tmp: torch.save(state, tmp))

    def resume(self, path: Path, steps_per_epoch: int) -> None:
        """Continue from a checkpoint (one saved before steps were counted had full epochs of ``steps_per_epoch``)."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:  # checkpoints from before schedules existed: constant, nothing to restore
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], self.loader_gen)
        self.history, self.epoch = state["history"], state["epoch"]
        self.steps = state.get("steps", self.epoch * steps_per_epoch)


def optimizer_for(bb: BackboneParams, model: torch.nn.Module) -> torch.optim.Optimizer:
    if bb.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=bb.lr, momentum=bb.momentum, weight_decay=bb.weight_decay)
    kind = torch.optim.AdamW if bb.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=bb.lr, weight_decay=bb.weight_decay)


@dataclass(frozen=True)
class StepPlan:
    """How long one configuration trains, in optimisation steps (one per batch)."""

    steps_per_epoch: int  # batches in one pass over this configuration's training set
    total: int  # steps to take
    schedule_epoch: int  # steps one epoch of the schedule spans (warm-up_epochs and the cosine count in these)

    @property
    def epochs(self) -> int:
        """Passes over the training set begun: the last one stops at ``total`` (partial under equal steps)."""
        return math.ceil(self.total / self.steps_per_epoch)


def step_plan(bb: BackboneParams, n_train: int, n_real: int, equal_steps: bool) -> StepPlan:
    """``bb.epochs`` full passes over the ``n_train`` images; with ``equal_steps``, the Baseline's steps instead:
    ceil(n_real / batch size) x epochs over the ``n_real`` real training images, the schedule's epoch being the
    Baseline's, so that every method follows the Baseline's learning-rate curve step for step."""
    if n_train < 1 or not 1 <= n_real <= n_train:
        raise ValueError(f"need 1 <= real images ({n_real}) <= training images ({n_train})")
    per_epoch = math.ceil(n_train / bb.batch_size)
    epoch = math.ceil(n_real / bb.batch_size) if equal_steps else per_epoch
    return StepPlan(per_epoch, epoch * bb.epochs, epoch)


def lr_factor(bb: BackboneParams, steps_per_epoch: int):
    """The learning rate's multiplier at optimisation step s: linear warm-up, then constant or half-cosine to zero.

    ``steps_per_epoch``: the schedule's epoch (``StepPlan.schedule_epoch``); the schedule spans ``bb.epochs`` of them.
    One per-step function for torch's LambdaLR (whose state the checkpoint keeps), rather than torch's chained
    schedulers, so that warm-up plus cosine is one readable formula and resumes exactly.
    """
    warmup, total = round(bb.warmup_epochs * steps_per_epoch), bb.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if bb.schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor


def make_loaders(params: Params, cfg: TrainConfig, bb: BackboneParams, model, train: pd.DataFrame, test: pd.DataFrame,
                 loader_gen: torch.Generator, device: torch.device) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders over the decoded-once image cache, with the model's own preprocessing (timm config)."""
    t = params.training
    size, mean, std = preprocessing(model, bb.image_size)
    cache = shared_cache(size)
    augment = randaugment(t) if cfg.method in RANDAUGMENT else None
    train_ds = CachedImages(train.path.tolist(), train.label_idx.tolist(), cache, mean, std, augment)
    test_ds = CachedImages(test.path.tolist(), test.label_idx.tolist(), cache, mean, std)
    cache.warm(train_ds.paths + test_ds.paths)
    pin = device.type == "cuda"
    workers = t.num_workers if device.type == "cuda" else 0
    train_loader = DataLoader(train_ds, batch_size=bb.batch_size, shuffle=True, generator=loader_gen,
                              num_workers=workers, pin_memory=pin, persistent_workers=False)
    test_loader = DataLoader(test_ds, batch_size=t.eval_batch_size, num_workers=workers, pin_memory=pin)
    return train_loader, test_loader


def train_epoch(loop: Loop, loader: DataLoader, cfg: TrainConfig, t: TrainingParams, device: torch.device,
                use_amp: bool, desc: str, max_steps: int) -> float:
    """One pass over the training set, stopping after ``max_steps`` batches; returns the mean training loss."""
    loop.model.train()
    loss_sum, seen = 0.0, 0
    batches = tqdm(islice(loader, max_steps), desc=desc, leave=False, unit="batch", total=min(len(loader), max_steps))
    for x, y in batches:
        loop.steps += 1
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        y_b, lam = y, 1.0
        if cfg.method in CUTMIX:
            x, y, y_b, lam = cutmix_batch(x, y, t.cutmix_alpha, t.cutmix_prob)
        loss, stepped = train_step(loop.model, loop.optimizer, loop.scaler, x, y, y_b, lam, use_amp)
        if stepped:  # the schedule counts optimisation steps taken (a skipped fp16 step would shift it and warn)
            loop.scheduler.step()
        loss_sum += loss.item() * len(y)
        seen += len(y)
    return loss_sum / seen


def train_config(params: Params, cfg: TrainConfig, train: pd.DataFrame, test: pd.DataFrame, num_classes: int) -> dict:
    """Train one configuration (resuming from its checkpoint); returns and saves its result."""
    t, run, bb = params.training, RunDir.of(params), backbone(params, cfg.backbone)
    if run.result(cfg.name).exists():
        run.checkpoint(cfg.name).unlink(missing_ok=True)  # a run killed between its result and this cleanup
        return read_json(run.result(cfg.name))
    device = resolve_device(params)
    seed = derive_seed(params.run.seed, "train", cfg.seed, purpose="training")
    seed_everything(seed)  # head (or, from scratch, every weight) init, data order (via loader_gen), CutMix and RandAugment draws
    what = f"training.backbones[{bb.name}].model" if bb.name else "models.classifier"
    model = create_classifier(bb.model, num_classes, bb.image_size, pretrained=bb.pretrained, what=what)
    loader_gen = torch.Generator().manual_seed(seed)
    train_loader, test_loader = make_loaders(params, cfg, bb, model, train, test, loader_gen, device)
    model = model.to(device)
    use_amp = t.amp and device.type == "cuda"
    optimizer = optimizer_for(bb, model)
    plan = step_plan(bb, len(train), int((train.origin == "real").sum()), t.equal_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(bb, plan.schedule_epoch))
    loop = Loop(model, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=use_amp), loader_gen, [])
    if run.checkpoint(cfg.name).exists():
        loop.resume(run.checkpoint(cfg.name), plan.steps_per_epoch)
    preds = None
    while loop.epoch < plan.epochs:
        began = time.time()
        train_loss = train_epoch(loop, train_loader, cfg, t, device, use_amp,
                                 f"{cfg.name} epoch {loop.epoch + 1}/{plan.epochs}", plan.total - loop.steps)
        test_acc = test_loss = float("nan")
        if (loop.epoch + 1) % bb.eval_every == 0 or loop.epoch + 1 == plan.epochs:
            test_acc, test_loss, preds = evaluate(model, test_loader, device, use_amp)
        loop.history.append({"epoch": loop.epoch + 1, "train_loss": train_loss, "test_loss": test_loss,
                             "test_acc": test_acc, "lr": loop.optimizer.param_groups[0]["lr"], "seconds": time.time() - began})
        loop.epoch += 1
        loop.save(run.checkpoint(cfg.name))
    write_table(run.history(cfg.name), pd.DataFrame(loop.history))
    if preds is None:  # resumed after the last epoch's checkpoint: predictions were not kept
        _, _, preds = evaluate(model, test_loader, device, use_amp)
    write_table(run.predictions(cfg.name), test[["image_id", "label_idx"]].assign(pred=preds))
    result = {"config": cfg.name, "backbone": cfg.backbone, "method": cfg.method, "setting": cfg.setting,
              "proportion": cfg.proportion, "seed": cfg.seed, "test_acc": loop.history[-1]["test_acc"],
              "epochs": plan.epochs, "steps": loop.steps,
              "train_images": len(train), "generated_images": int((train.origin == "generated").sum())}
    write_json(run.result(cfg.name), result)
    run.checkpoint(cfg.name).unlink(missing_ok=True)  # the result is final; the checkpoint (hundreds of MB for ViT-B) is not
    return result


def training_sets(params: Params, images: pd.DataFrame | None = None,
                  ) -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple[str, float], pd.DataFrame], int]:
    """Real train/test tables with contiguous class indices, and the generated additions per (method, proportion).

    ``images``: the data stage's table when the caller has it already (else read from the run dir).
    """
    images = load_images_table(params) if images is None else images
    labels = sorted(images.loc[images.split == "train", "label"].unique())
    index = {int(v): i for i, v in enumerate(labels)}
    images = images[images.label.isin(labels)].assign(label_idx=lambda d: d.label.map(index), origin="real")
    train, test = images[images.split == "train"], images[images.split == "test"]
    additions: dict[tuple[str, float], pd.DataFrame] = {}
    for cfg in configs(params):
        if cfg.method in GENERATIVE and (cfg.method, cfg.proportion) not in additions:
            curated = load_curated(params, filtered=cfg.method == "sgid_filtered")  # the combined methods add SGID's set
            curated = curated.assign(label_idx=lambda d: d.label.map(index), origin="generated")
            subset = sgid_subset(curated, cfg.proportion, params.run.seed)
            additions[(cfg.method, cfg.proportion)] = subset[["image_id", "path", "label", "label_idx", "origin"]]
    return train.reset_index(drop=True), test.reset_index(drop=True), additions, len(labels)


def run_training(params: Params, images: pd.DataFrame) -> pd.DataFrame | None:
    """Train every (backbone, method, proportion, seed); write the results table (one row per run).

    Under several processes (``--shard`` or ``accelerate launch``) each trains its share of the
    configurations on its own GPU; the table is written once every configuration has a result.
    """
    run = RunDir.of(params)
    for bb in backbones(params):
        if bb.name:  # a listed backbone; the implicit one's recipe (training.*) is in the stage's own fingerprint
            check_fingerprint(run.backbone_fingerprint(bb.name), backbone_fingerprint(bb), f"train ({bb.label})",
                              outputs=f"{run.stage('train')}/{bb.name}-* (that backbone's runs) and "
                                      f"{run.backbone_fingerprint(bb.name)}")
    train, test, additions, num_classes = training_sets(params, images)
    all_configs = configs(params)
    mine = set(my_share(c.name for c in all_configs))
    for cfg in tqdm([c for c in all_configs if c.name in mine], desc="training runs", unit="run"):
        extra = additions.get((cfg.method, cfg.proportion))
        data = pd.concat([train, extra], ignore_index=True) if extra is not None else train
        size = backbone(params, cfg.backbone).batch_size
        with gpu_memory_hint(f"training {cfg.name}", f"Lower the batch size (training.batch_size or the backbone's; now {size})."):
            train_config(params, cfg, data, test, num_classes)
    if not all(run.result(c.name).exists() for c in all_configs):
        return None
    table = pd.DataFrame([{"backbone": "", **read_json(run.result(c.name))} for c in all_configs])  # "": made before backbones
    write_table(run.results_table, table)
    return table


def load_results(params: Params) -> pd.DataFrame:
    table = read_table(RunDir.of(params).results_table)
    return table if "backbone" in table else table.assign(backbone="")  # a table written before backbones existed


def load_history(params: Params) -> pd.DataFrame:
    run = RunDir.of(params)
    frames = [read_table(run.history(cfg.name)).assign(backbone=cfg.backbone, setting=cfg.setting, seed=cfg.seed)
              for cfg in configs(params) if run.history(cfg.name).exists()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_predictions(params: Params, config: str) -> pd.DataFrame:
    """The test predictions training saved for one configuration (e.g. 'cutmix_seed0')."""
    return read_table(RunDir.of(params).predictions(config))
