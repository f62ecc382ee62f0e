"""The generative augmentations a run can compare, each declared once, and the params of those beside SGID.

SGID's images come from captions, similarity, two generation passes and curation; other diffusion-based
augmentations come from their own stages. What the training stage, the comparison table and its cost column need to
know of a method is one ``Augmentation``: its name in ``training.methods``, its row label, the catalog entry of its
synthetic images (one row per synthetic image: ``image_id`` of the real image it was made from, ``path``, ``label``)
and the registered stages it needs (the sum of their measured seconds is its cost).

To add a method: write its generation stage (``stages/<name>.py``, registered in ``core.registry`` and writing its
images' catalog entry), add its params section here if it has settings (with a ``Source`` per setting in
``config.sources``), and add one ``Augmentation`` to ``AUGMENTATIONS``. docs/ARCHITECTURE.md says the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field, field_validator

from sgid_utils.config.references import Section


@dataclass(frozen=True)
class Augmentation:
    """One generative augmentation as training and the comparison see it."""

    method: str  # its value in training.methods
    label: str  # its row name in tables
    tag: str  # the prefix of its training runs' names ("rg100_seed0")
    images: str  # the catalog entry of its synthetic images (image_id, path, label)
    stages: tuple[str, ...]  # the registered stages it needs: its cost is the sum of their seconds
    proportions: str  # the training.* field holding its proportions


AUGMENTATIONS: tuple[Augmentation, ...] = (
    Augmentation("sgid", "SGID", "sgid", "curated", ("captions", "similarity", "generate", "upscale", "curate"),
                 "sgid_proportions"),
    Augmentation("real_guidance", "Real Guidance", "rg", "real_guidance_images", ("real_guidance",),
                 "method_proportions"),
)
BY_METHOD = {a.method: a for a in AUGMENTATIONS}


class RealGuidanceParams(Section):
    """Real Guidance (He et al., ICLR 2023) in the Stable Diffusion form DA-Fusion's code gives it
    (brandontrabucco/da-fusion, ``semantic_aug/augmentations/real_guidance.py``): img2img from each real image with
    the prompt "a photo of a {label}", one fixed guidance scale, one strength, one synthetic image per real image; no
    captions, no similarity, no selection. The model is ``models.diffusion``, the same as SGID's."""

    prompt: str = Field("a photo of a {label}", description="The prompt; {label} is the class name.")
    guidance_scale: float = Field(7.5, ge=0, description="Classifier-free guidance scale, fixed for every image.")
    strength: float = Field(0.5, gt=0, le=1, description="diffusers img2img strength.")
    resolution: int = Field(512, ge=8, description="Each real image is resized to this square canvas for the model "
                            "and its output resized back to the real image's size.")
    num_inference_steps: int = Field(50, ge=1,
                                     description="Denoising steps of the full schedule (strength x this run).")

    @field_validator("prompt")
    @classmethod
    def _label(cls, v: str) -> str:
        if "{label}" not in v:
            raise ValueError("real_guidance.prompt must contain {label}")
        return v

    @field_validator("resolution")
    @classmethod
    def _multiple(cls, v: int) -> int:
        if v % 8:
            raise ValueError(f"real_guidance.resolution must be a multiple of 8 (the VAE's factor); got {v}")
        return v
