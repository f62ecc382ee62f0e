"""Metrics of an image set for the two properties the abstract names ('semantic consistency and image diversity';
the metrics are ours), and FID/KID.

Semantic consistency (does the image still show its label?) and diversity (how far
from its source, how spread within its class?) from CLIP embeddings the stages
already saved, plus FID/KID through torchmetrics when Inception weights are at hand.
``set_metrics`` puts every image set of a run on the two axes: the quality stage tabulates
and plots it, and the ablations compare each variant's curated set (``CURATED``) with it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchvision.transforms.functional import pil_to_tensor

from sgid_utils.augment.embeddings import class_prompt_embeddings, load_embeddings
from sgid_utils.augment.filters import Embeddings, label_consistency, unit_rows
from sgid_utils.augment.selection import selections
from sgid_utils.core import catalog
from sgid_utils.core.images import load_run_image
from sgid_utils.params.schema import Params

CURATED = "curated (selected)"  # the set curation.select picked: the one SGID trains on


def consistency_metrics(image_emb: Embeddings, text_emb: Embeddings, labels: Sequence[int] | np.ndarray) -> dict:
    """Semantic consistency of a set: mean cosine with its own class prompt and zero-shot label accuracy.

    Compute it for the generated set and for the real images alike: the real set's
    numbers say how far CLIP's zero-shot classifier can be trusted on this data set.
    """
    table = label_consistency(image_emb, text_emb, labels)
    return {"mean_label_score": float(table.label_score.mean()), "zero_shot_accuracy": float(table.consistent.mean()),
            "n": len(table)}


def source_distance(gen_emb: Embeddings, src_emb: Embeddings) -> np.ndarray:
    """1 - cosine between each generated image and its source (row i with row i): how far img2img moved it."""
    gen, src = unit_rows(gen_emb), unit_rows(src_emb)
    if gen.shape != src.shape:
        raise ValueError(f"one source row per generated row is needed; got {gen.shape} and {src.shape}")
    return 1.0 - (gen * src).sum(axis=1)


def within_class_spread(emb: Embeddings, labels: Sequence[int] | np.ndarray) -> float:
    """Mean pairwise (1 - cosine) within each class, averaged over classes (a class with < 2 images is skipped).

    NaN when no class has two images.
    """
    x = unit_rows(emb)
    labels = np.asarray(labels)
    spreads = []
    for label in np.unique(labels):
        members = x[labels == label]
        n = len(members)
        if n < 2:
            continue
        iu = np.triu_indices(n, k=1)
        spreads.append(float((1.0 - members @ members.T)[iu].mean()))
    return float(np.mean(spreads)) if spreads else float("nan")


def _chosen(candidates: pd.DataFrame, picked: pd.DataFrame) -> np.ndarray:
    """Mask over ``candidates`` of the rows in ``picked`` (same image, pass and candidate index)."""
    keys = ["image_id", "generation_pass", "k"]
    return candidates.set_index(keys).index.isin(picked.set_index(keys).index)


def set_metrics(params: Params) -> pd.DataFrame:
    """Our consistency and diversity metrics for each image set, from the saved CLIP embeddings.

    Semantic consistency: mean CLIP score of each image with its own class prompt, and the accuracy
    of CLIP zero-shot classification over the class prompts. Diversity: mean (1 - cosine) between a
    generated image and its source, and the mean pairwise (1 - cosine) within each class. Besides the
    sets the run made, one row per selection rule ("selected: <rule>") shows what each rule would pick.
    """
    candidates = catalog.load(params, "candidates")
    emb, sources = load_embeddings(params, candidates)
    classes, text, position = class_prompt_embeddings(params, candidates)
    source_label = candidates.drop_duplicates("image_id").set_index("image_id").label
    real_ids = list(sources)
    real = np.stack([sources[i] for i in real_ids])
    real_labels = source_label.loc[real_ids].map(position).to_numpy()
    sets = {"real (sources)": ("run", None), "generated (raw)": ("run", candidates.generation_pass == "raw"),
            "generated (upscaled)": ("run", candidates.generation_pass == "upscaled"),
            CURATED: ("run", _chosen(candidates, catalog.load(params, "curated")))}
    if catalog.exists(params, "curated_filtered"):
        sets["curated (filtered)"] = ("run", _chosen(candidates, catalog.load(params, "curated_filtered")))
    for rule, picked in selections(params, candidates).items():
        sets[f"rule: {rule}"] = ("selection rule", _chosen(candidates, picked))
    rows = []
    for name, (kind, mask) in sets.items():
        if mask is None:
            e, labels, dist = real, real_labels, np.nan
        else:
            mask = np.asarray(mask)
            if not mask.any():
                continue
            sub = candidates[mask]
            e, labels = emb[mask], sub.label.map(position).to_numpy()
            dist = float(source_distance(e, np.stack([sources[i] for i in sub.image_id])).mean())
        c = consistency_metrics(e, text, labels)
        rows.append({"set": name, "kind": kind, "images": len(e), "label score": c["mean_label_score"],
                     "zero-shot accuracy": c["zero_shot_accuracy"], "distance to source": dist,
                     "within-class spread": within_class_spread(e, labels)})
    return pd.DataFrame(rows)

def _batches(images: torch.Tensor, batch_size: int, device: torch.device):
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size].to(device)


class _OnePassPerBatch(torch.nn.Module):
    """A feature extractor that FID and KID share: the second call on the same batch returns the first's features.

    torchmetrics' FID and KID each run their extractor in ``update``; this halves the Inception passes.
    """

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        if hasattr(net, "num_features"):  # else torchmetrics finds the width with one dummy image
            self.num_features = net.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self._last is None or self._last[0] is not images:
            self._last = (images, self.net(images))
        return self._last[1]


def fid_kid(
    real_images: torch.Tensor,
    gen_images: torch.Tensor,
    feature: int | torch.nn.Module = 2048,
    subset_size: int = 1000,
    subsets: int = 100,
    weights_path: str | Path | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict | None:
    """FID and KID (torchmetrics) between real and generated uint8 images (N, 3, H, W).

    ``feature`` is an Inception-v3 layer width (torch-fidelity's weights, downloaded
    once from GitHub or read from ``weights_path``) or any module mapping such a batch
    to (N, D) features. When the Inception weights cannot be had (offline, or
    torch-fidelity missing) this warns why and returns None: no number is made up.
    Both metrics share one feature pass per batch; KID's subset size is capped at
    the smaller set's size and its random subsets are drawn from ``seed``.
    """
    n_real, n_gen = len(real_images), len(gen_images)
    if min(n_real, n_gen) < 2:
        raise ValueError(f"FID/KID need at least 2 images per set; got {n_real} real, {n_gen} generated")
    # Here, not at import: torchmetrics takes ~3 s to import, and the stages and the page that import this module
    # for the set metrics never compute FID/KID.
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    try:
        net = FrechetInceptionDistance(
            feature=feature, feature_extractor_weights_path=None if weights_path is None else str(weights_path)
        ).inception
    except (OSError, ModuleNotFoundError) as exc:  # URLError offline, a missing weights file, no torch-fidelity
        warnings.warn(f"FID/KID skipped: the Inception-v3 feature extractor could not be loaded "
                      f"({type(exc).__name__}: {exc}). Install torch-fidelity and run once online, "
                      "or pass weights_path.",
                      RuntimeWarning, stacklevel=2)
        return None
    size = min(subset_size, n_real, n_gen)
    shared = _OnePassPerBatch(net).eval()
    fid = FrechetInceptionDistance(feature=shared)
    with warnings.catch_warnings():  # its notice that it keeps every feature in memory: known, and small here
        warnings.filterwarnings("ignore", message=".*will save all extracted features", category=UserWarning)
        kid = KernelInceptionDistance(feature=shared, subsets=subsets, subset_size=size)
    device = torch.device(device)
    fid, kid = fid.to(device), kid.to(device)
    with torch.no_grad():
        for real, images in ((True, real_images), (False, gen_images)):
            for batch in _batches(images, batch_size, device):
                fid.update(batch, real=real)
                kid.update(batch, real=real)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            kid_mean, kid_std = kid.compute()
        return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std),
                "kid_subset_size": size, "n_real": n_real, "n_generated": n_gen}


def image_tensors(paths: Sequence[str] | pd.Series, size: int = 299) -> torch.Tensor:
    """uint8 (N, 3, size, size) tensors of the images at ``paths``, as FID and KID take them."""
    return torch.stack([pil_to_tensor(load_run_image(p).resize((size, size))) for p in paths])
