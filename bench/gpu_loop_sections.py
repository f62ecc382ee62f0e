"""GPU report sections on the batched loop and the captioner: variants (channels_last, torch.compile modes), SDPA
backends, captioning against batch size. Entry point and shared rules: bench/gpu_report.py."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gpu_common import TOLERANCE, build_pipeline, markdown_table, peak_gib, reset_peak, timed

from bench import batched_generation, generation_inputs, source_images
from sgid_utils.models import builders
from sgid_utils.params.schema import CaptioningParams
from sgid_utils.stages.captioning import caption_batch

if TYPE_CHECKING:
    from gpu_report import Context, Report

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead")
# Our choice: on the CPU only `default` runs (the tiny models' compile would cost minutes of the CPU test for modes
# whose point, CUDA graphs and Triton autotuning, is the GPU's).
CPU_COMPILE_MODES = ("default",)
SDPA_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH", "CUDNN_ATTENTION")


def graphs_compiled() -> int:
    """Graphs torch.compile (dynamo) has compiled in this process: a rise after the first call is a recompile."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def loop_images(ctx: Context, pipe, inputs) -> np.ndarray:
    """The batched loop's images as one float array on [0, 1] (the equality checks compare these)."""
    gen, plan = ctx.gen, ctx.plan
    outputs = batched_generation(pipe, inputs, gen.strength, gen.num_inference_steps, plan.gen_batch, output_type="np")
    return np.stack([c for cands in outputs for c in cands])


def loop_rate(ctx: Context, pipe, inputs) -> float:
    """The batched loop's img/s: the best of ``plan.repeats`` timed runs (the caller's ``loop_images`` was the
    untimed one)."""
    gen, plan = ctx.gen, ctx.plan
    seconds = min(timed(ctx.device, lambda: batched_generation(pipe, inputs, gen.strength, gen.num_inference_steps,
                                                               plan.gen_batch))[0] for _ in range(plan.repeats))
    return len(inputs.images) * gen.num_candidates / seconds


def verdict(label: str, faster: bool, equal: bool) -> str:
    if label.startswith("plain"):
        return "baseline"
    if faster and equal:
        return "faster and equal: worth it"
    return f"{'faster' if faster else 'not faster'}, {'equal' if equal else 'NOT equal'}: leave it off"


def measure_variants(ctx: Context, report: Report) -> list[str]:
    """The batched loop plain, with a channels_last UNet, and with the UNet compiled in each torch.compile mode."""
    modes = ctx.compile_modes if ctx.compile else ()
    if not (ctx.channels_last or modes):
        return ["Not run: pass `--channels-last` and/or `--compile` (both on by default on CUDA)."]
    plan, gen = ctx.plan, ctx.gen
    (width, height), (width2, height2) = plan.gen_sizes
    pipe = build_pipeline(ctx, controlnet=False)
    plain = pipe.unet
    inputs = generation_inputs(pipe, plan.sources, gen.num_candidates, width, height, controlnet=False)
    other = generation_inputs(pipe, plan.gen_batch, gen.num_candidates, width2, height2, controlnet=False)

    def compiled(mode: str) -> torch.nn.Module:
        torch._dynamo.reset()  # each mode compiles from scratch: no cache shared with the previous row
        return torch.compile(plain.to(memory_format=torch.contiguous_format), mode=mode)

    # Each variant starts from the plain UNet, so each row measures one change alone.
    variants: list[tuple[str, Callable[[], Any]]] = [("plain (contiguous)", lambda: plain)]
    if ctx.channels_last:
        variants.append(("channels_last", lambda: plain.to(memory_format=torch.channels_last)))
    variants += [(f"torch.compile {mode}", lambda mode=mode: compiled(mode)) for mode in modes]
    tolerance = TOLERANCE[ctx.dtype]
    rows, base, base_rate = [], None, None
    for label, setup in variants:
        graphs = graphs_compiled()
        start = time.perf_counter()
        pipe.unet = setup()
        images = loop_images(ctx, pipe, inputs)
        first = time.perf_counter() - start
        first_graphs = graphs_compiled() - graphs
        rate = loop_rate(ctx, pipe, inputs)
        later = graphs_compiled() - graphs - first_graphs
        resized = None
        if label.startswith("torch.compile"):  # a second input size: the stage's raw pass meets many
            before = graphs_compiled()
            loop_images(ctx, pipe, other)
            resized = graphs_compiled() - before
        base, base_rate = (images, rate) if base is None else (base, base_rate)
        diff = float(np.abs(images - base).max())
        report.numbers[f"variant {label}"] = {"batched_img_s": rate, "max_abs_diff": diff, "first_call_s": first,
                                              "graphs_first_call": first_graphs, "graphs_timed_runs": later,
                                              "graphs_second_size": resized}
        rows.append((label, f"{rate:.3g}", f"{rate / base_rate:.2f}×", f"{diff:.2g}", f"{first:.1f} s",
                     f"{first_graphs} / {later} / {'—' if resized is None else resized}",
                     verdict(label, rate > base_rate, diff < tolerance)))
    pipe.unet = plain
    skipped = [m for m in COMPILE_MODES if ctx.compile and m not in modes]
    rows += [(f"torch.compile {m}", "not run: CUDA only", "", "", "", "", "") for m in skipped]
    return [
        f"Batched img2img at {width} × {height}, {plan.sources} sources × k = {gen.num_candidates} per loop, "
        f"{str(ctx.dtype).removeprefix('torch.')}; each variant applied alone to the plain UNet. 'max |Δ|': largest "
        f"difference of its images from the plain loop's on [0, 1]; equal means below {tolerance:g}, the batched "
        "path's tolerance in tests/test_batched.py. First call: setup + the first loop (compilation included). "
        "Graphs compiled: in the first call / during the timed runs (a recompile) / on a second input size "
        f"({width2} × {height2}, as the stage's mixed source sizes bring). "
        + ("On the CPU only the `default` mode runs (our choice: the other modes target CUDA graphs and GPU "
           "autotuning)." if ctx.device.type != "cuda" else ""),
        "",
        *markdown_table(("variant", "img/s", "vs plain", "max |Δ|", "first call", "graphs compiled", "verdict"),
                        rows),
        "",
        "The stage loads the UNet contiguous and compiles it (mode `default`) with `generation.compile: true`.",
    ]


