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
from timm.data.mixup import cutmix_bbox_and_lam
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.transforms.functional import pil_to_tensor
from tqdm.auto import tqdm

from .data import load_image, load_images_table
from .io import check_fingerprint, read_json, read_table, write_json, write_table
from .models import create_classifier, resolve_device
from .params import Params, TrainingParams
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


class ImageCache:
    """Decoded, resized uint8 CHW tensors by path: decode once, train many configurations."""

    def __init__(self, size: int):
        self.size = size
        self._store: dict[str, torch.Tensor] = {}

    def get(self, path: str) -> torch.Tensor:
        if path not in self._store:
            img = load_image(path).resize((self.size, self.size), resample=3)  # bicubic, as timm's ViT config
            self._store[path] = pil_to_tensor(img)
        return self._store[path]

    def warm(self, paths: list[str]) -> None:
        for p in tqdm([p for p in dict.fromkeys(paths) if p not in self._store], desc="decode images", unit="img", leave=False):
            self.get(p)


_CACHES: dict[int, ImageCache] = {}


class ImageTable(Dataset):
    """(image, label) pairs from cached uint8 tensors, optionally RandAugment-ed, then normalised."""

    def __init__(self, paths: list[str], labels: list[int], cache: ImageCache, mean, std, augment=None):
        self.paths, self.labels, self.cache, self.augment = paths, labels, cache, augment
        self.normalize = transforms.Normalize(mean, std)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        x = self.cache.get(self.paths[i])
        if self.augment is not None:
            x = self.augment(x)
        return self.normalize(x.float() / 255.0), self.labels[i]


def randaugment(t: TrainingParams) -> transforms.RandAugment:
    """torchvision's RandAugment with the report's N=2, M=9 (torchvision's own defaults)."""
    return transforms.RandAugment(num_ops=t.randaugment_num_ops, magnitude=t.randaugment_magnitude)


def cutmix_batch(x: torch.Tensor, y: torch.Tensor, alpha: float, prob: float):
    """CutMix as in the official CutMix-PyTorch train loop.

    With probability ``prob``: lambda ~ Beta(alpha, alpha), a random permutation of the batch
    pastes a box into each image, and lambda is corrected to the exact pasted area (timm's
    ``cutmix_bbox_and_lam`` draws the box as the official ``rand_bbox`` does). Returns
    (x, y_a, y_b, lam); the loss is lam * CE(y_a) + (1 - lam) * CE(y_b). Draws use numpy's and
    torch's global RNGs, which training seeds and checkpoints.
    """
    if alpha <= 0 or np.random.rand() >= prob:
        return x, y, y, 1.0
    lam = float(np.random.beta(alpha, alpha))
    index = torch.randperm(x.size(0), device=x.device)
    (yl, yh, xl, xh), lam = cutmix_bbox_and_lam(x.shape, lam, correct_lam=True)
    x = x.clone()
    x[:, :, yl:yh, xl:xh] = x[index, :, yl:yh, xl:xh]
    return x, y, y[index], float(lam)


def mixed_loss(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: float) -> torch.Tensor:
    """The CutMix loss: lam * CE(y_a) + (1 - lam) * CE(y_b); plain CE when lam == 1."""
    logits = logits.float()
    return lam * F.cross_entropy(logits, y_a) + (1.0 - lam) * F.cross_entropy(logits, y_b)


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
def evaluate(model, loader, device) -> tuple[float, float, list[int]]:
    model.eval()
    correct, loss_sum, preds = 0, 0.0, []
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        p = logits.argmax(1)
        correct += (p == y).sum().item()
        preds += p.cpu().tolist()
    n = len(loader.dataset)
    return correct / n, loss_sum / n, preds


