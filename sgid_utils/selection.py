"""Which of a source's k candidates enters training: the selection rule (``curation.select``).

The report: "3 images are generated per original image and human-in-the-loop approach is used
to select the best image out of the 3", where the aim is "realistic-looking images ... that still
retain the style, background, and camera angle while introducing some variation from the original
image". Three automatic stand-ins, all over the candidates that compete (the upscaled regeneration
where there is one, else the raw pass):

- ``most_diverse_consistent`` (default; this package's reading, a hypothesis): among the candidates
  that CLIP still labels as the source's class and whose image-image similarity to the source is at
  least the floor (``curation.min_similarity``, by default the median of all competing candidates,
  so the better half), the *least* similar one: it keeps the subject (label check), stays
  realistic (the floor keeps near-failures out) and brings the most variation, which is what SGID
  exists for. A source none of whose candidates passes falls back to its most similar candidate
  (counted in ``curation/quality.json``), so every source still contributes one image, as in the report.
- ``most_similar``: the highest similarity, the package's former rule. At strength 0.3 with a
  guidance scale near 1 that is the *least changed* candidate, often a near-copy of the source.
- ``random``: one candidate per source, drawn from (run seed, image id, k): no preference at all.

The ablation profiles train the other two rules as variants, so the default is measured, not assumed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .seeding import derive_seed

RULES = ("most_diverse_consistent", "most_similar", "random")


def competing(candidates: pd.DataFrame) -> pd.Series:
    """The candidates that compete for a source: the upscaled regeneration where there is one, else raw."""
    upscaled = candidates.groupby("image_id").variant.transform(lambda v: (v == "upscaled").any())
    return (candidates.variant == "upscaled") | ~upscaled


def select(candidates: pd.DataFrame, rule: str = "most_similar", min_similarity: float | None = None,
           seed: int = 0) -> pd.DataFrame:
    """One candidate per source by ``rule``; adds ``fallback`` (True where no candidate was eligible).

    ``candidates`` needs image_id, variant, k and similarity, and ``consistent`` for
    ``most_diverse_consistent`` (which also needs ``min_similarity``). Ties go to the lower k.
    """
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; choose one of {RULES}")
    pool = candidates[competing(candidates).to_numpy()]
    fallback = np.zeros(len(pool), dtype=bool)
    if rule == "most_similar":
        key = -pool.similarity.to_numpy(dtype=float)
    elif rule == "random":
        key = np.array([derive_seed(seed, i, k, purpose="select") for i, k in zip(pool.image_id, pool.k)], dtype=float)
    else:
        if min_similarity is None:
            raise ValueError("most_diverse_consistent needs min_similarity")
        ok = pool.consistent.fillna(False).astype(bool).to_numpy() & (pool.similarity.to_numpy() >= min_similarity)
        similarity = pool.similarity.to_numpy(dtype=float)
        key = np.where(ok, similarity, 3.0 - similarity)  # eligible first, least similar; then most similar (cosine <= 1)
        fallback = ~ok
    ranked = pool.assign(_key=key, fallback=fallback).sort_values(["image_id", "_key", "k"], kind="stable")
    return ranked.groupby("image_id").head(1).drop(columns="_key").reset_index(drop=True)
