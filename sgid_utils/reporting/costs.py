"""Each compared method's cost projected to the full data set on a named GPU, from a GPU report's rates.

The comparison's "Device hours" are measured on this run's device (a CPU for the smoke run). What a user plans with is
the cost on a GPU at full size: the items each stage of the method handles on the full data set (the counts of
``preflight.projection.full_run_counts``, without ``dataset.max_per_class``, handed down by the comparison stage) times
the seconds per item of a ``make gpu-report`` JSON (``references.gpu_rates``; bench/gpu_report.py writes it beside its
markdown).

Per stage (the units of ``Counts.items``): captions and similarity at the report's batched BLIP and CLIP rates; SGID's
two generation passes at the batched img2img rates of its raw (512 x 512) and upscaled (768 x 512) sizes, k images per
source; Real Guidance and DA-Fusion's generation per image at their own measured rates, and the inversion per step.
A report that did not measure a method's work (older ones, such as the H200 report of 2026-12-04), or measured it at
other settings than the run's, gets a derived figure, said so per row: the image's FLOPs (UNet steps x the CFG pair,
VAE encode and decode, scaled by canvas pixels from the measured img2img size: our assumption) at the FLOP rate the
img2img raw pass achieved; an inversion step as batch x (1.5 CFG pairs: a forward and a backward of twice its cost,
the usual rule, our assumption) plus the VAE encodes. Curation is not projected: the GPU report has no rate for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pandas as pd

from sgid_utils.errors import ParamsError
from sgid_utils.params.samplers import denoising_steps
from sgid_utils.params.schema import GenerationParams, Params


class ItemCounts(Protocol):
    """``preflight.projection.Counts``, as the comparison stage hands it down (reporting does not import preflight)."""

    train_images: int

    def items(self, stage: str) -> float: ...


# preflight.projection.full_run_counts: (params, the data table or None) -> the full run's item counts
CountsOf = Callable[[Params, "pd.DataFrame | None"], ItemCounts]


@dataclass(frozen=True)
class Projection:
    """Seconds per item of each stage on the report's GPU, how each was obtained, and the full data set's counts."""

    device: str
    dataset: str
    seconds: dict[str, float]
    basis: dict[str, str]  # stage -> "measured", or the measured rate its derivation scales (_Flops.where)
    counts: ItemCounts

    @property
    def label(self) -> str:
        return f"full {self.dataset}, {self.device}"


def read_report(path: Path) -> dict:
    """A GPU report's JSON; a missing or unreadable file is a one-line error naming the key that points at it."""
    try:
        numbers = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ParamsError(f"references.gpu_rates: {path} is not a readable GPU report JSON ({exc}); run `make "
                          "gpu-report` and point the key at its .json, or remove the key") from None
    if not isinstance(numbers, dict) or "setup" not in numbers:
        raise ParamsError(f"references.gpu_rates: {path} has no 'setup' entry: not a bench/gpu_report.py JSON")
    return numbers


def _sizes(numbers: dict, kind: str) -> list[tuple[int, int]]:
    """The generation sizes the report measured for ``kind`` (img2img, controlnet), smallest first."""
    found = [tuple(map(int, m.groups())) for k in numbers if (m := re.fullmatch(rf"{kind} (\d+)x(\d+)", k))]
    return sorted(found, key=lambda wh: wh[0] * wh[1])


class _Flops:
    """Derived seconds per image or step: FLOPs at the FLOP rate the report's img2img raw pass achieved."""

    def __init__(self, numbers: dict) -> None:
        (w, h), *_ = _sizes(numbers, "img2img")
        raw = numbers[f"img2img {w}x{h}"]
        if "unet_cfg_pair_tflop" not in raw:
            raise ParamsError("references.gpu_rates: the report lists no img2img FLOP parts (unet_cfg_pair_tflop): "
                              "rerun `make gpu-report` to measure the compared methods")
        self.pixels = w * h
        self.parts = {k: raw[f"{k}_tflop"] * 1e12 for k in ("unet_cfg_pair", "vae_encode", "vae_decode")}
        self.rate = raw["batched_img_s"] * raw["tflop_per_image"] * 1e12  # achieved FLOP/s
        gen = GenerationParams()  # a report that does not record its steps and strength ran the defaults
        steps, strength = raw.get("steps", gen.num_inference_steps), raw.get("strength", gen.strength)
        self.extra = raw["unet_steps"] - denoising_steps(steps, strength)
        self.where = f"derived from FLOPs at img2img {w} x {h}'s {self.rate / 1e12:.3g} TFLOP/s"

    def steps(self, strength: float, steps: int) -> int:
        """UNet steps of img2img at ``strength``: diffusers' int(steps x strength), plus the scheduler's extra step
        the report measured (PNDM's: 16 at 0.3 of 50)."""
        return denoising_steps(steps, strength) + self.extra

    def image(self, strength: float, steps: int, canvas: int) -> float:
        scale = canvas * canvas / self.pixels
        p = self.parts
        flops = self.steps(strength, steps) * p["unet_cfg_pair"] + p["vae_encode"] + p["vae_decode"]
        return scale * flops / self.rate

    def inversion_step(self, batch: int, canvas: int) -> float:
        scale = canvas * canvas / self.pixels
        return scale * batch * (1.5 * self.parts["unet_cfg_pair"] + self.parts["vae_encode"]) / self.rate


