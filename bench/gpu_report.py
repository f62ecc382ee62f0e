"""Everything GPU-specific, measured by one command and written to one markdown report.

    make gpu-report                                            # CUDA: real architectures; no CUDA: tiny models
    python bench/gpu_report.py --size tiny --out /tmp/gpu.md   # the CPU version the tests run

A GPU run is rare and short here, and expensive for a user, so one prepared command measures what
the projections and the docs need (reports/gpu/gpu_report.md, and the same numbers as JSON beside it):

- SD 1.5 img2img at 512 x 512 (the raw pass) and 768 x 512 (the upscaled pass): the per-image pipeline
  against the batched loop, fp16, img/s, fraction of the FLOP floor (strength 0.3 of 50 steps, CFG pair) and the
  largest difference between the two paths' images;
- the ControlNet generator the same way;
- where one stage-sized chunk's time goes (prompt encoding, source upscaling, VAE encode, UNet steps, VAE decode,
  the rest of the loop, resize-and-PNG serially and on the stage's writer threads), the batched loop's img/s against
  its batch size, and a profiler trace of one loop saved beside the report (with the GPU's busy share on CUDA);
- the generation stage itself (``run_stage``) on a temporary run directory of Pets-like mixed source sizes: its
  wall-clock, img/s through it, UNet rows per call, and the GPU's busy share over the stage (gpu_stage_sections.py);
- the batched loop with the UNet's attention on each SDPA backend (flash, memory-efficient, math, cuDNN);
- BLIP captioning (10 nucleus + 10 beam) and CLIP similarity, per image against batched; captioning against its
  batch size;
- training throughput of each backbone the profiles name (AMP on CUDA) at its profile's batch size,
  and its test-pass throughput: images/s and one epoch's seconds on Pets and Flowers;
- the training stage itself with ``training.jobs`` = 1, 2, 4 concurrent configurations (aggregate img/s), and its
  loader (decoded-once image files, its transforms and workers) against tensors already on the device;
- peak GPU memory per stage and the largest batch that fits (doubling until out of memory or a cap);
- optional variants of the batched loop (channels_last; torch.compile on the UNet in the modes default,
  max-autotune-no-cudagraphs and reduce-overhead, with the graphs each compiles), timed within the run and
  compared with the plain loop's images against the batched path's tolerance (gpu_loop_sections.py);
- the wall-clock of params/pets.yaml, flowers.yaml, the backbone profiles and the quick profile projected from
  these rates with ``sgid_utils.preflight.projection`` (preflight's arithmetic), beside the FLOP-derived figures
  of docs/GPU.md's table, and each profile's total on a T4 at this GPU's measured efficiency.

``--size real`` (the default on CUDA) builds the full-size architectures with random weights
(``sgid_utils.models.builders``): speed does not depend on the weight values, and nothing is downloaded.
``--size tiny`` (the default without CUDA) runs the same code with the smoke profile's tiny models and 10 steps:
its rates say nothing about a GPU; it keeps this path from rotting (tests/test_gpu_report.py).
Every section is written as soon as it is measured; a section that fails is reported, the others still run,
and the exit status is 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from backbone_costs import evaluations, profile_costs, split_counts
from gpu_common import (
    TOLERANCE,
    build_pipeline,
    busy_share,
    free_memory,
    log,
    markdown_table,
    peak_gib,
    reset_peak,
    timed,
)
from gpu_loop_sections import (
    COMPILE_MODES,
    CPU_COMPILE_MODES,
    measure_caption_batches,
    measure_sdpa,
    measure_variants,
)
from gpu_stage_sections import measure_generate_stage, measure_loader_training
from method_costs import measure_method_costs
from PIL import Image

from bench import (
    CAPTIONS_PER_IMAGE,
    WORDS,
    batched_generation,
    best_times,
    flops_per_image,
    generation_inputs,
    peak_flops,
    per_image_generation,
    quiet,
    source_images,
    sync,
)
from sgid_utils.augment.embeddings import score_captions
from sgid_utils.augment.generation import PromptEncoder, save_candidate
from sgid_utils.augment.generation_setup import WRITER_THREADS
from sgid_utils.augment.prompts import build_prompt
from sgid_utils.augment.training import optimizer_for, train_step
from sgid_utils.core.registry import upstream_closure
from sgid_utils.models import builders
from sgid_utils.models.loading import preprocessing, resolve_dtype
from sgid_utils.params.backbones import backbones, configs
from sgid_utils.params.load import load_params
from sgid_utils.params.schema import CaptioningParams, GenerationParams, Params, SimilarityParams
from sgid_utils.params.training import BackboneParams, TrainingParams
from sgid_utils.preflight.projection import (
    CLASS_COUNTS,
    SPLIT_SIZES,
    full_run_counts,
    hms,
    image_epochs_by_backbone,
    project_seconds,
)
from sgid_utils.stages.captioning import caption_batch

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ("params/pets.yaml", "params/flowers.yaml", "params/pets_backbones.yaml", "params/flowers_backbones.yaml",
            "params/pets_quick.yaml")
T4_PEAK = 65e12  # NVIDIA T4 data sheet, dense fp16 tensor cores: the Colab GPU the quick profile is sized for
SECTIONS = (
    "Setup",
    "Summary",
    "Generation: img2img",
    "Generation: ControlNet",
    "Generation: where the time goes",
    "Generation: the stage on mixed sizes",
    "Generation: SDPA backends",
    "Captioning and similarity",
    "Captioning against batch size",
    "Training",
    "Training: the stage's loader and concurrent jobs",
    "Compared methods: Real Guidance and DA-Fusion",
    "Peak memory and largest batch",
    "Variants: channels_last and torch.compile",
    "Projected wall-clock",
)
# The README's derivation: generation at 50 % of the dense fp16/bf16 peak, training at 40 %.
DERIVED_FRACTION = {"generation": 0.5, "training": 0.4}
# The goals of the issue that added the batched loop: half the FLOP floor (~17 img/s at 512 x 512 on an H100 SXM
# or an H200, 989.4 TFLOP/s) and batched >= 3x per image.
GOAL_FLOOR_FRACTION, GOAL_SPEEDUP = 0.5, 3.0
PROBE_STRENGTH = 0.02  # one or two UNet steps of 50: memory per step does not depend on the step count


@dataclass(frozen=True)
class Plan:
    """How much work each measurement does at one size; the real plan fits in ~5 minutes on an H100-class GPU."""

    gen_sizes: tuple[tuple[int, int], tuple[int, int]]  # (w, h) of the raw pass (512^2) and the upscaled one (768x512)
    sources: int  # the batched path's sources, k candidates each
    per_image_sources: int  # the per-image path's (its rate does not depend on the count; it is the slow one)
    gen_batch: int  # sources per batched loop
    gen_cap: int  # largest-batch search: at most this many sources
    caption_images: int
    caption_cap: int
    similarity_images: int
    similarity_cap: int
    train_steps: int  # timed optimisation steps per backbone (after as many untimed)
    train_cap: int
    repeats: int  # timed runs of each path, after one untimed
    stage_images_per_class: int  # the generation stage's made-up training images per class (3 classes)
    caption_batches: tuple[int, ...]  # captioning against batch size
    loader_images_per_class: int  # the training stage's made-up training images per class (3 classes)
    loader_epochs: int
    train_jobs: tuple[int, ...]  # training.jobs values; as many Baseline configurations as the largest
    gen_steps: int  # generation.num_inference_steps (x strength 0.3 UNet steps): the default 50 at real size


PLANS = {
    "real": Plan(
        ((512, 512), (768, 512)),
        sources=8,
        per_image_sources=4,
        gen_batch=8,
        gen_cap=32,
        caption_images=16,
        caption_cap=128,
        similarity_images=64,
        similarity_cap=1024,
        train_steps=10,
        train_cap=1024,
        repeats=2,
        stage_images_per_class=16,
        caption_batches=(1, 4, 16, 64),
        loader_images_per_class=128,
        loader_epochs=3,
        train_jobs=(1, 2, 4),
        gen_steps=GenerationParams().num_inference_steps,
    ),
    "tiny": Plan(
        ((64, 64), (96, 64)),
        sources=2,
        per_image_sources=1,
        gen_batch=2,
        gen_cap=4,
        caption_images=2,
        caption_cap=16,
        similarity_images=8,
        similarity_cap=64,
        train_steps=3,
        train_cap=64,
        repeats=1,
        stage_images_per_class=2,
        caption_batches=(1, 2),
        loader_images_per_class=2,
        loader_epochs=1,
        train_jobs=(1, 2),
        gen_steps=10,  # 4 UNet calls (PNDM), as the tests' tiny runs: the tiny rates forecast nothing anyway
    ),
}


@dataclass
class Context:
    """The run's settings and everything measured so far (later sections read earlier ones' rates)."""

    size: str
    plan: Plan
    device: torch.device
    dtype: torch.dtype
    peak: float
    peak_source: str
    channels_last: bool
    compile: bool
    gen: GenerationParams = field(default_factory=GenerationParams)
    rates: dict[str, float] = field(default_factory=dict)  # "<what>" -> img/s (the stage's path)
    flops: dict[str, float] = field(default_factory=dict)  # "<generator> <w>x<h>" -> FLOPs per generated image
    # (stage, peak while timed, largest batch that fits, peak at that batch)
    memory: list[tuple[str, str, str, str]] = field(default_factory=list)
    compile_modes: tuple[str, ...] = COMPILE_MODES  # torch.compile modes the variants section runs


class Report:
    """The markdown report, rewritten after every section so that a run cut short keeps what it measured."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sections: dict[str, list[str]] = {}
        self.failed: list[str] = []
        self.numbers: dict[str, Any] = {}

    def put(self, title: str, lines: list[str]) -> None:
        self.sections[title] = lines
        self.write()

    def write(self) -> None:
        out = ["# GPU report", ""]
        for title in SECTIONS:
            out += [f"## {title}", "",
                    *self.sections.get(title, ["Not reached: not in --sections, or the run stopped before it."]), ""]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(out))
        self.path.with_suffix(".json").write_text(json.dumps(self.numbers, indent=1, sort_keys=True))


