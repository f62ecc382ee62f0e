"""The compared augmentations' own GPU work, for bench/gpu_report.py's "Compared methods" section.

The comparison table projects each method's cost to a full data set from these rates (``sgid_utils.reporting.costs``),
so each is measured the way its stage runs, at the method's default settings (``params.methods``):

- Real Guidance: img2img from each real image on its square canvas, "a photo of a {label}" through the pipeline's own
  text encoder, its fixed guidance and strength, one image per real image; batched as ``stages.real_guidance`` is
  (``generate_many`` at the stage's automatic batch size on CUDA, one pipeline call per image on the CPU);
- DA-Fusion's generation: the same loop at each strength of its set (the stage groups a chunk's images by strength);
  the rate of the mix is the harmonic mean, since every strength is drawn with equal probability;
- DA-Fusion's textual inversion: ``augment.inversion.learn_token``, the stage's loop (bfloat16 UNet and VAE on CUDA,
  float32 text encoder copy), at its batch size and canvas: steps/s and the seconds of one class's steps.

The class token's name does not change the speed: the prompts here carry it as plain text (the stage loads the learned
embedding with ``load_textual_inversion``, one more row of the embedding table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from diffusers import DDPMScheduler
from gpu_common import build_pipeline, markdown_table, timed

from bench import (
    GenerationInputs,
    batched_generation,
    best_times,
    flops_per_image,
    per_image_generation,
    source_images,
)
from sgid_utils.augment.generation_setup import auto_batch_size
from sgid_utils.augment.inversion import class_token, learn_token, own_text_encoder
from sgid_utils.core.seeding import derive_seed
from sgid_utils.params.methods import DaFusionParams, RealGuidanceParams
from sgid_utils.stages.inversion import settings as inversion_settings

LABELS = ("great pyrenees", "maine coon", "pink primrose")
# Timed textual-inversion steps (after two untimed) at each size: the step's cost does not depend on the count.
INVERSION_STEPS = {"real": 10, "tiny": 2}
IMAGES = {"real": 16, "tiny": 1}  # stand-in real images per generation measurement (one synthetic image each)
INVERSION_IMAGES = 8  # one class's training images (Flowers: 10 per class; Pets ~100)


def _inputs(pipe, prompt: str, n: int, side: int, guidance: float, device: torch.device, tag: str) -> GenerationInputs:
    """``n`` stand-in real images on the method's canvas, the prompt per label from the pipeline's own text encoder
    (as the stages encode it), one seed each."""
    embeds = {c: pipe.encode_prompt(prompt.format(label=c, token=class_token(c)), device, 1, True, "")
              for c in LABELS}
    labels = [LABELS[i % len(LABELS)] for i in range(n)]
    return GenerationInputs(source_images(n, side, side), None, [embeds[c][0] for c in labels],
                            [embeds[c][1] for c in labels], [guidance] * n,
                            [[derive_seed(0, f"{tag}{i}", 0, purpose=tag)] for i in range(n)])


def _generation(ctx: Any, pipe, inputs: GenerationInputs, strength: float, steps: int) -> tuple[float, int, str]:
    """(img/s, UNet steps per image, the path) of the stage's generation loop on these inputs."""
    side = inputs.images[0].width
    if ctx.device.type == "cuda":
        batch = auto_batch_size(torch.cuda.mem_get_info(ctx.device)[0], side, side, 1, pipe.unet.dtype)
        run: Callable[[], object] = lambda: batched_generation(pipe, inputs, strength, steps, batch)  # noqa: E731
        path = f"batched, {batch} images per loop (the stage's automatic batch size)"
    else:
        run, path = (lambda: per_image_generation(pipe, inputs, strength, steps)), "one pipeline call per image"
    seconds = best_times({"run": run}, ctx.plan.repeats, ctx.device)["run"]
    _, unet_steps, _ = flops_per_image(pipe, inputs, strength, steps)
    return len(inputs.images) / seconds, unet_steps, path


