"""The generative augmentations a run can compare, each declared once, and the params of those beside SGID.

SGID's images come from captions, similarity, two generation passes and curation; other diffusion-based
augmentations come from their own stages. What the training stage, the comparison table and its cost column need to
know of a method is one ``Augmentation``: its name in ``training.methods``, its row label, the catalog entry of its
synthetic images (one row per synthetic image: ``image_id`` of the real image it was made from, ``path``, ``label``)
and the registered stages it needs (the sum of their measured seconds is its cost).

To add a method: write its generation stage (``stages/<name>.py``, registered in ``core.registry`` and writing its
images' catalog entry), add its params section here if it has settings (with a ``Source`` per setting in
``params.sources``), and add one ``Augmentation`` to ``AUGMENTATIONS``. docs/ARCHITECTURE.md says the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field, field_validator

from sgid_utils.params.origins import Source
from sgid_utils.params.origins import from_method as _method
from sgid_utils.params.references import CanvasSize, Section, containing


@dataclass(frozen=True)
class Augmentation:
    """One generative augmentation as training and the comparison see it."""

    method: str  # its value in training.methods
    label: str  # its row name in tables
    tag: str  # the prefix of its training runs' names ("rg100_seed0")
    images: str  # the catalog entry of its synthetic images (image_id, path, label)
    stages: tuple[str, ...]  # the registered stages it needs: its cost is the sum of their seconds
    proportions: str | None  # the training.* field holding its proportions; None: its own recipe (no proportion)
    section: str | None = None  # its params section (left out of fingerprints while no method of it is trained)
    replaces: bool = False  # its own recipe: a real image is replaced by one of its synthetic images at training time


AUGMENTATIONS: tuple[Augmentation, ...] = (
    Augmentation("sgid", "SGID", "sgid", "curated", ("captioning", "similarity", "generation", "upscaling", "curation"),
                 "sgid_proportions"),
    Augmentation("real_guidance", "Real Guidance", "rg", "real_guidance_images", ("real_guidance",),
                 "method_proportions", "real_guidance"),
    # Real Guidance's recipe as DA-Fusion's scripts run it: M images per real image, each replaced with probability p
    Augmentation("real_guidance_recipe", "Real Guidance (its recipe)", "rgr", "real_guidance_images",
                 ("real_guidance",), None, "real_guidance", replaces=True),
    # DA-Fusion the package's way: the first of each real image's synthetic images, added at a proportion
    Augmentation("da_fusion", "DA-Fusion", "daf", "da_fusion_images", ("inversion", "da_fusion"),
                 "method_proportions", "da_fusion"),
    # DA-Fusion's own recipe: M synthetic images per real image, each real image replaced with probability p
    Augmentation("da_fusion_recipe", "DA-Fusion (its recipe)", "dafr", "da_fusion_images", ("inversion", "da_fusion"),
                 None, "da_fusion", replaces=True),
)
BY_METHOD = {a.method: a for a in AUGMENTATIONS}


# The compared augmentations' own stages (SGID's chain is the main run's): they skip while no method of theirs trains.
METHOD_STAGES = tuple(dict.fromkeys(s for a in AUGMENTATIONS if a.method != "sgid" for s in a.stages))


def idle_stages(methods: list[str]) -> set[str]:
    """The stages of the compared augmentations that ``methods`` (training.methods) does not train: they skip."""
    needed = {s for a in AUGMENTATIONS if a.method in methods for s in a.stages}
    return set(METHOD_STAGES) - needed


REPLACING = tuple(a.method for a in AUGMENTATIONS if a.replaces)
# DA-Fusion's stage always makes its M images per real image; Real Guidance's makes M only while its recipe trains
# (one otherwise: the package's way uses the first, whose seed does not depend on M).
ALWAYS_M = ("da_fusion",)


def made_per_real(params, section: str | None) -> int:
    """Synthetic images a compared method's generation stage makes per real image under these params (SGID: one)."""
    if section is None:
        return 1
    if section in ALWAYS_M or any(a.replaces and a.section == section and a.method in params.training.methods
                                  for a in AUGMENTATIONS):
        return getattr(params, section).num_synthetic
    return 1


