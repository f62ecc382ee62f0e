"""One loading path for every model: a hub id or a local folder, through the library's from_pretrained.

The smoke profile's tiny models are saved with save_pretrained and loaded back
through exactly these functions. Each loader imports its library when called: a stage
process pays only for the models it loads (diffusers and timm take seconds to import). A model that cannot be
loaded raises ``ModelLoadError`` naming the id, the stage and what to do instead.
"""

from __future__ import annotations

import functools
import gc
import os
from typing import Any

import torch

from sgid_utils.errors import ModelLoadError
from sgid_utils.params.schema import Params


def model_load_error(ref: str, stage: str, exc: BaseException, what: str = "models.*",
                     repo_type: str = "model") -> ModelLoadError:
    """One actionable message for a model or hub data set that cannot be loaded (``repo_type``: model or dataset)."""
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "connect" in str(exc).lower() or "offline" in str(exc).lower()
    hint = (
        "This machine may be offline (no access to the Hugging Face Hub). "
        if offline or "LocalEntryNotFound" in type(exc).__name__
        else ""
    )
    return ModelLoadError(
        f"Could not load '{ref}' for the {stage} stage ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). "
        f"{hint}Check the id for typos and that you accepted any licence on the Hub; or download it once "
        f"(hf download {ref}{' --repo-type dataset' if repo_type == 'dataset' else ''} --local-dir DIR) and set {what} "
        "to that folder; "
        "or run the offline smoke profile, params/smoke.yaml."
    )


