"""Per-item seeds: derived from (run seed, item id, candidate index), never from batch position.

So batch size, item order, sharding across processes and resuming cannot change
what an item's random draws are. Two seeds feed them: ``run.seed`` (the data split, the
training seeds, the SGID subsets, the error-analysis sample) and ``draw_seed`` (caption
sampling, candidate seeds, curation's random choices), so that ``run.draw`` redraws the
generated set while the data and the training runs stay the same.
"""

from __future__ import annotations

import hashlib
import os
import random
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from sgid_utils.params.schema import Params


def derive_seed(run_seed: int, item_id: str, index: int = 0, purpose: str = "") -> int:
    """A 63-bit seed from a stable hash (Python's hash() is salted per process, so not that)."""
    digest = hashlib.sha256(f"{purpose}|{run_seed}|{item_id}|{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def draw_seed(params: Params) -> int:
    """The seed of the generation draw: ``run.seed`` itself at ``run.draw`` 0 (the seeds every run had before the key
    existed), else a seed derived from (run.seed, draw), independent of run.seed's own draws."""
    run = params.run
    return run.seed if run.draw == 0 else derive_seed(run.seed, "draw", run.draw, purpose="generation-draw")


def torch_rng(seed: int) -> torch.Generator:
    """A CPU generator: diffusers draws on the CPU and moves the noise, so CPU and CUDA runs share noise."""
    return torch.Generator(device="cpu").manual_seed(seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


# cuBLAS needs a fixed workspace for reproducible matrix products on CUDA >= 10.2 (PyTorch's reproducibility notes).
CUBLAS_WORKSPACE = ":4096:8"


def deterministic_torch(on: bool) -> None:
    """``training.deterministic``: deterministic kernels only (an op without one raises, naming itself), a fixed
    cuBLAS workspace, cuDNN without autotuning; off restores PyTorch's defaults. Set before the first CUDA op of
    a training run; on the CPU the kernels are deterministic either way."""
    if on:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False
