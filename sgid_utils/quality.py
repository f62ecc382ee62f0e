"""Quality control of generated images, and metrics of a generated set.

Three filters decide which generated candidates may enter training, each from
CLIP embeddings the stages already compute: image-image similarity to the source
(drops "abstract art"), label consistency (a zero-shot CLIP classifier must still
see the source's class) and a real-vs-generated detector (drops the candidates a
linear probe finds most surely fake). ``apply_filters`` chains them in a chosen
order and records which filter dropped each candidate.

The metrics follow the paper's two axes: semantic consistency (does the image
still show its label?) and diversity (how far from its source, how spread within
its class?), plus FID/KID through torchmetrics when Inception weights are at hand.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

FILTERS = ("similarity", "label", "detector")
# The candidates-table column each filter reads.
FILTER_COLUMNS = {"similarity": "similarity", "label": "consistent", "detector": "fake_probability"}

Embeddings = torch.Tensor | np.ndarray


def _unit_rows(x: Embeddings) -> np.ndarray:
    """Rows scaled to unit length (float64), so dot products are cosines whatever the caller passed."""
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D array of embeddings (one row per image), got shape {a.shape}")
    return a / np.linalg.norm(a, axis=1, keepdims=True)


# --- 1. similarity to the source -------------------------------------------------------------------------------

def suggest_threshold(similarities: Sequence[float] | np.ndarray | pd.Series, quantile: float = 0.05) -> float:
    """The ``quantile`` of the observed source-candidate similarities, as a similarity threshold.

    A quantile rather than a fixed number because CLIP cosines have no scale that
    transfers between CLIP models or data sets (the tiny smoke CLIP and ViT-B/32 differ
    wildly); at img2img strength 0.3 most candidates stay close to their source, and
    the failures form the low tail. Note it always removes about ``quantile`` of the
    candidates, failures or not: it is a budget, so look at the histogram first.
    """
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must lie in [0, 1], got {quantile}")
    values = np.asarray(similarities, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise ValueError("no similarities to take a quantile of")
    return float(np.quantile(values, quantile))


def similarity_filter(candidates: pd.DataFrame, threshold: float) -> pd.Series:
    """True where a candidate's CLIP image-image similarity to its source is >= ``threshold`` (NaN: dropped)."""
    return (candidates["similarity"] >= threshold).rename("kept_by_similarity")


# --- 2. label consistency (zero-shot CLIP) ---------------------------------------------------------------------

def class_prompts(class_names: Sequence[str], noun: str | None = None) -> list[str]:
    """CLIP's zero-shot prompts: "a photo of a <label>, a type of <noun>." (noun e.g. "pet", "flower")."""
    if noun:
        return [f"a photo of a {name}, a type of {noun}." for name in class_names]
    return [f"a photo of a {name}." for name in class_names]


def zero_shot_scores(image_emb: Embeddings, text_emb: Embeddings) -> torch.Tensor:
    """Cosine similarity of every image (N, D) with every class prompt (C, D): an (N, C) tensor."""
    img = F.normalize(torch.as_tensor(image_emb).float(), dim=-1)
    txt = F.normalize(torch.as_tensor(text_emb).float(), dim=-1)
    return img @ txt.T


def label_consistency(image_emb: Embeddings, text_emb: Embeddings, labels: Sequence[int] | np.ndarray) -> pd.DataFrame:
    """Per image: ``label_score`` (cosine with its own class prompt), ``predicted`` (argmax class index)
    and ``consistent`` (predicted == label). ``labels`` index the rows of ``text_emb``."""
    scores = zero_shot_scores(image_emb, text_emb)
    idx = torch.as_tensor(np.array(labels, dtype=np.int64))
    if idx.shape != (scores.shape[0],):
        raise ValueError(f"need one label per image: {scores.shape[0]} images, labels of shape {tuple(idx.shape)}")
    if len(idx) and (idx.min() < 0 or idx.max() >= scores.shape[1]):
        raise ValueError(f"labels must index the {scores.shape[1]} class prompts; got {idx.min()}..{idx.max()}")
    predicted = scores.argmax(dim=1)
    return pd.DataFrame({
        "label_score": scores.gather(1, idx[:, None]).squeeze(1).numpy(),
        "predicted": predicted.numpy(),
        "consistent": (predicted == idx).numpy(),
    })


# --- 3. real-vs-generated detector ------------------------------------------------------------------------------

def real_vs_generated(real_emb: Embeddings, gen_emb: Embeddings, folds: int = 5, seed: int = 0) -> dict:
    """How well a linear probe on CLIP embeddings tells generated images from real ones.

    Standardised logistic regression, stratified k-fold (``folds`` is reduced to the
    smaller class's size). Returns ``cv_accuracy`` (mean over folds), ``cv_accuracy_std``,
    ``chance_accuracy`` (the majority share: what a probe that learned nothing scores),
    ``folds`` used, and ``fake_probability``: each generated image's out-of-fold
    probability of being generated (aligned with ``gen_emb``), so the most surely fake
    can be dropped without the probe having seen them. Accuracy near chance means the
    generated images are indistinguishable from real ones to CLIP.
    """
    if folds < 2:
        raise ValueError(f"cross-validation needs folds >= 2, got {folds}")
    real, gen = _unit_rows(real_emb), _unit_rows(gen_emb)
    smaller = min(len(real), len(gen))
    if smaller < 2:
        raise ValueError(f"the detector needs at least 2 real and 2 generated images; got {len(real)} real, {len(gen)} generated")
    n_splits = min(folds, smaller)
    x = np.vstack([real, gen])
    y = np.r_[np.zeros(len(real), dtype=int), np.ones(len(gen), dtype=int)]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    out = cross_validate(probe, x, y, cv=cv, scoring="accuracy", return_estimator=True, return_indices=True)
    prob = np.empty(len(y))
    for est, test in zip(out["estimator"], out["indices"]["test"]):
        prob[test] = est.predict_proba(x[test])[:, list(est.classes_).index(1)]
    acc = out["test_score"]
    return {
        "cv_accuracy": float(acc.mean()),
        "cv_accuracy_std": float(acc.std(ddof=1)),
        "chance_accuracy": max(len(real), len(gen)) / len(y),
        "folds": n_splits,
        "fake_probability": prob[len(real):],
    }