def train_config(params: Params, cfg: TrainConfig, train: pd.DataFrame, test: pd.DataFrame, num_classes: int) -> dict:
    """Train one configuration (resuming from its checkpoint); returns and saves its result."""
    t = params.training
    out_dir = Path(params.run.dir) / "training" / cfg.name
    result_file = out_dir / "result.json"
    if result_file.exists():
        return read_json(result_file)
    device = resolve_device(params)
    seed = derive_seed(params.run.seed, "train", cfg.seed, purpose="training")
    seed_everything(seed)  # head init, data order (via loader_gen), CutMix and RandAugment draws
    model = create_classifier(params.models.classifier, num_classes, t.image_size)
    data_cfg = resolve_data_config({}, model=model)
    size = t.image_size or data_cfg["input_size"][-1]
    cache = _CACHES.setdefault(size, ImageCache(size))
    augment = randaugment(t) if cfg.method == "randaugment" else None
    train_ds = ImageTable(train.path.tolist(), train.label_idx.tolist(), cache, data_cfg["mean"], data_cfg["std"], augment)
    test_ds = ImageTable(test.path.tolist(), test.label_idx.tolist(), cache, data_cfg["mean"], data_cfg["std"])
    cache.warm(train_ds.paths + test_ds.paths)
    loader_gen = torch.Generator().manual_seed(seed)
    pin = device.type == "cuda"
    workers = t.num_workers if device.type == "cuda" else 0
    train_loader = DataLoader(train_ds, batch_size=t.batch_size, shuffle=True, generator=loader_gen,
                              num_workers=workers, pin_memory=pin, persistent_workers=False)
    test_loader = DataLoader(test_ds, batch_size=t.eval_batch_size, num_workers=workers, pin_memory=pin)
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    use_amp = t.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history: list[dict] = []
    start_epoch, preds = 0, None
    ckpt = out_dir / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], loader_gen)
        history, start_epoch = state["history"], state["epoch"]
    for epoch in range(start_epoch, t.epochs):
        model.train()
        began, loss_sum, seen = time.time(), 0.0, 0
        for x, y in tqdm(train_loader, desc=f"{cfg.name} epoch {epoch + 1}/{t.epochs}", leave=False, unit="batch"):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            y_b, lam = y, 1.0
            if cfg.method == "cutmix":
                x, y, y_b, lam = cutmix_batch(x, y, t.cutmix_alpha, t.cutmix_prob)
            loss = train_step(model, optimizer, scaler, x, y, y_b, lam, use_amp)
            loss_sum += loss.item() * len(y)
            seen += len(y)
        test_acc = test_loss = float("nan")
        if (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs:
            test_acc, test_loss, preds = evaluate(model, test_loader, device)
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / seen, "test_loss": test_loss,
                        "test_acc": test_acc, "seconds": time.time() - began})
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / ".checkpoint.pt.tmp"
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                    "rng": _rng_state(loader_gen), "history": history, "epoch": epoch + 1}, tmp)
        tmp.replace(ckpt)
    write_table(out_dir / "metrics.csv", pd.DataFrame(history))
    if preds is None:  # resumed after the last epoch's checkpoint: predictions were not kept
        _, _, preds = evaluate(model, test_loader, device)
    write_table(out_dir / "predictions.parquet", test[["image_id", "label_idx"]].assign(pred=preds))
    result = {"config": cfg.name, "method": cfg.method, "setting": cfg.setting, "proportion": cfg.proportion,
              "seed": cfg.seed, "test_acc": history[-1]["test_acc"], "epochs": t.epochs,
              "train_images": len(train), "generated_images": int((train.origin == "generated").sum())}
    write_json(result_file, result)
    ckpt.unlink(missing_ok=True)  # the result is final; the checkpoint (hundreds of MB for ViT-B) is not needed
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
            from .curation import load_curated

            curated = load_curated(params, filtered=cfg.method == "sgid_filtered")
            curated = curated.assign(label_idx=lambda d: d.label.map(index), origin="generated")
            subset = sgid_subset(curated, cfg.proportion, params.run.seed)
            additions[(cfg.method, cfg.proportion)] = subset[["image_id", "path", "label", "label_idx", "origin"]]
    return train.reset_index(drop=True), test.reset_index(drop=True), additions, len(labels)


def run_training(params: Params) -> pd.DataFrame | None:
    """Train every (method, proportion, seed); write training/results.parquet (one row per run).

    Under several processes (``--shard`` or ``accelerate launch``) each trains its share of the
    configurations on its own GPU; the table is written once every configuration has a result.
    """
    from .pipeline import ensure_inputs, gpu_memory_hint, my_share

    images = ensure_inputs(params)
    stage_dir = Path(params.run.dir) / "training"
    check_fingerprint(stage_dir, params.stage_fingerprint("train"), "train")
    train, test, additions, num_classes = training_sets(params, images)
    all_configs = configs(params)
    mine = set(my_share(c.name for c in all_configs))
    for cfg in tqdm([c for c in all_configs if c.name in mine], desc="training runs", unit="run"):
        extra = additions.get((cfg.method, cfg.proportion))
        data = pd.concat([train, extra], ignore_index=True) if extra is not None else train
        with gpu_memory_hint(f"training {cfg.name}", f"Lower training.batch_size (now {params.training.batch_size})."):
            train_config(params, cfg, data, test, num_classes)
    result_files = [stage_dir / c.name / "result.json" for c in all_configs]
    if not all(f.exists() for f in result_files):
        return None
    table = pd.DataFrame([read_json(f) for f in result_files])
    write_table(stage_dir / "results.parquet", table)
    return table


def load_results(params: Params) -> pd.DataFrame:
    return read_table(Path(params.run.dir) / "training" / "results.parquet")


def load_history(params: Params) -> pd.DataFrame:
    frames = []
    for cfg in configs(params):
        f = Path(params.run.dir) / "training" / cfg.name / "metrics.csv"
        if f.exists():
            frames.append(read_table(f).assign(setting=cfg.setting, seed=cfg.seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
