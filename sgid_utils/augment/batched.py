"""Stable Diffusion img2img for many sources in one denoising loop, each source with its own guidance scale.

diffusers' StableDiffusionImg2ImgPipeline takes one guidance scale per call, and
SGID gives every image its own, f(s*): the per-image path calls the pipeline once
per source (its k candidates in that call), which leaves a GPU mostly idle. Here
the pipeline's own components and methods (encode_prompt, image_processor, the VAE,
get_timesteps, prepare_latents, prepare_extra_step_kwargs, the scheduler, the UNet)
run one loop over all candidates of several same-size sources, with the guidance
scale as a per-sample vector. What each candidate gets is what the pipeline gives
it, up to floating-point differences from the batch size:

- Random draws: each candidate's CPU generator draws, in the pipeline's order, its
  VAE posterior sample, then its img2img noise, then (DDIM with eta > 0) one noise
  per step. Generators are per candidate, so batching cannot change the draws.
- The VAE encodes each source once; the pipeline encodes the same image once per
  candidate. Each candidate still samples the posterior from those moments with its
  own generator, so only the redundant encodes go.
- A scale <= 1 gets the conditional prediction alone, as in the pipeline
  (``do_classifier_free_guidance`` is ``guidance_scale > 1``). Its unconditional
  branch is not computed rather than computed and discarded: the UNet batch is
  (samples with scale > 1) + (all samples), so such an image costs half, as it does
  in the per-image path, at the price of one gather per step.

- With a ControlNet (a ``StableDiffusionControlNetImg2ImgPipeline`` and one control
  image per source), each step runs the ControlNet on the same rows as the UNet (the
  control image doubled only for the samples with CFG, as the pipeline doubles it when
  its one scale is > 1; guess mode off) and adds its residuals to the UNet's, as the
  pipeline's loop does.

Sources in one loop must share the model-input size and the prompt-embedding
length (compel does not truncate: 77, 154, ... tokens); ``generate_many`` groups
items of any sizes and returns outputs in input order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from sgid_utils.core.seeding import torch_rng

if TYPE_CHECKING:  # diffusers takes seconds to import: the loop imports what it calls when it runs
    from diffusers import StableDiffusionControlNetImg2ImgPipeline, StableDiffusionImg2ImgPipeline

    Pipeline = StableDiffusionImg2ImgPipeline | StableDiffusionControlNetImg2ImgPipeline

# UNet calls by their rows (CFG pairs count two), since the process started or the generation stage last cleared it:
# how full the batches that mixed input sizes leave actually are.
UNET_ROWS: Counter[int] = Counter()


def batch_key(
    pipe: Pipeline, image: Image.Image, embeds: torch.Tensor,
) -> tuple[tuple[int, int], int]:
    """(model-input height and width, prompt length): items that can share a denoising loop have equal keys."""
    return pipe.image_processor.get_default_height_width(image), embeds.shape[1]


def plan_batches(
    pipe: Pipeline, images: Sequence[Image.Image], embeds: Sequence[torch.Tensor], batch_size: int,
) -> list[list[int]]:
    """Item indices grouped by ``batch_key`` (groups in first-seen order), in chunks of at most ``batch_size``."""
    groups: dict[tuple[tuple[int, int], int], list[int]] = {}
    for i, (image, embed) in enumerate(zip(images, embeds, strict=True)):
        groups.setdefault(batch_key(pipe, image, embed), []).append(i)
    return [ids[start:start + batch_size] for ids in groups.values() for start in range(0, len(ids), batch_size)]


@torch.inference_mode()
def generate_batch(
    pipe: Pipeline, images: Sequence[Image.Image], embeds: Sequence[torch.Tensor],
    negative_embeds: Sequence[torch.Tensor], guidance: Sequence[float], strength: float, steps: int,
    seeds: Sequence[Sequence[int]], eta: float = 0.0, output_type: str = "pil",
    control_images: Sequence[Image.Image] | None = None, conditioning_scale: float = 1.0,
) -> list[list[Any]]:
    """len(seeds[i]) img2img candidates of each same-size source i under guidance[i], in one denoising loop.

    ``embeds[i]`` / ``negative_embeds[i]`` are [1, L, D] prompt embeddings (as from
    compel); output_type is the image processor's ("pil", "np", "pt"). A ControlNet
    pipeline needs ``control_images[i]`` (source i's size) and ``conditioning_scale``.
    """
    if not len(images) == len(embeds) == len(negative_embeds) == len(guidance) == len(seeds):
        raise ValueError("images, embeds, negative_embeds, guidance and seeds must have one entry per source")
    if len({batch_key(pipe, image, embed) for image, embed in zip(images, embeds)}) > 1:
        raise ValueError("sources in one batch need the same model-input size and prompt length; use generate_many")
    if pipe.unet.config.time_cond_proj_dim is not None:
        raise ValueError("this UNet takes guidance as an embedding (LCM-style); per-sample CFG does not apply")
    check_control(pipe, images, control_images)
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_timesteps

    device = pipe._execution_device
    counts = [len(s) for s in seeds]
    generators = [torch_rng(seed) for per_source in seeds for seed in per_source]
    n = len(generators)

    # Prompt embeddings repeated per candidate, in the pipeline's dtype, by the pipeline's own method.
    pairs = [pipe.encode_prompt(None, device, k, True, prompt_embeds=e, negative_prompt_embeds=ne)
             for e, ne, k in zip(embeds, negative_embeds, counts)]
    cond_embeds = torch.cat([p for p, _ in pairs])
    uncond_embeds = torch.cat([ne for _, ne in pairs])
    dtype = cond_embeds.dtype
    scale = torch.tensor([g for g, k in zip(guidance, counts) for _ in range(k)], dtype=torch.float32)
    guided = torch.nonzero(scale > 1).flatten().to(device)  # indices, not a mask: no host sync per step on a GPU
    guided_scale = scale[scale > 1].view(-1, 1, 1, 1).to(device)
    text = torch.cat([uncond_embeds[guided], cond_embeds])

    retrieve_timesteps(pipe.scheduler, steps, device)  # set_timesteps: also resets the scheduler's state
    timesteps, _ = pipe.get_timesteps(steps, strength, device)
    if len(timesteps) == 0:
        raise ValueError(f"strength {strength} leaves no denoising step out of {steps}")

    # One encode per source; each candidate samples the posterior with its generator, then the pipeline adds noise.
    pixels = pipe.image_processor.preprocess(list(images)).to(device=device, dtype=dtype)
    moments = pipe.vae.encode(pixels).latent_dist.parameters
    posterior = DiagonalGaussianDistribution(moments.repeat_interleave(torch.tensor(counts, device=device), dim=0))
    init_latents = pipe.vae.config.scaling_factor * posterior.sample(generators)
    latents = pipe.prepare_latents(init_latents, timesteps[:1].repeat(n), n, 1, dtype, device, generators)
    step_kwargs = pipe.prepare_extra_step_kwargs(generators, eta)
    if control_images is not None:  # the pipeline's preparation, then one copy per candidate, rows as the UNet's
        control = pipe.prepare_control_image(list(control_images), None, None, 1, 1, device, pipe.controlnet.dtype)
        control = control.repeat_interleave(torch.tensor(counts, device=device), dim=0)
        control = torch.cat([control[guided], control])

    UNET_ROWS[len(guided) + n] += len(timesteps)
    for t in timesteps:
        model_input = pipe.scheduler.scale_model_input(torch.cat([latents[guided], latents]), t)
        residuals = {}
        if control_images is not None:
            down, mid = pipe.controlnet(model_input, t, encoder_hidden_states=text, controlnet_cond=control,
                                        conditioning_scale=conditioning_scale, guess_mode=False, return_dict=False)
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        prediction = pipe.unet(model_input, t, encoder_hidden_states=text, **residuals, return_dict=False)[0]
        uncond, noise = prediction[: len(guided)], prediction[len(guided):]
        noise[guided] = (uncond + guided_scale * (noise[guided] - uncond)).to(noise.dtype)
        latents = pipe.scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]

    decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=generators)[0]
    out = pipe.image_processor.postprocess(decoded, output_type=output_type, do_denormalize=[True] * n)
    return [list(out[end - k:end]) for k, end in zip(counts, accumulate(counts))]


def check_control(pipe: Pipeline, images: Sequence[Image.Image], control_images: Sequence[Image.Image] | None) -> None:
    """A ControlNet pipeline gets one control image per source, of its size; a plain img2img pipeline none."""
    has_controlnet = getattr(pipe, "controlnet", None) is not None
    if has_controlnet != (control_images is not None):
        raise ValueError("control_images go with a ControlNet pipeline, and a ControlNet pipeline needs them")
    if control_images is None:
        return
    if len(control_images) != len(images) or any(c.size != i.size for c, i in zip(control_images, images)):
        raise ValueError("control_images needs one image per source, of the source's size")
    if pipe.controlnet.config.global_pool_conditions:
        raise ValueError("this ControlNet runs in guess mode (global_pool_conditions); the batched loop does not")


def generate_many(
    pipe: Pipeline, images: Sequence[Image.Image], embeds: Sequence[torch.Tensor],
    negative_embeds: Sequence[torch.Tensor], guidance: Sequence[float], strength: float, steps: int,
    seeds: Sequence[Sequence[int]], batch_size: int = 8, eta: float = 0.0, output_type: str = "pil",
    control_images: Sequence[Image.Image] | None = None, conditioning_scale: float = 1.0,
) -> list[list[Any]]:
    """``generate_batch`` over sources of any sizes: at most ``batch_size`` sources per loop, outputs in input order."""
    out: list[list[Any]] = [[] for _ in images]
    for ids in plan_batches(pipe, images, embeds, batch_size):
        results = generate_batch(
            pipe, [images[i] for i in ids], [embeds[i] for i in ids], [negative_embeds[i] for i in ids],
            [guidance[i] for i in ids], strength, steps, [seeds[i] for i in ids], eta, output_type,
            None if control_images is None else [control_images[i] for i in ids], conditioning_scale,
        )
        for i, candidates in zip(ids, results):
            out[i] = candidates
    return out
