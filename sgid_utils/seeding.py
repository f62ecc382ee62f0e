"""Per-item seeds: derived from (run seed, item id, candidate index), never from batch position.

So batch size, item order, sharding across processes and resuming cannot change
what an item's random draws are.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(run_seed: int, item_id: str, index: int = 0, purpose: str = "") -> int:
    """A 63-bit seed from a stable hash (Python's hash() is salted per process, so not that)."""
    digest = hashlib.sha256(f"{purpose}|{run_seed}|{item_id}|{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def generator(seed: int) -> torch.Generator:
    """A CPU generator: diffusers draws on the CPU and moves the noise, so CPU and CUDA runs share noise."""
    return torch.Generator(device="cpu").manual_seed(seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
