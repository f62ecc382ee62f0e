"""Stage 02: CLIP image-caption similarity; the best caption c* and its score s* per image.

s* is the raw cosine of the L2-normalised CLIP embeddings, in [-1, 1]: not multiplied by CLIP's logit
scale, not a softmax over the image's captions, not CLIPScore (2.5 * max(cos, 0)). The report names only
"the similarity score" (its examples, 0.301 and 0.396, fit a raw cosine), so this is a reading; the
guidance mapping f(s*) takes it as it is. The same CLIP (``models.clip``) and embedding helpers serve
stage 04 (image-image similarity between a source and its generated candidates), which is our choice:
the report does not name the model behind its image-image cosines.
"""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F

from .captioning import load_captions
from .data import load_image
from .io import read_table, write_table
from .models import load_clip, resolve_device
from .resumable import Batches, run_items
from .rundir import RunDir
from .schema import Params


def _features(out) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output holds the projected embedding.
    return out.pooler_output if hasattr(out, "pooler_output") else out


@torch.inference_mode()
def image_embeddings(model, processor, images: list) -> torch.Tensor:
    """L2-normalised CLIP image embeddings, one row per image."""
    inputs = processor(images=images, return_tensors="pt").to(model.device)
    return F.normalize(_features(model.get_image_features(**inputs)).float(), dim=-1)


@torch.inference_mode()
def text_embeddings(model, processor, texts: list[str]) -> torch.Tensor:
    """L2-normalised CLIP text embeddings (texts truncated to CLIP's 77 tokens)."""
    inputs = processor(text=texts, return_tensors="pt", padding=True, truncation=True, max_length=77).to(model.device)
    return F.normalize(_features(model.get_text_features(**inputs)).float(), dim=-1)


@torch.inference_mode()
def score_captions(model, processor, images: list, captions: list[list[str]]) -> list[list[float]]:
    """CLIP cosine of each image with each of its captions: one image call and one text call for the whole batch."""
    counts = [len(c) for c in captions]
    img = image_embeddings(model, processor, images)
    txt = text_embeddings(model, processor, [c for caps in captions for c in caps])
    owner = torch.repeat_interleave(torch.arange(len(images)), torch.tensor(counts)).to(txt.device)
    return [s.tolist() for s in (txt * img[owner]).sum(-1).cpu().split(counts)]


def pick_best(scores: pd.DataFrame) -> pd.DataFrame:
    """Per image, the caption with the highest similarity (ties: the first in method/rank order)."""
    ordered = scores.sort_values(["image_id", "score", "method", "rank"], ascending=[True, False, True, True], kind="stable")
    best = ordered.groupby("image_id", sort=True).head(1)
    return best.rename(columns={"score": "s_star"}).reset_index(drop=True)


def run_similarity(params: Params, images: pd.DataFrame) -> pd.DataFrame | None:
    """Score every caption against its image; write scores.parquet and best.parquet (once all are done)."""
    run = RunDir.of(params)
    paths = images.set_index("image_id").path
    captions = load_captions(params)
    by_image = captions.groupby("image_id")

    def start(todo: list[str]) -> Batches:
        device = resolve_device(params)
        model, processor = load_clip(params.models.clip, str(device))

        def process(ids: list[str]) -> dict[str, list[dict]]:
            groups = [by_image.get_group(i) for i in ids]
            scores = score_captions(model, processor, [load_image(paths[i]) for i in ids],
                                    [g.caption.tolist() for g in groups])
            return {i: g.assign(score=s).to_dict("records") for i, g, s in zip(ids, groups, scores)}

        return Batches(process, params.similarity.batch_size, "similarity", "similarity.batch_size")

    records = run_items(run.items("similarity"), list(dict.fromkeys(captions.image_id)), start)
    if records is None:
        return None
    scores = pd.DataFrame([r for recs in records for r in recs])
    write_table(run.scores_table, scores)
    best = pick_best(scores)
    write_table(run.best_table, best)
    return best


def load_scores(params: Params) -> pd.DataFrame:
    return read_table(RunDir.of(params).scores_table)


def load_best(params: Params) -> pd.DataFrame:
    return read_table(RunDir.of(params).best_table)
