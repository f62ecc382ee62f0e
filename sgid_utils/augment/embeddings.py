"""CLIP embeddings: of images, of texts, of captions against their image, and those curation saved.

The similarity stage scores captions with them, curation scores candidates against their source and saves the
embeddings per source (``embeddings/<pass>/<image_id>.npz``), and the quality report reads those back
beside the class prompts' text embeddings. One set of helpers keeps every CLIP cosine in the package the
same quantity: L2-normalised embeddings of ``models.clip``, their raw dot product.
"""

from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from sgid_utils.augment.filters import class_prompts
from sgid_utils.core.files import reason, set_aside
from sgid_utils.core.rundir import RunDir
from sgid_utils.errors import CorruptFileError
from sgid_utils.models.loading import load_clip, resolve_device
from sgid_utils.params.schema import Params


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


def load_embeddings(params: Params, candidates: pd.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """CLIP embeddings saved while scoring: one row per candidate (in table order), and each source's."""
    run = RunDir.of(params)
    rows, sources = [], {}
    for (generation_pass, image_id), group in candidates.groupby(["generation_pass", "image_id"], sort=False):
        file = run.embeddings(generation_pass, image_id)
        try:
            with np.load(file) as f:  # allow_pickle stays False: arrays only
                source, every = f["source"], f["candidates"]
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            set_aside(file, reason(exc))
            raise CorruptFileError(f"{file} cannot be read ({reason(exc)}); it is damaged and was moved aside: rerun "
                                   "`python -m sgid_utils run curation --params ...`, which scores that source again, "
                                   "then this stage.") from None
        sources[image_id] = source
        rows.append(pd.DataFrame({"_pos": group.index, "_emb": list(every[group.k.to_numpy()])}))
    order = pd.concat(rows).set_index("_pos").loc[candidates.index, "_emb"]
    return np.stack(order.to_list()), sources


def class_prompt_embeddings(params: Params,
                            candidates: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, dict[int, int]]:
    """CLIP embeddings of the class prompts: (one row per class sorted by label, text embeddings, label -> row)."""
    device = resolve_device(params)
    model, processor = load_clip(params.models.clip, str(device))
    classes = candidates.drop_duplicates("label").sort_values("label")
    text = text_embeddings(model, processor,
                           class_prompts(classes.class_name.tolist(), params.filters.class_noun)).cpu().numpy()
    return classes, text, {int(label): i for i, label in enumerate(classes.label)}