def _method_rates(numbers: dict, params: Params) -> tuple[dict[str, float], dict[str, str]]:
    """Seconds per image (Real Guidance, DA-Fusion) and per inversion step, measured where the report measured the
    run's settings, else derived."""
    rg, d = params.real_guidance, params.da_fusion
    seconds, basis = {}, {}
    flops: _Flops | None = None
    measured = numbers.get("real_guidance", {})
    if measured and (measured["strength"], measured["steps"], measured["canvas"]) == (
            rg.strength, rg.num_inference_steps, rg.resolution):
        seconds["real_guidance"], basis["real_guidance"] = 1 / measured["img_s"], "measured"
    else:
        flops = flops or _Flops(numbers)
        seconds["real_guidance"] = flops.image(rg.strength, rg.num_inference_steps, rg.resolution)
        basis["real_guidance"] = flops.where
    measured = numbers.get("da_fusion", {})
    if measured and (sorted(map(float, measured["by_strength"])), measured["steps"], measured["canvas"]) == (
            sorted(d.strengths), d.num_inference_steps, d.resolution):
        seconds["da_fusion"], basis["da_fusion"] = 1 / measured["img_s"], "measured"
    else:
        flops = flops or _Flops(numbers)
        seconds["da_fusion"] = sum(flops.image(s, d.num_inference_steps, d.resolution) for s in d.strengths) / len(
            d.strengths)
        basis["da_fusion"] = flops.where
    measured = numbers.get("inversion", {})
    if measured and (measured["batch_size"], measured["resolution"]) == (d.inversion_batch_size, d.resolution):
        seconds["inversion"], basis["inversion"] = 1 / measured["steps_s"], "measured"
    else:
        flops = flops or _Flops(numbers)
        seconds["inversion"] = flops.inversion_step(d.inversion_batch_size, d.resolution)
        basis["inversion"] = flops.where
    return seconds, basis


def projection(params: Params, images: pd.DataFrame | None, counts_of: CountsOf | None) -> Projection | None:
    """The run's projection on the GPU of ``references.gpu_rates``; None when the key is unset. ``counts_of``:
    ``preflight.projection.full_run_counts``, passed down by the comparison stage."""
    path = params.references.gpu_rates
    if path is None:
        return None
    if counts_of is None:
        raise ValueError("references.gpu_rates is set: pass counts_of (preflight.projection.full_run_counts)")
    numbers = read_report(path)
    kind = params.generation.generator  # img2img or controlnet: the report's section names
    sizes = _sizes(numbers, kind)
    if len(sizes) < 2 or "captioning" not in numbers or "similarity" not in numbers:
        raise ParamsError(f"references.gpu_rates: {path} lacks the {kind}, captioning or similarity rates: a "
                          "report cut short; rerun `make gpu-report`")
    k = params.generation.num_candidates
    (w0, h0), (w1, h1) = sizes[0], sizes[-1]
    seconds = {"captioning": 1 / numbers["captioning"]["batched_img_s"],
               "similarity": 1 / numbers["similarity"]["batched_img_s"],
               "generation": k / numbers[f"{kind} {w0}x{h0}"]["batched_img_s"],
               "upscaling": k / numbers[f"{kind} {w1}x{h1}"]["batched_img_s"]}
    basis = dict.fromkeys(seconds, "measured")
    more, how = _method_rates(numbers, params)
    setup = numbers["setup"]
    device = setup["device"] + (" (tiny models: forecasts nothing)" if setup.get("size") == "tiny" else "")
    ds = params.dataset
    full = params.model_copy(update={"dataset": ds.model_copy(update={"max_per_class": None})})
    counts = counts_of(full, images if ds.max_per_class is None else None)
    name = ds.source if ds.source != "imagefolder" else "/".join(Path(ds.path).parts[-2:])  # "data/train"
    return Projection(device, name, seconds | more, basis | how, counts)


def projected(proj: Projection | None, stages: tuple[str, ...], last_share: float) -> tuple[float, str]:
    """Projected seconds of ``stages`` on the full data set (the last stage divided by ``last_share``, as the
    measured cost is), and the basis: which stages are measured, which derived, which not projected."""
    if proj is None:
        return float("nan"), "no GPU report (set references.gpu_rates to a gpu_report.json)"
    total, how = 0.0, {}
    for stage in stages:
        basis = proj.basis.get(stage, "not projected (no rate)")
        how.setdefault(basis, []).append(stage)
        if stage in proj.seconds:
            seconds = proj.seconds[stage] * proj.counts.items(stage)
            total += seconds / last_share if stage == stages[-1] else seconds
    return total, "; ".join(f"{', '.join(names)}: {basis}" for basis, names in how.items())