def measure_method_costs(ctx: Any, report: Any) -> list[str]:
    """The section's lines; the rates go into ``report.numbers`` under "real_guidance", "da_fusion", "inversion"."""
    rg, daf = RealGuidanceParams(), DaFusionParams()
    side = ctx.plan.gen_sizes[0][0] if ctx.size == "tiny" else rg.resolution  # the tiny SD's 64 px canvas
    n = IMAGES[ctx.size]
    pipe = build_pipeline(ctx, controlnet=False)
    rows = []
    inputs = _inputs(pipe, rg.prompt, n, side, rg.guidance_scale, ctx.device, "real-guidance")
    rate, unet_steps, path = _generation(ctx, pipe, inputs, rg.strength, rg.num_inference_steps)
    report.numbers["real_guidance"] = {"img_s": rate, "unet_steps": unet_steps, "strength": rg.strength,
                                       "guidance_scale": rg.guidance_scale, "steps": rg.num_inference_steps,
                                       "canvas": side, "images": n}
    rows.append(("Real Guidance", f"strength {rg.strength}, guidance {rg.guidance_scale}", unet_steps,
                 f"{rate:.3g} img/s", path))
    inputs = _inputs(pipe, daf.prompt, n, side, daf.guidance_scale, ctx.device, "da-fusion")
    by_strength = {}
    for strength in daf.strengths:
        rate, unet_steps, path = _generation(ctx, pipe, inputs, strength, daf.num_inference_steps)
        by_strength[strength] = rate
        rows.append(("DA-Fusion generation", f"strength {strength}, guidance {daf.guidance_scale}", unet_steps,
                     f"{rate:.3g} img/s", path))
    mix = len(by_strength) / sum(1 / r for r in by_strength.values())
    report.numbers["da_fusion"] = {"img_s": mix, "by_strength": {str(s): r for s, r in by_strength.items()},
                                   "guidance_scale": daf.guidance_scale, "steps": daf.num_inference_steps,
                                   "canvas": side, "images": n}
    rows.append(("DA-Fusion generation", f"strengths {daf.strengths} drawn uniformly", "", f"**{mix:.3g} img/s**",
                 "harmonic mean of the rows above"))
    rows.append(_inversion(ctx, report, pipe, daf, side))
    return [
        f"Each method's stage loop at its default settings (config.methods), {n} stand-in real images on a "
        f"{side} × {side} canvas, {ctx.plan.repeats} timed run(s) after one untimed; "
        f"{str(ctx.dtype).removeprefix('torch.')} generation, prompt encoding left out. The comparison table "
        "projects each method's cost to a full data set from these rates (`references.gpu_rates`).",
        "",
        *markdown_table(("work", "settings", "UNet steps per image", "rate", "path"), rows),
    ]


def _inversion(ctx: Any, report: Any, pipe, daf: DaFusionParams, side: int) -> tuple:
    """Textual inversion as ``stages.inversion`` runs it, on the generation sections' pipeline; its table row."""
    if ctx.device.type == "cuda":
        pipe = pipe.to(torch.bfloat16)  # as the stage loads it: float16 underflows the token's gradients
    noise = DDPMScheduler.from_config(pipe.scheduler.config)
    tokenizer, text_encoder = own_text_encoder(pipe)
    text_encoder.to(ctx.device)
    full = inversion_settings(daf.model_copy(update={"resolution": side}))  # the stage's, on this run's canvas
    images = source_images(INVERSION_IMAGES, side * 4 // 3, side)
    steps = INVERSION_STEPS[ctx.size]

    def learn(n: int) -> None:
        learn_token(tokenizer, text_encoder, pipe.vae, pipe.unet, noise, images, class_token(LABELS[0]),
                    replace(full, steps=n), 0)

    learn(2)  # untimed: kernel selection, the token's row added
    seconds, _ = timed(ctx.device, lambda: learn(steps))
    rate = steps / seconds
    report.numbers["inversion"] = {"steps_s": rate, "batch_size": full.batch_size, "resolution": full.resolution,
                                   "class_steps": daf.inversion_steps, "class_s": daf.inversion_steps / rate,
                                   "dtype": "bfloat16" if ctx.device.type == "cuda" else "float32"}
    return ("DA-Fusion textual inversion", f"batch {full.batch_size}, {full.resolution} px, "
            f"{daf.inversion_steps} steps per class", "1 forward + backward",
            f"{rate:.3g} steps/s = {daf.inversion_steps / rate:.4g} s per class", f"{steps} timed steps")

