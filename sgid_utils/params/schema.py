"""The typed params schema: one pydantic model per section of a params file.

An unknown key, a wrong type or an out-of-range value is a validation error that
``sgid_utils.params.load.load_params`` turns into a message naming the file, the key and
what is allowed. Which keys each stage's output depends on is declared in the stage
registry (``sgid_utils.core.registry``), not here. Where each default comes from (paper, report or this
package) is recorded once in ``sgid_utils.params.sources``; a new field needs an entry there (tests/test_sources.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from sgid_utils.params.methods import DaFusionParams, RealGuidanceParams
from sgid_utils.params.references import ReferencesParams, containing
from sgid_utils.params.references import Section as Section
from sgid_utils.params.samplers import LcmParams, denoising_steps, largest_guidance
from sgid_utils.params.training import TrainingParams


class RunParams(Section):
    name: str = Field(min_length=1, description="Run name: reports land in reports_dir, stage files in dir.")
    dir: Path = Field(description="Run directory holding every stage's files (put it on Google Drive on Colab).")
    reports_dir: Path = Field(description="Where executed notebooks, figures and tables are written.")
    seed: int = Field(0, ge=0, description="Run seed; every per-item seed derives from it.")
    draw: int = Field(0, ge=0, description="Generation draw: changes only the random draws of caption sampling "
                      "(nucleus), generation (candidate seeds) and curation (the random rule, the detector's folds); "
                      "not the data split, not the training seeds. 0 gives run.seed's draws; another value is a "
                      "second, independent draw (sgid_utils.core.seeding.draw_seed).")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'.")
    min_free_gb: float = Field(2.0, ge=0,
                               description="Stages refuse to start with less free disk than this in run.dir.")
    reuse: Path | None = Field(None, description="Another run directory whose stage folders up to curation, "
                               "made with the same params, are linked here instead of recomputed (a "
                               "training-only profile reuses the data set's generated images).")


class DatasetParams(Section):
    source: Literal["pets", "flowers", "imagefolder"]
    hf_id: str | None = Field(None, description="Hugging Face data set id or local folder; defaults per source.")
    path: Path | None = Field(None, description="imagefolder: <path>/<class>/*.jpg training images.")
    test_path: Path | None = Field(None, description="imagefolder: optional separate <test_path>/<class>/ folder.")
    train_splits: list[str] = Field(default_factory=lambda: ["train"], min_length=1)
    test_split: str = "test"
    test_fraction: float = Field(0.2, gt=0, lt=1,
                                 description="imagefolder without test_path: held-out share per class.")
    image_column: str = "image"
    label_column: str = "label"
    class_name_case: Literal["title", "keep"] = "title"
    max_per_class: int | None = Field(None, ge=1, description="Cap on training images per class (quick runs).")
    max_test_per_class: int | None = Field(None, ge=1)
    min_side: int = Field(16, ge=1, description="Images whose short side is below this are skipped as unusable.")
    max_aspect: float = Field(8.0, ge=1, description="Images more elongated than this (long/short side) are skipped.")

    @model_validator(mode="after")
    def _needs_path(self) -> DatasetParams:
        if self.source == "imagefolder" and self.path is None:
            raise ValueError("dataset.source is 'imagefolder', so dataset.path must name the image folder")
        return self


class ModelParams(Section):
    captioner: str = "Salesforce/blip-image-captioning-base"
    clip: str = "openai/clip-vit-base-patch32"
    diffusion: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    classifier: str = Field(
        "vit_base_patch16_224.orig_in21k",
        description="timm model name (pretrained from the hub) or 'local-dir:FOLDER'.",
    )
    controlnet: str = Field(
        "lllyasviel/control_v11p_sd15_canny",
        description="Canny-edge ControlNet for SD 1.5, used when generation.generator is 'controlnet' "
        "(docs/CHOICES.md: why v1.1).",
    )


class CaptioningParams(Section):
    num_nucleus: int = Field(10, ge=0)
    num_beam: int = Field(10, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    num_beams: int = Field(10, ge=1,
                           description="Beam width; must be >= num_beam: returning 10 beam captions forces 10 beams.")
    max_new_tokens: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=1, description="Images per captioning batch (speed and memory only): ~0.2 GiB "
                            "each in fp16 (4.2 GiB at 16 on an H200), so 32 fits a T4; halved on out-of-memory.")

    @model_validator(mode="after")
    def _beams(self) -> CaptioningParams:
        if self.num_beam > self.num_beams:
            raise ValueError(f"captioning.num_beam ({self.num_beam}) cannot exceed captioning.num_beams "
                             f"({self.num_beams})")
        if self.num_nucleus + self.num_beam == 0:
            raise ValueError("captioning needs at least one caption per image (num_nucleus + num_beam > 0)")
        return self


class SimilarityParams(Section):
    batch_size: int = Field(64, ge=1)


class GuidanceParams(Section):
    """f(s*) = a*s*^2 + b*s* + c: the paper's coefficients as the report quotes them
    ("defined as in the original paper").

    s* is the raw CLIP cosine of the image and its best caption."""

    coefficients: tuple[float, float, float] = (-4.0, 2.0, 1.0)
    mode: Literal["direct", "scaled", "fixed"] = Field(
        "direct",
        description="direct (a reading: the report never says the scale equals f(s*)): guidance = f(s*); "
        "scaled: guidance = base_scale * f(s*); fixed: guidance = base_scale.",
    )
    base_scale: float = Field(7.5, ge=0)


Generator = Literal["img2img", "controlnet"]  # generation.generator


class ControlNetParams(Section):
    """generation.generator: controlnet: the source's Canny edges (OpenCV) condition a ControlNet (beyond the paper)."""

    low_threshold: int = Field(100, ge=0, description="cv2.Canny's lower hysteresis threshold (gradient magnitude).")
    high_threshold: int = Field(200, ge=1, description="cv2.Canny's upper hysteresis threshold.")
    conditioning_scale: float = Field(1.0, ge=0, description="controlnet_conditioning_scale: 1 is the weight "
                                      "the ControlNet was trained at; 0 turns it off.")

    @model_validator(mode="after")
    def _order(self) -> ControlNetParams:
        if self.low_threshold > self.high_threshold:
            raise ValueError(f"generation.controlnet.low_threshold ({self.low_threshold}) cannot exceed "
                             f"high_threshold ({self.high_threshold})")
        return self


