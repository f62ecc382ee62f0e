"""Quality control of generated images: three filters applied before the selection (beyond the paper).

Three filters decide which generated candidates may enter training, each from
CLIP embeddings the stages already compute: ``source_similarity``, the image-image similarity to the source
(drops "abstract art"; the one the report proposes, under "Possible Improvements": discard
a generated image whose cosine similarity to the original misses a threshold), label
consistency (a zero-shot CLIP classifier must still see the source's class; this
package's) and a real-vs-generated detector (drops the candidates a linear probe finds
most surely fake; this package's). ``apply_filters`` chains them in a chosen
order and records which filter dropped each candidate. The metrics of a whole
set are in ``sgid_utils.reporting.set_metrics``.

The candidates table's column ``similarity`` holds the source similarity (curation's CLIP cosine of a candidate to its
source), which the ``source_similarity`` filter reads; the ``similarity`` stage is another thing (a caption's CLIP
similarity to its image, s*). The filter was called ``similarity`` before: ``params.load.RENAMED_VALUES`` and
``core.catalog.with_filter_names`` read the old name in params and tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

FILTERS = ("source_similarity", "label", "detector")
# The candidates-table column each filter reads.
FILTER_COLUMNS = {"source_similarity": "similarity", "label": "consistent", "detector": "fake_probability"}

Embeddings = torch.Tensor | np.ndarray


def unit_rows(x: Embeddings) -> np.ndarray:
    """Rows scaled to unit length (float64), so dot products are cosines whatever the caller passed."""
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D array of embeddings (one row per image), got shape {a.shape}")
    return a / np.linalg.norm(a, axis=1, keepdims=True)


# --- 1. source similarity: a candidate's similarity to its source ----------------------------------------------

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


def source_similarity_filter(candidates: pd.DataFrame, threshold: float) -> pd.Series:
    """True where a candidate's CLIP image-image similarity to its source (column ``similarity``) is >= ``threshold``
    (NaN: dropped)."""
    return (candidates["similarity"] >= threshold).rename("kept_by_source_similarity")


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
    generated images are indistinguishable from real ones to CLIP. ``seed``: any non-negative int (a 63-bit
    draw seed too), shuffling the folds.
    """
    if folds < 2:
        raise ValueError(f"cross-validation needs folds >= 2, got {folds}")
    real, gen = unit_rows(real_emb), unit_rows(gen_emb)
    smaller = min(len(real), len(gen))
    if smaller < 2:
        raise ValueError(f"the detector needs at least 2 real and 2 generated images; got {len(real)} real, "
                         f"{len(gen)} generated")
    n_splits = min(folds, smaller)
    x = np.vstack([real, gen])
    y = np.r_[np.zeros(len(real), dtype=int), np.ones(len(gen), dtype=int)]
    # Only the detector needs scikit-learn (a second to import).
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_validate
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed % (1 << 32))  # numpy takes 32 bits
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
    source_similarity_threshold: float | None = None,
    detector_drop_fraction: float = 0.0,
) -> pd.DataFrame:
    """Run the named filters in ``order``; each sees only the candidates the earlier ones kept.

    ``candidates`` holds the score columns the named filters read: ``similarity``
    (filter "source_similarity", kept when >= ``source_similarity_threshold``), ``consistent``
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
    if "source_similarity" in order and source_similarity_threshold is None:
        raise ValueError("the source_similarity filter needs source_similarity_threshold (see suggest_threshold)")
    out = candidates.copy()
    alive = np.ones(len(out), dtype=bool)  # positional masks: any index, duplicates included
    dropped_by = np.full(len(out), None, dtype=object)
    for name in order:
        seen = out[alive]
        if name == "source_similarity":
            verdict = source_similarity_filter(seen, source_similarity_threshold).to_numpy()
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
