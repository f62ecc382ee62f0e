"""Stage 05: fine-tune ViT-B/16 (ImageNet-21k) with Baseline, CutMix, RandAugment and SGID.

Every method shares one schedule: Adam, constant learning rate 1e-4, the same
epochs, batch size and resize-only preprocessing; they differ only in the
augmentation. Each (method, proportion, seed) checkpoints at every epoch
boundary and resumes there; a finished one is not retrained. Images are decoded
and resized once per process and shared by all configurations.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from timm.data import resolve_data_config
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .augmentations import cutmix_batch, mixed_loss, randaugment
from .curation import load_curated
from .data import load_images_table
from .image_cache import CachedImages, shared_cache
from .io import read_json, read_table, write_atomic, write_json, write_table
from .models import create_classifier, resolve_device
from .resumable import gpu_memory_hint, my_share
from .rundir import RunDir
from .schema import Params, TrainingParams
from .seeding import derive_seed, seed_everything

METHOD_NAMES = {"baseline": "Baseline", "cutmix": "CutMix", "randaugment": "RandAugment", "sgid": "SGID",
                "sgid_filtered": "SGID filtered"}
GENERATIVE = ("sgid", "sgid_filtered")


@dataclass(frozen=True)
class TrainConfig:
    method: str
    seed: int
    proportion: float | None = None

    @property
    def setting(self) -> str:
        """Row name in the results table: 'Baseline', 'SGID (25%)', ..."""
        name = METHOD_NAMES[self.method]
        return f"{name} ({self.proportion:.0%})" if self.method in GENERATIVE else name

    @property
    def name(self) -> str:
        prefix = {"sgid": "sgid", "sgid_filtered": "sgidf"}.get(self.method)
        tag = f"{prefix}{round(self.proportion * 100):03d}" if prefix else self.method
        return f"{tag}_seed{self.seed}"


def configs(params: Params) -> list[TrainConfig]:
    t = params.training
    out = []
    proportions = {"sgid": t.sgid_proportions, "sgid_filtered": t.filtered_proportions}
    for method in t.methods:
        for proportion in proportions.get(method, [None]):
            out += [TrainConfig(method, seed, proportion) for seed in t.seeds]
    return out


def sgid_subset(curated: pd.DataFrame, proportion: float, run_seed: int) -> pd.DataFrame:
    """round(proportion * n) curated images, nested across proportions (25% is inside 50%, ...).

    The order is a seeded hash of the image id, so it is fixed for a run and independent of the
    training seed: seeds then measure training noise, not which images were drawn.
    """
    order = curated.assign(_key=[derive_seed(run_seed, i, purpose="sgid-subset") for i in curated.image_id])
    order = order.sort_values("_key", kind="stable").drop(columns="_key")
    return order.head(int(proportion * len(curated) + 0.5)).reset_index(drop=True)  # half rounds up


def train_step(model, optimizer, scaler, x: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: float,
               use_amp: bool) -> torch.Tensor:
    """One optimisation step on a batch (CutMix-ed when lam < 1), under AMP when asked; returns the loss."""
    with torch.autocast(x.device.type, enabled=use_amp):
        logits = model(x)
    loss = mixed_loss(logits, y_a, y_b, lam)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss


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
    scaler: torch.amp.GradScaler
    loader_gen: torch.Generator
    history: list[dict]
    epoch: int = 0

    def save(self, path: Path) -> None:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "rng": _rng_state(self.loader_gen), "history": self.history,
                 "epoch": self.epoch}
        write_atomic(path, lambda tmp: torch.save(state, tmp))

    def resume(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], self.loader_gen)
        self.history, self.epoch = state["history"], state["epoch"]


def make_loaders(params: Params, cfg: TrainConfig, model, train: pd.DataFrame, test: pd.DataFrame,
                 loader_gen: torch.Generator, device: torch.device) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders over the decoded-once image cache, with the model's own preprocessing."""
    t = params.training
    data_cfg = resolve_data_config({}, model=model)
    size = t.image_size or data_cfg["input_size"][-1]
    cache = shared_cache(size)
    augment = randaugment(t) if cfg.method == "randaugment" else None
    train_ds = CachedImages(train.path.tolist(), train.label_idx.tolist(), cache, data_cfg["mean"], data_cfg["std"], augment)
    test_ds = CachedImages(test.path.tolist(), test.label_idx.tolist(), cache, data_cfg["mean"], data_cfg["std"])
    cache.warm(train_ds.paths + test_ds.paths)
    pin = device.type == "cuda"
    workers = t.num_workers if device.type == "cuda" else 0
    train_loader = DataLoader(train_ds, batch_size=t.batch_size, shuffle=True, generator=loader_gen,
                              num_workers=workers, pin_memory=pin, persistent_workers=False)
    test_loader = DataLoader(test_ds, batch_size=t.eval_batch_size, num_workers=workers, pin_memory=pin)
    return train_loader, test_loader


