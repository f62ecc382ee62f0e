"""GPU report sections that run the package's stages themselves on a temporary run directory: the generation stage over
Pets-like mixed source sizes (wall-clock, img/s, the GPU's busy share), and the training stage's loader and concurrent
configurations (``training.jobs``). Entry point and shared rules: bench/gpu_report.py.

The run directory holds a made-up image folder (``models.tiny.build_smoke_dataset``: short sides from half to twice
``curation.upscale_threshold``) and the smoke profile's tiny models; at ``--size real`` the generator and the
classifier are the full-size architectures with random weights, saved there first (``models.builders``), so the stage
loads them from disk as it loads any checkpoint. Captions and similarity come from the tiny models (untimed).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import timm
import torch
import yaml
from gpu_common import kernel_seconds, markdown_table, timed

from sgid_utils.augment.batched import UNET_ROWS
from sgid_utils.augment.generation import load_generator
from sgid_utils.augment.generation_setup import COMPILE_MIN_CANDIDATES, rows_summary
from sgid_utils.augment.image_cache import ImageCache
from sgid_utils.augment.training import Loop, lr_factor, optimizer_for, train_epoch, train_step
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.runner import run_stage
from sgid_utils.models import builders
from sgid_utils.models.loading import create_classifier, preprocessing
from sgid_utils.params.backbones import backbone, configs
from sgid_utils.params.load import load_params
from sgid_utils.params.schema import Params
from sgid_utils.stages.training import make_loaders, training_sets

if TYPE_CHECKING:
    from gpu_report import Context, Report

PETS_THRESHOLD = 512  # the default upscale threshold: made-up short sides 256-1023 px, as Pets' photos have


def save_real_model(root: Path, ctx: Context, name: str) -> None:
    """At ``--size real``, the full-size generator ("sd") or classifier ("vit", ViT-B/16), random weights, where the
    smoke profile would put its tiny one (the ``.complete`` marker keeps ``ensure_smoke_assets`` from replacing it)."""
    if ctx.size != "real":
        return
    folder = root / "models" / name
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    if name == "sd":
        with torch.device(ctx.device):
            builders.stable_diffusion("real").to(dtype=ctx.dtype).save_pretrained(folder)
    else:
        timm.models.save_for_hf(builders.classifier(builders.VIT_B16, "real"), str(folder), safe_serialization=True)
    (folder / ".complete").write_text("full-size architecture, random weights (bench/gpu_report.py)\n")


def stage_params(root: Path, ctx: Context, per_class: int, sections: dict[str, Any]) -> Params:
    """A params file for a run under ``root``: tiny models (full-size generator and classifier at ``--size real``)
    and ``per_class`` made-up training images per class of Pets-like sizes (tiny: of 24-96 px)."""
    models = root / "models"
    threshold = PETS_THRESHOLD if ctx.size == "real" else 48
    doc = {
        "run": {"name": "gpu-report", "dir": str(root / "run"), "reports_dir": str(root / "reports"), "seed": 0,
                "device": ctx.device.type},
        "dataset": {"source": "imagefolder", "path": str(root / "data" / "train"),
                    "test_path": str(root / "data" / "test")},
        "models": {"captioner": str(models / "blip"), "clip": str(models / "clip"), "diffusion": str(models / "sd"),
                   "classifier": f"local-dir:{models / 'vit'}",
                   "controlnet": "lllyasviel/sd-controlnet-canny"},  # a hub id: not built, not loaded (img2img)
        "captioning": {"num_nucleus": 2, "num_beam": 2, "num_beams": 2, "max_new_tokens": 6, "batch_size": 8},
        "curation": {"upscale_threshold": threshold},
        "smoke": {"build_models": True, "build_dataset": True, "images_per_class": per_class},
    } | sections
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_params(path)


def stage_run(name: str, params: Params, cuda: bool) -> tuple[float, Any, float | None]:
    """(wall seconds, result, GPU kernel seconds or None) of one stage run; kernels counted by the profiler on CUDA."""
    if not cuda:
        seconds, result = timed(torch.device("cpu"), lambda: run_stage(name, params))
        return seconds, result, None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        seconds, result = timed(torch.device("cuda"), lambda: run_stage(name, params))
    return seconds, result, kernel_seconds(prof)


def measure_generate_stage(ctx: Context, report: Report) -> list[str]:
    """The generation stage end to end on mixed source sizes; on CUDA timed once plain and once under the profiler."""
    plan, cuda = ctx.plan, ctx.device.type == "cuda"
    with tempfile.TemporaryDirectory(prefix="sgid-gpu-report-") as tmp:
        root = Path(tmp)
        save_real_model(root, ctx, "sd")
        tiny = {} if ctx.size == "real" else {"num_inference_steps": plan.gen_steps, "max_side": 64}
        params = stage_params(root, ctx, plan.stage_images_per_class, {"generation": tiny})
        for upstream in ("captioning", "similarity"):
            run_stage(upstream, params)
        sources = run_stage("data", params).query("split == 'train'")
        # Loaded once per stage (cached for the process): timed apart, as a full run's minutes dwarf it
        loading, _ = timed(ctx.device, lambda: load_generator(params))
        wall, table, _ = stage_run("generation", params, cuda=False)
        rows_per_call = rows_summary(UNET_ROWS) if UNET_ROWS else "none (the per-image pipeline: the CPU's default)"
        busy = profiled = None
        if cuda:  # again, afresh, under the profiler: its overhead stays out of the timed run
            shutil.rmtree(RunDir.of(params).stage("generation"))
            profiled, _, kernels = stage_run("generation", params, cuda=True)
            busy = None if kernels is None else kernels / profiled
    n = len(table)
    ctx.rates["generate stage"] = n / wall
    sizes = sorted(zip(sources.width, sources.height), key=lambda s: s[0] * s[1])
    report.numbers["generate stage"] = {"seconds": wall, "candidates": n, "img_s": n / wall, "sources": len(sources),
                                        "gpu_busy": busy, "profiled_seconds": profiled, "loading_s": loading}
    gen = params.generation
    busy_text = ("n/a (no CUDA)" if busy is None
                 else f"{busy:.0%} (kernel time over the profiled run's wall, {profiled:.1f} s)")
    return [
        f"`run_stage('generation')` on a fresh run directory: {len(sources)} made-up training images of mixed sizes "
        f"({sizes[0][0]} × {sizes[0][1]} to {sizes[-1][0]} × {sizes[-1][1]}), k = {gen.num_candidates}, strength "
        f"{gen.strength} of {gen.num_inference_steps} steps, generation.max_side {gen.max_side}, "
        f"{'the full-size SD 1.5 architecture with random weights' if ctx.size == 'real' else 'the tiny SD'} loaded "
        f"from disk (loading it: {loading:.1f} s, once per stage, before the timed run: the stage's cache keeps it). "
        "Timed: everything else the stage does (sources loaded and upscaled, prompts encoded, the loop, resizes, PNG "
        "writes, item records); captions and similarity ran before, untimed. Not compiled: `generation.compile` "
        f"unset compiles only passes of {COMPILE_MIN_CANDIDATES:,} candidates or more (the Variants section times "
        "compilation).",
        "",
        *markdown_table(("sources", "candidates", "stage wall-clock", "img/s through the stage", "GPU busy",
                         "UNet rows per call (rows: calls)"),
                        [(len(sources), n, f"{wall:.2f} s", f"{n / wall:.3g}", busy_text, rows_per_call)]),
    ]


def loader_rates(params: Params, ctx: Context) -> dict[str, float]:
    """One configuration's training epoch through the stage's loaders (``make_loaders``: cached decoded images,
    its transforms and workers) against the same steps on tensors already on the device; and the decode-once cost."""
    t, device = params.training, ctx.device
    use_amp = t.amp and device.type == "cuda"
    train, test, _, classes = training_sets(params)
    cfg = configs(params)[0]
    bb = backbone(params, cfg.backbone)
    torch.manual_seed(0)
    model = create_classifier(bb.model, classes, bb.image_size, pretrained=bb.pretrained)
    side = preprocessing(model, bb.image_size)[0]
    decode, _ = timed(device, lambda: ImageCache(side).warm(train.path.tolist()))
    loader_gen = torch.Generator().manual_seed(0)
    train_loader, _ = make_loaders(params, cfg, bb, model, train, test, loader_gen, device)
    model = model.to(device)
    optimizer = optimizer_for(bb, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(bb, len(train_loader)))
    loop = Loop(model, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=use_amp), loader_gen, [])

    def epoch() -> None:
        train_epoch(loop, train_loader, cfg, t, device, use_amp, "gpu-report loader", len(train_loader))

    sizes = [min(bb.batch_size, len(train) - start) for start in range(0, len(train), bb.batch_size)]
    batches = [(torch.randn(n, 3, side, side, device=device), torch.randint(classes, (n,), device=device))
               for n in sizes]  # the loader's batch sizes, its last one partial

    def in_memory() -> None:
        for x, y in batches:
            train_step(model, optimizer, loop.scaler, x, y, y, 1.0, use_amp)

    epoch()  # untimed: workers, kernels, allocator
    loader_s, _ = timed(device, epoch)
    memory_s, _ = timed(device, in_memory)
    return {"loader_img_s": len(train) / loader_s, "in_memory_img_s": len(train) / memory_s,
            "decode_img_s": len(train) / decode, "images": len(train), "batch_size": bb.batch_size,
            "workers": t.num_workers if device.type == "cuda" else 0, "side": side}


def measure_loader_training(ctx: Context, report: Report) -> list[str]:
    """The training stage with 1, 2, 4 configurations at once (aggregate img/s), then its loader against in-memory."""
    plan = ctx.plan
    configs_n = max(plan.train_jobs)
    with tempfile.TemporaryDirectory(prefix="sgid-gpu-report-") as tmp:
        root = Path(tmp)
        save_real_model(root, ctx, "vit")
        training = {"methods": ["baseline"], "seeds": list(range(configs_n)), "epochs": plan.loader_epochs}
        params = stage_params(root, ctx, plan.loader_images_per_class, {"training": training})
        run_stage("data", params)
        jobs_rows, by_jobs = [], {}
        for jobs in plan.train_jobs:
            shutil.rmtree(RunDir.of(params).stage("training"), ignore_errors=True)
            each = params.model_copy(update={"training": params.training.model_copy(update={"jobs": jobs})})
            start = time.perf_counter()
            table = run_stage("training", each)
            seconds = time.perf_counter() - start
            images = int((table.epochs * table.train_images).sum())
            by_jobs[str(jobs)] = {"seconds": seconds, "image_epochs": images, "img_s": images / seconds}
            jobs_rows.append((jobs, len(table), f"{images:,}", f"{seconds:.1f} s", f"{images / seconds:.4g}",
                              f"{by_jobs[str(jobs)]['img_s'] / by_jobs[str(plan.train_jobs[0])]['img_s']:.2f}×"))
        rates = loader_rates(params, ctx)
    report.numbers["training jobs"] = by_jobs
    report.numbers["training loader"] = rates
    return [
        f"`run_stage('training')` on a fresh folder each time: {configs_n} Baseline configurations "
        f"(seeds) of {'ViT-B/16 (full-size, random weights)' if ctx.size == 'real' else 'the tiny ViT'}, "
        f"{plan.loader_epochs} epoch(s) over {rates['images']} made-up training images of mixed sizes, with "
        "`training.jobs` configurations at once on this device (each a worker process, as the stage runs them). "
        "Aggregate img/s = the configurations' image-epochs over the stage's wall-clock, which includes what each "
        "configuration pays besides training steps: worker start, model loading, decoding its process's images "
        "once, test passes.",
        "",
        *markdown_table(("training.jobs", "configurations", "image-epochs", "stage wall-clock", "aggregate img/s",
                         "vs jobs = 1"), jobs_rows),
        "",
        f"One configuration's epoch through the stage's loader (`stages.training.make_loaders`: decoded-once images, "
        f"its normalisation, {rates['workers']} loader worker(s), batch {rates['batch_size']}, {rates['side']} px) "
        "against the same batches as tensors already on the device (the Training section's way), after one "
        "untimed epoch:",
        "",
        *markdown_table(("path", "img/s"), [
            ("stage loader", f"{rates['loader_img_s']:.4g}"),
            ("in-memory tensors", f"{rates['in_memory_img_s']:.4g}"),
            ("decoding and resizing the JPEGs (once per process, one core)", f"{rates['decode_img_s']:.4g}"),
        ]),
    ]
