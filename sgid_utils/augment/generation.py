"""Candidate generation as we read the report's SGID procedure, shared by both passes (the generate and upscale stages).

For each training image: prompt "(c*)0.9. A picture of (label)1.5" encoded by compel into prompt embeddings,
guidance scale from f(s*), strength 0.3 (the report's "Gaussian noise of 0.3", read as diffusers' img2img
``strength=0.3``: the source is noised to 30 % of the schedule and denoised from there), k candidates whose seeds
derive from (the generation draw's seed, image id, k): ``run.draw`` gives another set for the same sources. In the
raw pass the source enters the model at its own resolution (downscaled only above ``generation.max_side``): our
reading of the report's first pass, and what the curation stage diagnoses and fixes by
upscaling small sources first (``model_input_size``). Each candidate is resized back to the
source's size and saved as PNG.

With ``generation.batch_size`` > 1 many sources and their k candidates share one
denoising loop with a per-sample guidance scale (``sgid_utils.augment.batched``); with 1 (the
default on the CPU) each source goes through the diffusers pipeline itself, which
keeps CPU outputs byte-identical across resumes. Left unset on CUDA, the batch size
comes from free GPU memory (``auto_batch_size``) and halves on an out-of-memory error.

On CUDA, threads load the next chunk and write PNGs beside the loop (``generation.writer_threads``; items recorded
once their files are there: ``resumable.Pending``); on the CPU they would take torch's cores, so all runs inline.

With ``generation.generator: controlnet`` (beyond the paper) the same prompt, scale,
strength and seeds go through img2img with a Canny-edge ControlNet: each source's
edge map (``sgid_utils.augment.edges``, at the model-input size) is saved beside its
candidates and conditions them, per image or in the batched loop alike. With
``generation.sampler: lcm`` (beyond the paper) they go through the img2img pipeline
with an LCM-LoRA fused into its UNet and LCMScheduler, a few steps (``params.samplers``).

The stages only choose the pass (``generate(params, generation_pass, images)``); notebook 03's side-by-side
of the two generators (``preview_generators``) and the preflight projection (``raw_pass``) use the
same pieces.
"""

from __future__ import annotations

import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import pandas as pd
import torch
from PIL import Image

from sgid_utils.augment.batched import UNET_ROWS, generate_many
from sgid_utils.augment.edges import canny_edges
from sgid_utils.augment.generation_setup import load_generator, rows_summary, start_batch_size, writer_threads
from sgid_utils.augment.guidance import guidance_scale
from sgid_utils.augment.prompt_encoding import PromptEncoder
from sgid_utils.augment.prompts import build_prompt
from sgid_utils.core import catalog
from sgid_utils.core.files import write_png
from sgid_utils.core.images import load_run_image
from sgid_utils.core.resumable import BatchPlan, Pending, run_items
from sgid_utils.core.rundir import Pass, RunDir
from sgid_utils.core.seeding import derive_seed, draw_seed, torch_rng
from sgid_utils.models.loading import resolve_device
from sgid_utils.params.schema import GenerationParams, Generator, Params

GENERATORS: tuple[str, ...] = get_args(Generator)

