"""The full-size architectures SGID runs, with random weights, from configs written here (nothing downloaded).

Speed and FLOPs depend on the architecture and the input size, not on the weight
values, so a benchmark of these models measures what the real checkpoints would
cost, offline. The configs are those of the checkpoints the params name:
stable-diffusion-v1-5 (UNet, VAE, CLIP ViT-L/14 text tower, PNDM scheduler),
Salesforce/blip-image-captioning-base, openai/clip-vit-base-patch32 and timm's
vit_base_patch16_224.orig_in21k. Tokenizers are the smoke profile's small
byte-level (CLIP) and word-list (BERT) ones: they tokenise any text, and the
sequence lengths that cost depends on are set by the model (77 tokens for CLIP).

Build inside ``with torch.device("meta"):`` for parameter and FLOP counts at no
memory cost, or inside ``with torch.device("cuda"):`` to skip a slow CPU init.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

SD15_UNET: dict[str, Any] = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280), center_input_sample=False,
    cross_attention_dim=768, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), downsample_padding=1,
    flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-5,
    norm_num_groups=32, out_channels=4, sample_size=64, up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
SD15_VAE: dict[str, Any] = dict(
    act_fn="silu", block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4, in_channels=3,
    latent_channels=4, layers_per_block=2, norm_num_groups=32, out_channels=3, sample_size=512, scaling_factor=0.18215,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
# CLIP ViT-L/14's text tower; token ids come from the tokenizer actually used.
SD15_TEXT_ENCODER: dict[str, Any] = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
)
# As in the checkpoint's scheduler_config.json: clip_sample is not PNDM's, but from_config keeps it, so a
# DDIMScheduler.from_config(pipe.scheduler.config) gets SD's clip_sample=False, not DDIM's default True.
SD15_SCHEDULER: dict[str, Any] = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, set_alpha_to_one=False,
    skip_prk_steps=True, steps_offset=1, clip_sample=False, prediction_type="epsilon",
)
BLIP_BASE_VISION: dict[str, Any] = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=384, patch_size=16,
)
BLIP_BASE_TEXT: dict[str, Any] = dict(
    vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    encoder_hidden_size=768, max_position_embeddings=512, bos_token_id=30522, sep_token_id=102, pad_token_id=0,
    eos_token_id=2,
)
CLIP_B32_TEXT: dict[str, Any] = dict(
    vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
    max_position_embeddings=77, hidden_act="quick_gelu",
)
CLIP_B32_VISION: dict[str, Any] = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=32,
    hidden_act="quick_gelu",
)
VIT_B16 = "vit_base_patch16_224.orig_in21k"


def build_sd15_img2img() -> Any:
    """Stable Diffusion v1.5 img2img (UNet 860M, VAE 84M, text encoder 123M parameters), random weights."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from .tiny import _write_clip_tokenizer

    with tempfile.TemporaryDirectory() as folder:
        _write_clip_tokenizer(Path(folder))
        tokenizer = CLIPTokenizer.from_pretrained(folder)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        **SD15_TEXT_ENCODER, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    pipe = StableDiffusionImg2ImgPipeline(
        vae=AutoencoderKL(**SD15_VAE), text_encoder=text_encoder, tokenizer=tokenizer, unet=UNet2DConditionModel(**SD15_UNET),
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER), safety_checker=None, feature_extractor=None, image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_blip_base() -> tuple[Any, Any]:
    """BLIP captioning, base size (ViT-B/16 at 384 px, BERT-base decoder), random weights, and its processor."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    from .tiny import _write_bert_tokenizer

    with tempfile.TemporaryDirectory() as folder:
        _write_bert_tokenizer(Path(folder))
        tokenizer = BertTokenizer.from_pretrained(folder, bos_token="[DEC]")
    model = BlipForConditionalGeneration(BlipConfig(vision_config=BLIP_BASE_VISION, text_config=BLIP_BASE_TEXT))
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 384, "width": 384}), tokenizer=tokenizer)
    return model.eval(), processor


def build_clip_b32() -> tuple[Any, Any]:
    """CLIP ViT-B/32 (224 px images, 77-token texts), random weights, and its processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from .tiny import _write_clip_tokenizer

    with tempfile.TemporaryDirectory() as folder:
        _write_clip_tokenizer(Path(folder))
        tokenizer = CLIPTokenizer.from_pretrained(folder)
    text = dict(**CLIP_B32_TEXT, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=CLIP_B32_VISION, projection_dim=512))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    return model.eval(), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_vit_b16(num_classes: int) -> torch.nn.Module:
    """The classifier, ViT-B/16 at 224 px with a ``num_classes`` head, random weights."""
    import timm

    return timm.create_model(VIT_B16, pretrained=False, num_classes=num_classes)


def img2img_flops(pipe: Any, height: int, width: int, prompt_length: int = 77) -> dict[str, int]:
    """FLOPs of one UNet CFG pair, one VAE encode and one VAE decode for one image of height x width pixels.

    Counted by torch's FlopCounterMode on meta-device copies of the pipeline's UNet
    and VAE (built from their configs: no memory, no time) with plain matmul
    attention, which the counter sees on every device (not every fused SDPA kernel has a FLOP formula).
    """
    from diffusers.models.attention_processor import AttnProcessor
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = type(pipe.unet).from_config(pipe.unet.config)
        vae = type(pipe.vae).from_config(pipe.vae.config)
    unet.set_attn_processor(AttnProcessor())
    vae.set_attn_processor(AttnProcessor())
    scale = pipe.vae_scale_factor
    latent = (pipe.unet.config.in_channels, height // scale, width // scale)
    with torch.device("meta"):
        calls = {
            "unet_cfg_pair": lambda: unet(torch.randn(2, *latent), torch.tensor(500),
                                          encoder_hidden_states=torch.randn(2, prompt_length, unet.config.cross_attention_dim)),
            "vae_encode": lambda: vae.encode(torch.randn(1, vae.config.in_channels, height, width)),
            "vae_decode": lambda: vae.decode(torch.randn(1, vae.config.latent_channels, *latent[1:])),
        }
        flops = {}
        for name, call in calls.items():
            with FlopCounterMode(display=False) as counter:
                call()
            flops[name] = counter.get_total_flops()
    return flops
