"""DA-Fusion's training-time use of its images: each sample of an epoch is a real image, replaced with probability p
by one of that image's M synthetic images (``semantic_aug/few_shot_dataset.py``'s ``__getitem__``).

Written as a torch ``Sampler`` over the real images followed by the synthetic ones (one dataset, as the training
stage builds it): an epoch draws a permutation of the real images and, for each, whether it is replaced and by which
of its synthetic images, all from the loader's generator, so the draws follow the training seed, resume with the
loader's state and do not depend on the number of worker processes. An epoch has as many samples as real images:
the recipe trains for the Baseline's steps.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class ReplacementSampler(Sampler[int]):
    def __init__(self, n_real: int, synthetic_of: Sequence[Sequence[int]], p: float, generator: torch.Generator):
        """``synthetic_of[i]``: the dataset indices of real image i's synthetic images (possibly none)."""
        if len(synthetic_of) != n_real:
            raise ValueError(f"synthetic_of lists {len(synthetic_of)} real images, expected {n_real}")
        self.n_real, self.synthetic_of, self.p, self.generator = n_real, synthetic_of, p, generator

    def __len__(self) -> int:
        return self.n_real

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.n_real, generator=self.generator).tolist()
        replace = (torch.rand(self.n_real, generator=self.generator) < self.p).tolist()
        pick = torch.rand(self.n_real, generator=self.generator).tolist()
        for i, swap, u in zip(order, replace, pick):
            choices = self.synthetic_of[i]
            yield choices[int(u * len(choices))] if swap and choices else i


def synthetic_indices(real_ids: Sequence[str], synthetic_ids: Sequence[str], offset: int) -> list[list[int]]:
    """For each real image id, the dataset indices (``offset`` + position) of the synthetic rows made from it."""
    where: dict[str, list[int]] = {i: [] for i in real_ids}
    for k, source in enumerate(synthetic_ids):
        if source in where:
            where[source].append(offset + k)
    return [where[i] for i in real_ids]