def largest_batch(trial: Callable[[int], object], start: int, cap: int, device: torch.device) -> tuple[str, str]:
    """(largest batch that ran, its peak memory): ``trial(b)`` for b = start, 2 start, ... until out of memory or
    ``cap`` (a start above the cap runs once)."""
    size, fit, peak, stop = start, 0, "—", ""
    while size <= max(cap, start):
        oom = False
        reset_peak(device)
        try:
            trial(size)
            sync(device)
        except torch.OutOfMemoryError:
            oom = True
        free_memory()  # outside the except block: the failed attempt's tensors are released by now
        if oom:
            stop = f" ({size} ran out of memory)"
            break
        fit, peak = size, peak_gib(device)
        size *= 2
    if not fit:
        return f"none from {start}{stop}", "—"
    return (f"{fit}{stop}" if stop else f">= {fit} (the search's cap)"), peak


def run_section(report: Report, title: str, measure: Callable[[], list[str]]) -> None:
    """Measure one section; a failure goes into the report (with its traceback) and the next section still runs."""
    log(f"{title} ...")
    start, cpu = time.perf_counter(), time.process_time()
    try:
        lines = measure()
    except Exception:  # noqa: BLE001 - one failed section must not lose the others' minutes of GPU time
        report.failed.append(title)
        lines = ["**Failed** (the other sections ran):", "", "```", traceback.format_exc().strip(), "```"]
        log(f"{title} FAILED:\n{traceback.format_exc()}")
    free_memory()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    report.put(title, lines + ["", f"_Section time: {seconds:.0f} s (this process's CPU: {cpu:.0f} s)._"])
    log(f"{title}: {seconds:.0f} s, CPU {cpu:.1f} s")