def train_epoch(loop: Loop, loader: DataLoader, cfg: TrainConfig, t: TrainingParams, device: torch.device,
                use_amp: bool, desc: str) -> float:
    """One pass over the training set; returns the mean training loss."""
    loop.model.train()
    loss_sum, seen = 0.0, 0
    for x, y in tqdm(loader, desc=desc, leave=False, unit="batch"):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        y_b, lam = y, 1.0
        if cfg.method == "cutmix":
            x, y, y_b, lam = cutmix_batch(x, y, t.cutmix_alpha, t.cutmix_prob)
        loss = train_step(loop.model, loop.optimizer, loop.scaler, x, y, y_b, lam, use_amp)
        loss_sum += loss.item() * len(y)
        seen += len(y)
    return loss_sum / seen


def train_config(params: Params, cfg: TrainConfig, train: pd.DataFrame, test: pd.DataFrame, num_classes: int) -> dict:
    """Train one configuration (resuming from its checkpoint); returns and saves its result."""
    t, run = params.training, RunDir.of(params)
    if run.result(cfg.name).exists():
        run.checkpoint(cfg.name).unlink(missing_ok=True)  # a run killed between its result and this cleanup
        return read_json(run.result(cfg.name))
    device = resolve_device(params)
    seed = derive_seed(params.run.seed, "train", cfg.seed, purpose="training")
    seed_everything(seed)  # head init, data order (via loader_gen), CutMix and RandAugment draws
    model = create_classifier(params.models.classifier, num_classes, t.image_size)
    loader_gen = torch.Generator().manual_seed(seed)
    train_loader, test_loader = make_loaders(params, cfg, model, train, test, loader_gen, device)
    model = model.to(device)
    use_amp = t.amp and device.type == "cuda"
    loop = Loop(model, torch.optim.Adam(model.parameters(), lr=t.lr), torch.amp.GradScaler("cuda", enabled=use_amp),
                loader_gen, [])
    if run.checkpoint(cfg.name).exists():
        loop.resume(run.checkpoint(cfg.name))
    preds = None
    while loop.epoch < t.epochs:
        began = time.time()
        train_loss = train_epoch(loop, train_loader, cfg, t, device, use_amp, f"{cfg.name} epoch {loop.epoch + 1}/{t.epochs}")
        test_acc = test_loss = float("nan")
        if (loop.epoch + 1) % t.eval_every == 0 or loop.epoch + 1 == t.epochs:
            test_acc, test_loss, preds = evaluate(model, test_loader, device, use_amp)
        loop.history.append({"epoch": loop.epoch + 1, "train_loss": train_loss, "test_loss": test_loss,
                             "test_acc": test_acc, "seconds": time.time() - began})
        loop.epoch += 1
        loop.save(run.checkpoint(cfg.name))
    write_table(run.history(cfg.name), pd.DataFrame(loop.history))
    if preds is None:  # resumed after the last epoch's checkpoint: predictions were not kept
        _, _, preds = evaluate(model, test_loader, device, use_amp)
    write_table(run.predictions(cfg.name), test[["image_id", "label_idx"]].assign(pred=preds))
    result = {"config": cfg.name, "method": cfg.method, "setting": cfg.setting, "proportion": cfg.proportion,
              "seed": cfg.seed, "test_acc": loop.history[-1]["test_acc"], "epochs": t.epochs,
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
            curated = load_curated(params, filtered=cfg.method == "sgid_filtered")
            curated = curated.assign(label_idx=lambda d: d.label.map(index), origin="generated")
            subset = sgid_subset(curated, cfg.proportion, params.run.seed)
            additions[(cfg.method, cfg.proportion)] = subset[["image_id", "path", "label", "label_idx", "origin"]]
    return train.reset_index(drop=True), test.reset_index(drop=True), additions, len(labels)


def run_training(params: Params, images: pd.DataFrame) -> pd.DataFrame | None:
    """Train every (method, proportion, seed); write the results table (one row per run).

    Under several processes (``--shard`` or ``accelerate launch``) each trains its share of the
    configurations on its own GPU; the table is written once every configuration has a result.
    """
    run = RunDir.of(params)
    train, test, additions, num_classes = training_sets(params, images)
    all_configs = configs(params)
    mine = set(my_share(c.name for c in all_configs))
    for cfg in tqdm([c for c in all_configs if c.name in mine], desc="training runs", unit="run"):
        extra = additions.get((cfg.method, cfg.proportion))
        data = pd.concat([train, extra], ignore_index=True) if extra is not None else train
        with gpu_memory_hint(f"training {cfg.name}", f"Lower training.batch_size (now {params.training.batch_size})."):
            train_config(params, cfg, data, test, num_classes)
    if not all(run.result(c.name).exists() for c in all_configs):
        return None
    table = pd.DataFrame([read_json(run.result(c.name)) for c in all_configs])
    write_table(run.results_table, table)
    return table


def load_results(params: Params) -> pd.DataFrame:
    return read_table(RunDir.of(params).results_table)


def load_history(params: Params) -> pd.DataFrame:
    run = RunDir.of(params)
    frames = [read_table(run.history(cfg.name)).assign(setting=cfg.setting, seed=cfg.seed)
              for cfg in configs(params) if run.history(cfg.name).exists()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_predictions(params: Params, config: str) -> pd.DataFrame:
    """The test predictions training saved for one configuration (e.g. 'cutmix_seed0')."""
    return read_table(RunDir.of(params).predictions(config))
