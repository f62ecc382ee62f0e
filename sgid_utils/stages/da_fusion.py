"""DA-Fusion's images: M img2img images per real training image, prompted with its class's learned token.

As DA-Fusion's ``semantic_aug/augmentations/textual_inversion.py`` makes them: the real image on a square canvas
(``da_fusion.resolution``), "a photo of a <token>" at a fixed guidance scale, each synthetic image at a strength
drawn from ``da_fusion.strengths`` (its code composes one augmentation per strength in parallel with equal
probabilities), the output resized back to the image's size. Here every synthetic image m of a real image has a seed
derived from (the generation draw, image id, m), and its strength is drawn from that seed (``strength_of``), so the
set is deterministic and resumes per real image. The tokens come from the inversion stage and enter a copy of the
pipeline's tokenizer and text encoder through diffusers' ``load_textual_inversion``.
"""

from __future__ import annotations

import random
import sys

import pandas as pd
import torch
from PIL import Image

from sgid_utils.augment.batched import generate_many
from sgid_utils.augment.generation import at_source_size, generate_candidates
from sgid_utils.augment.inversion import own_text_encoder
from sgid_utils.core import catalog
from sgid_utils.core.files import write_png
from sgid_utils.core.images import load_run_image
from sgid_utils.core.resumable import BatchPlan, run_items
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.seeding import derive_seed, draw_seed
from sgid_utils.models.loading import load_img2img, resolve_device, resolve_dtype
from sgid_utils.params.schema import Params

METHODS = ("da_fusion", "da_fusion_recipe")


def seed_of(params: Params, image_id: str, m: int) -> int:
    return derive_seed(draw_seed(params), image_id, m, purpose="da-fusion")


def strength_of(seed: int, strengths: list[float]) -> float:
    """The strength of the synthetic image with this seed: drawn uniformly from ``strengths`` by the seed alone."""
    return random.Random(seed).choice(strengths)


def with_tokens(params: Params, pipe, tokens: pd.DataFrame):
    """An img2img pipeline sharing the cached one's UNet and VAE, with its own tokenizer and text encoder holding the
    learned tokens (diffusers' ``load_textual_inversion``)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    tokenizer, text_encoder = own_text_encoder(pipe)
    own = StableDiffusionImg2ImgPipeline(**{**pipe.components, "tokenizer": tokenizer,
                                            "text_encoder": text_encoder.to(pipe.device, pipe.unet.dtype)})
    own.set_progress_bar_config(disable=True)
    own.load_textual_inversion([str(p) for p in tokens.path], token=list(tokens.token))
    return own


@torch.inference_mode()
def run(params: Params, images: pd.DataFrame) -> pd.DataFrame | None:
    """M images per training image (resumable per image); the table once every image has its M."""
    if not any(m in params.training.methods for m in METHODS):
        print("[sgid] stage da_fusion: training.methods lists no DA-Fusion method; nothing to generate",
              file=sys.stderr)
        return pd.DataFrame()
    d, gen, run_dir = params.da_fusion, params.generation, RunDir.of(params)
    sources = images[images.split == "train"].set_index("image_id", drop=False)
    tokens = catalog.load(params, "class_tokens").set_index("class_name", drop=False)

    def start(todo: list[str]) -> BatchPlan:
        device = resolve_device(params)
        pipe = with_tokens(params, load_img2img(params.models.diffusion, str(device),
                                                resolve_dtype(gen.dtype, device)), tokens)
        reference = gen.batch_size == 1 or (gen.batch_size is None and device.type != "cuda")
        prompts = {c: d.prompt.format(token=t) for c, t in zip(tokens.class_name, tokens.token)}
        embeds = {c: pipe.encode_prompt(p, device, 1, True, "") for c, p in prompts.items()}

        def process(ids: list[str]) -> dict[str, list[dict]]:
            rows = list(sources.loc[ids].itertuples(index=False))
            originals = {r.image_id: load_run_image(r.path) for r in rows}
            canvas = {i: o.resize((d.resolution, d.resolution), Image.Resampling.LANCZOS) for i, o in originals.items()}
            jobs = [(r, m, seed_of(params, r.image_id, m)) for r in rows for m in range(d.num_synthetic)]
            made: dict[tuple[str, int], Image.Image] = {}
            for strength in sorted({strength_of(s, d.strengths) for _, _, s in jobs}):
                mine = [(r, m, s) for r, m, s in jobs if strength_of(s, d.strengths) == strength]
                if reference:
                    outs = [generate_candidates(pipe, *embeds[r.class_name], canvas[r.image_id], d.guidance_scale,
                                                strength, d.num_inference_steps, [s])[0] for r, m, s in mine]
                else:
                    outs = [o[0] for o in generate_many(
                        pipe, [canvas[r.image_id] for r, _, _ in mine], [embeds[r.class_name][0] for r, _, _ in mine],
                        [embeds[r.class_name][1] for r, _, _ in mine], [d.guidance_scale] * len(mine), strength,
                        d.num_inference_steps, [[s] for _, _, s in mine], batch_size=len(mine))]
                made.update({(r.image_id, m): out for (r, m, _), out in zip(mine, outs)})
            records: dict[str, list[dict]] = {r.image_id: [] for r in rows}
            for r, m, s in jobs:
                path = write_png(run_dir.da_fusion_image(r.image_id, m),
                                 at_source_size(made[(r.image_id, m)], originals[r.image_id]))
                records[r.image_id].append({
                    "image_id": r.image_id, "m": m, "path": run_dir.relative(path), "label": int(r.label),
                    "class_name": r.class_name, "token": tokens.token[r.class_name], "prompt": prompts[r.class_name],
                    "strength": strength_of(s, d.strengths), "guidance_scale": d.guidance_scale, "seed": s})
            return records

        size = gen.batch_size or 1
        return BatchPlan(process, size, f"DA-Fusion ({d.num_synthetic} per image)", "generation.batch_size")

    records = run_items(run_dir.items("da_fusion"), list(sources.image_id), start,
                        outputs=lambda _, recs: [run_dir.absolute(r["path"]) for r in recs])
    if records is None:
        return None  # other shards are still generating
    catalog.save(params, "da_fusion_images", pd.DataFrame([r for recs in records for r in recs]))
    return catalog.load(params, "da_fusion_images")