# --- generation -------------------------------------------------------------------------------------------------------
def measure_generation(ctx: Context, report: Report, controlnet: bool) -> list[str]:
    name = "controlnet" if controlnet else "img2img"
    gen, plan = ctx.gen, ctx.plan
    k = gen.num_candidates
    # Both paths' 8-bit images: equal within the batched path's tolerance, or one rounding level of 8 bits
    tolerance = max(TOLERANCE[ctx.dtype], 1 / 255)
    pipe = build_pipeline(ctx, controlnet)
    rows, notes = [], []
    for width, height in plan.gen_sizes:
        inputs = generation_inputs(pipe, plan.sources, k, width, height, controlnet)
        few = inputs.take(plan.per_image_sources)
        reset_peak(ctx.device)
        out: dict[str, list[list[Image.Image]]] = {}  # each path's last images, compared below
        seconds = best_times(
            {
                "per-image": lambda few=few, out=out: out.__setitem__("per-image", per_image_generation(
                    pipe, few, gen.strength, gen.num_inference_steps)),
                "batched": lambda inputs=inputs, out=out: out.__setitem__("batched", batched_generation(
                    pipe, inputs, gen.strength, gen.num_inference_steps, plan.gen_batch)),
            },
            plan.repeats,
            ctx.device,
        )
        timed_peak = peak_gib(ctx.device)
        diff = max(float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max()) / 255
                   for one, many in zip(out["per-image"], out["batched"]) for a, b in zip(one, many))
        per_output, unet_steps, flops = flops_per_image(pipe, inputs, gen.strength, gen.num_inference_steps)
        floor = per_output / ctx.peak
        key = f"{name} {width}x{height}"
        per_image, batched = plan.per_image_sources * k / seconds["per-image"], plan.sources * k / seconds["batched"]
        ctx.rates[key], ctx.rates[f"{key} per-image"], ctx.flops[key] = batched, per_image, per_output
        report.numbers[key] = {
            "per_image_img_s": per_image,
            "batched_img_s": batched,
            "speedup": batched / per_image,
            "floor_fraction_per_image": floor * per_image,
            "floor_fraction_batched": floor * batched,
            "tflop_per_image": per_output / 1e12,
            "unet_steps": unet_steps,
            "steps": gen.num_inference_steps,
            "strength": gen.strength,
            "max_abs_diff": diff,
            "tolerance": tolerance,
            **{f"{part}_tflop": flops[part] / 1e12 for part in ("unet_cfg_pair", "vae_encode", "vae_decode")},
        }
        rows.append(
            (
                f"{width} × {height}",
                f"{per_image:.3g}",
                f"{batched:.3g}",
                f"{batched / per_image:.2f}×",
                f"{floor * per_image:.1%} → {floor * batched:.1%}",
                f"{per_output / 1e12:.4g}",
                f"{1e3 * floor:.3g}",
                f"{diff:.2g} ({'equal' if diff <= tolerance else 'NOT equal'})",
            )
        )
        probe = largest_batch(
            lambda b, inputs=inputs: batched_generation(
                pipe, inputs.take(b), PROBE_STRENGTH, gen.num_inference_steps, b
            ),
            1,
            plan.gen_cap,
            ctx.device,
        )
        ctx.memory.append(
            (
                f"generation ({name}) {width} × {height}, k = {k}",
                f"{timed_peak} at {plan.gen_batch} sources",
                f"{probe[0]} sources",
                probe[1],
            )
        )
        parts = f"UNet CFG pair {flops['unet_cfg_pair'] / 1e12:.4g}"
        if controlnet:
            parts += f" + ControlNet CFG pair {flops['controlnet_cfg_pair'] / 1e12:.4g}"
        notes.append(
            f"- {width} × {height}: {unet_steps} × ({parts}) + VAE encode {flops['vae_encode'] / 1e12:.4g} + "
            f"decode {flops['vae_decode'] / 1e12:.4g} TFLOP per generated image."
        )
    head = (
        "input size",
        "per-image img/s",
        "batched img/s",
        "speedup",
        "fraction of floor (per-image → batched)",
        "TFLOP per image",
        "floor ms/img",
        "max |Δ| batched vs per-image",
    )
    return [
        f"{plan.sources} sources × k = {k} batched ({plan.per_image_sources} through the per-image pipeline), "
        f"strength {gen.strength} of {gen.num_inference_steps} steps ({type(pipe.scheduler).__name__}), guidance "
        f"f(s*) 1.16–1.25 (every image with its CFG pair), batched {plan.gen_batch} sources per loop, "
        f"{str(ctx.dtype).removeprefix('torch.')}, best of {plan.repeats} after one untimed run; prompt "
        "encoding (compel) left out of both paths. Max |Δ|: the per-image path's images against the same sources' "
        f"batched ones on [0, 1] (equal: at most {tolerance:.3g}, the batched path's tolerance or one 8-bit level).",
        "",
        *markdown_table(head, rows),
        "",
        f"Floor: FLOPs per image at {ctx.peak / 1e12:.4g} TFLOP/s ({ctx.peak_source}).",
        *notes,
    ]


