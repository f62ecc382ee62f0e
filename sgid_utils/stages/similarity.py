"""The similarity stage: CLIP image-caption similarity; the best caption c* and its score s* per image.

s* is the raw cosine of the L2-normalised CLIP embeddings, in [-1, 1]: not multiplied by CLIP's logit
scale, not a softmax over the image's captions, not CLIPScore (2.5 * max(cos, 0)). The report names only
"the similarity score" (its examples, 0.301 and 0.396, fit a raw cosine), so this is a reading; the
guidance mapping f(s*) takes it as it is. The same CLIP (``models.clip``) and embedding helpers
(``augment.embeddings``) serve the curation stage (image-image similarity between a source and its generated
candidates), which is our choice: the report does not name the model behind its image-image cosines.
"""

from __future__ import annotations

import pandas as pd

from sgid_utils.augment.embeddings import score_captions
from sgid_utils.augment.prompts import with_decoding_column
from sgid_utils.core import catalog
from sgid_utils.core.images import load_run_image
from sgid_utils.core.resumable import BatchPlan, run_items
from sgid_utils.core.rundir import RunDir
from sgid_utils.models.loading import load_clip, resolve_device
from sgid_utils.params.schema import Params


def pick_best(scores: pd.DataFrame) -> pd.DataFrame:
    """Per image, the caption with the highest similarity (ties: the first in decoding/rank order)."""
    ordered = scores.sort_values(["image_id", "score", "decoding", "rank"], ascending=[True, False, True, True],
                                 kind="stable")
    best = ordered.groupby("image_id", sort=True).head(1)
    return best.rename(columns={"score": "s_star"}).reset_index(drop=True)


def run(params: Params, images: pd.DataFrame) -> pd.DataFrame | None:
    """Score every caption against its image; write scores.parquet and best_captions.parquet (once all are done)."""
    run = RunDir.of(params)
    paths = images.set_index("image_id").path
    captions = catalog.load(params, "captions")
    by_image = captions.groupby("image_id")

    def start(todo: list[str]) -> BatchPlan:
        device = resolve_device(params)
        model, processor = load_clip(params.models.clip, str(device))

        def process(ids: list[str]) -> dict[str, list[dict]]:
            groups = [by_image.get_group(i) for i in ids]
            scores = score_captions(model, processor, [load_run_image(paths[i]) for i in ids],
                                    [g.caption.tolist() for g in groups])
            return {i: g.assign(score=s).to_dict("records") for i, g, s in zip(ids, groups, scores)}

        return BatchPlan(process, params.similarity.batch_size, "similarity", "similarity.batch_size")

    records = run_items(run.items("similarity"), list(dict.fromkeys(captions.image_id)), start)
    if records is None:
        return None
    scores = with_decoding_column(pd.DataFrame([r for recs in records for r in recs]))  # older records too
    catalog.save(params, "scores", scores)
    best = pick_best(scores)
    catalog.save(params, "best_captions", best)
    return best