def model_input_size(width: int, height: int, max_side: int, short_side: int | None = None,
                     multiple: int = 8) -> tuple[int, int]:
    """Size the source enters SD at: optionally upscaled to ``short_side``, capped at ``max_side``, multiple of 8.

    At its own size a source is rounded down (never enlarged). An upscaled one is rounded to the nearest
    multiple, and the upscale target wins over ``max_side`` up to a 2:1 source: a 500x333 Pets image enters
    at 768x512, a 500x312 one at 824x512 (with ``max_side`` alone they gave 768x504 and 768x480). Only a
    source more elongated than 2:1 stops at a long side of 2 x ``short_side``, so memory stays bounded.
    """
    upscale = short_side is not None and min(width, height) < short_side
    scale = short_side / min(width, height) if upscale else 1.0
    cap = max(max_side, 2 * short_side) if upscale else max_side
    scale = min(scale, cap / max(width, height)) if max(width, height) * scale > cap else scale
    to_grid = (lambda v: round(v / multiple) * multiple) if upscale else (lambda v: int(v) // multiple * multiple)
    return max(multiple, to_grid(width * scale)), max(multiple, to_grid(height * scale))


@torch.inference_mode()
def generate_candidates(
    pipe, embeds: torch.Tensor, negative_embeds: torch.Tensor, image: Image.Image, guidance: float,
    strength: float, steps: int, seeds: list[int], control_image: Image.Image | None = None,
    conditioning_scale: float = 1.0,
) -> list[Image.Image]:
    """len(seeds) img2img candidates for one source in one pipeline call (one generator per candidate).

    A ControlNet pipeline takes ``control_image`` (the edge map) at ``conditioning_scale``.
    """
    control = {} if control_image is None else {"control_image": control_image,
                                                "controlnet_conditioning_scale": conditioning_scale}
    out = pipe(
        prompt_embeds=embeds, negative_prompt_embeds=negative_embeds, image=image, strength=strength,
        guidance_scale=guidance, num_inference_steps=steps, num_images_per_prompt=len(seeds),
        generator=[torch_rng(s) for s in seeds], output_type="pil", **control,
    )
    return out.images


def raw_pass(params: Params, sources: pd.DataFrame) -> pd.Series:
    """Which sources the raw pass generates for: those at or above the upscale threshold, and for the error analysis
    a seeded sample of ``curation.error_analysis_sample`` small ones per class ('all': every source).

    Every small source is regenerated upscaled anyway, so its raw candidates serve only notebook 04's
    analysis: a sample shows the failure without generating every small source twice. The sample is drawn
    from ``run.seed``, not from the generation draw: it chooses sources, not random numbers of generation, so a
    second draw (``run.draw``) analyses the same sources and its error analysis compares with the first's.
    """
    cur = params.curation
    small = sources[["width", "height"]].min(axis=1) < cur.upscale_threshold
    if cur.error_analysis_sample == "all":
        return pd.Series(True, index=sources.index)
    key = pd.Series([derive_seed(params.run.seed, i, purpose="error-analysis") for i in sources.image_id],
                    index=sources.index)
    ranked = key[small].groupby(sources.label[small]).rank(method="first")
    return ~small | ranked.reindex(sources.index).le(cur.error_analysis_sample)


def sources_for(params: Params, generation_pass: Pass, images: pd.DataFrame) -> pd.DataFrame:
    """Training images with their chosen caption and model-input size: the raw pass's (``raw_pass``), or for
    'upscaled' every source below the upscale threshold."""
    gen, cur = params.generation, params.curation
    df = catalog.load(params, "best_captions").merge(images, on="image_id", how="inner")
    upscale_to = None
    if generation_pass == "raw":
        df = df[raw_pass(params, df)]
    else:
        df = df[df[["width", "height"]].min(axis=1) < cur.upscale_threshold]
        upscale_to = cur.upscale_to or cur.upscale_threshold
    sizes = [model_input_size(w, h, gen.max_side, upscale_to) for w, h in zip(df.width, df.height)]
    return df.assign(in_w=[w for w, _ in sizes], in_h=[h for _, h in sizes]).reset_index(drop=True)


@dataclass(frozen=True)
class Chunk:
    """A few sources as the generators take them: their rows, images at the source's and the model-input size,
    SGID prompts, guidance scales f(s*) and per-candidate seeds."""

    rows: list[Any]
    originals: list[Image.Image]
    inputs: list[Image.Image]
    prompts: list[str]
    scales: list[float]
    seeds: list[list[int]]


def load_sized(row: Any) -> tuple[Image.Image, Image.Image]:
    """A source (a row of ``sources_for``) and its image at the model-input size."""
    src = load_run_image(row.path)
    return src, (src.resize((row.in_w, row.in_h), Image.Resampling.LANCZOS) if (row.in_w, row.in_h) != src.size
                 else src)


def prepare(params: Params, rows: list[Any], loaded: list[tuple[Image.Image, Image.Image]] | None = None) -> Chunk:
    """Load and size the sources of ``rows`` (from ``sources_for``; ``loaded``: their ``load_sized`` images, if
    already loaded) and derive their prompts, scales and seeds."""
    gen = params.generation
    loaded = loaded if loaded is not None else [load_sized(r) for r in rows]
    originals, inputs = [o for o, _ in loaded], [i for _, i in loaded]
    return Chunk(
        rows, originals, inputs, [build_prompt(r.caption, r.class_name, gen) for r in rows],
        [guidance_scale(r.s_star, gen.guidance) for r in rows],
        [[derive_seed(draw_seed(params), r.image_id, k, purpose="generate") for k in range(gen.num_candidates)]
         for r in rows],
    )


def edge_maps(gen: GenerationParams, inputs: list[Image.Image]) -> list[Image.Image]:
    """Each model input's Canny edge map, the ControlNet's condition."""
    return [canny_edges(image, gen.controlnet.low_threshold, gen.controlnet.high_threshold) for image in inputs]


def run_generator(pipe, encode: PromptEncoder, gen: GenerationParams, chunk: Chunk, edges: list[Image.Image] | None,
                  reference: bool) -> list[list[Image.Image]]:
    """The k candidates of each source of ``chunk``: one pipeline call per source (``reference``) or one batched loop.

    ``edges``: the control images of a ControlNet pipeline, None for plain img2img.
    """
    embeds = encode.many(chunk.prompts, gen.negative_prompt)
    scale = gen.controlnet.conditioning_scale
    if reference:
        controls = edges or [None] * len(embeds)
        return [generate_candidates(pipe, *embed, image, guidance, gen.strength, gen.steps, seeds,
                                    control, scale)
                for embed, image, guidance, seeds, control
                in zip(embeds, chunk.inputs, chunk.scales, chunk.seeds, controls)]
    return generate_many(pipe, chunk.inputs, [e for e, _ in embeds], [n for _, n in embeds], chunk.scales, gen.strength,
                         gen.steps, chunk.seeds, batch_size=len(embeds), control_images=edges,
                         conditioning_scale=scale)


def at_source_size(candidate: Image.Image, original: Image.Image) -> Image.Image:
    """A candidate resized back to its source's size: a drop-in extra training image."""
    return candidate.resize(original.size, Image.Resampling.LANCZOS)


def save_candidate(path: Path, candidate: Image.Image, original: Image.Image, compress_level: int) -> Path:
    """One candidate resized back to its source's size and written as PNG: a writer thread's job."""
    return write_png(path, at_source_size(candidate, original), compress_level)


def candidate_records(params: Params, generation_pass: Pass, source, prompt: str, scale: float, seeds: list[int],
                      outputs: list[Image.Image], original: Image.Image, edges: str | None = None,
                      writers: ThreadPoolExecutor | None = None, saving: list[Future] | None = None) -> list[dict]:
    """Save one source's candidates (resized back to the source's size) and describe each (``edges``: its edge map's
    stored path, under the ControlNet generator). With ``writers`` the saves run there, their futures appended to
    ``saving`` (the files are there once those are done); without, they are written before this returns."""
    run = RunDir.of(params)
    level = params.generation.png_compress_level
    records = []
    for k, (seed, out) in enumerate(zip(seeds, outputs)):
        path = run.generated_image(generation_pass, source.image_id, k)
        if writers is None:
            save_candidate(path, out, original, level)
        else:
            saving.append(writers.submit(save_candidate, path, out, original, level))
        records.append({
            "image_id": source.image_id, "generation_pass": generation_pass, "k": k, "seed": seed,
            "path": run.relative(path),
            "prompt": prompt, "s_star": float(source.s_star), "guidance_scale": scale,
            "input_width": source.in_w, "input_height": source.in_h,
            "source_width": original.width, "source_height": original.height,
            **({} if edges is None else {"edges": edges}),
        })
    return records


def generate(params: Params, generation_pass: Pass, images: pd.DataFrame) -> Path | None:
    """Generate k candidates per source; resumable per image; the manifest (one row per candidate) once all are done.

    Returns the manifest's path, or None while other shards are still generating; the stage reads the manifest.
    """
    run = RunDir.of(params)
    gen = params.generation
    sources = sources_for(params, generation_pass, images)
    sources.index = sources.image_id.to_numpy()
    rows = dict(zip(sources.image_id, sources.itertuples(index=False)))
    threads = writer_threads(gen, resolve_device(params))
    writers = ThreadPoolExecutor(threads, thread_name_prefix="sgid-png") if threads else None
    loader = ThreadPoolExecutor(1, thread_name_prefix="sgid-load") if threads else None
    loading: dict[str, Future] = {}

    def load(ids: list[str]) -> None:
        for i in ids:
            if loader is not None and i not in loading:
                loading[i] = loader.submit(load_sized, rows[i])

    def start(todo: list[str]) -> BatchPlan:
        pipe, encode, device = load_generator(params, candidates=len(todo) * gen.num_candidates)
        mine = sources.loc[todo].sort_values(["in_w", "in_h", "image_id"], kind="stable")  # same sizes share a loop
        largest = mine.iloc[(mine.in_w * mine.in_h).argmax()]
        order = list(mine.index)
        position = {i: n for n, i in enumerate(order)}
        # The reference path (the diffusers pipeline itself), when asked for or on the CPU by default; never
        # switched on by free GPU memory, so a resumed run does not mix paths.
        reference = gen.batch_size == 1 or (gen.batch_size is None and device.type != "cuda")

        def process(ids: list[str]) -> Pending | dict[str, list[dict]]:
            load(ids)
            loaded = [loading.pop(i).result() if i in loading else load_sized(rows[i]) for i in ids]
            after = position[ids[-1]] + 1
            load(order[after:after + len(ids)])  # the next chunk loads and upscales while this one denoises
            chunk = prepare(params, [rows[i] for i in ids], loaded)
            edges, stored = None, [None] * len(ids)
            if gen.generator == "controlnet":  # saved before the candidates: a finished item has both
                edges = edge_maps(gen, chunk.inputs)
                stored = [run.relative(write_png(run.edge_map(generation_pass, i), e)) for i, e in zip(ids, edges)]
            outputs = run_generator(pipe, encode, gen, chunk, edges, reference)
            saving: list[Future] = []
            records = {r.image_id: candidate_records(params, generation_pass, r, *rest, writers=writers, saving=saving)
                       for r, *rest in zip(chunk.rows, chunk.prompts, chunk.scales, chunk.seeds, outputs,
                                           chunk.originals, stored)}
            return records if writers is None else Pending(records, saving)  # recorded once written

        return BatchPlan(process, start_batch_size(params, pipe, device, (largest.in_w, largest.in_h)),
                         f"generating ({generation_pass}) from sources up to {largest.in_w}x{largest.in_h}",
                         "generation.batch_size", order=order,
                         other=f", or lower generation.max_side (now {gen.max_side})")

    UNET_ROWS.clear()
    files = ("path", "edges")  # what each candidate's record stands for (core.files.ItemStore checks they are whole)
    try:
        records = run_items(run.items(run.generation_stage(generation_pass)), list(sources.image_id), start,
                            outputs=lambda _, recs: [run.absolute(r[k]) for r in recs for k in files if k in r])
    finally:
        for pool in filter(None, (writers, loader)):
            pool.shutdown()
    if UNET_ROWS:
        print(f"[sgid] generation ({generation_pass}): UNet rows per call (rows: calls): {rows_summary(UNET_ROWS)}",
              file=sys.stderr)
    if records is None:
        return None
    manifest = catalog.with_pass_column(pd.DataFrame([r for recs in records for r in recs]))  # older records too
    return catalog.save(params, f"manifest_{generation_pass}", manifest)


def preview_generators(params: Params, image_ids: list[str], generation_pass: Pass = "raw") -> list[dict[str, Any]]:
    """Notebook 03's side by side: these sources' candidates under both generators, with the same prompts, scales and
    seeds, through the per-image pipelines; each as {image_id, class_name, source, edges, img2img, controlnet}.

    In memory only: the run directory holds the generator in force's candidates; on the CPU these equal them up to
    float noise (last bits of multi-threaded sums).
    """
    gen = params.generation
    sources = sources_for(params, generation_pass, catalog.load(params, "images")).set_index("image_id", drop=False)
    chunk = prepare(params, list(sources.loc[list(image_ids)].itertuples(index=False)))
    edges = edge_maps(gen, chunk.inputs)
    outputs = {}
    for kind in GENERATORS:
        pipe, encode, _ = load_generator(params, kind)
        outputs[kind] = run_generator(pipe, encode, gen, chunk, edges if kind == "controlnet" else None, reference=True)
    return [{"image_id": r.image_id, "class_name": r.class_name, "source": original, "edges": edges[i],
             **{kind: [at_source_size(c, original) for c in outputs[kind][i]] for kind in GENERATORS}}
            for i, (r, original) in enumerate(zip(chunk.rows, chunk.originals))]
