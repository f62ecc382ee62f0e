"""How the generation stage loads its pipeline (the generator and sampler in force) and sizes and speeds up its work
on a GPU: the starting batch from free memory, when to compile the UNet, how many writer threads, and the UNet rows
it ran. Beyond which pipeline runs, speed only: none of this changes an image beyond the batched path's
floating-point tolerance."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import torch

from sgid_utils.augment.prompt_encoding import PromptEncoder
from sgid_utils.models.loading import (
    load_controlnet_img2img,
    load_img2img,
    load_lcm_img2img,
    resolve_device,
    resolve_dtype,
)
from sgid_utils.params.schema import GenerationParams, Params

# GPU memory one candidate takes in the batched loop at 512 x 512 in fp16: its UNet rows (the CFG pair) and its
# share of the VAE decode. Measured on an H200 (docs/gpu/h200_2026-12-04_full.md, peak memory): 16.4 GiB at 8
# sources and 43.2 GiB at 32, k = 3, i.e. (43.2 - 16.4) / 72 = 0.37 GiB per extra candidate; 0.4 with a margin
# (it was 1.5 by diffusers users' reports, which started a T4 at 2 sources where ~9 fit). Only the starting batch
# size rests on it: an out-of-memory error halves the batch and retries.
CANDIDATE_BYTES_512_FP16 = 0.4 * 2**30
CONTROLNET_MEMORY_FACTOR = 1.4
MAX_AUTO_BATCH = 16  # 48 candidates at k = 3: enough rows to fill an H100's tensor cores
# generation.compile unset: compile on CUDA when a pass generates at least this many candidates. On the H200 the
# compiled UNet ran 10.6 against 8.4 img/s and took ~60 s to compile (docs/PERFORMANCE.md): 0.025 s saved per
# image pays the 60 s back after ~2,400 candidates; 3,000 leaves room for a recompile at a new input size.
COMPILE_MIN_CANDIDATES = 3000
# Resize-and-PNG writer threads on CUDA (generation.writer_threads unset), where the main thread mostly waits for the
# GPU and cores are free; 0 (inline) on the CPU, where they would compete with torch for the same cores.
WRITER_THREADS = max(1, min(4, os.cpu_count() or 1))


def auto_batch_size(free_bytes: int, width: int, height: int, k: int, dtype: torch.dtype,
                    controlnet: bool = False) -> int:
    """Sources per denoising loop that fit in 80 % of ``free_bytes`` at this input size, between 1 and MAX_AUTO_BATCH.

    Under the ControlNet each row also runs the ControlNet's encoder copy and keeps its residuals: taken as 1.4x the
    bytes (an estimate from its FLOPs, +31 % per step; an out-of-memory error still halves the batch)."""
    scale = width * height / 512**2 * torch.finfo(dtype).bits / 16 * (CONTROLNET_MEMORY_FACTOR if controlnet else 1.0)
    return int(max(1, min(MAX_AUTO_BATCH, 0.8 * free_bytes // (k * CANDIDATE_BYTES_512_FP16 * scale))))


def compile_wanted(gen: GenerationParams, device: torch.device, candidates: int) -> bool:
    """generation.compile, or unset: on CUDA for a pass of at least COMPILE_MIN_CANDIDATES candidates (never on the
    CPU, where compiling the UNet costs minutes and the tests' tiny models gain nothing)."""
    if device.type != "cuda":
        return False
    return gen.compile if gen.compile is not None else candidates >= COMPILE_MIN_CANDIDATES


def writer_threads(gen: GenerationParams, device: torch.device) -> int:
    """generation.writer_threads, or unset: WRITER_THREADS on CUDA, 0 (write inline, no prefetch) on the CPU."""
    if gen.writer_threads is not None:
        return gen.writer_threads
    return WRITER_THREADS if device.type == "cuda" else 0


def start_batch_size(params: Params, pipe, device: torch.device, largest: tuple[int, int]) -> int:
    """generation.batch_size; unset: from free GPU memory for the largest input on CUDA, 1 on the CPU."""
    gen = params.generation
    if gen.batch_size is not None:
        return gen.batch_size
    if device.type == "cuda":
        return auto_batch_size(torch.cuda.mem_get_info(device)[0], *largest, gen.num_candidates, pipe.unet.dtype,
                               controlnet=gen.generator == "controlnet")
    return 1


def load_generator(params: Params, generator: str | None = None,
                   candidates: int = 0) -> tuple[Any, PromptEncoder, torch.device]:
    """The pipeline of ``generator`` (default: generation.generator; under generation.sampler: lcm, img2img with the
    LCM-LoRA fused and LCMScheduler) in the run's dtype and its prompt encoder; on
    CUDA its UNet compiled by ``compile_wanted`` for a pass of ``candidates`` (and its VAE decoder with
    ``generation.compile_vae``). No channels_last: on an H200 it made the batched loop slower
    (0.89x, docs/PERFORMANCE.md)."""
    gen = params.generation
    device = resolve_device(params)
    dtype = resolve_dtype(gen.dtype, device)
    if (generator or gen.generator) == "controlnet":
        pipe = load_controlnet_img2img(params.models.diffusion, params.models.controlnet, str(device), dtype)
    elif gen.sampler == "lcm":
        pipe = load_lcm_img2img(params.models.diffusion, gen.lcm.lora, str(device), dtype)
    else:
        pipe = load_img2img(params.models.diffusion, str(device), dtype)
    if compile_wanted(gen, device, candidates) and not hasattr(pipe.unet, "_orig_mod"):
        pipe.unet = torch.compile(pipe.unet)
    if device.type == "cuda" and gen.compile_vae and not hasattr(pipe.vae.decoder, "_orig_mod"):
        pipe.vae.decoder = torch.compile(pipe.vae.decoder)
    return pipe, PromptEncoder(pipe), device


def rows_summary(rows: Counter) -> str:
    """'18: 400, 9: 50 (mean 17.1)': UNet calls by the rows they ran, most rows first."""
    calls = sum(rows.values())
    mean = sum(r * c for r, c in rows.items()) / calls
    return ", ".join(f"{r}: {c}" for r, c in sorted(rows.items(), reverse=True)) + f" (mean {mean:.1f})"