@contextmanager
def unet_attention(unet: torch.nn.Module, backend: Any) -> Iterator[None]:
    """Only ``backend`` for the UNet's attention while inside: the VAE's 512-wide heads exceed flash attention's limit,
    and the UNet is where the loop's attention time is."""
    from torch.nn.attention import sdpa_kernel

    stack = ExitStack()

    def enter(*_: Any) -> None:
        stack.enter_context(sdpa_kernel(backend))

    def leave(*_: Any) -> None:
        stack.close()

    hooks = [unet.register_forward_pre_hook(enter), unet.register_forward_hook(leave)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        stack.close()


def measure_sdpa(ctx: Context, report: Report) -> list[str]:
    """The batched loop with the UNet's attention on each SDPA backend: img/s and its images against the default's."""
    from torch.nn.attention import SDPBackend

    plan, gen = ctx.plan, ctx.gen
    width, height = plan.gen_sizes[0]
    pipe = build_pipeline(ctx, controlnet=False)
    inputs = generation_inputs(pipe, plan.sources, gen.num_candidates, width, height, controlnet=False)
    base = loop_images(ctx, pipe, inputs)
    base_rate = loop_rate(ctx, pipe, inputs)
    report.numbers["sdpa default"] = {"batched_img_s": base_rate, "max_abs_diff": 0.0}
    rows = [("default (PyTorch picks per call)", f"{base_rate:.3g}", "1.00×", "0", "baseline")]
    tolerance = TOLERANCE[ctx.dtype]
    for name in SDPA_BACKENDS:
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            rows.append((name, "not in this torch", "", "", ""))
            report.numbers[f"sdpa {name}"] = {"available": False}
            continue
        with unet_attention(pipe.unet, backend), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns why each unavailable kernel was skipped: the row says it
            try:
                images = loop_images(ctx, pipe, inputs)
            except RuntimeError as exc:
                reason = str(exc).strip().splitlines()[0][:120]
                rows.append((name, f"unavailable on {ctx.device.type}: {reason}", "", "", ""))
                report.numbers[f"sdpa {name}"] = {"available": False}
                continue
            rate = loop_rate(ctx, pipe, inputs)
        diff = float(np.abs(images - base).max())
        report.numbers[f"sdpa {name}"] = {"available": True, "batched_img_s": rate, "max_abs_diff": diff}
        rows.append((name, f"{rate:.3g}", f"{rate / base_rate:.2f}×", f"{diff:.2g}",
                     verdict(name, rate > base_rate, diff < tolerance)))
    return [
        f"Batched img2img at {width} × {height}, {plan.sources} sources × k = {gen.num_candidates}, "
        f"{str(ctx.dtype).removeprefix('torch.')}, the UNet's attention held to one backend "
        "(`torch.nn.attention.sdpa_kernel`; the VAE keeps the default), best of "
        f"{plan.repeats} after one untimed run. 'max |Δ|' against the default's images; equal means below "
        f"{tolerance:g}. A backend this device or these shapes cannot run is reported as unavailable.",
        "",
        *markdown_table(("UNet attention", "img/s", "vs default", "max |Δ|", "verdict"), rows),
    ]


def measure_caption_batches(ctx: Context, report: Report) -> list[str]:
    """BLIP captioning img/s at each batch size of ``plan.caption_batches``; its captions against batch 1's."""
    plan, cfg = ctx.plan, CaptioningParams()
    torch.manual_seed(0)
    with torch.device(ctx.device):
        blip, processor = builders.blip(ctx.size)
    blip = blip.to(ctx.dtype)
    side = processor.image_processor.size["height"]
    images = source_images(max(*plan.caption_batches, plan.caption_images), side, side)

    def caption(n: int, batch: int) -> list[list[str]]:
        out = []
        for start in range(0, n, batch):
            chunk = images[start:min(start + batch, n)]
            nucleus, beam = caption_batch(blip, processor, chunk, cfg, list(range(start, start + len(chunk))))
            out += [a + b for a, b in zip(nucleus, beam)]
        return out

    reference = caption(plan.caption_images, 1)  # also the warm-up
    rows, rates = [], {}
    for batch in plan.caption_batches:
        n = max(batch, plan.caption_images)
        reset_peak(ctx.device)
        seconds, captions = timed(ctx.device, lambda n=n, batch=batch: caption(n, batch))
        same = captions[: plan.caption_images] == reference
        rates[str(batch)] = {"img_s": n / seconds, "images": n, "seconds": seconds, "same_captions": same}
        rows.append((batch, n, f"{n / seconds:.3g}", peak_gib(ctx.device), "yes" if same else "no"))
    report.numbers["captioning by batch"] = rates
    return [
        f"BLIP ({cfg.num_nucleus} nucleus + {cfg.num_beam} beam, up to {cfg.max_new_tokens} tokens), "
        f"{str(ctx.dtype).removeprefix('torch.')}: one timed run per batch size after a warm-up at batch 1; "
        f"'same captions': the first {plan.caption_images} images' captions equal batch 1's (the stage's results "
        "should not depend on its batch size; fp16 may differ in rare near-ties).",
        "",
        *markdown_table(("batch", "images", "img/s", "peak memory", "same captions"), rows),
    ]
