"""Which of a source's k candidates enters training: the selection rule (``curation.select``).

The report: "3 images are generated per original image and human-in-the-loop approach is used
to select the best image out of the 3"; it aims at "realistic-looking images ... that still retain
the style, background, and camera angle while introducing some variation from the original image",
and its one worked example (its Figure 4) shows the cosine similarity between original and generated
image rising about 19x after its steps. Three automatic stand-ins, all over the candidates that compete
(the upscaled regeneration where there is one, else the raw pass), all scored by the CLIP image-image
cosine of ``models.clip``:

- ``most_similar`` (default): the highest similarity to the source; our automatic reading of
  the report's hand pick.
- ``most_diverse_consistent`` (a hypothesis of this package, the ablation variant
  ``select-most-diverse-consistent``): among the candidates that CLIP still labels as the source's
  class and whose similarity to the source is at least a floor (``curation.min_similarity``; by
  default the median similarity of all competing candidates of the run), the *least* similar one,
  on the hypothesis that more variation helps while the label check keeps the subject. A source none
  of whose candidates passes falls back to its most similar candidate (counted in
  ``curation/filters_summary.json``), so every source still contributes one image (our reading of the
  report's one pick per source).
- ``random``: one candidate per source, drawn from (the generation draw's seed, image id, k): the control.

Neither the default nor the hypothesis has yet been run with the real models; the ablation profiles
train the other two rules as variants so that the difference is measured.

``choose`` applies a rule with the run's floor and generation draw, as curation does; ``selections``
shows what every rule would pick from the same candidates (notebook 04, the quality report).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sgid_utils.core.seeding import derive_seed, draw_seed
from sgid_utils.params.schema import Params

RULES = ("most_diverse_consistent", "most_similar", "random")


def competing(candidates: pd.DataFrame) -> pd.Series:
    """The candidates that compete for a source: the upscaled regeneration where there is one, else raw."""
    upscaled = candidates.groupby("image_id").generation_pass.transform(lambda v: (v == "upscaled").any())
    return (candidates.generation_pass == "upscaled") | ~upscaled


def select(candidates: pd.DataFrame, rule: str = "most_similar", min_similarity: float | None = None,
           seed: int = 0) -> pd.DataFrame:
    """One candidate per source by ``rule``; adds ``fallback`` (True where no candidate was eligible).

    ``candidates`` needs image_id, generation_pass, k and similarity, and ``consistent`` for
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
        # eligible first, least similar; then most similar (cosine <= 1)
        key = np.where(ok, similarity, 3.0 - similarity)
        fallback = ~ok
    ranked = pool.assign(_key=key, fallback=fallback).sort_values(["image_id", "_key", "k"], kind="stable")
    return ranked.groupby("image_id").head(1).drop(columns="_key").reset_index(drop=True)


def selection_floor(params: Params, candidates: pd.DataFrame) -> float:
    """curation.min_similarity, or the median similarity of the competing candidates: ``most_diverse_consistent``
    picks among the better half, away from the near-failures a low floor would admit (the other rules ignore it)."""
    if params.curation.min_similarity is not None:
        return params.curation.min_similarity
    return float(candidates[candidates.competing].similarity.median())


def choose(params: Params, candidates: pd.DataFrame, floor: float, rule: str | None = None) -> pd.DataFrame:
    """One candidate per source by ``rule`` (default curation.select) with ``selection_floor``'s floor."""
    return select(candidates, rule or params.curation.select, floor, draw_seed(params))


def selections(params: Params, candidates: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """What each selection rule picks from this run's candidates (the rule in force wrote curated.parquet)."""
    floor = selection_floor(params, candidates)
    return {rule: choose(params, candidates, floor, rule) for rule in RULES}