Sampler = Literal["default", "lcm"]  # generation.sampler


class GenerationParams(Section):
    generator: Generator = Field(
        "img2img", description="img2img: SD img2img (the report's 'image-to-image'); controlnet: SD img2img "
        "with a Canny-edge ControlNet (models.controlnet)."
    )
    controlnet: ControlNetParams = Field(default_factory=ControlNetParams)
    sampler: Sampler = Field("default", description="default: the diffusion model's own scheduler at "
                             "num_inference_steps (PNDM for SD 1.5); lcm: LCM-LoRA in a few steps (generation.lcm), "
                             "a different method: compared as such, never the default.")
    lcm: LcmParams = Field(default_factory=LcmParams)
    prompt: Literal["sgid", "label_only", "caption_only"] = Field(
        "sgid", description="sgid: weighted caption + label; label_only: 'A picture of <label>'; caption_only: '<c*>'."
    )
    prompt_template: Annotated[str, containing("{label}")] = "{caption}. A picture of {label}"
    caption_weight: float = Field(0.9, gt=0)
    label_weight: float = Field(1.5, gt=0)
    negative_prompt: str = ""
    guidance: GuidanceParams = Field(default_factory=GuidanceParams)
    strength: float = Field(0.3, gt=0, le=1, description="diffusers img2img strength: the report's 'Gaussian noise "
                            "of 0.3' read as strength=0.3 (the share of the denoising schedule re-run from the noised "
                            "source).")
    num_inference_steps: int = Field(50, ge=1)
    num_candidates: int = Field(3, ge=1, description="k candidates per source image.")
    max_side: int = Field(768, ge=64, description="Sources larger than this (long side) are downscaled for the model.")
    batch_size: int | None = Field(None, ge=1, description="Sources per denoising loop; None: from free GPU "
                                   "memory on CUDA (halved on out-of-memory), 1 (the pipeline itself) on the CPU.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: fp16 on CUDA, fp32 on CPU."
    )
    compile: bool | None = Field(None, description="torch.compile the UNet on CUDA (~60 s, recompiles per input "
                                 "size); None: on for a pass of at least 3,000 candidates, where it pays back.")
    compile_vae: bool = Field(False, description="Also torch.compile the VAE decoder on CUDA.")
    writer_threads: int | None = Field(None, ge=0, description="Threads that resize and write candidates (and load the "
                                       "next chunk) beside the denoising loop; None: up to 4 on CUDA, 0 (inline) on "
                                       "the CPU.")
    png_compress_level: int = Field(1, ge=0, le=9, description="zlib level of the candidates' PNGs: the same pixels "
                                    "at any level; 1 wrote a 500x375 photo 2.6x faster than PIL's default 6, in a "
                                    "file 6 % larger.")

    @property
    def steps(self) -> int:
        """num_inference_steps of the sampler in force (the schedule strength cuts)."""
        return self.lcm.num_inference_steps if self.sampler == "lcm" else self.num_inference_steps

    @model_validator(mode="after")
    def _sampler(self) -> GenerationParams:
        if self.sampler != "lcm":
            return self
        if self.generator != "img2img":
            raise ValueError("generation.sampler: lcm runs with generation.generator: img2img only")
        steps, key = self.lcm.num_inference_steps, "generation.lcm.num_inference_steps"
        if denoising_steps(steps, self.strength) < 1:  # unlike PNDM, LCMScheduler keeps no extra step
            raise ValueError(f"generation.strength {self.strength:g} x {key} {steps} leaves no denoising step "
                             f"(img2img runs int({steps * self.strength:g}) = 0 of the schedule): raise {key} to at "
                             f"least {math.ceil(1 / self.strength)}")
        g = self.guidance
        if (top := largest_guidance(g.mode, g.coefficients, g.base_scale)) > self.lcm.max_guidance_scale:
            raise ValueError(f"generation.sampler: lcm takes guidance scales up to generation.lcm.max_guidance_scale "
                             f"({self.lcm.max_guidance_scale:g}), but generation.guidance gives up to {top:.3g}: use "
                             "guidance.mode: direct, or a lower base_scale")
        return self