class RealGuidanceParams(Section):
    """Real Guidance (He et al., ICLR 2023) in the Stable Diffusion form DA-Fusion's code gives it
    (brandontrabucco/da-fusion, ``semantic_aug/augmentations/real_guidance.py``): img2img from each real image with
    the prompt "a photo of a {label}", one fixed guidance scale, one strength, one synthetic image per real image; no
    captions, no similarity, no selection. The model is ``models.diffusion``, the same as SGID's."""

    prompt: Annotated[str, containing("{label}")] = Field("a photo of a {label}",
                                                          description="The prompt; {label} is the class name.")
    guidance_scale: float = Field(7.5, ge=0, description="Classifier-free guidance scale, fixed for every image.")
    strength: float = Field(0.5, gt=0, le=1, description="diffusers img2img strength.")
    resolution: CanvasSize = Field(512, description="Each real image is resized to this square canvas for the model "
                            "and its output resized back to the real image's size.")
    num_inference_steps: int = Field(50, ge=1,
                                     description="Denoising steps of the full schedule (strength x this run).")
    num_synthetic: int = Field(10, ge=1, description="M: synthetic images per real image of its recipe "
                               "(real_guidance_recipe); the package's way (real_guidance) uses the first.")
    synthetic_probability: float = Field(0.5, ge=0, le=1, description="p: the probability that a training sample "
                                         "of its recipe (real_guidance_recipe) is one of its real image's synthetic "
                                         "ones.")



class DaFusionParams(Section):
    """DA-Fusion (Trabucco et al., ICLR 2024) as its code runs it (brandontrabucco/da-fusion): a textual-inversion
    token per class learned on that class's training images (``fine_tune.py``, adapted from diffusers' example), then
    img2img of each real image with "a photo of a {token}" at a strength drawn per synthetic image from
    {0.25, 0.5, 0.75, 1.0} (``scripts/cutmix_ablation/launch_textual_inversion=1.0-0.75-0.5-0.25_pascal.sh``:
    ``--compose parallel --probs 0.25 ...``), M synthetic images per real image, and during training a real image
    replaced by one of its synthetic images with probability p (``semantic_aug/few_shot_dataset.py``)."""

    initializer_token: str = Field("the", description="The word whose embedding the class token starts from.")
    inversion_steps: int = Field(1000, ge=1, description="Optimisation steps of each class's token.")
    inversion_batch_size: int = Field(4, ge=1, description="Images per textual-inversion step.")
    inversion_lr: float = Field(5e-4, gt=0, description="AdamW learning rate before scaling by the batch size "
                                "(fine_tune.py's --scale_lr: 5e-4 x 4 = 2e-3).")
    scale_lr: bool = Field(True, description="Multiply inversion_lr by inversion_batch_size, as --scale_lr does.")
    inversion_weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay (on the token's row only).")
    flip_p: float = Field(0.5, ge=0, le=1, description="Horizontal flip probability of the inversion's images.")
    resolution: CanvasSize = Field(512, description="Square size of the inversion's images and the img2img canvas.")
    prompt: Annotated[str, containing("{token}")] = Field(
        "a photo of a {token}", description="The generation prompt; {token} is the class token.")
    guidance_scale: float = Field(7.5, ge=0, description="Classifier-free guidance scale, fixed.")
    strengths: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0], min_length=1,
                                   description="Each synthetic image's strength is drawn from these, from its seed.")
    num_synthetic: int = Field(10, ge=1, description="M: synthetic images per real image.")
    synthetic_probability: float = Field(0.5, ge=0, le=1, description="p: the probability that a training sample "
                                         "of its recipe (da_fusion_recipe) is one of its real image's synthetic ones.")
    num_inference_steps: int = Field(50, ge=1, description="Denoising steps of the full schedule.")

    @field_validator("strengths")
    @classmethod
    def _strengths(cls, v: list[float]) -> list[float]:
        if not all(0 < s <= 1 for s in v):
            raise ValueError(f"every da_fusion.strengths value must lie in (0, 1]; got {v}")
        return v


