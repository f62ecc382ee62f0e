"""Stage 01: BLIP captions, 10 by nucleus sampling and 10 by beam search per training image.

Nucleus sampling draws from the global torch RNG inside ``generate``; to keep each
image's captions independent of batch size and order it runs per image under a
seed derived from (run seed, image id). Beam search is deterministic and runs
batched over images.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .data import load_image
from .io import ItemStore, check_fingerprint, read_table, write_table
from .models import load_captioner, resolve_device, resolve_dtype
from .params import CaptioningParams, Params
from .seeding import derive_seed

CAPTION_COLUMNS = ["image_id", "method", "rank", "caption"]


def _clean(texts: list[str]) -> list[str]:
    return [" ".join(t.split()) for t in texts]


@torch.inference_mode()
def nucleus_captions(model, processor, image, cfg: CaptioningParams, seed: int) -> list[str]:
    """``cfg.num_nucleus`` captions for one image by top-p sampling under ``seed``."""
    if cfg.num_nucleus == 0:
        return []
    inputs = processor(images=[image], return_tensors="pt").to(model.device, model.dtype)
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = model.generate(
            **inputs, do_sample=True, top_p=cfg.top_p, top_k=0, num_return_sequences=cfg.num_nucleus,
            max_new_tokens=cfg.max_new_tokens,
        )
    return _clean(processor.batch_decode(out, skip_special_tokens=True))


@torch.inference_mode()
def beam_captions(model, processor, images: list, cfg: CaptioningParams) -> list[list[str]]:
    """``cfg.num_beam`` beam-search captions per image, batched over images."""
    if cfg.num_beam == 0:
        return [[] for _ in images]
    inputs = processor(images=images, return_tensors="pt").to(model.device, model.dtype)
    out = model.generate(
        **inputs, num_beams=cfg.num_beams, num_return_sequences=cfg.num_beam, max_new_tokens=cfg.max_new_tokens,
        do_sample=False,
    )
    texts = _clean(processor.batch_decode(out, skip_special_tokens=True))
    return [texts[i * cfg.num_beam:(i + 1) * cfg.num_beam] for i in range(len(images))]


def caption_records(image_id: str, nucleus: list[str], beam: list[str]) -> list[dict]:
    return [
        {"image_id": image_id, "method": method, "rank": rank, "caption": text}
        for method, texts in (("nucleus", nucleus), ("beam", beam))
        for rank, text in enumerate(texts)
    ]


def run_captions(params: Params, image_ids: list[str] | None = None) -> pd.DataFrame | None:
    """Caption every training image (or ``image_ids``), resuming from finished items.

    Under several processes each captions its share; the table is written (and returned) once
    every image has its captions, by whichever process finishes last.
    """
    from .pipeline import ensure_inputs, gpu_memory_hint, my_share

    images = ensure_inputs(params)
    stage_dir = Path(params.run.dir) / "captions"
    check_fingerprint(stage_dir, params.stage_fingerprint("captions"), "captions")
    train = images[images.split == "train"]
    if image_ids is not None:
        train = train[train.image_id.isin(image_ids)]
    store = ItemStore(stage_dir / "items")
    todo = train[train.image_id.isin(store.todo(my_share(train.image_id)))]
    cfg = params.captioning
    if len(todo):
        device = resolve_device(params)
        model, processor = load_captioner(params.models.captioner, str(device), resolve_dtype("auto", device))
        bar = tqdm(total=len(todo), desc="captions", unit="img")
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo.iloc[start:start + cfg.batch_size]
            pil = [load_image(p) for p in batch.path]
            with gpu_memory_hint(f"captioning {len(batch)} images", f"Lower captioning.batch_size (now {cfg.batch_size})."):
                beams = beam_captions(model, processor, pil, cfg)
                for (image_id, img), beam in zip(zip(batch.image_id, pil), beams):
                    seed = derive_seed(params.run.seed, image_id, purpose="nucleus")
                    store.put(image_id, caption_records(image_id, nucleus_captions(model, processor, img, cfg, seed), beam))
            bar.update(len(batch))
        bar.close()
    if not store.complete(train.image_id):
        return None
    table = pd.DataFrame(
        [r for recs in store.records(train.image_id) for r in recs], columns=CAPTION_COLUMNS
    )
    write_table(stage_dir / "captions.parquet", table)
    return table


def load_captions(params: Params) -> pd.DataFrame:
    return read_table(Path(params.run.dir) / "captions" / "captions.parquet")
