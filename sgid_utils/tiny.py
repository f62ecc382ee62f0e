"""The offline smoke profile: tiny random models of the real classes and a small image folder.

Nothing here is a stand-in for the method: the models are the real
transformers / diffusers / timm classes with small configs and random weights,
saved with ``save_pretrained`` and loaded back through ``sgid_utils.models`` like
the hub ids. The data set is an image folder of three classes whose images have
varied sizes, some below the upscaling threshold, so every code path runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .params import Params

# Small word list: enough for BLIP to emit caption-like text, with compel's special characters in it.
_WORDS = (
    "a an the of with in on and is dog cat puppy kitten flower flowers white black brown fluffy small large "
    "sitting laying standing grass field garden bed couch floor table red yellow pink purple blue green "
    "close up picture photo of two one stuffed animal toy looking camera head face eyes ( ) + - , . ' "
    "pet bloom petals leaves sky water tree window outside inside next to near its his her furry young"
).split()


def _write_bert_tokenizer(folder: Path) -> None:
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + list(dict.fromkeys(_WORDS))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer.from_pretrained(str(folder), bos_token="[DEC]").save_pretrained(folder)


def _bytes_to_unicode() -> dict[int, str]:
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


def _write_clip_tokenizer(folder: Path) -> None:
    """A byte-level CLIP tokenizer (514 tokens, no merges): tokenises any text, as the real one does."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer.from_pretrained(str(folder), pad_token="<|endoftext|>", model_max_length=77)
    tok.save_pretrained(folder)


def build_blip(folder: Path) -> None:
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tok_dir = folder / "_tokenizer"
    _write_bert_tokenizer(tok_dir)
    tok = BertTokenizer.from_pretrained(str(tok_dir), bos_token="[DEC]")
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    text = dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
        encoder_hidden_size=32, max_position_embeddings=64, bos_token_id=tok.convert_tokens_to_ids("[DEC]"),
        sep_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
    )
    model = BlipForConditionalGeneration(BlipConfig(vision_config=vision, text_config=text, projection_dim=32))
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def build_clip(folder: Path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    _write_clip_tokenizer(folder)
    tok = CLIPTokenizer.from_pretrained(str(folder))
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(folder)


def build_stable_diffusion(folder: Path) -> None:
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    _write_clip_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=4, attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    # The SD 1.5 scheduler configuration (PNDM, scaled-linear betas).
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                              set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
    pipe = StableDiffusionImg2ImgPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)


def build_vit(folder: Path) -> None:
    import timm

    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    model = timm.create_model("vit_base_patch16_224.orig_in21k", pretrained=False, num_classes=0, **args)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32), "num_classes": 0}
    timm.models.save_for_hf(model, str(folder), model_args=args, safe_serialization=True)


_BUILDERS = {"captioner": build_blip, "clip": build_clip, "diffusion": build_stable_diffusion, "classifier": build_vit}


def build_tiny_models(params: Params) -> None:
    """Write each tiny model to the folder its models.* entry names, unless it is already there."""
    for key, build in _BUILDERS.items():
        ref = getattr(params.models, key).removeprefix("local-dir:")
        folder = Path(ref)
        if not folder.is_absolute():
            raise ValueError(f"smoke.build_models needs models.{key} to be a folder path (./ or ../), got '{ref}'")
        if (folder / ".complete").exists():
            continue
        torch.manual_seed(0)
        folder.mkdir(parents=True, exist_ok=True)
        build(folder)
        (folder / ".complete").write_text("built by sgid_utils.tiny\n")


def _smoke_image(rng: np.random.Generator, label: int, size: tuple[int, int]) -> Image.Image:
    """A photo-like synthetic image: a noisy gradient background and a class-specific shape."""
    w, h = size
    base = rng.uniform(60, 200, size=3)
    grad = np.linspace(0, 1, h)[:, None, None] * rng.uniform(-60, 60, size=3)
    arr = np.clip(base + grad + rng.normal(0, 12, size=(h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    colour = [(200, 40, 40), (40, 160, 60), (60, 60, 210), (200, 180, 40)][label % 4]
    r = int(min(w, h) * rng.uniform(0.2, 0.35))
    cx, cy = int(rng.uniform(r, w - r)), int(rng.uniform(r, h - r))
    if label % 3 == 0:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif label % 3 == 1:
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return img


def build_smoke_dataset(params: Params) -> None:
    """Write dataset.path/<class>/*.jpg (and dataset.test_path) unless already there."""
    root = Path(params.dataset.path)
    marker = root / ".complete"
    if marker.exists():
        return
    rng = np.random.default_rng(params.run.seed)
    n = params.smoke.images_per_class
    threshold = params.curation.upscale_threshold
    for split_root, count in ((root, n), (params.dataset.test_path, max(2, n // 2))):
        if split_root is None:
            continue
        for label, cls in enumerate(params.smoke.classes):
            folder = Path(split_root) / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                # Alternate small sources (below the upscaling threshold) and larger ones.
                short = int(rng.integers(threshold // 2, threshold)) if i % 2 == 0 else int(rng.integers(threshold, threshold * 2))
                long = int(short * rng.uniform(1.0, 1.5))
                size = (long, short) if i % 3 else (short, long)
                _smoke_image(rng, label, size).save(folder / f"{cls.replace(' ', '_')}_{i:03d}.jpg", quality=92)
    marker.write_text("built by sgid_utils.tiny\n")


def ensure_smoke_assets(params: Params) -> None:
    if params.smoke.build_models:
        build_tiny_models(params)
    if params.smoke.build_dataset:
        build_smoke_dataset(params)