_RG = "brandontrabucco/da-fusion semantic_aug/augmentations/real_guidance.py (DA-Fusion's Real Guidance)"
_DAF = "brandontrabucco/da-fusion "
# Where each setting of the compared augmentations comes from (``params.sources`` holds them with every other).
METHOD_SOURCES: dict[str, Source] = {
    # real guidance (config.methods)
    "real_guidance.prompt": _method(f"{_RG}: prompt 'a photo of a {{name}}'"),
    "real_guidance.guidance_scale": _method(f"{_RG}: guidance_scale=7.5 (also scripts/real_guidance/*.sh: "
                                            "--guidance-scale 7.5)"),
    "real_guidance.strength": _method(f"{_RG}: strength=0.5 (also scripts/real_guidance/*.sh: --strength 0.5)"),
    "real_guidance.resolution": _method(f"{_RG}: the image resized to a 512 x 512 canvas and the output back to the "
                                        "image's size (bilinear there; LANCZOS here, as SGID's inputs)"),
    "real_guidance.num_inference_steps": _method(f"{_RG}: the pipeline's default num_inference_steps (50 in "
                                                 "diffusers' img2img pipeline)"),
    "real_guidance.num_synthetic": _method(f"{_DAF}scripts/cutmix_ablation/launch_real_guidance=0.5_pascal.sh: "
                                           "--num-synthetic 10 (train_classifier.py --aug real-guidance)"),
    "real_guidance.synthetic_probability": _method(f"{_DAF}scripts/cutmix_ablation/launch_real_guidance=0.5_"
                                                   "pascal.sh: --synthetic-probability 0.5 "
                                                   "(semantic_aug/few_shot_dataset.py: the replacement)"),
    # DA-Fusion (config.methods)
    "da_fusion.initializer_token": _method(f"{_DAF}fine_tune.py: args.initializer_token = \"the\""),
    "da_fusion.inversion_steps": _method(f"{_DAF}scripts/fine_tuning/fine_tune_pascal.sh: --max_train_steps=1000"),
    "da_fusion.inversion_batch_size": _method(f"{_DAF}scripts/fine_tuning/fine_tune_pascal.sh: --train_batch_size=4"),
    "da_fusion.inversion_lr": _method(f"{_DAF}scripts/fine_tuning/fine_tune_pascal.sh: --learning_rate=5.0e-04, "
                                      "constant, no warm-up"),
    "da_fusion.scale_lr": _method(f"{_DAF}scripts/fine_tuning/fine_tune_pascal.sh: --scale_lr (one process, no "
                                  "gradient accumulation: x the batch size)"),
    "da_fusion.inversion_weight_decay": _method(f"{_DAF}fine_tune.py: --adam_weight_decay default 1e-2"),
    "da_fusion.flip_p": _method(f"{_DAF}fine_tune.py: TextualInversionDataset flip_p=0.5"),
    "da_fusion.resolution": _method(f"{_DAF}scripts/fine_tuning/fine_tune_pascal.sh: --resolution=512; "
                                    "semantic_aug/augmentations/textual_inversion.py: the 512 x 512 canvas"),
    "da_fusion.prompt": _method(f"{_DAF}semantic_aug/augmentations/textual_inversion.py: 'a photo of a {{name}}' "
                                "with the name formatted as the token '<class_name>'"),
    "da_fusion.guidance_scale": _method(f"{_DAF}scripts/textual_inversion/*.sh: --guidance-scale 7.5"),
    "da_fusion.strengths": _method(f"{_DAF}scripts/cutmix_ablation/launch_textual_inversion=1.0-0.75-0.5-0.25_"
                                   "pascal.sh: --strength 1.0 0.75 0.5 0.25 --probs 0.25 each, --compose parallel"),
    "da_fusion.num_synthetic": _method(f"{_DAF}scripts/textual_inversion/*.sh: --num-synthetic 10"),
    "da_fusion.synthetic_probability": _method(f"{_DAF}scripts/textual_inversion/*.sh: --synthetic-probability 0.5 "
                                               "(semantic_aug/few_shot_dataset.py: the replacement)"),
    "da_fusion.num_inference_steps": _method(f"{_DAF}semantic_aug/augmentations/textual_inversion.py: the "
                                             "pipeline's default num_inference_steps (50 in diffusers' img2img)"),
}