class CurationParams(Section):
    upscale_threshold: int = Field(512, ge=1,
                                   description="Sources with a short side below this are upscaled and regenerated.")
    upscale_to: int | None = Field(None, ge=1,
                                   description="Target short side when upscaling; defaults to upscale_threshold.")
    error_analysis_sample: Annotated[int, Field(ge=1)] | Literal["all"] = Field(
        5, description="Small sources per class (seeded) that also get the raw pass, for the error analysis; "
        "'all': every source (our reading of the report's first pass; sources at or above the threshold always do).")
    select: Literal["most_diverse_consistent", "most_similar", "random"] = Field(
        "most_similar", description="Which candidate of a source enters training (sgid_utils/augment/selection.py). "
        "most_similar: our automatic reading of the report's hand pick ('select the best image out of the 3'; "
        "its Figure 4 shows the image-image cosine rising); most_diverse_consistent: a hypothesis of this package; "
        "random: a control.")
    min_similarity: float | None = Field(
        None, ge=-1, le=1, description="most_diverse_consistent's similarity floor; None: the median similarity of the "
        "competing candidates (the better half).")
    batch_size: int = Field(64, ge=1)


class FiltersParams(Section):
    """Quality control of generated images (beyond the paper): filters applied before the selection (read by curate;
    the params section was called ``quality`` before, and the filter ``source_similarity`` was ``similarity``, with its
    keys: the old names still load)."""

    apply: list[Literal["source_similarity", "label", "detector"]] = Field(
        default_factory=list, description="Filters in the order they apply; the filtered set trains as 'sgid_filtered'."
    )
    source_similarity_threshold: float | None = Field(
        None, ge=-1, le=1, description="None: the source_similarity_quantile of the observed source similarities.")
    source_similarity_quantile: float = Field(0.05, ge=0, lt=1)
    class_noun: str | None = Field(None, description="Label prompts read 'a photo of a <label>, a type of <noun>.'")
    detector_drop_fraction: float = Field(0.1, ge=0, lt=1,
                                          description="Share of the most surely fake candidates the detector drops.")
    detector_folds: int = Field(5, ge=2)

    @field_validator("apply")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"each filter may appear once; got {v}")
        return v


