"""Stage 03: Stable Diffusion img2img with SGID's weighted prompt and similarity-mapped guidance.

For each training image: prompt "(c*)0.9. A picture of (label)1.5" encoded by
compel into prompt embeddings, guidance scale from f(s*), strength 0.3, k
candidates whose seeds derive from (run seed, image id, k). The source enters
the model at its own resolution (downscaled only above ``generation.max_side``):
that is what the report did, and what stage 04 diagnoses and fixes by upscaling.
Each candidate is resized back to the source's size and saved as PNG.

With ``generation.batch_size`` > 1 many sources and their k candidates share one
denoising loop with a per-sample guidance scale (``sgid_utils.batched``); with 1 (the
default on the CPU) each source goes through the diffusers pipeline itself, which
keeps CPU outputs byte-identical across resumes. Left unset on CUDA, the batch size
comes from free GPU memory (``auto_batch_size``) and halves on an out-of-memory error.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from .data import load_image
from .batched import generate_many
from .io import ItemStore, check_fingerprint, read_table, write_png, write_table
from .models import load_img2img, resolve_device, resolve_dtype
from .params import Params
from .prompts import build_prompt, guidance_scale
from .seeding import derive_seed, generator

VARIANTS = ("raw", "upscaled")

# GPU memory one candidate takes in the batched loop at 512 x 512 in fp16: its UNet rows (the CFG pair)
# and its share of the VAE decode, about 1.5 GiB by diffusers users' reports, not measured here. Only the
# starting batch size rests on it: an out-of-memory error halves the batch and retries.
CANDIDATE_BYTES_512_FP16 = 1.5 * 2**30
MAX_AUTO_BATCH = 16  # 48 candidates at k = 3: enough rows to fill an H100's tensor cores


def auto_batch_size(free_bytes: int, width: int, height: int, k: int, dtype: torch.dtype) -> int:
    """Sources per denoising loop that fit in 80 % of ``free_bytes`` at this input size, between 1 and MAX_AUTO_BATCH."""
    scale = width * height / 512**2 * torch.finfo(dtype).bits / 16
    return int(max(1, min(MAX_AUTO_BATCH, 0.8 * free_bytes // (k * CANDIDATE_BYTES_512_FP16 * scale))))


def model_input_size(width: int, height: int, max_side: int, short_side: int | None = None, multiple: int = 8) -> tuple[int, int]:
    """Size the source enters SD at: optionally upscaled to ``short_side``, capped at ``max_side``, multiple of 8."""
    scale = 1.0
    if short_side is not None and min(width, height) < short_side:
        scale = short_side / min(width, height)
    scale = min(scale, max_side / max(width, height)) if max(width, height) * scale > max_side else scale
    w = max(multiple, int(width * scale) // multiple * multiple)
    h = max(multiple, int(height * scale) // multiple * multiple)
    return w, h


class PromptEncoder:
    """compel's weighted-prompt embeddings for the pipeline's own tokenizer and text encoder."""

    def __init__(self, pipe) -> None:
        from compel import CompelForSD

        self.compel = CompelForSD(pipe)

    @torch.inference_mode()
    def __call__(self, prompt: str, negative: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        out = self.compel(prompt, negative_prompt=negative)
        return out.embeds, out.negative_embeds


@torch.inference_mode()
def generate_candidates(
    pipe, embeds: torch.Tensor, negative_embeds: torch.Tensor, image: Image.Image, guidance: float,
    strength: float, steps: int, seeds: list[int],
) -> list[Image.Image]:
    """len(seeds) img2img candidates for one source in one pipeline call (one generator per candidate)."""
    out = pipe(
        prompt_embeds=embeds, negative_prompt_embeds=negative_embeds, image=image, strength=strength,
        guidance_scale=guidance, num_inference_steps=steps, num_images_per_prompt=len(seeds),
        generator=[generator(s) for s in seeds], output_type="pil",
    )
    return out.images


def sources_for(params: Params, variant: str, images: pd.DataFrame) -> pd.DataFrame:
    """Training images with their chosen caption; the 'upscaled' variant keeps only small sources."""
    from .similarity import load_best

    best = load_best(params)
    df = best.merge(images, on="image_id", how="inner")
    if variant == "upscaled":
        df = df[df[["width", "height"]].min(axis=1) < params.curation.upscale_threshold]
    return df.reset_index(drop=True)


def run_generation(params: Params, variant: str = "raw") -> pd.DataFrame | None:
    """Generate k candidates per source; resumable per image; returns the manifest (one row per candidate)."""
    from .pipeline import ensure_inputs, in_batches, my_share

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    images = ensure_inputs(params)
    gen = params.generation
    stage_dir = Path(params.run.dir) / "generation" / variant
    check_fingerprint(stage_dir, params.stage_fingerprint("generate" if variant == "raw" else "generate_upscaled"),
                      f"generate ({variant})")
    sources = sources_for(params, variant, images)
    store = ItemStore(stage_dir / "items")
    todo = sources[sources.image_id.isin(store.todo(my_share(sources.image_id)))]
    upscale_to = (params.curation.upscale_to or params.curation.upscale_threshold) if variant == "upscaled" else None
    if len(todo):
        device = resolve_device(params)
        pipe = load_img2img(params.models.diffusion, str(device), resolve_dtype(gen.dtype, device))
        if device.type == "cuda":
            pipe.unet.to(memory_format=torch.channels_last)  # faster convolutions on tensor cores
            if gen.compile and not hasattr(pipe.unet, "_orig_mod"):
                pipe.unet = torch.compile(pipe.unet)
        encode = PromptEncoder(pipe)
        sizes = [model_input_size(w, h, gen.max_side, upscale_to) for w, h in zip(todo.width, todo.height)]
        todo = todo.assign(in_w=[w for w, _ in sizes], in_h=[h for _, h in sizes]).sort_values(["in_w", "in_h", "image_id"], kind="stable")
        largest = todo.iloc[(todo.in_w * todo.in_h).argmax()]
        if gen.batch_size is not None:
            batch = gen.batch_size
        elif device.type == "cuda":
            batch = auto_batch_size(torch.cuda.mem_get_info(device)[0], largest.in_w, largest.in_h, gen.num_candidates, pipe.unet.dtype)
        else:
            batch = 1
        # The reference path, when asked for or on the CPU by default; never switched on by free GPU memory,
        # so a resumed run does not mix paths.
        reference = gen.batch_size == 1 or (gen.batch_size is None and device.type != "cuda")
        bar = tqdm(total=len(todo), desc=f"generate ({variant})", unit="img")

        def generate_chunk(start: int, stop: int) -> None:
            chunk = list(todo.iloc[start:stop].itertuples())
            originals = [load_image(r.path) for r in chunk]
            inputs = [src.resize((r.in_w, r.in_h), Image.Resampling.LANCZOS) if (r.in_w, r.in_h) != src.size else src
                      for r, src in zip(chunk, originals)]
            prompts = [build_prompt(r.caption, r.class_name, gen) for r in chunk]
            scales = [guidance_scale(r.s_star, gen.guidance) for r in chunk]
            seeds = [[derive_seed(params.run.seed, r.image_id, k, purpose="generate") for k in range(gen.num_candidates)] for r in chunk]
            embeds = [encode(p, gen.negative_prompt) for p in prompts]
            if reference:  # the diffusers pipeline itself
                outputs = [generate_candidates(pipe, *embeds[0], inputs[0], scales[0], gen.strength, gen.num_inference_steps, seeds[0])]
            else:
                outputs = generate_many(pipe, inputs, [e for e, _ in embeds], [n for _, n in embeds], scales,
                                        gen.strength, gen.num_inference_steps, seeds, batch_size=len(chunk))
            for r, src, prompt, scale, item_seeds, images in zip(chunk, originals, prompts, scales, seeds, outputs):
                records = []
                for k, (seed, out) in enumerate(zip(item_seeds, images)):
                    path = stage_dir / "images" / f"{r.image_id}_k{k}.png"
                    write_png(path, out.resize(src.size, Image.Resampling.LANCZOS))
                    records.append({
                        "image_id": r.image_id, "variant": variant, "k": k, "seed": seed,
                        "path": str(path.relative_to(params.run.dir)),
                        "prompt": prompt, "s_star": float(r.s_star), "guidance_scale": scale,
                        "input_width": r.in_w, "input_height": r.in_h, "source_width": src.width, "source_height": src.height,
                    })
                store.put(r.image_id, records)
            bar.update(len(chunk))

        in_batches(len(todo), batch, generate_chunk, shrink=gen.batch_size is None,
                   what=f"generating ({variant}) from sources up to {largest.in_w}x{largest.in_h}",
                   setting="generation.batch_size", other=f", or lower generation.max_side (now {gen.max_side})")
        bar.close()
    if not store.complete(sources.image_id):
        return None
    manifest = pd.DataFrame([r for recs in store.records(sources.image_id) for r in recs])
    write_table(stage_dir / "manifest.parquet", manifest, params.run.dir)
    return load_manifest(params, variant)


def load_manifest(params: Params, variant: str = "raw") -> pd.DataFrame:
    return read_table(Path(params.run.dir) / "generation" / variant / "manifest.parquet", params.run.dir)