# --- where generation's time goes ----------------------------------------------------------------------------------
class PhaseTimer:
    """Seconds in the VAE encoder, the UNet and the VAE decoder while hooked: CUDA events on a GPU (no sync inside the
    loop), perf_counter on the CPU."""

    def __init__(self, pipe, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: dict[str, list] = {}
        self.handles = []
        modules = (("VAE encode", pipe.vae.encoder), ("UNet steps", pipe.unet), ("VAE decode", pipe.vae.decoder))
        for name, module in modules:
            self.marks[name] = []
            self.handles.append(module.register_forward_pre_hook(lambda *_, n=name: self.marks[n].append(self.now())))
            self.handles.append(module.register_forward_hook(lambda *_, n=name: self.marks[n].append(self.now())))

    def now(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self) -> dict[str, float]:
        for handle in self.handles:
            handle.remove()
        if self.cuda:
            torch.cuda.synchronize()
        span = (lambda a, b: a.elapsed_time(b) / 1e3) if self.cuda else (lambda a, b: b - a)
        return {n: sum(span(m[i], m[i + 1]) for i in range(0, len(m), 2)) for n, m in self.marks.items()}


def measure_time_split(ctx: Context, report: Report, trace: Path) -> list[str]:
    """One stage-sized chunk (``plan.gen_batch`` sources, k candidates each, 512 x 512 model input from ~500 x 375
    sources) phase by phase; img/s against the batch size; a profiler trace of one loop."""
    gen, plan = ctx.gen, ctx.plan
    k, (width, height) = gen.num_candidates, plan.gen_sizes[0]
    pipe = build_pipeline(ctx, controlnet=False)
    inputs = generation_inputs(pipe, plan.gen_batch, k, width, height, controlnet=False)
    encode = PromptEncoder(pipe)
    rng = np.random.default_rng(1)
    prompts = [build_prompt(" ".join(rng.choice(WORDS, 8)), "great pyrenees", gen) for _ in range(plan.gen_batch)]
    sources = source_images(plan.gen_batch, width * 500 // 768, height * 375 // 512)  # Pets-like, upscaled below
    loop = lambda: batched_generation(pipe, inputs, gen.strength, gen.num_inference_steps, plan.gen_batch)  # noqa: E731
    loop()  # untimed: kernel selection, allocator warm-up
    split: dict[str, float] = {}
    split["prompt encoding (compel, negative once)"], _ = timed(ctx.device, lambda: encode.many(prompts))
    split["source upscaling (LANCZOS)"], _ = timed(
        ctx.device, lambda: [s.resize((width, height), Image.Resampling.LANCZOS) for s in sources])
    phases = PhaseTimer(pipe, ctx.device)
    whole, outputs = timed(ctx.device, loop)
    split |= phases.seconds()
    split["rest of the loop (latents, scheduler, CFG, to PIL)"] = whole - sum(
        split[n] for n in ("VAE encode", "UNet steps", "VAE decode"))
    candidates = [(out, src) for per_source, src in zip(outputs, sources) for out in per_source]
    with tempfile.TemporaryDirectory() as tmp:
        def write_all(pool: ThreadPoolExecutor | None) -> None:
            jobs = [(Path(tmp) / f"{i}.png", out, src, gen.png_compress_level) for i, (out, src) in
                    enumerate(candidates)]
            if pool is None:
                for job in jobs:
                    save_candidate(*job)
            else:
                list(pool.map(lambda job: save_candidate(*job), jobs))

        serial, _ = timed(ctx.device, lambda: write_all(None))
        with ThreadPoolExecutor(WRITER_THREADS) as pool:
            threaded, _ = timed(ctx.device, lambda: write_all(pool))
    split[f"resize back + PNG level {gen.png_compress_level}, one thread"] = serial
    n = len(candidates)
    rows = [(name, f"{1e3 * sec:.1f}", f"{1e3 * sec / n:.2f}") for name, sec in split.items()]
    rows.append((f"the same on {WRITER_THREADS} writer threads (the stage: beside the next chunk's loop)",
                 f"{1e3 * threaded:.1f}", f"{1e3 * threaded / n:.2f}"))
    report.numbers["time split"] = {name: sec for name, sec in split.items()} | {"writer_threads_s": threaded,
                                                                               "candidates": n}

    by_batch, batch = {}, 1
    while batch <= plan.gen_cap:
        more = inputs.take(batch)
        seconds = best_times({"b": lambda more=more, batch=batch: batched_generation(
            pipe, more, gen.strength, gen.num_inference_steps, batch)}, 1, ctx.device)["b"]
        by_batch[batch] = batch * k / seconds
        batch *= 2
    report.numbers["img/s by batch"] = {str(b): r for b, r in by_batch.items()}

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        loop()
        sync(ctx.device)
    trace.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(trace))
    busy = busy_share(prof)
    report.numbers["profiled loop"] = {"trace": trace.name, "gpu_busy": busy}
    return [
        f"One chunk of the stage: {plan.gen_batch} sources × k = {k} at {width} × {height} (upscaled from "
        f"{sources[0].width} × {sources[0].height}), strength {gen.strength} of {gen.num_inference_steps} steps, "
        f"{str(ctx.dtype).removeprefix('torch.')}, after one untimed loop. VAE and UNet phases from "
        f"{'CUDA events' if ctx.device.type == 'cuda' else 'perf_counter'} around the modules' forward calls.",
        "",
        *markdown_table(("phase", "ms per chunk", "ms per generated image"), rows),
        "",
        "Batched loop against its batch size (sources per loop, one timed run each after the warm-up above):",
        "",
        *markdown_table(("sources per loop", "rows per UNet call (CFG pairs)", "img/s"),
                        [(b, 2 * b * k, f"{r:.3g}") for b, r in by_batch.items()]),
        "",
        f"Profiler trace of one loop: `{trace.name}` beside this report (chrome://tracing or Perfetto). GPU busy "
        f"(kernel time over the loop's wall time): {'n/a (CPU)' if busy is None else f'{busy:.0%}'}.",
    ]


# --- captioning and similarity ----------------------------------------------------------------------------------------
def measure_captioning(
    ctx: Context, cfg: CaptioningParams, blip, blip_processor, images: list, few: list
) -> dict[str, float]:
    """Captioning images/s per path (per-image, batched) over ``few``, and its row of the memory table; the caller
    frees the model."""
    plan = ctx.plan

    def caption(imgs: list, batch: int) -> None:
        for start in range(0, len(imgs), batch):
            chunk = imgs[start : start + batch]
            caption_batch(blip, blip_processor, chunk, cfg, list(range(start, start + len(chunk))))

    reset_peak(ctx.device)
    seconds = best_times(
        {"per-image": lambda: caption(few, 1), "batched": lambda: caption(few, cfg.batch_size)},
        plan.repeats,
        ctx.device,
    )
    timed_peak = peak_gib(ctx.device)
    cap_rates = {path: len(few) / s for path, s in seconds.items()}
    probe = largest_batch(
        lambda b: caption([images[i % len(images)] for i in range(b)], b), cfg.batch_size, plan.caption_cap, ctx.device
    )
    ctx.memory.append(
        (
            f"captioning ({cfg.num_nucleus} nucleus + {cfg.num_beam} beam)",
            f"{timed_peak} at {min(cfg.batch_size, len(few))} images",
            f"{probe[0]} images",
            probe[1],
        )
    )
    return cap_rates


def measure_text_stages(ctx: Context, report: Report) -> list[str]:
    plan, cfg, sim = ctx.plan, CaptioningParams(), SimilarityParams()
    torch.manual_seed(0)
    with torch.device(ctx.device):
        blip, blip_processor = builders.blip(ctx.size)
    blip = blip.to(ctx.dtype)
    side = blip_processor.image_processor.size["height"]
    images = source_images(max(plan.caption_images, plan.similarity_images), side, side)
    few = images[: plan.caption_images]
    cap_rates = measure_captioning(ctx, cfg, blip, blip_processor, images, few)
    del blip
    free_memory()

    torch.manual_seed(0)
    with torch.device(ctx.device):
        clip, clip_processor = builders.clip(ctx.size)  # fp32, as stage 02 runs it
    rng = np.random.default_rng(0)
    texts = [[" ".join(rng.choice(WORDS, size=rng.integers(4, 12))) for _ in range(CAPTIONS_PER_IMAGE)] for _ in images]
    pics = images[: plan.similarity_images]

    def score(n: int, batch: int) -> None:
        for start in range(0, n, batch):
            ids = [i % len(images) for i in range(start, min(start + batch, n))]
            score_captions(clip, clip_processor, [images[i] for i in ids], [texts[i] for i in ids])

    reset_peak(ctx.device)
    seconds = best_times(
        {"per-image": lambda: score(len(pics), 1), "batched": lambda: score(len(pics), sim.batch_size)},
        plan.repeats,
        ctx.device,
    )
    sim_peak = peak_gib(ctx.device)
    sim_rates = {path: len(pics) / s for path, s in seconds.items()}
    sim_probe = largest_batch(lambda b: score(b, b), sim.batch_size, plan.similarity_cap, ctx.device)
    ctx.memory.append(
        (
            f"similarity ({CAPTIONS_PER_IMAGE} captions per image)",
            f"{sim_peak} at {min(sim.batch_size, len(pics))} images",
            f"{sim_probe[0]} images",
            sim_probe[1],
        )
    )
    ctx.rates["captioning"], ctx.rates["similarity"] = cap_rates["batched"], sim_rates["batched"]
    report.numbers["captioning"] = {"per_image_img_s": cap_rates["per-image"], "batched_img_s": cap_rates["batched"]}
    report.numbers["similarity"] = {"per_image_img_s": sim_rates["per-image"], "batched_img_s": sim_rates["batched"]}
    blip_name, clip_name = ("BLIP base", "CLIP ViT-B/32") if ctx.size == "real" else ("tiny BLIP", "tiny CLIP")
    rows = [
        (
            f"captioning: {blip_name}, {cfg.num_nucleus} nucleus + {cfg.num_beam} beam ({cfg.num_beams} beams), up to "
            f"{cfg.max_new_tokens} tokens, {str(ctx.dtype).removeprefix('torch.')}",
            len(few),
            min(cfg.batch_size, len(few)),
            f"{cap_rates['per-image']:.3g}",
            f"{cap_rates['batched']:.3g}",
            f"{cap_rates['batched'] / cap_rates['per-image']:.2f}×",
        ),
        (
            f"similarity: {clip_name}, {CAPTIONS_PER_IMAGE} captions per image, float32",
            len(pics),
            min(sim.batch_size, len(pics)),
            f"{sim_rates['per-image']:.3g}",
            f"{sim_rates['batched']:.3g}",
            f"{sim_rates['batched'] / sim_rates['per-image']:.2f}×",
        ),
    ]
    return [
        *markdown_table(("stage", "images", "batch", "per-image img/s", "batched img/s", "speedup"), rows),
        "",
        "Random weights never emit BLIP's end token: every caption runs to the token limit (the worst case; real "
        "captions end after ~10 tokens). Best of "
        f"{plan.repeats} after one untimed run.",
    ]


# --- training ---------------------------------------------------------------------------------------------------------
def profile_backbones() -> list[BackboneParams]:
    """Each distinct backbone model the profiles train, with its first profile's recipe (batch size, optimizer)."""
    seen: dict[str, BackboneParams] = {}
    for path in PROFILES:
        for bb in backbones(load_params(ROOT / path)):
            seen.setdefault(bb.model, bb)
    return list(seen.values())


def measure_training(ctx: Context, report: Report) -> list[str]:
    plan, t = ctx.plan, TrainingParams()
    classes = CLASS_COUNTS["pets"]
    use_amp = t.amp and ctx.device.type == "cuda"
    rows = []
    for bb in profile_backbones():
        torch.manual_seed(0)
        model = builders.classifier(bb.model, ctx.size, classes).to(ctx.device).train()
        side = preprocessing(model, bb.image_size if ctx.size == "real" else None)[0]
        optimizer = optimizer_for(bb, model)
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

        def step(batch: int, model=model, optimizer=optimizer, scaler=scaler, side=side) -> None:
            x = torch.randn(batch, 3, side, side, device=ctx.device)
            y = torch.randint(classes, (batch,), device=ctx.device)
            train_step(model, optimizer, scaler, x, y, y, 1.0, use_amp)

        def steps(n: int, step=step, batch=bb.batch_size) -> Callable[[], None]:
            return lambda: [step(batch) for _ in range(n)]

        reset_peak(ctx.device)
        train_s = best_times({"train": steps(plan.train_steps)}, 1, ctx.device)["train"]
        timed_peak = peak_gib(ctx.device)
        model.eval()
        x = torch.randn(t.eval_batch_size, 3, side, side, device=ctx.device)

        @torch.inference_mode()
        def test_pass(model=model, x=x) -> None:
            with torch.autocast(ctx.device.type, enabled=use_amp):
                for _ in range(plan.train_steps):
                    model(x)

        eval_s = best_times({"test": test_pass}, 1, ctx.device)["test"]
        model.train()
        train_rate = plan.train_steps * bb.batch_size / train_s
        eval_rate = plan.train_steps * t.eval_batch_size / eval_s
        ctx.rates[f"train {bb.model}"], ctx.rates[f"test {bb.model}"] = train_rate, eval_rate
        probe = largest_batch(step, bb.batch_size, plan.train_cap, ctx.device)
        ctx.memory.append(
            (f"training {bb.label}", f"{timed_peak} at batch {bb.batch_size}", f"{probe[0]} images", probe[1])
        )
        epochs = {
            ds: sum(SPLIT_SIZES[ds][s] for s in SPLIT_SIZES[ds] if s != "test") / train_rate
            for ds in ("pets", "flowers")
        }
        report.numbers[f"train {bb.model}"] = {
            "train_img_s": train_rate,
            "test_img_s": eval_rate,
            "batch_size": bb.batch_size,
            "epoch_s_pets": epochs["pets"],
            "epoch_s_flowers": epochs["flowers"],
        }
        rows.append(
            (
                bb.label,
                f"{side} px",
                bb.batch_size,
                bb.optimizer,
                f"{train_rate:.4g}",
                f"{eval_rate:.4g}",
                hms(epochs["pets"]),
                hms(epochs["flowers"]),
            )
        )
        del model, optimizer, step, steps, test_pass  # the functions hold the model too
        free_memory()
    return [
        f"Synthetic batches already on the device (the stage's image cache and loader feed it: `bench.py --stage "
        f"training` times that path), AMP {'on' if use_amp else 'off (CPU)'}, each backbone's profile batch size and "
        f"optimizer, {plan.train_steps} timed steps after {plan.train_steps} untimed; test passes at batch "
        f"{t.eval_batch_size} likewise. Epoch = the training split (Pets 3,680, Flowers 2,040 images) at the measured "
        "rate, without testing.",
        "",
        *markdown_table(
            ("backbone", "input", "batch", "optimizer", "train img/s", "test img/s", "epoch (Pets)", "epoch (Flowers)"),
            rows,
        ),
    ]


# --- projection -------------------------------------------------------------------------------------------------------
def project_profile(ctx: Context, path: str) -> tuple[list[tuple[str, ...]], float]:
    """Rows (profile, stage, items, rate, projected, derived) for one params file, and its projected seconds:
    preflight's arithmetic (``project_seconds``, ``image_epochs_by_backbone``) on this run's rates, and
    docs/GPU.md's FLOP derivation."""
    params: Params = load_params(ROOT / path)
    counts = full_run_counts(params)
    linked = set(upstream_closure("curation")) if params.run.reuse else set()
    kind = "controlnet" if params.generation.generator == "controlnet" else "img2img"
    (w0, h0), (w1, h1) = ctx.plan.gen_sizes
    k = params.generation.num_candidates
    per_item = {
        "captioning": 1 / ctx.rates["captioning"],
        "similarity": 1 / ctx.rates["similarity"],
        "generation": k / ctx.rates[f"{kind} {w0}x{h0}"],
        "upscaling": k / ctx.rates[f"{kind} {w1}x{h1}"],
    }
    gen_peak = DERIVED_FRACTION["generation"] * ctx.peak
    derived = {
        "generation": counts.raw_sources * k * ctx.flops[f"{kind} {w0}x{h0}"] / gen_peak,
        "upscaling": counts.small_sources * k * ctx.flops[f"{kind} {w1}x{h1}"] / gen_peak,
    }
    name, rows, total, total_derived = params.run.name, [], 0.0, 0.0
    for stage, seconds in project_seconds(per_item, counts).items():
        if stage in linked:
            rows.append((name, stage, "linked (run.reuse)", "", "0", "0"))
            continue
        total += seconds
        total_derived += derived.get(stage, 0.0)
        rows.append(
            (
                name,
                stage,
                f"{counts.items(stage):,.0f}",
                f"{1 / per_item[stage]:.3g} {'img' if stage in ('captioning', 'similarity') else 'source'}/s",
                hms(seconds),
                hms(derived[stage]) if stage in derived else "not derived",
            )
        )
    n_test = split_counts(params)[1]
    image_epochs = image_epochs_by_backbone(params, counts.train_images)
    flops_table = profile_costs(str(ROOT / path), DERIVED_FRACTION["training"] * ctx.peak / 1e12)
    hours = flops_table.iloc[:, -1].tolist()
    for bb, derived_hours in zip(backbones(params), hours):
        runs = sum(c.backbone == bb.name for c in configs(params))
        seconds = (
            image_epochs[bb.name] / ctx.rates[f"train {bb.model}"]
            + n_test * evaluations(bb) * runs / ctx.rates[f"test {bb.model}"]
        )
        total += seconds
        total_derived += derived_hours * 3600
        rows.append(
            (
                name,
                f"train: {bb.label}",
                f"{image_epochs[bb.name]:,} image-epochs + {runs} × {evaluations(bb)} tests",
                f"{ctx.rates[f'train {bb.model}']:.4g} img/s",
                hms(seconds),
                hms(derived_hours * 3600),
            )
        )
    rows.append((name, "**total** (stages above)", "", "", f"**{hms(total)}**", f"**{hms(total_derived)}**"))
    return rows, total


def measure_projection(ctx: Context, report: Report) -> list[str]:
    rows, t4 = [], {}
    for path in PROFILES:
        profile_rows, seconds = project_profile(ctx, path)
        rows += profile_rows
        t4[profile_rows[-1][0]] = seconds * ctx.peak / T4_PEAK
    report.numbers["projection"] = [
        dict(zip(("profile", "stage", "items", "rate", "projected", "derived"), r)) for r in rows
    ]
    report.numbers["t4_projection_s"] = t4
    peak = ctx.peak / 1e12
    caveat = (
        [
            f"**Tiny models**: these rates are the smoke models' on {device_name(ctx.device)}; the projection only "
            "exercises the code path and forecasts nothing.",
            "",
        ]
        if ctx.size == "tiny"
        else []
    )
    return [
        *caveat,
        "Projected = the full run's items (official split sizes, as `make preflight` before the data stage: "
        "sgid_utils.preflight.projection.full_run_counts) × this run's seconds per item (`project_seconds`); "
        "training = image-epochs per backbone (`image_epochs_by_backbone`) at its measured rate plus every "
        "test pass. Generation is projected at the 512 × 512 rate for the raw pass (sources at their own "
        "size, ~500 × 375: a little pessimistic) and the 768 × 512 rate for the upscaled pass. Derived = "
        "README.md's 'Expected wall-clock' method on this device: FLOPs at "
        f"{DERIVED_FRACTION['generation']:.0%} of {peak:.4g} TFLOP/s for generation, "
        f"{DERIVED_FRACTION['training']:.0%} for training (bench/backbone_costs.py); docs/GPU.md's table does "
        "the same for an H100 SXM at 989.4 TFLOP/s (NVIDIA data sheet, dense fp16/bf16). Not projected: the data, "
        "curation and results stages, model loading, notebook start-up and the ablation profiles.",
        "",
        *markdown_table(("profile", "stage", "full-run items", "measured rate", "projected", "derived (FLOPs)"), rows),
        "",
        f"On a T4 (65 TFLOP/s dense fp16, data sheet) at this GPU's measured efficiency (each total × "
        f"{peak:.4g} / 65; a T4's lower memory bandwidth makes this a floor, not a forecast): "
        + "; ".join(f"{name} {hms(sec)}" for name, sec in t4.items()) + ".",
    ]


# --- setup and summary ------------------------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    return (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} thread{'s' * (torch.get_num_threads() > 1)})"
    )


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def setup_lines(ctx: Context, argv: list[str]) -> list[str]:
    libs = ", ".join(f"{n} {version(n)}" for n in ("torch", "diffusers", "transformers", "timm", "compel"))
    memory = (
        f", {torch.cuda.get_device_properties(ctx.device).total_memory / 2**30:.0f} GiB"
        if ctx.device.type == "cuda"
        else ""
    )
    models = "full-size architectures, random weights" if ctx.size == "real" else "the smoke profile's tiny models"
    return [
        f"- Date: {datetime.date.today().isoformat()}; device: {device_name(ctx.device)}{memory}",
        f"- Python {platform.python_version()}; {libs}",
        f"- Size: **{ctx.size}** ({models}); dtype {str(ctx.dtype).removeprefix('torch.')} (CLIP float32); "
        f"peak {ctx.peak / 1e12:.4g} TFLOP/s ({ctx.peak_source})",
        f"- Command: `{' '.join(['python', *argv])}`",
    ]


