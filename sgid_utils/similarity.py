"""Stage 02: CLIP image-caption similarity; the best caption c* and its score s* per image.

The same CLIP embedding helpers serve stage 04 (image-image similarity between a
source and its generated candidates).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import load_image
from .io import ItemStore, check_fingerprint, read_table, write_table
from .models import load_clip, resolve_device
from .params import Params


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


def run_similarity(params: Params) -> pd.DataFrame | None:
    """Score every caption against its image; write scores.parquet and best.parquet (once all are done)."""
    from .captioning import load_captions
    from .pipeline import ensure_inputs, gpu_memory_hint, my_share

    images = ensure_inputs(params).set_index("image_id")
    captions = load_captions(params)
    stage_dir = Path(params.run.dir) / "similarity"
    check_fingerprint(stage_dir, params.stage_fingerprint("similarity"), "similarity")
    store = ItemStore(stage_dir / "items")
    ids = list(dict.fromkeys(captions.image_id))
    todo = store.todo(my_share(ids))
    if todo:
        device = resolve_device(params)
        model, processor = load_clip(params.models.clip, str(device))
        by_image = captions.groupby("image_id")
        bs = params.similarity.batch_size
        for start in tqdm(range(0, len(todo), bs), desc="similarity", unit="batch"):
            batch = todo[start:start + bs]
            with gpu_memory_hint("scoring captions", f"Lower similarity.batch_size (now {bs})."):
                groups = [by_image.get_group(i) for i in batch]
                scores = score_captions(model, processor, [load_image(images.loc[i, "path"]) for i in batch],
                                        [g.caption.tolist() for g in groups])
            for image_id, group, score in zip(batch, groups, scores):
                store.put(image_id, group.assign(score=score).to_dict("records"))
    if not store.complete(ids):
        return None
    scores = pd.DataFrame([r for recs in store.records(ids) for r in recs])
    write_table(stage_dir / "scores.parquet", scores)
    best = pick_best(scores)
    write_table(stage_dir / "best.parquet", best)
    return best


def load_scores(params: Params) -> pd.DataFrame:
    return read_table(Path(params.run.dir) / "similarity" / "scores.parquet")


def load_best(params: Params) -> pd.DataFrame:
    return read_table(Path(params.run.dir) / "similarity" / "best.parquet")
