"""Throughput of SGID's stages: the per-image loop the stage code runs today against the batched path.

    python bench/bench.py                                # tiny models, CPU, a couple of minutes
    python bench/bench.py --arch real --device cuda      # SD v1.5 / CLIP ViT-B/32 sizes, random weights

Stages:
- generation: ``augment.generation.generate_candidates`` once per source (one pipeline call,
  k candidates, one guidance scale) against ``batched.generate_many`` (several
  sources and their candidates in one denoising loop, per-sample guidance). Both
  get the same prompt embeddings, scales f(s*) and seeds; prompt encoding is left
  out of both. Also reported: the FLOP floor, the time the counted FLOPs of one
  generated image take at the device's peak, as a fraction of the measured time.
- controlnet: the same two paths under ``generation.generator: controlnet`` (SD img2img
  with a Canny-edge ControlNet, each source's edge map from ``edges.canny_edges``): the
  ControlNet pipeline once per source against the batched loop with the ControlNet's
  residuals. The edge maps are computed once, outside the timing, as the stage does.
- captioning: BLIP's 10 nucleus-sampled and 10 beam-search captions of each image,
  one image per ``generate`` call (the report's way) against ``captioning``'s
  batched calls (a batch of images per call, each image's sampling seeded by itself).
- similarity: CLIP scores of 20 captions per image, one image and its captions per
  call (the report's way) against ``augment.embeddings.score_captions`` on a batch of images
  and all their captions (what ``stages.similarity.run`` runs).
- training (only with ``--stage training``): one epoch of the classifier's training
  steps with JPEG decoding and resizing in every epoch (what a folder dataset does)
  against the stage's cache of decoded images, through the stage's own ``CachedImages``
  and ``ImageCache``, with AMP, loader workers and pinned memory on CUDA. The cache is
  filled once per process for all methods and seeds; that one-off decode is left out.

Each path runs once untimed (kernel selection, allocator warm-up), then
``--repeats`` times alternating with the other path; the best time counts, which
is the least disturbed by other work on the machine. The last lines are one per
stage: ``<stage>: per-image X img/s, batched Y img/s, speedup Z×``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import diffusers
import huggingface_hub
import numpy as np
import pandas as pd
import torch
import transformers
from diffusers import StableDiffusionControlNetImg2ImgPipeline
from PIL import Image
from timm.data import resolve_data_config
from torch.utils.data import DataLoader

from sgid_utils.augment.batched import generate_many
from sgid_utils.augment.edges import canny_edges
from sgid_utils.augment.embeddings import image_embeddings, score_captions
from sgid_utils.augment.generation import PromptEncoder, generate_candidates
from sgid_utils.augment.guidance import guidance_scale
from sgid_utils.augment.image_cache import CachedImages, ImageCache
from sgid_utils.augment.prompts import build_prompt
from sgid_utils.augment.training import train_step
from sgid_utils.core.files import write_png, write_table
from sgid_utils.core.images import load_image
from sgid_utils.core.resumable import BatchPlan, run_items
from sgid_utils.core.seeding import derive_seed
from sgid_utils.models import builders
from sgid_utils.models.flops import img2img_flops
from sgid_utils.models.loading import (
    create_classifier,
    load_captioner,
    load_clip,
    load_controlnet_img2img,
    load_img2img,
    resolve_dtype,
)
from sgid_utils.params.schema import CaptioningParams, CurationParams, GenerationParams
from sgid_utils.params.training import TrainingParams
from sgid_utils.stages.captioning import caption_batch

# Dense fp16/bf16 tensor-core peaks from NVIDIA's data sheets (TFLOP/s), matched in this order against the GPU name.
SPEC_PEAKS_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0),
                     ("T4", 65.0))
WORDS = ("dog", "cat", "flower", "grass", "sofa", "white", "brown", "small", "sitting", "garden", "close", "up")
LABELS = ("great pyrenees", "maine coon", "english cocker spaniel", "pink primrose")
CAPTIONS_PER_IMAGE = 20  # 10 nucleus + 10 beam


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def where(device: torch.device) -> str:
    n = torch.get_num_threads()
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({n} thread{'s' * (n > 1)})"


def best_times(paths: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Best wall time of each path over ``repeats`` alternating runs, after one untimed run of each."""
    for run in paths.values():
        run()
    best = dict.fromkeys(paths, float("inf"))
    for _ in range(repeats):
        for name, run in paths.items():
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """The device's peak FLOP/s for ``dtype``: a data-sheet figure for known GPUs in fp16/bf16,
    else a measured matmul."""
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        name = torch.cuda.get_device_name(device)
        for key, tflops in SPEC_PEAKS_TFLOPS:
            if key in name:
                return tflops * 1e12, f"{name} data sheet, dense {str(dtype).removeprefix('torch.')}"
    n = 4096 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    seconds = best_times({"mm": lambda: [a @ b for _ in range(8)]}, 5, device)["mm"]
    return 8 * 2 * n**3 / seconds, f"measured {n}x{n} matmul, {str(dtype).removeprefix('torch.')}"


