"""Notebook 08's views of the compared methods' images: the same real images under each method, and each method's
set on the two axes the abstract names ('consistency and image diversity'), measured as our reading: consistency
as the CLIP label score, diversity as the distance to the source.

SGID's set is the curated one, its embeddings saved by curation (``reporting.set_metrics``), and so is that of each
variant on another sampler (SGID with LCM-LoRA, ``comparison.sampler_variants``); another method's images are embedded
here with the same CLIP model and class prompts, so every set sits on the same axes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from sgid_utils.augment.embeddings import class_prompt_embeddings, image_embeddings, load_embeddings
from sgid_utils.core import catalog
from sgid_utils.core.images import load_run_image
from sgid_utils.models.loading import load_clip, resolve_device
from sgid_utils.params.methods import AUGMENTATIONS
from sgid_utils.reporting.comparison import sampler_variants, sgid_name
from sgid_utils.reporting.set_metrics import (
    CURATED,
    consistency_metrics,
    set_metrics,
    source_distance,
    within_class_spread,
)


def method_images(params, image_ids: list[str]) -> dict[str, dict[str, str]]:
    """Per method whose images this run has, the synthetic image of each of ``image_ids`` (path), where it has one."""
    out = {}
    for a in AUGMENTATIONS:
        table = None if a.replaces else catalog.load(params, a.images, missing=None)  # a recipe: the same images
        if table is not None and len(table):
            paths = table.drop_duplicates("image_id").set_index("image_id").path
            out[a.label] = {i: paths[i] for i in image_ids if i in paths.index}
    return out


@torch.inference_mode()
def methods_set_metrics(params) -> pd.DataFrame:
    """The real images and each method's set (SGID's curated set, then the others') on the two axes."""
    base = set_metrics(params).set_index("set")
    rows = [{"set": "real (sources)", **base.loc["real (sources)"].drop("kind").to_dict()},
            {"set": sgid_name(params), **base.loc[CURATED].drop("kind").to_dict()}]
    for variant in sampler_variants(params, "curated"):  # SGID's curated set under another sampler (LCM-LoRA)
        rows.append({"set": sgid_name(variant), **set_metrics(variant).set_index("set").loc[CURATED].drop("kind")})
    candidates = catalog.load(params, "candidates")
    _, sources = load_embeddings(params, candidates)
    _, text, position = class_prompt_embeddings(params, candidates)
    model, processor = load_clip(params.models.clip, str(resolve_device(params)))
    for a in AUGMENTATIONS:
        table = None if a.method == "sgid" or a.replaces else catalog.load(params, a.images, missing=None)
        if table is None or not len(table):
            continue
        table = table[table.image_id.isin(list(sources))]
        emb = np.concatenate([image_embeddings(model, processor, [load_run_image(p) for p in chunk]).cpu().numpy()
                              for chunk in np.array_split(table.path.to_numpy(), max(1, len(table) // 32))])
        labels = table.label.map(position).to_numpy()
        c = consistency_metrics(emb, text, labels)
        rows.append({"set": a.label, "images": len(emb), "label score": c["mean_label_score"],
                     "zero-shot accuracy": c["zero_shot_accuracy"],
                     "distance to source": float(source_distance(emb, np.stack([sources[i] for i in table.image_id]))
                                                 .mean()),
                     "within-class spread": within_class_spread(emb, labels)})
    return pd.DataFrame(rows).assign(kind="method")
