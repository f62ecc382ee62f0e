"""The generic pieces of a training loop: one optimisation step, evaluation, the optimizer, the step plan
and learning-rate schedule, one epoch, and the state a checkpoint keeps.

The training stage (``stages.training``) puts them together per configuration; the benchmarks time
``train_step`` and ``optimizer_for`` on their own. Nothing here reads or writes a run directory except
``Loop.save``/``Loop.resume`` (``load_checkpoint``: data only), given the checkpoint's path.
"""

from __future__ import annotations

import math
import pickle
import random
import zipfile
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sgid_utils.augment.augmentations import cutmix_batch, mixed_loss
from sgid_utils.core.files import damage, reason, set_aside, write_atomic
from sgid_utils.errors import CorruptFileError
from sgid_utils.params.backbones import CUTMIX, TrainConfig
from sgid_utils.params.training import BackboneParams, TrainingParams


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
        """Continue from a checkpoint (one saved before steps were counted had full epochs of ``steps_per_epoch``);
        a damaged one is moved aside and the loop starts afresh, as if there were none (``load_checkpoint``)."""
        state = load_checkpoint(path)
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:  # checkpoints from before schedules existed: constant, nothing to restore
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], self.loader_gen)
        self.history, self.epoch = state["history"], state["epoch"]
        self.steps = state.get("steps", self.epoch * steps_per_epoch)


# What a checkpoint holds beyond tensors and Python's plain types: numpy's RNG state (an array of uint32).
SAFE_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_checkpoint(path: Path) -> dict | None:
    """A checkpoint's state, read as data only: torch's ``weights_only`` unpickler, with ``SAFE_GLOBALS`` allowed.

    A run directory travels (Drive, NFS), so a checkpoint is never unpickled freely. A damaged one (cut short, emptied,
    garbled) is moved aside and None returned: the configuration trains from the start, with the same seeds, as if it
    had none. A whole archive that asks for any other Python object is refused (``CorruptFileError``): this package
    never writes one, so something else replaced it; nothing in it is run.
    """
    path = Path(path)
    why = damage(path)
    if why is None:
        try:
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            allowed = {f"{o.__module__}.{o.__name__}" for o in SAFE_GLOBALS}
            foreign = [g for g in _unsafe_globals(path) if g not in allowed]
            if foreign:
                raise CorruptFileError(
                    f"{path} is not a data-only checkpoint: it asks to load {', '.join(foreign)}, which this package "
                    "never writes, so it was not loaded. If you did not put it there, delete it (that configuration "
                    "then trains from the start) and check where the run directory came from.") from None
            why = reason(exc)
        except (RuntimeError, ValueError, EOFError, OSError, zipfile.BadZipFile) as exc:
            why = reason(exc)
    set_aside(path, why)
    return None


def _unsafe_globals(path: Path) -> list[str]:
    """The Python objects a checkpoint's pickle names, read without running it ([] when it cannot be read)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError):
        return []


def optimizer_for(bb: BackboneParams, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The backbone's optimizer over the model's parameters (on their device already); Adam and AdamW fused into one
    kernel on CUDA, which also lets the fp16 loss scaler pass its overflow check to the kernel instead of reading
    it on the host (torch's default elsewhere: the CPU's results stay the same)."""
    if bb.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=bb.lr, momentum=bb.momentum, weight_decay=bb.weight_decay)
    kind = torch.optim.AdamW if bb.optimizer == "adamw" else torch.optim.Adam
    fused = all(p.is_cuda for p in model.parameters()) or None
    return kind(model.parameters(), lr=bb.lr, weight_decay=bb.weight_decay, fused=fused)


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


def train_epoch(loop: Loop, loader: DataLoader, cfg: TrainConfig, t: TrainingParams, device: torch.device,
                use_amp: bool, desc: str, max_steps: int) -> float:
    """One pass over the training set, stopping after ``max_steps`` batches; returns the mean training loss.

    The loss is summed on the device in float64 and read once per epoch (a per-step ``.item()`` would stop the host
    at every step); float64 sums of the float32 losses are what the host's float sums were, to the bit."""
    loop.model.train()
    loss_sum, seen = torch.zeros((), dtype=torch.float64, device=device), 0
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
        loss_sum += loss.detach().double() * len(y)
        seen += len(y)
    return loss_sum.item() / seen