def source_images(n: int, width: int, height: int, seed: int = 0) -> list[Image.Image]:
    """Photo-like stand-ins (a gradient and noise): speed does not depend on the content."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, height)[:, None, None]
    return [Image.fromarray(np.clip(rng.uniform(60, 200, 3) + ramp * rng.uniform(-60, 60, 3)
                                    + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8))
            for _ in range(n)]


def captions(rng: np.random.Generator, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=rng.integers(4, 12))) for _ in range(n)]


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def generation_pipeline(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, workdir: Path,
                        controlnet: bool):
    """The tiny models through sgid_utils.models.loading (as the smoke profile loads them),
    or the real architectures."""
    if args.arch == "tiny":
        for family, folder in (("diffusion", "sd"), ("controlnet", "controlnet")):
            if not (workdir / folder).exists() and (controlnet or family == "diffusion"):
                builders.save_tiny(family, workdir / folder)
        if controlnet:
            return load_controlnet_img2img(str(workdir / "sd"), str(workdir / "controlnet"), str(device), dtype)
        return load_img2img(str(workdir / "sd"), str(device), dtype)
    with torch.device(device):
        pipe = builders.stable_diffusion("real")
        if controlnet:
            pipe = StableDiffusionControlNetImg2ImgPipeline.from_pipe(pipe, controlnet=builders.controlnet("real"))
    return pipe.to(device, dtype)


@dataclass
class GenerationInputs:
    """What both generation paths get: sources, their edge maps (ControlNet), prompt embeddings, f(s*) and seeds."""

    images: list[Image.Image]
    edges: list[Image.Image] | None
    embeds: list[torch.Tensor]
    negatives: list[torch.Tensor]
    scales: list[float]
    seeds: list[list[int]]

    def take(self, n: int) -> GenerationInputs:
        """The first ``n`` sources, cycling through these when ``n`` is larger (a memory probe's batch)."""
        pick = [i % len(self.images) for i in range(n)]
        return GenerationInputs([self.images[i] for i in pick],
                                None if self.edges is None else [self.edges[i] for i in pick],
                                [self.embeds[i] for i in pick], [self.negatives[i] for i in pick],
                                [self.scales[i] for i in pick], [self.seeds[i] for i in pick])


def generation_inputs(pipe, n: int, k: int, width: int, height: int, controlnet: bool) -> GenerationInputs:
    """``n`` stand-in sources with SGID prompts (compel), scales f(s*) for s* in 0.2-0.4 and per-candidate seeds."""
    gen = GenerationParams()
    images = source_images(n, width, height)
    cn = gen.controlnet
    edges = [canny_edges(image, cn.low_threshold, cn.high_threshold) for image in images] if controlnet else None
    rng = np.random.default_rng(0)
    encode = PromptEncoder(pipe)
    prompts = [encode(build_prompt(" ".join(rng.choice(WORDS, 8)), LABELS[i % len(LABELS)], gen), gen.negative_prompt)
               for i in range(n)]
    # SGID's scales for s* spread over the CLIP scores seen in practice, 0.2-0.4: f(s*) = 1.16-1.25, all with CFG.
    scales = [guidance_scale(s, gen.guidance) for s in np.linspace(0.2, 0.4, n)]
    seeds = [[derive_seed(0, f"bench{i}", j, purpose="generate") for j in range(k)] for i in range(n)]
    return GenerationInputs(images, edges, [e for e, _ in prompts], [ng for _, ng in prompts], scales, seeds)


def per_image_generation(pipe, inputs: GenerationInputs, strength: float, steps: int) -> list[list[Image.Image]]:
    """The report's way: one pipeline call per source, its k candidates in that call."""
    scale = GenerationParams().controlnet.conditioning_scale
    return [generate_candidates(pipe, inputs.embeds[i], inputs.negatives[i], image, inputs.scales[i], strength, steps,
                                inputs.seeds[i], inputs.edges[i] if inputs.edges else None, scale)
            for i, image in enumerate(inputs.images)]


def batched_generation(pipe, inputs: GenerationInputs, strength: float, steps: int, batch_size: int,
                       output_type: str = "pil") -> list[list]:
    """The stage's batched path: ``batch_size`` sources and all their candidates per denoising loop."""
    return generate_many(pipe, inputs.images, inputs.embeds, inputs.negatives, inputs.scales, strength, steps,
                         inputs.seeds, batch_size=batch_size, output_type=output_type, control_images=inputs.edges,
                         conditioning_scale=GenerationParams().controlnet.conditioning_scale)


def flops_per_image(pipe, inputs: GenerationInputs, strength: float, steps: int) -> tuple[float, int, dict[str, int]]:
    """(FLOPs per generated image, UNet steps, the counted parts):
    steps x CFG pair (+ ControlNet's) + encode + decode."""
    pipe.scheduler.set_timesteps(steps)
    unet_steps = len(pipe.get_timesteps(steps, strength, "cpu")[0])
    model_h, model_w = pipe.image_processor.get_default_height_width(inputs.images[0])
    flops = img2img_flops(pipe, model_h, model_w, prompt_length=inputs.embeds[0].shape[1])
    per_output = (unet_steps * (flops["unet_cfg_pair"] + flops.get("controlnet_cfg_pair", 0))
                  + flops["vae_encode"] + flops["vae_decode"])
    return per_output, unet_steps, flops


def bench_generation(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, workdir: Path,
                     controlnet: bool = False) -> tuple[float, float]:
    pipe = generation_pipeline(args, device, dtype, workdir, controlnet)
    width, height = args.size
    inputs = generation_inputs(pipe, args.n_images, args.k, width, height, controlnet)
    seconds = best_times({"per-image": lambda: per_image_generation(pipe, inputs, args.strength, args.steps),
                          "batched": lambda: batched_generation(pipe, inputs, args.strength, args.steps,
                                                                args.batch_size)},
                         args.repeats, device)
    n_out = args.n_images * args.k
    per_output, unet_steps, flops = flops_per_image(pipe, inputs, args.strength, args.steps)
    model_h, model_w = pipe.image_processor.get_default_height_width(inputs.images[0])
    peak, peak_source = (args.peak_tflops * 1e12, "--peak-tflops") if args.peak_tflops else peak_flops(device, dtype)
    floor = per_output / peak

    print(f"\n== {'controlnet' if controlnet else 'generation'}: arch {args.arch}, {where(device)} "
          f"{str(dtype).removeprefix('torch.')}, {model_w}x{model_h} px, {args.n_images} sources x "
          f"k={args.k}, strength {args.strength} of {args.steps} steps = {unet_steps} UNet steps "
          f"({type(pipe.scheduler).__name__}), batch {args.batch_size} sources, best of {args.repeats}")
    rows = [("path", "seconds", "img/s", "ms/img", "fraction of floor")]
    for name, s in seconds.items():
        rows.append((name, f"{s:.3f}", f"{n_out / s:.3g}", f"{1e3 * s / n_out:.1f}", f"{floor / (s / n_out):.2%}"))
    print(table(rows))
    with_controlnet = f" + ControlNet CFG pair {flops['controlnet_cfg_pair'] / 1e12:.4g})" if controlnet else ""
    print(f"FLOPs per generated image: {per_output / 1e12:.4g} TFLOP = {unet_steps} x {'(' * controlnet}UNet CFG pair "
          f"{flops['unet_cfg_pair'] / 1e12:.4g}{with_controlnet} + VAE encode "
          f"{flops['vae_encode'] / 1e12:.4g} + decode {flops['vae_decode'] / 1e12:.4g}; peak "
          f"{peak / 1e12:.4g} TFLOP/s ({peak_source}): floor {1e3 * floor:.3g} ms/img")
    return n_out / seconds["per-image"], n_out / seconds["batched"]


def bench_captioning(args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
                     workdir: Path) -> tuple[float, float]:
    if args.arch == "tiny":
        builders.save_tiny("captioner", workdir / "blip")
        model, processor = load_captioner(str(workdir / "blip"), str(device), dtype)
    else:
        with torch.device(device):
            model, processor = builders.blip("real")
        model = model.to(dtype)
    cfg = CaptioningParams(batch_size=args.batch_size)
    images = source_images(args.n_images, *args.size)
    seeds = list(range(len(images)))

    def run(batch: int) -> Callable[[], None]:
        def captions_all() -> None:
            for start in range(0, len(images), batch):
                caption_batch(model, processor, images[start:start + batch], cfg, seeds[start:start + batch])
        return captions_all

    seconds = best_times({"per-image": run(1), "batched": run(args.batch_size)}, args.repeats, device)
    print(f"\n== captioning: arch {args.arch}, {where(device)} {str(dtype).removeprefix('torch.')}, "
          f"{args.n_images} images x ({cfg.num_nucleus} nucleus + {cfg.num_beam} beam, {cfg.num_beams} beams), up to "
          f"{cfg.max_new_tokens} tokens, batch {args.batch_size} images, best of {args.repeats}")
    rows = [("path", "seconds", "img/s")] + [(n, f"{s:.3f}", f"{args.n_images / s:.3g}") for n, s in seconds.items()]
    print(table(rows))
    return args.n_images / seconds["per-image"], args.n_images / seconds["batched"]


def bench_similarity(args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
                     workdir: Path) -> tuple[float, float]:
    if args.arch == "tiny":
        builders.save_tiny("clip", workdir / "clip")
        model, processor = load_clip(str(workdir / "clip"), str(device))
    else:
        with torch.device(device):
            model, processor = builders.clip("real")
    rng = np.random.default_rng(0)
    images = source_images(args.n_images, *args.size)
    texts = [captions(rng, CAPTIONS_PER_IMAGE) for _ in images]
    batches = [range(start, min(start + args.batch_size, len(images)))
               for start in range(0, len(images), args.batch_size)]

    def per_image() -> None:  # the report's way: one image and its captions per call
        for image, caps in zip(images, texts):
            score_captions(model, processor, [image], [caps])

    def batched() -> None:  # the similarity stage's: a batch of images and all their captions in one call each
        for batch in batches:
            score_captions(model, processor, [images[i] for i in batch], [texts[i] for i in batch])

    seconds = best_times({"per-image": per_image, "batched": batched}, args.repeats, device)
    print(f"\n== similarity: arch {args.arch}, {where(device)} float32, {args.n_images} images x "
          f"{CAPTIONS_PER_IMAGE} captions, batch {args.batch_size} images, best of {args.repeats}")
    rows = [("path", "seconds", "img/s")] + [(n, f"{s:.3f}", f"{args.n_images / s:.3g}") for n, s in seconds.items()]
    print(table(rows))
    return args.n_images / seconds["per-image"], args.n_images / seconds["batched"]


def bench_training(args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
                   workdir: Path) -> tuple[float, float]:

    t = TrainingParams()
    num_classes = 37
    if args.arch == "tiny":
        builders.save_tiny("classifier", workdir / "vit")
        model = create_classifier(f"local-dir:{workdir / 'vit'}", num_classes)
    else:
        model = builders.classifier(builders.VIT_B16, "real", num_classes)
    model = model.to(device).train()
    data_cfg = resolve_data_config({}, model=model)
    size = data_cfg["input_size"][-1]
    (workdir / "train").mkdir()
    paths = []
    for i, image in enumerate(source_images(args.train_images, *args.size, seed=1)):
        paths.append(str(workdir / "train" / f"{i}.jpg"))
        image.save(paths[-1], quality=90)
    labels = [i % num_classes for i in range(len(paths))]
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    use_amp = t.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    workers = t.num_workers if device.type == "cuda" else 0

    def epoch(dataset: Callable[[], CachedImages]) -> Callable[[], None]:
        def run() -> None:
            loader = DataLoader(dataset(), batch_size=t.batch_size, shuffle=True,
                                num_workers=workers, pin_memory=device.type == "cuda")
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                train_step(model, optimizer, scaler, x, y, y, 1.0, use_amp)
        return run

    def table_with(cache: ImageCache) -> CachedImages:
        return CachedImages(paths, labels, cache, data_cfg["mean"], data_cfg["std"])

    cached = table_with(ImageCache(size))
    cached.cache.warm(paths)
    seconds = best_times({"decode each epoch": epoch(lambda: table_with(ImageCache(size))),
                          "cached": epoch(lambda: cached)},
                         args.repeats, device)
    print(f"\n== training: arch {args.arch}, {where(device)}, AMP {use_amp}, {workers} loader workers, "
          f"{len(paths)} JPEGs of {args.size[0]}x{args.size[1]} -> {size} px, batch {t.batch_size}, "
          f"one epoch, best of {args.repeats}")
    rows = [("path", "seconds", "img/s")] + [(n, f"{s:.3f}", f"{len(paths) / s:.3g}") for n, s in seconds.items()]
    print(table(rows))
    return len(paths) / seconds["decode each epoch"], len(paths) / seconds["cached"]


def bench_controlnet(args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
                     workdir: Path) -> tuple[float, float]:
    return bench_generation(args, device, dtype, workdir, controlnet=True)


SCALING_BATCHES = (1, 2, 4, 8, 16, 32)  # sources per batched loop, on SCALING_BATCH_SOURCES sources
SCALING_BATCH_SOURCES = 32
SCALING_SOURCES = (8, 32, 128)  # sources per run, batched at 8 per loop


def stage_overheads(sources: list[Image.Image], outputs: list[list[Image.Image]], clip, clip_processor,
                    folder: Path) -> dict[str, float]:
    """Seconds of the work around generation that grows with the number of sources, done the stages' way: the per-item
    records (k PNGs and one JSON record per source through ``resumable.run_items``), the manifest (one parquet table
    of every candidate) and curation's CLIP candidate scoring (``image_embeddings`` of each source and its k
    candidates, loaded back from disk, ``curation.batch_size`` images per call)."""
    ids = [f"src{i:05d}" for i in range(len(sources))]
    index = {item: i for i, item in enumerate(ids)}

    def write(chunk: list[str]) -> dict[str, list[dict]]:
        records = {}
        for item in chunk:
            paths = [write_png(folder / "images" / f"{item}_{j}.png", out)
                     for j, out in enumerate(outputs[index[item]])]
            records[item] = [{"image_id": item, "k": j, "path": str(path), "seed": j} for j, path in enumerate(paths)]
        return records

    start = time.perf_counter()
    records = run_items(folder / "items", ids, lambda todo: BatchPlan(write, 8, "records", "bench"), sharded=False)
    records_s = time.perf_counter() - start
    rows = [r for recs in records for r in recs]
    start = time.perf_counter()
    write_table(folder / "manifest.parquet", pd.DataFrame(rows), folder)
    manifest_s = time.perf_counter() - start
    k = len(outputs[0])
    per_call = max(1, CurationParams().batch_size // (k + 1))  # as curation.score_candidates batches sources
    start = time.perf_counter()
    for first in range(0, len(ids), per_call):
        chunk = range(first, min(first + per_call, len(ids)))
        source_emb = image_embeddings(clip, clip_processor, [sources[i] for i in chunk])
        every = image_embeddings(clip, clip_processor, [load_image(r["path"]) for i in chunk for r in records[i]])
        (every.view(len(chunk), k, -1) * source_emb[:, None]).sum(-1).tolist()
    return {"records": records_s, "manifest": manifest_s, "clip scoring": time.perf_counter() - start}


def bench_scaling(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, workdir: Path) -> None:
    """Generation's img/s against the batch size and against the number of sources, the per-source cost of the work
    around it; a markdown table on stdout and a plot (``--plot``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pipe = generation_pipeline(args, device, dtype, workdir, controlnet=False)
    width, height = args.size
    everything = generation_inputs(pipe, max(SCALING_SOURCES), args.k, width, height, controlnet=False)
    if args.arch == "tiny":
        builders.save_tiny("clip", workdir / "clip")
        clip, clip_processor = load_clip(str(workdir / "clip"), str(device))
    else:
        with torch.device(device):
            clip, clip_processor = builders.clip("real")

    def rates(n: int, batches: list[int]) -> dict[str, float]:
        inputs = everything.take(n)
        paths = {"per-image": lambda: per_image_generation(pipe, inputs, args.strength, args.steps)}
        paths |= {f"batch {b}": (lambda b=b: batched_generation(pipe, inputs, args.strength, args.steps, b))
                  for b in batches}
        return {name: n * args.k / s for name, s in best_times(paths, 2, device).items()}

    by_batch = rates(SCALING_BATCH_SOURCES, list(SCALING_BATCHES))
    print(f"\n== scaling: arch {args.arch}, {where(device)}, {width}x{height}, k={args.k}, {args.steps} "
          f"steps at strength {args.strength}; best of 2 timed runs after one untimed, per point")
    rows = [(str(SCALING_BATCH_SOURCES), name, f"{r:.3g}", f"{1e3 * args.k / r:.1f}") for name, r in by_batch.items()]
    by_sources, overheads = {}, {}
    for n in SCALING_SOURCES:
        by_sources[n] = rates(n, [8])
        outputs = batched_generation(pipe, everything.take(n), args.strength, args.steps, 8)
        overheads[n] = stage_overheads(everything.take(n).images, outputs, clip, clip_processor,
                                       workdir / f"scaling{n}")
        rows += [(str(n), name, f"{r:.3g}", f"{1e3 * args.k / r:.1f}") for name, r in by_sources[n].items()]
        rows += [(str(n), name, "", f"{1e3 * s / n:.2f}") for name, s in overheads[n].items()]
    print("\n| sources | path | img/s | ms per source |\n|---|---|---|---|")
    print("\n".join(f"| {' | '.join(r)} |" for r in rows))

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].plot(SCALING_BATCHES, [by_batch[f"batch {b}"] for b in SCALING_BATCHES], "o-", label="batched")
    axes[0].axhline(by_batch["per-image"], color="grey", ls="--", label="per-image pipeline")
    axes[0].set(xscale="log", xlabel=f"sources per batched loop ({SCALING_BATCH_SOURCES} sources, k = {args.k})",
                ylabel="generated images / s", title="img/s against batch size")
    axes[0].set_xticks(SCALING_BATCHES, [str(b) for b in SCALING_BATCHES])
    for name in ("per-image", "batch 8"):
        axes[1].plot(SCALING_SOURCES, [by_sources[n][name] for n in SCALING_SOURCES], "o-",
                     label="batched (8 per loop)" if name == "batch 8" else "per-image pipeline")
    axes[1].set(xscale="log", xlabel="sources", ylabel="generated images / s", title="img/s against number of sources")
    axes[1].set_xticks(SCALING_SOURCES, [str(n) for n in SCALING_SOURCES])
    per_source = {"generation (batched)": [1e3 * args.k / by_sources[n]["batch 8"] for n in SCALING_SOURCES]}
    per_source |= {name: [1e3 * overheads[n][name] / n for n in SCALING_SOURCES]
                   for name in overheads[SCALING_SOURCES[0]]}
    for name, values in per_source.items():
        axes[2].plot(SCALING_SOURCES, values, "o-", label=name)
    axes[2].set(xscale="log", yscale="log", xlabel="sources", ylabel="ms per source",
                title="cost per source (flat = linear growth)")
    axes[2].set_xticks(SCALING_SOURCES, [str(n) for n in SCALING_SOURCES])
    for ax in axes[:2]:
        ax.set_ylim(bottom=0)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"SGID generation, {args.arch} models, {where(device)}, {width}×{height}, k = {args.k}, "
                 f"{args.steps} steps at strength {args.strength}", fontsize=10)
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110)
    print(f"\nplot: {args.plot}")


STAGES = {"generation": bench_generation, "controlnet": bench_controlnet, "captioning": bench_captioning,
          "similarity": bench_similarity, "training": bench_training}
DEFAULT_STAGES = ["generation", "controlnet", "captioning", "similarity"]
# The two paths of each stage, as the summary lines name them.
PATHS = {"training": ("decode each epoch", "cached")}


def quiet() -> None:
    """No library progress bars or warnings between the benchmark's own lines."""
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h or w)


def main() -> None:
    gen = GenerationParams()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", nargs="+", choices=list(STAGES), default=DEFAULT_STAGES)
    parser.add_argument("--arch", choices=["tiny", "real"], default="tiny",
                        help="tiny: the smoke profile's models (CPU-friendly); real: full-size architectures, "
                             "random weights")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                        help="generation's and captioning's dtype; auto: fp16 on CUDA, fp32 on CPU "
                             "(CLIP always runs in fp32, as in stage 02)")
    parser.add_argument("--n-images", type=int, default=8, help="source images per path")
    parser.add_argument("--batch-size", type=int, default=8, help="source images per batched call")
    parser.add_argument("--k", type=int, default=gen.num_candidates, help="candidates per source")
    parser.add_argument("--steps", type=int, default=gen.num_inference_steps)
    parser.add_argument("--strength", type=float, default=gen.strength)
    parser.add_argument("--size", type=size, default=None,
                        help="WxH of every source (default: 64x64 tiny, 512x512 real)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=256, help="JPEGs in the training benchmark's epoch")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch's CPU threads (default: 1 on a CPU device, where the tiny models' ops are too "
                             "small to gain and a busy machine makes threads wait on each other; torch's choice "
                             "otherwise)")
    parser.add_argument("--scaling", action="store_true",
                        help="instead of the stages: generation img/s against batch size and number of sources, "
                             "and the per-source cost of records, manifest and CLIP scoring; a table and a plot "
                             "(--plot)")
    parser.add_argument("--plot", type=Path,
                        default=Path(__file__).resolve().parent.parent / "docs" / "generation_scaling.png")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak for the FLOP floor (default: data sheet for H100/H200/A100/T4 in fp16/bf16, "
                             "else a measured matmul)")
    args = parser.parse_args()
    args.size = args.size or ((64, 64) if args.arch == "tiny" else (512, 512))
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    torch.manual_seed(0)
    results = {}
    quiet()
    with tempfile.TemporaryDirectory(prefix="sgid-bench-") as workdir:
        if args.scaling:
            bench_scaling(args, device, dtype, Path(workdir))
            return
        for stage in args.stage:
            results[stage] = STAGES[stage](args, device, dtype, Path(workdir))
    print()
    for stage, (slow, fast) in results.items():
        slow_name, fast_name = PATHS.get(stage, ("per-image", "batched"))
        print(f"{stage}: {slow_name} {slow:.3g} img/s, {fast_name} {fast:.3g} img/s, speedup {fast / slow:.2f}×")


if __name__ == "__main__":
    main()