class AblationParams(Section):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$",
                      description="Names the variant's run directory <run.dir>-<name>.")
    label: str | None = Field(None, description="How the variant reads in tables and plots, e.g. 'SGID + "
                              "ControlNet (strength 0.5)'; default: its name.")
    set: dict[str, Any] = Field(description="Params overrides, dotted keys as with --set, e.g. "
                                "generation.prompt: label_only.")


class SmokeParams(Section):
    """Offline smoke profile: build tiny random models and a small image folder first."""

    build_models: bool = False
    build_dataset: bool = False
    classes: list[str] = Field(default_factory=lambda: ["great_pyrenees", "Maine_Coon", "pink primrose"])
    images_per_class: int = Field(6, ge=2)
    tiny_backbones: dict[str, str] = Field(
        default_factory=dict, description="training.backbones name -> the timm model it stands in for; a tiny random "
        "version is built into that backbone's local-dir folder (e.g. resnet50_scratch: resnet50).")


class Params(Section):
    run: RunParams
    dataset: DatasetParams
    models: ModelParams = Field(default_factory=ModelParams)
    captioning: CaptioningParams = Field(default_factory=CaptioningParams)
    similarity: SimilarityParams = Field(default_factory=SimilarityParams)
    generation: GenerationParams = Field(default_factory=GenerationParams)
    curation: CurationParams = Field(default_factory=CurationParams)
    filters: FiltersParams = Field(default_factory=FiltersParams)
    real_guidance: RealGuidanceParams = Field(default_factory=RealGuidanceParams)
    da_fusion: DaFusionParams = Field(default_factory=DaFusionParams)
    training: TrainingParams = Field(default_factory=TrainingParams)
    references: ReferencesParams = Field(default_factory=ReferencesParams)
    smoke: SmokeParams = Field(default_factory=SmokeParams)
    ablations: list[AblationParams] = Field(default_factory=list, description="Variants run by 'run ablations'.")

    source_file: Path | None = Field(None, exclude=True, description="The params file this was read from.")

    @model_validator(mode="after")
    def _backbone_names(self) -> Params:
        names = [b.name for b in self.training.backbones]
        labels = [b.label or b.name for b in self.training.backbones]
        if len(set(labels)) != len(labels):
            raise ValueError("training.backbones labels must differ (tables and figures are split by them); "
                             f"got {labels}")
        named = [r.backbone for r in self.references.tables if r.backbone is not None]
        named += list(self.references.headline.gains) if self.references.headline else []
        unknown = sorted(set(named) - set(names))
        if unknown:
            raise ValueError(f"references names backbone(s) {unknown} that training.backbones does not list "
                             f"(has {names})")
        for b in self.training.backbones:
            epochs = b.epochs if b.epochs is not None else self.training.epochs
            if b.warmup_epochs > epochs:
                raise ValueError(f"training.backbones '{b.name}': warmup_epochs {b.warmup_epochs:g} is longer than its "
                                 f"{epochs} epochs (the learning rate would never reach lr); shorten the warm-up")
        unknown = sorted(set(self.smoke.tiny_backbones) - set(names))
        if unknown:
            raise ValueError(f"smoke.tiny_backbones names backbone(s) {unknown} that training.backbones does "
                             f"not list (has {names})")
        return self

    @model_validator(mode="after")
    def _filtered_needs_filters(self) -> Params:
        for method in ("sgid_filtered", "sgid_size_matched"):
            if method in self.training.methods and not self.filters.apply:
                raise ValueError(f"training.methods lists {method} but filters.apply is empty: name at "
                                 "least one filter")
        return self
