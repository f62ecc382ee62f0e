"""Real Guidance (He et al., ICLR 2023) as DA-Fusion's code runs it: img2img images of each real training image.

brandontrabucco/da-fusion, ``semantic_aug/augmentations/real_guidance.py``: each real image is resized to a
512 x 512 canvas, denoised by Stable Diffusion img2img from strength 0.5 with the prompt "a photo of a {name}" at a
fixed guidance scale of 7.5, and the output resized back to the image's size. No captions, no CLIP similarity, no
selection. One image per real image for the package's way (``real_guidance``); M of them
(``real_guidance.num_synthetic``) while its recipe (``real_guidance_recipe``) trains, as DA-Fusion's scripts run it.
The settings are ``real_guidance.*`` (``params.methods``), each with its source.

The plain prompt goes through the pipeline's own text encoder (``encode_prompt``), not compel: Real Guidance weights
no words. Seeds derive from (the generation draw, image id, m), so the set is deterministic and resumes per image;
the m-th images (m >= 1) are items of their own, so a run that adds the recipe keeps every first image it made. On
CUDA the images share the batched loop of ``augment.batched`` (one scale for all), on the CPU each goes through the
diffusers pipeline, as SGID's generation does (``augment.generation``). The stage runs only when ``training.methods``
lists ``real_guidance`` or ``real_guidance_recipe``.
"""

from __future__ import annotations

import sys

import pandas as pd
import torch
from PIL import Image

from sgid_utils.augment.batched import generate_many
from sgid_utils.augment.generation import at_source_size, generate_candidates
from sgid_utils.augment.generation_setup import auto_batch_size
from sgid_utils.core import catalog
from sgid_utils.core.files import write_png
from sgid_utils.core.images import load_run_image
from sgid_utils.core.resumable import BatchPlan, run_items
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.seeding import derive_seed, draw_seed
from sgid_utils.models.loading import load_img2img, resolve_device, resolve_dtype
from sgid_utils.params.methods import AUGMENTATIONS, made_per_real
from sgid_utils.params.schema import Params

METHOD = "real_guidance"
METHODS = tuple(a.method for a in AUGMENTATIONS if a.section == METHOD)


def seed_of(params: Params, image_id: str, m: int = 0) -> int:
    """The m-th image's seed: from the generation draw, the image id and m, never its position in a batch."""
    return derive_seed(draw_seed(params), image_id, m, purpose="real-guidance")


def items(image_ids: list[str], made: int) -> dict[str, tuple[str, int]]:
    """Item id -> (image id, m): the first image of each real image under its own id, the m-th under ``<id>#m``."""
    return {(i if m == 0 else f"{i}#{m}"): (i, m) for m in range(made) for i in image_ids}


@torch.inference_mode()
def encode(pipe, prompt: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt's and the empty negative prompt's embeddings from the pipeline's own text encoder."""
    embeds, negative = pipe.encode_prompt(prompt, device, 1, True, "")
    return embeds, negative


def run(params: Params, images: pd.DataFrame) -> pd.DataFrame | None:
    """Real Guidance's images of every training image (resumable per image); the table once every image has them."""
    if not any(m in params.training.methods for m in METHODS):
        print(f"[sgid] stage {METHOD}: training.methods lists no Real Guidance method; nothing to generate",
              file=sys.stderr)
        return pd.DataFrame()
    rg, gen, run_dir = params.real_guidance, params.generation, RunDir.of(params)
    sources = images[images.split == "train"].set_index("image_id", drop=False)
    jobs = items(list(sources.image_id), made_per_real(params, METHOD))

    def start(todo: list[str]) -> BatchPlan:
        device = resolve_device(params)
        pipe = load_img2img(params.models.diffusion, str(device), resolve_dtype(gen.dtype, device))
        reference = gen.batch_size == 1 or (gen.batch_size is None and device.type != "cuda")
        size = gen.batch_size or (auto_batch_size(torch.cuda.mem_get_info(device)[0], rg.resolution, rg.resolution,
                                                  1, pipe.unet.dtype) if device.type == "cuda" else 1)
        prompts = {c: rg.prompt.format(label=c) for c in sources.class_name.unique()}
        embeds = {c: encode(pipe, p, device) for c, p in prompts.items()}

        def process(ids: list[str]) -> dict[str, dict]:
            rows = list(sources.loc[[jobs[i][0] for i in ids]].itertuples(index=False))
            ms = [jobs[i][1] for i in ids]
            originals = [load_run_image(r.path) for r in rows]
            canvas = [o.resize((rg.resolution, rg.resolution), Image.Resampling.LANCZOS) for o in originals]
            seeds = [[seed_of(params, r.image_id, m)] for r, m in zip(rows, ms)]
            if reference:
                outputs = [generate_candidates(pipe, *embeds[r.class_name], c, rg.guidance_scale, rg.strength,
                                               rg.num_inference_steps, s) for r, c, s in zip(rows, canvas, seeds)]
            else:
                outputs = generate_many(pipe, canvas, [embeds[r.class_name][0] for r in rows],
                                        [embeds[r.class_name][1] for r in rows], [rg.guidance_scale] * len(rows),
                                        rg.strength, rg.num_inference_steps, seeds, batch_size=len(rows))
            records = {}
            for item, r, m, original, out, s in zip(ids, rows, ms, originals, outputs, seeds):
                path = write_png(run_dir.real_guidance_image(r.image_id, m), at_source_size(out[0], original))
                records[item] = {"image_id": r.image_id, "m": m, "path": run_dir.relative(path),
                                 "label": int(r.label), "class_name": r.class_name, "prompt": prompts[r.class_name],
                                 "guidance_scale": rg.guidance_scale, "strength": rg.strength, "seed": s[0]}
            return records

        return BatchPlan(process, size, f"Real Guidance at {rg.resolution}x{rg.resolution}", "generation.batch_size")

    records = run_items(run_dir.items(METHOD), list(jobs), start,
                        outputs=lambda _, rec: [run_dir.absolute(rec["path"])])
    if records is None:
        return None  # other shards are still generating
    table = pd.DataFrame(records)
    table["m"] = table["m"].fillna(0).astype(int)  # records an older version made hold the first images alone
    table = table.sort_values("m", kind="stable").reset_index(drop=True)  # first images first: the package's way
    catalog.save(params, "real_guidance_images", table)
    return catalog.load(params, "real_guidance_images")
