"""FLOP counts of an img2img pipeline's parts (a ControlNet's too), for the benchmark's FLOP floor."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionControlNetImg2ImgPipeline, StableDiffusionImg2ImgPipeline
from diffusers.models.attention_processor import AttnProcessor
from torch.utils.flop_counter import FlopCounterMode


def img2img_flops(pipe: StableDiffusionImg2ImgPipeline | StableDiffusionControlNetImg2ImgPipeline,
                  height: int, width: int, prompt_length: int = 77) -> dict[str, int]:
    """FLOPs of one UNet CFG pair, one VAE encode and one VAE decode for one image of height x width pixels, and
    of one ControlNet CFG pair when the pipeline has a ControlNet.

    Counted by torch's FlopCounterMode on meta-device copies of the pipeline's UNet
    and VAE (built from their configs: no memory, no time) with plain matmul
    attention, which the counter sees on every device (not every fused SDPA kernel has a FLOP formula).
    """
    has_controlnet = getattr(pipe, "controlnet", None) is not None
    with torch.device("meta"):
        unet = type(pipe.unet).from_config(pipe.unet.config)
        vae = type(pipe.vae).from_config(pipe.vae.config)
        controlnet = type(pipe.controlnet).from_config(pipe.controlnet.config) if has_controlnet else None
    for model in (unet, vae, controlnet):
        if model is not None:
            model.set_attn_processor(AttnProcessor())
    scale = pipe.vae_scale_factor
    latent = (pipe.unet.config.in_channels, height // scale, width // scale)
    with torch.device("meta"):
        calls = {
            "unet_cfg_pair": lambda: unet(
                torch.randn(2, *latent), torch.tensor(500),
                encoder_hidden_states=torch.randn(2, prompt_length, unet.config.cross_attention_dim)),
            "vae_encode": lambda: vae.encode(torch.randn(1, vae.config.in_channels, height, width)),
            "vae_decode": lambda: vae.decode(torch.randn(1, vae.config.latent_channels, *latent[1:])),
        }
        if controlnet is not None:
            calls["controlnet_cfg_pair"] = lambda: controlnet(
                torch.randn(2, *latent), torch.tensor(500),
                encoder_hidden_states=torch.randn(2, prompt_length, unet.config.cross_attention_dim),
                controlnet_cond=torch.randn(2, controlnet.config.conditioning_channels, height, width))
        flops = {}
        for name, call in calls.items():
            with FlopCounterMode(display=False) as counter:
                call()
            flops[name] = counter.get_total_flops()
    return flops