def summary_lines(ctx: Context) -> list[str]:
    w, h = ctx.plan.gen_sizes[0]
    key = f"img2img {w}x{h}"
    if key not in ctx.rates:
        return ["Generation was not measured: see its section."]
    batched, per_image = ctx.rates[key], ctx.rates[f"{key} per-image"]
    fraction = ctx.flops[key] / ctx.peak * batched
    verdict = lambda ok: "met" if ok else "not met"  # noqa: E731 - a one-line helper of this summary
    return [
        f"- img2img {w} × {h}: batched **{batched:.3g} img/s** = {fraction:.1%} of the FLOP floor (goal "
        f"≥ {GOAL_FLOOR_FRACTION:.0%} on an H100: {verdict(fraction >= GOAL_FLOOR_FRACTION)}); per-image "
        f"{per_image:.3g} img/s, speedup **{batched / per_image:.2f}×** (goal ≥ {GOAL_SPEEDUP:g}×: "
        f"{verdict(batched / per_image >= GOAL_SPEEDUP)})."
        + (" Tiny models on a CPU: the goals are a GPU's; shown for the code path only." if ctx.size == "tiny" else "")
    ] + ([f"- Through the generation stage itself (Pets-like mixed sizes, all its CPU work included): "
          f"**{ctx.rates['generate stage']:.3g} img/s**."] if "generate stage" in ctx.rates else [])