def detector_filter(fake_probability: Sequence[float] | np.ndarray, drop_fraction: float) -> np.ndarray:
    """Keep-mask dropping the round(drop_fraction * n) most-surely-fake images (ties: the earlier is dropped)."""
    if not 0 <= drop_fraction <= 1:
        raise ValueError(f"drop_fraction must lie in [0, 1], got {drop_fraction}")
    p = np.asarray(fake_probability, dtype=np.float64)
    n_drop = int(drop_fraction * len(p) + 0.5)  # half rounds up, as sgid_subset
    keep = np.ones(len(p), dtype=bool)
    keep[np.argsort(-p, kind="stable")[:n_drop]] = False
    return keep


# --- 4. composition ---------------------------------------------------------------------------------------------

def apply_filters(
    candidates: pd.DataFrame,
    order: Sequence[str],
    similarity_threshold: float | None = None,
    detector_drop_fraction: float = 0.0,
) -> pd.DataFrame:
    """Run the named filters in ``order``; each sees only the candidates the earlier ones kept.

    ``candidates`` holds the score columns the named filters read: ``similarity``
    (filter "similarity", kept when >= ``similarity_threshold``), ``consistent``
    (filter "label") and ``fake_probability`` (filter "detector", which drops the
    ``detector_drop_fraction`` most surely fake of the candidates that reach it, so
    its place in the order matters). Returns a copy with one nullable boolean
    ``kept_by_<filter>`` column per filter (<NA> where an earlier filter had already
    dropped the candidate), ``kept`` and ``dropped_by`` (the filter that dropped it,
    missing if kept). Best-of-k is then chosen among the kept; a source that lost all its
    candidates contributes nothing.
    """
    unknown = [f for f in order if f not in FILTERS]
    if unknown or len(set(order)) != len(order):
        raise ValueError(f"filters must be distinct names from {FILTERS}; got {list(order)}")
    missing = [FILTER_COLUMNS[f] for f in order if FILTER_COLUMNS[f] not in candidates.columns]
    if missing:
        raise ValueError(f"candidates lack the column(s) {missing} that filters {list(order)} read")
    if "similarity" in order and similarity_threshold is None:
        raise ValueError("the similarity filter needs similarity_threshold (see suggest_threshold)")
    out = candidates.copy()
    alive = np.ones(len(out), dtype=bool)  # positional masks: any index, duplicates included
    dropped_by = np.full(len(out), None, dtype=object)
    for name in order:
        seen = out[alive]
        if name == "similarity":
            verdict = similarity_filter(seen, similarity_threshold).to_numpy()
        elif name == "label":
            verdict = seen["consistent"].eq(True).to_numpy()
        else:
            if seen["fake_probability"].isna().any():
                raise ValueError("the detector filter met candidates without a fake_probability")
            verdict = detector_filter(seen["fake_probability"], detector_drop_fraction)
        column = pd.array([pd.NA] * len(out), dtype="boolean")
        column[alive] = verdict
        out[f"kept_by_{name}"] = column
        reached = np.flatnonzero(alive)
        dropped_by[reached[~verdict]] = name
        alive[reached[~verdict]] = False
    out["kept"] = alive
    out["dropped_by"] = dropped_by
    return out


# --- 5. metrics of a generated set -----------------------------------------------------------------------------

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
    gen, src = _unit_rows(gen_emb), _unit_rows(src_emb)
    if gen.shape != src.shape:
        raise ValueError(f"one source row per generated row is needed; got {gen.shape} and {src.shape}")
    return 1.0 - (gen * src).sum(axis=1)


def within_class_spread(emb: Embeddings, labels: Sequence[int] | np.ndarray) -> float:
    """Mean pairwise (1 - cosine) within each class, averaged over classes (a class with < 2 images is skipped).

    NaN when no class has two images.
    """
    x = _unit_rows(emb)
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
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n_real, n_gen = len(real_images), len(gen_images)
    if min(n_real, n_gen) < 2:
        raise ValueError(f"FID/KID need at least 2 images per set; got {n_real} real, {n_gen} generated")
    try:
        net = FrechetInceptionDistance(feature=feature,
                                       feature_extractor_weights_path=None if weights_path is None else str(weights_path)).inception
    except (OSError, ModuleNotFoundError) as exc:  # URLError offline, a missing weights file, no torch-fidelity
        warnings.warn(f"FID/KID skipped: the Inception-v3 feature extractor could not be loaded "
                      f"({type(exc).__name__}: {exc}). Install torch-fidelity and run once online, or pass weights_path.",
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