def resolve_device(params: Params) -> torch.device:
    want = params.run.device
    if want == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        # One GPU per process under torchrun / accelerate launch.
        return torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"run.device is '{want}' but no CUDA GPU is visible; use run.device: auto or cpu")
    return torch.device(want)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def _model_and_processor(model_class: str, processor_class: str, ref: str, device: str, dtype: torch.dtype,
                         stage: str, key: str) -> tuple[Any, Any]:
    """A transformers model and its processor, both from ``ref``, with one actionable message for any failure."""
    import transformers

    try:
        processor = getattr(transformers, processor_class).from_pretrained(ref)
        model = getattr(transformers, model_class).from_pretrained(ref, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - every failure gets the same actionable message
        raise model_load_error(ref, stage, exc, key) from None
    return model.to(device).eval(), processor


@functools.lru_cache(maxsize=4)
def load_captioner(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """BLIP captioning model and processor (Salesforce/blip-image-captioning-base)."""
    return _model_and_processor("BlipForConditionalGeneration", "BlipProcessor", ref, device, dtype, "captioning",
                                "models.captioner")


@functools.lru_cache(maxsize=4)
def load_clip(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """CLIP model and processor (openai/clip-vit-base-patch32)."""
    return _model_and_processor("CLIPModel", "CLIPProcessor", ref, device, dtype, "similarity", "models.clip")


def _quiet_diffusers() -> None:
    """diffusers' loading bars follow HF_HUB_DISABLE_PROGRESS_BARS (set by the notebooks' setup), as transformers'
    do: diffusers reads no variable of its own for them."""
    from diffusers.utils import logging
    from huggingface_hub.utils import are_progress_bars_disabled

    if are_progress_bars_disabled():
        logging.disable_progress_bar()


@functools.lru_cache(maxsize=2)
def load_img2img(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """Stable Diffusion img2img pipeline without the safety checker (augmentation, not publication)."""
    return _img2img(ref, device, dtype)


@functools.lru_cache(maxsize=2)
def load_lcm_img2img(ref: str, lora: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """The img2img pipeline with an LCM-LoRA fused into its UNet and diffusers' LCMScheduler (generation.sampler:
    lcm), as the LoRA's model card loads it (``load_lora_weights``, ``fuse_lora``).

    Its own pipeline, not ``load_img2img``'s cached one with the LoRA fused in: Real Guidance and DA-Fusion generate
    with that one. The LoRA's layers are unloaded once fused: the UNet keeps the fused weights and runs at its own
    speed."""
    from diffusers import LCMScheduler

    pipe = _img2img(ref, device, dtype)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    try:
        pipe.load_lora_weights(lora)
    except Exception as exc:  # noqa: BLE001 - every failure gets the same actionable message
        raise model_load_error(lora, "generation", exc, "generation.lcm.lora") from None
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    return pipe


def _img2img(ref: str, device: str, dtype: torch.dtype) -> Any:
    """A new img2img pipeline from ``ref`` (the loaders cache it)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    _quiet_diffusers()
    try:
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
            ref,
            dtype=dtype,
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        )
    except Exception as exc:  # noqa: BLE001 - every failure gets the same actionable message
        raise model_load_error(ref, "generation", exc, "models.diffusion") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)  # diffusers before 0.40 does not take dtype= in from_pretrained: cast here too


@functools.lru_cache(maxsize=2)
def load_controlnet_img2img(diffusion: str, controlnet: str, device: str = "cpu",
                            dtype: torch.dtype = torch.float32) -> Any:
    """SD img2img with a ControlNet: the img2img pipeline's own components (shared, not loaded twice) plus the
    ControlNet."""
    from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline

    base = load_img2img(diffusion, device, dtype)
    try:
        net = ControlNetModel.from_pretrained(controlnet).to(dtype)  # no dtype= (diffusers < 0.40 rejects it in models)
    except Exception as exc:  # noqa: BLE001 - every failure gets the same actionable message
        raise model_load_error(controlnet, "generation", exc, "models.controlnet") from None
    # Built from the components, not with from_pipe: from_pipe casts every shared module to its dtype argument
    # (float32 unless given), which would silently upcast the cached fp16 img2img pipeline's UNet on CUDA.
    pipe = StableDiffusionControlNetImg2ImgPipeline(**base.components, controlnet=net, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def release_models() -> None:
    """On a GPU, drop the cached models and the memory they hold between stages of one process (``run all``):
    otherwise BLIP and CLIP would stay on the GPU through generation, whose batch size is sized from free memory, and
    training. On the CPU they stay cached (a later stage of the process reuses them)."""
    if not torch.cuda.is_initialized():
        return
    for loader in (load_captioner, load_clip, load_img2img, load_lcm_img2img, load_controlnet_img2img):
        loader.cache_clear()
    gc.collect()
    torch.cuda.empty_cache()


def create_classifier(ref: str, num_classes: int, img_size: int | None = None, pretrained: bool = True,
                      what: str = "models.classifier") -> torch.nn.Module:
    """A timm classifier with a new ``num_classes`` head: a timm name (weights from the hub) or 'local-dir:FOLDER'.

    ``pretrained=False`` builds the architecture (and, for a folder, its saved config and
    preprocessing) with random weights: timm reads no weight file and asks no hub. ``img_size``
    other than the pretrained one makes timm resample a ViT's position embeddings (a CNN ignores it).
    """
    import timm

    kwargs = {"img_size": img_size} if img_size else {}
    try:
        try:
            return timm.create_model(ref, pretrained=pretrained, num_classes=num_classes, **kwargs)
        except TypeError as exc:  # a CNN takes any input size and has no img_size argument: the loader resizes
            if "img_size" not in str(exc):
                raise
            return timm.create_model(ref, pretrained=pretrained, num_classes=num_classes)
    except Exception as exc:  # noqa: BLE001 - every failure gets the same actionable message
        raise model_load_error(ref, "training", exc, f"{what} (a timm name or local-dir:FOLDER)") from None


def preprocessing(model: torch.nn.Module,
                  image_size: int | None = None) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(input side, mean, std) from the model's timm pretrained config (resolve_data_config); ``image_size`` overrides
    the side.

    ViT-B/16 in21k normalises with 0.5/0.5, CLIP image towers with OpenAI's CLIP statistics, ResNet-50
    with ImageNet's: reading them from timm keeps each backbone's preprocessing the one it was made for.
    """
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return image_size or cfg["input_size"][-1], tuple(cfg["mean"]), tuple(cfg["std"])
