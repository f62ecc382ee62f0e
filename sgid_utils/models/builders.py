"""SGID's four model families built from configs written here, at tiny or real size, with random weights.

Nothing is downloaded and nothing here stands in for the method: the models are
the real transformers / diffusers / timm classes.

- ``"tiny"``: small configs for the offline smoke profile. ``models.tiny``
  saves them with ``save_pretrained`` (timm: ``save_for_hf``) and they are loaded
  back through ``sgid_utils.models.loading`` like the hub ids.
- ``"real"``: the configs of the checkpoints the params name, for ``bench/``:
  stable-diffusion-v1-5 (UNet, VAE, CLIP ViT-L/14 text tower, PNDM scheduler),
  Salesforce/blip-image-captioning-base, openai/clip-vit-base-patch32 and timm's
  vit_base_patch16_224.orig_in21k. Speed and FLOPs depend on the architecture and
  the input size, not on the weight values, so a benchmark of these models
  measures what the real checkpoints would cost, offline. Build inside
  ``with torch.device("meta"):`` for parameter and FLOP counts at no memory cost,
  or inside ``with torch.device("cuda"):`` to skip a slow CPU init.

Tokenizers, at both sizes, are small byte-level (CLIP) and word-list (BERT) ones:
they tokenise any text, and the sequence lengths that cost depends on are set by
the model (77 tokens for CLIP).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    UNet2DConditionModel,
)
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
)

Size = Literal["tiny", "real"]

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
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=384,
    patch_size=16,
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
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
    patch_size=32, hidden_act="quick_gelu",
)
VIT_B16 = "vit_base_patch16_224.orig_in21k"
RESNET50 = "resnet50"
CLIP_VIT_B16 = "vit_base_patch16_clip_224.laion2b"

# The tiny configs; vocab sizes and token ids come from the tokenizers.
_TINY_LAYERS: dict[str, Any] = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
_TINY_VISION: dict[str, Any] = dict(**_TINY_LAYERS, image_size=32, patch_size=8)
_TINY_BLIP_TEXT: dict[str, Any] = dict(**_TINY_LAYERS, encoder_hidden_size=32, max_position_embeddings=64)
_TINY_CLIP_TEXT: dict[str, Any] = dict(**_TINY_LAYERS, max_position_embeddings=77)
_TINY_UNET: dict[str, Any] = dict(
    block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32, norm_num_groups=4, attention_head_dim=2,
)
_TINY_VAE: dict[str, Any] = dict(
    block_out_channels=(8, 8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
)

# Per size: (vision tower, text tower, projection_dim).
_BLIP: dict[Size, tuple[dict[str, Any], dict[str, Any], int]] = {
    "tiny": (_TINY_VISION, _TINY_BLIP_TEXT, 32), "real": (BLIP_BASE_VISION, BLIP_BASE_TEXT, 512),
}
_CLIP: dict[Size, tuple[dict[str, Any], dict[str, Any], int]] = {
    "tiny": (_TINY_VISION, _TINY_CLIP_TEXT, 32), "real": (CLIP_B32_VISION, CLIP_B32_TEXT, 512),
}
# Per size: (UNet, VAE, text encoder, scheduler). The tiny scheduler has PNDM's own keys only, as its saved
# config always had.
_SD: dict[Size, tuple[dict[str, Any], ...]] = {
    "tiny": (_TINY_UNET, _TINY_VAE, _TINY_CLIP_TEXT, {k: v for k, v in SD15_SCHEDULER.items() if k != "clip_sample"}),
    "real": (SD15_UNET, SD15_VAE, SD15_TEXT_ENCODER, SD15_SCHEDULER),
}
# timm keyword arguments over VIT_B16's own (save_for_hf writes them to the tiny model's config).
_TINY_VIT: dict[str, Any] = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
# Each classifier's tiny size, per timm architecture (a ViT's width, a ResNet's bottleneck stages);
# "real" is timm's own.
_TINY_CLASSIFIER: dict[str, dict[str, Any]] = {
    "vit_base_patch16_224": _TINY_VIT,
    "vit_base_patch16_clip_224": _TINY_VIT,
    "resnet50": dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64)),
}
TINY_CLASSIFIER_SIDE = 32

# Small word list: enough for BLIP to emit caption-like text, with compel's special characters in it.
_WORDS = (
    "a an the of with in on and is dog cat puppy kitten flower flowers white black brown fluffy small large "
    "sitting laying standing grass field garden bed couch floor table red yellow pink purple blue green "
    "close up picture photo of two one stuffed animal toy looking camera head face eyes ( ) + - , . ' "
    "pet bloom petals leaves sky water tree window outside inside next to near its his her furry young"
).split()


def write_bert_tokenizer(folder: Path) -> None:
    """A word-list BERT tokenizer with BLIP's [DEC] start token."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + list(dict.fromkeys(_WORDS))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer.from_pretrained(str(folder), bos_token="[DEC]").save_pretrained(folder)


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable character table (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_tokenizer(folder: Path) -> None:
    """A byte-level CLIP tokenizer (514 tokens, no merges): tokenises any text, as the real one does."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer.from_pretrained(str(folder), pad_token="<|endoftext|>", model_max_length=77)
    tok.save_pretrained(folder)


def _bert_tokenizer() -> BertTokenizer:
    with tempfile.TemporaryDirectory() as folder:
        write_bert_tokenizer(Path(folder))
        return BertTokenizer.from_pretrained(folder, bos_token="[DEC]")


def _clip_tokenizer() -> CLIPTokenizer:
    with tempfile.TemporaryDirectory() as folder:
        write_clip_tokenizer(Path(folder))
        return CLIPTokenizer.from_pretrained(folder)


def _clip_text_ids(tokenizer: CLIPTokenizer) -> dict[str, int]:
    """A CLIP text tower's vocabulary and special tokens; a config's own values take precedence."""
    return dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)


def blip(size: Size) -> tuple[BlipForConditionalGeneration, BlipProcessor]:
    """BLIP captioning (real: base, ViT-B/16 at 384 px and a BERT-base decoder), random weights, and its processor."""
    vision, text, projection_dim = _BLIP[size]
    tokenizer = _bert_tokenizer()
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.convert_tokens_to_ids("[DEC]"),
               sep_token_id=tokenizer.sep_token_id, eos_token_id=tokenizer.sep_token_id,
               pad_token_id=tokenizer.pad_token_id)
    model = BlipForConditionalGeneration(BlipConfig(vision_config=vision, text_config=ids | text,
                                                    projection_dim=projection_dim))
    pixels = vision["image_size"]
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": pixels, "width": pixels}),
                              tokenizer=tokenizer)
    return model.eval(), processor


def clip(size: Size) -> tuple[CLIPModel, CLIPProcessor]:
    """CLIP (real: ViT-B/32, 224 px images, 77-token texts), random weights, and its processor."""
    vision, text, projection_dim = _CLIP[size]
    tokenizer = _clip_tokenizer()
    config = CLIPConfig(text_config=_clip_text_ids(tokenizer) | text, vision_config=vision,
                        projection_dim=projection_dim)
    model = CLIPModel(config)
    pixels = vision["image_size"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": pixels}, crop_size={"height": pixels, "width": pixels})
    return model.eval(), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def stable_diffusion(size: Size) -> StableDiffusionImg2ImgPipeline:
    """Stable Diffusion img2img (real: v1.5, UNet 860M, VAE 84M, text encoder 123M parameters), random weights."""
    unet_config, vae_config, text_config, scheduler_config = _SD[size]
    tokenizer = _clip_tokenizer()
    unet = UNet2DConditionModel(**unet_config)  # built in this order: the tiny weights depend on it
    vae = AutoencoderKL(**vae_config)
    text_encoder = CLIPTextModel(CLIPTextConfig(**(_clip_text_ids(tokenizer) | text_config)))
    pipe = StableDiffusionImg2ImgPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler.from_config(scheduler_config),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ControlNet's conditioning encoder downsamples the control image by 2 per block after the first, to the latent size:
# SD 1.5's (the canny checkpoints') for its 8x VAE, a shorter one for the tiny 4x VAE.
_CONTROLNET_EMBEDDING: dict[Size, tuple[int, ...]] = {"tiny": (8, 16, 32), "real": (16, 32, 96, 256)}


def controlnet(size: Size) -> ControlNetModel:
    """A ControlNet derived from the SD UNet of this size (as the canny ControlNets were from SD's), random weights.

    Built first after the same seed, the UNet is the one ``stable_diffusion(size)`` builds, so the tiny
    ControlNet's encoder starts as a copy of the tiny SD UNet's, as a real one starts from SD 1.5's.

    ``from_unet`` zero-initialises the conditioning encoder's last conv and every residual output conv
    (the ControlNet paper's "zero convolutions"): such a ControlNet adds exactly zero to the UNet and
    ignores its control image, so no test could see whether the edge map is used. The tiny one gets a
    seeded He-normal init in those convs and in the rest of the conditioning encoder instead: variance-
    preserving through its SiLU stack, the edge map then moves the tiny outputs by ~0.1 (on [0, 1]); with
    PyTorch's default init it moved them by ~2e-4, too close to float noise. Speed (``real``) does not care.
    """
    net = ControlNetModel.from_unet(UNet2DConditionModel(**_SD[size][0]),
                                    conditioning_embedding_out_channels=_CONTROLNET_EMBEDDING[size])
    if size == "tiny":
        encoder = [m for m in net.controlnet_cond_embedding.modules() if isinstance(m, torch.nn.Conv2d)]
        for conv in [*encoder, *net.controlnet_down_blocks, net.controlnet_mid_block]:
            torch.nn.init.kaiming_normal_(conv.weight)
            torch.nn.init.zeros_(conv.bias)
    return net.eval()


def classifier(name: str, size: Size, num_classes: int = 0) -> torch.nn.Module:
    """Any backbone timm knows (ResNet-50, CLIP ViT-B/16, ...) at tiny or real size, random weights, with the
    pretrained config of ``name`` (so its preprocessing: mean, std) and, tiny, a 32-pixel input size."""
    args = _TINY_CLASSIFIER[_architecture(name)] if size == "tiny" else {}
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **args)
    if size == "tiny":
        model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, TINY_CLASSIFIER_SIDE, TINY_CLASSIFIER_SIDE),
                                "num_classes": num_classes}
    return model


def save_tiny_classifier(name: str, folder: Path) -> None:
    """The tiny version of the timm backbone ``name``, saved as timm's ``local-dir:`` loader reads it."""
    folder.mkdir(parents=True, exist_ok=True)
    timm.models.save_for_hf(classifier(name, "tiny"), str(folder), model_args=_TINY_CLASSIFIER[_architecture(name)],
                            safe_serialization=True)


def _architecture(name: str) -> str:
    """'vit_base_patch16_clip_224.laion2b' -> 'vit_base_patch16_clip_224' (a name without a tag is its architecture)."""
    return timm.get_pretrained_cfg(name).architecture if "." in name else name


def _save_pretrained(folder: Path, *parts: Any) -> None:
    for part in parts:
        part.save_pretrained(folder)


# What save_tiny writes for each models.* entry, in the layout sgid_utils.models.loading loads.
_TINY_SAVERS: dict[str, Callable[[Path], None]] = {
    "captioner": lambda folder: _save_pretrained(folder, *blip("tiny")),
    "clip": lambda folder: _save_pretrained(folder, *clip("tiny")),
    "diffusion": lambda folder: _save_pretrained(folder, stable_diffusion("tiny")),
    "controlnet": lambda folder: _save_pretrained(folder, controlnet("tiny")),
    "classifier": lambda folder: save_tiny_classifier(VIT_B16, folder),
}


def save_tiny(family: str, folder: Path) -> None:
    """Build the tiny model of a models.* entry (captioner, clip, diffusion, controlnet, classifier) and save it
    to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    _TINY_SAVERS[family](folder)
