"""The non-generative augmentations SGID is compared with: RandAugment (N=2, M=9) and CutMix (alpha=1, p=0.5).

Libraries do the work (torchvision's RandAugment, timm's CutMix box); only the
official CutMix train loop's per-batch coin and loss are written here, because timm's
``Mixup`` applies to every batch and needs an even batch size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from timm.data.mixup import cutmix_bbox_and_lam
from torchvision import transforms

from sgid_utils.params.training import TrainingParams


def randaugment(t: TrainingParams) -> transforms.RandAugment:
    """torchvision's RandAugment at its defaults, N=2 and M=9: the report's 'default parameters' (Sources
    `training.randaugment_num_ops`, `training.randaugment_magnitude`)."""
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
