"""Helpers every section module of the GPU report shares (bench/gpu_report.py is the entry point).

Kept apart from gpu_report.py so that the section modules (gpu_loop_sections.py, gpu_stage_sections.py) import them
without importing the entry point, which runs as ``__main__``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from diffusers import StableDiffusionControlNetImg2ImgPipeline

from bench import sync
from sgid_utils.models import builders

if TYPE_CHECKING:
    from gpu_report import Context

# Batched against per-image (tests/test_batched.py and conftest.ATOL): fp32 1e-4, fp16 0.03 on [0, 1] images.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 0.03, torch.bfloat16: 0.03}


def log(text: str) -> None:
    print(f"[gpu-report {time.strftime('%H:%M:%S')}] {text}", flush=True)


def markdown_table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(map(str, r)) + " |" for r in rows
    ]


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> str:
    """Peak allocated GPU memory since the last reset; the CPU has no per-stage counter here."""
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else "n/a (CPU)"


def timed(device: torch.device, work: Callable[[], Any]) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    out = work()
    sync(device)
    return time.perf_counter() - start, out


def kernel_seconds(prof) -> float | None:
    """Seconds of GPU kernels in a profile (None without CUDA kernels: the CPU has no busy share)."""
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(e.time_range.elapsed_us() for e in kernels) / 1e6 if kernels else None


def busy_share(prof) -> float | None:
    """GPU kernel time over the profiled wall time (None on the CPU): how much of the loop the GPU computed."""
    busy = kernel_seconds(prof)
    if busy is None:
        return None
    start = min(e.time_range.start for e in prof.events())
    end = max(e.time_range.end for e in prof.events())
    return busy * 1e6 / max(1, end - start)


def build_pipeline(ctx: Context, controlnet: bool):
    """SD 1.5 img2img (and its ControlNet) at this size, random weights, in the run's dtype, contiguous as
    ``augment.generation_setup.load_generator`` loads it (the variants section measures channels_last and
    torch.compile)."""
    torch.manual_seed(0)
    with torch.device(ctx.device):
        pipe = builders.stable_diffusion(ctx.size)
        if controlnet:
            pipe = StableDiffusionControlNetImg2ImgPipeline.from_pipe(pipe, controlnet=builders.controlnet(ctx.size))
    pipe = pipe.to(ctx.device, ctx.dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
