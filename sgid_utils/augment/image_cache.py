"""Training images decoded and resized once per process, shared by every training configuration.

Decoding and resizing a Pets-sized JPEG costs about 3.3 ms of a CPU core: two loader
workers doing it every epoch would cap a GPU at about 600 images/s (bench/README.md).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.transforms.functional import pil_to_tensor
from tqdm.auto import tqdm

from sgid_utils.core.images import load_run_image


class ImageCache:
    """Decoded, resized uint8 CHW tensors by path: decode once, train many configurations."""

    def __init__(self, size: int):
        self.size = size
        self._store: dict[str, torch.Tensor] = {}

    def get(self, path: str) -> torch.Tensor:
        if path not in self._store:
            img = load_run_image(path).resize((self.size, self.size), resample=3)  # bicubic, as timm's ViT config
            self._store[path] = pil_to_tensor(img)
        return self._store[path]

    def warm(self, paths: list[str]) -> None:
        for p in tqdm([p for p in dict.fromkeys(paths) if p not in self._store], desc="decode images",
                      unit="img", leave=False):
            self.get(p)


_CACHES: dict[int, ImageCache] = {}


def shared_cache(size: int) -> ImageCache:
    """One cache per image size for the whole process: every training configuration reuses the decoded images."""
    return _CACHES.setdefault(size, ImageCache(size))


class CachedImages(Dataset):
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
