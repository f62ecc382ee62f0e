"""generation.sampler: the few-step LCM-LoRA sampler beside SD 1.5's own scheduler (beyond the paper).

LCM-LoRA (Luo et al., 2023, arXiv 2311.05556) is a LoRA distilled from SD 1.5 that, fused into the UNet and run with
diffusers' LCMScheduler, denoises in a few steps. Everything else is SGID's: the prompts, the guidance scales f(s*),
the strength, the seeds and the curation. Its images come from another sampler, so a run with it is a different
method: its fingerprint differs (``core.fingerprints``), and the methods profiles compare it as a variant of its own
(``reporting.comparison``, ``reporting.method_sets``), named by ``sampler_label``.
"""

from __future__ import annotations

from pydantic import Field

from sgid_utils.params.origins import Source
from sgid_utils.params.origins import from_method as _method
from sgid_utils.params.origins import ours as _ours
from sgid_utils.params.references import Section


class LcmParams(Section):
    """generation.sampler: lcm: the LoRA fused into the UNet and diffusers' LCMScheduler, through the same img2img
    pipeline, prompts, guidance scales, strength and seeds as the default sampler."""

    lora: str = Field("latent-consistency/lcm-lora-sdv1-5", description="LCM-LoRA for SD 1.5: a hub id or a local "
                      "folder holding pytorch_lora_weights.safetensors (licence openrail++: docs/PARAMS.md).")
    num_inference_steps: int = Field(10, ge=1, le=50, description="Length of the LCM schedule (at most its 50 "
                                     "original steps); strength x this of it run: 3 UNet steps at strength 0.3, "
                                     "from timestep 299.")
    max_guidance_scale: float = Field(2.0, ge=1, description="Largest guidance scale f(s*) may give under this "
                                      "sampler: LCM-LoRA is made for scales of 1 to 2 (checked when the params "
                                      "load, over every s* in [-1, 1]).")


def largest_guidance(mode: str, coefficients: tuple[float, float, float], base_scale: float) -> float:
    """The largest guidance scale generation.guidance gives over every possible s* (a cosine, in [-1, 1])."""
    if mode == "fixed":
        return base_scale
    a, b, c = coefficients
    points = [-1.0, 1.0] + ([-b / (2 * a)] if a and -1 < -b / (2 * a) < 1 else [])
    f = max(a * s * s + b * s + c for s in points)
    return base_scale * f if mode == "scaled" else f


def denoising_steps(steps: int, strength: float) -> int:
    """UNet steps diffusers' img2img runs: int(steps x strength) of the schedule (``get_timesteps``)."""
    return min(int(steps * strength), steps)


def sampler_label(sampler: str, steps: int, strength: float) -> str:
    """SGID's name in tables and plots under ``sampler``: 'SGID' or 'SGID (LCM-LoRA, 3 steps)'."""
    return "SGID" if sampler == "default" else f"SGID (LCM-LoRA, {denoising_steps(steps, strength)} steps)"


_CARD = "latent-consistency/lcm-lora-sdv1-5 README.md (its model card, Hugging Face, revision ebd29df)"
# Where each sampler setting comes from (``params.sources`` holds them with every other).
SAMPLER_SOURCES: dict[str, Source] = {
    "generation.sampler": _ours("SD 1.5's own scheduler by default (the report names no other); lcm is an option "
                                "beyond the paper, the few-step lever of issue 28"),
    "generation.lcm.lora": _method(f"{_CARD}: the LCM-LoRA distilled from SD 1.5 (arXiv 2311.05556)"),
    "generation.lcm.num_inference_steps": _method(f"{_CARD}: 'between 2 - 8 steps' of a full schedule; img2img at "
                                                  "strength 0.3 runs int(0.3 x 10) = 3 of a 10-step schedule, from "
                                                  "timestep 299, SGID's noise level (our choice)"),
    "generation.lcm.max_guidance_scale": _method(f"{_CARD}: 'either disable guidance_scale or use values between "
                                                 "1.0 and 2.0'"),
}
