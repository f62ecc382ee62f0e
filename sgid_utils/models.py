"""One loading path for every model: a hub id or a local folder, through the library's from_pretrained.

The smoke profile's tiny models are saved with save_pretrained and loaded back
through exactly these functions. A model that cannot be loaded raises
``ModelLoadError`` naming the id, the stage and what to do instead.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import timm
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from transformers import BlipForConditionalGeneration, BlipProcessor, CLIPModel, CLIPProcessor

from .errors import ModelLoadError
from .schema import Params


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


@functools.lru_cache(maxsize=4)
def load_captioner(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """BLIP captioning model and processor (Salesforce/blip-image-captioning-base)."""
    try:
        processor = BlipProcessor.from_pretrained(ref)
        model = BlipForConditionalGeneration.from_pretrained(ref, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - every failure gets the same actionable message
        raise model_load_error(ref, "captioning", exc, "models.captioner") from None
    return model.to(device).eval(), processor


@functools.lru_cache(maxsize=4)
def load_clip(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """CLIP model and processor (openai/clip-vit-base-patch32)."""
    try:
        processor = CLIPProcessor.from_pretrained(ref)
        model = CLIPModel.from_pretrained(ref, dtype=dtype)
    except Exception as exc:  # noqa: BLE001
        raise model_load_error(ref, "similarity", exc, "models.clip") from None
    return model.to(device).eval(), processor


@functools.lru_cache(maxsize=2)
def load_img2img(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """Stable Diffusion img2img pipeline without the safety checker (augmentation, not publication)."""
    try:
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
            ref,
            dtype=dtype,
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        )
    except Exception as exc:  # noqa: BLE001
        raise model_load_error(ref, "generation", exc, "models.diffusion") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def create_classifier(ref: str, num_classes: int, img_size: int | None = None) -> torch.nn.Module:
    """timm ViT with a new head: a timm name (pretrained weights from the hub) or 'local-dir:FOLDER'.

    ``img_size`` other than the pretrained one makes timm resample the position embeddings.
    """
    kwargs = {"img_size": img_size} if img_size else {}
    try:
        return timm.create_model(ref, pretrained=True, num_classes=num_classes, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise model_load_error(ref, "training", exc, "models.classifier (a timm name or local-dir:FOLDER)") from None