# The measured sections by short name, in the order they run (--sections picks some).
MEASURED = ("img2img", "controlnet", "timesplit", "stage", "sdpa", "text", "captionbatch", "training", "trainstage",
            "methods", "projection", "variants")


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size",
        choices=list(PLANS),
        default="real" if cuda else "tiny",
        help="real: full-size architectures, random weights (default on CUDA); tiny: the smoke models",
    )
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "gpu" / "gpu_report.md")
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compare the batched loop with a channels_last UNet (default: on CUDA)",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compare the batched loop with torch.compile on the UNet (default: on CUDA)",
    )
    parser.add_argument("--compile-modes", nargs="+", choices=COMPILE_MODES, default=None,
                        help="torch.compile modes to time with --compile (default: all on CUDA, 'default' on the CPU)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak for the FLOP floor")
    parser.add_argument("--sections", nargs="+", choices=MEASURED, default=list(MEASURED),
                        help="measure only these sections (a rerun of a few on a short GPU lease); default: all")
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the stages' progress bars, in this process and its workers
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # as bench.py: the tiny models' ops are too small to gain from threads
    dtype = resolve_dtype("auto", device)
    quiet()
    peak, peak_source = (args.peak_tflops * 1e12, "--peak-tflops") if args.peak_tflops else peak_flops(device, dtype)
    on_gpu = device.type == "cuda"
    ctx = Context(
        args.size,
        PLANS[args.size],
        device,
        dtype,
        peak,
        peak_source,
        on_gpu if args.channels_last is None else args.channels_last,
        on_gpu if args.compile is None else args.compile,
        gen=GenerationParams(num_inference_steps=PLANS[args.size].gen_steps),
        compile_modes=tuple(args.compile_modes or (COMPILE_MODES if on_gpu else CPU_COMPILE_MODES)),
    )
    report = Report(args.out)
    report.numbers["setup"] = {
        "size": ctx.size,
        "device": device_name(device),
        "dtype": str(dtype),
        "peak_tflops": peak / 1e12,
    }
    started = time.perf_counter()
    report.put("Setup", setup_lines(ctx, [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]))
    sections = {
        "img2img": lambda: run_section(report, "Generation: img2img", lambda: measure_generation(ctx, report, False)),
        "controlnet": lambda: run_section(report, "Generation: ControlNet",
                                          lambda: measure_generation(ctx, report, controlnet=True)),
        "timesplit": lambda: run_section(report, "Generation: where the time goes", lambda: measure_time_split(
            ctx, report, args.out.with_name(f"{args.out.stem}_trace.json"))),
        "stage": lambda: run_section(report, "Generation: the stage on mixed sizes",
                                     lambda: measure_generate_stage(ctx, report)),
        "sdpa": lambda: run_section(report, "Generation: SDPA backends", lambda: measure_sdpa(ctx, report)),
        "text": lambda: run_section(report, "Captioning and similarity", lambda: measure_text_stages(ctx, report)),
        "captionbatch": lambda: run_section(report, "Captioning against batch size",
                                            lambda: measure_caption_batches(ctx, report)),
        "training": lambda: run_section(report, "Training", lambda: measure_training(ctx, report)),
        "trainstage": lambda: run_section(report, "Training: the stage's loader and concurrent jobs",
                                          lambda: measure_loader_training(ctx, report)),
        "methods": lambda: run_section(report, "Compared methods: Real Guidance and DA-Fusion", lambda: (
            measure_method_costs(ctx, report))),
        "projection": lambda: run_section(report, "Projected wall-clock", lambda: measure_projection(ctx, report)),
        # Last: torch.compile's first call takes a minute or more; a run cut short loses only this section.
        "variants": lambda: run_section(report, "Variants: channels_last and torch.compile",
                                        lambda: measure_variants(ctx, report)),
    }
    for name in MEASURED:
        if name in args.sections:
            sections[name]()
        if name == "training" and ctx.memory:
            report.put(
                "Peak memory and largest batch",
                [
                    "Peak allocated memory while the stage's path was timed, and the largest batch that ran when "
                    "doubling from the stage's batch size (generation: from 1 source, with 1–2 UNet steps: memory per "
                    "step does not depend on the count) until out of memory or the search's cap.",
                    "",
                    *markdown_table(("stage", "peak while timed", "largest batch that fits", "peak at that batch"),
                                    ctx.memory),
                ],
            )
    total = time.perf_counter() - started
    failed = f" Failed sections: {', '.join(report.failed)}." if report.failed else ""
    report.put("Summary", summary_lines(ctx) + [f"- Whole run: {hms(total)}.{failed}"])
    report.put("Setup", setup_lines(ctx, [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]))
    log(f"wrote {args.out} in {hms(total)}{failed}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
