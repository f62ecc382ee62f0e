"""The params of the training stage and of each listed backbone: ``training`` and ``training.backbones``.

Part of the params schema (``sgid_utils.params.schema.Params`` composes ``TrainingParams``); where each default comes
from is recorded in ``sgid_utils.params.sources``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from sgid_utils.params.references import Section

# What a listed backbone leaves unset comes from training.* (a BackboneParams field of the same name).
INHERITED = ("lr", "epochs", "batch_size", "image_size", "eval_every")


class BackboneParams(Section):
    """One classifier and its training recipe (resolved by sgid_utils.params.backbones); unset recipe fields
    take training.*'s values.

    Preprocessing (input size, mean, std) is not set here: it comes from the model's timm pretrained config.
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_]*$",
                      description="Id in training run names and tables, e.g. resnet50_scratch.")
    label: str | None = Field(None, description="Name in tables and figures; defaults to name.")
    model: str = Field(description="timm model name (e.g. resnet50, vit_base_patch16_clip_224.laion2b) or "
                       "'local-dir:FOLDER'.")
    pretrained: bool = Field(True, description="false: random initial weights (the model's config only; no "
                             "weights are loaded).")
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float | None = Field(None, gt=0, description="Peak learning rate; None: training.lr.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (sgd only).")
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="Per-step learning-rate schedule after warm-up."
    )
    warmup_epochs: float = Field(0, ge=0, description="Linear warm-up from 0 to lr over this many epochs.")
    epochs: int | None = Field(None, ge=1, description="None: training.epochs.")
    batch_size: int | None = Field(None, ge=1, description="None: training.batch_size.")
    eval_every: int | None = Field(None, ge=1,
                                   description="Test every N epochs (and after the last); None: training.eval_every.")
    image_size: int | None = Field(None, ge=8,
                                   description="None: training.image_size, else the model's pretrained input size.")
    source: str = Field("", description="Where the recipe comes from (shown in the docs and on the run's report page).")


class TrainingParams(Section):
    methods: list[
        Literal["baseline", "cutmix", "randaugment", "sgid", "sgid_filtered", "sgid_size_matched", "sgid_cutmix",
                "sgid_randaugment", "real_guidance", "real_guidance_recipe", "da_fusion", "da_fusion_recipe"]
    ] = Field(default_factory=lambda: ["baseline", "cutmix", "randaugment", "sgid"], min_length=1)
    sgid_proportions: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    filtered_proportions: list[float] = Field(default_factory=lambda: [1.0],
                                              description="Proportions for sgid_filtered and sgid_size_matched.")
    combined_proportions: list[float] = Field(
        default_factory=lambda: [1.0],
        description="Proportions for sgid_cutmix and sgid_randaugment (SGID's images + the augmentation).")
    method_proportions: list[float] = Field(
        default_factory=lambda: [1.0], description="Proportions for the other generative augmentations "
        "(config.methods: real_guidance, da_fusion): 1.0 adds one synthetic image per real image, as SGID at 100 %.")
    backbones: list[BackboneParams] = Field(
        default_factory=list, description="Classifiers to train, each with its recipe; empty: models.classifier with "
        "training.* (ViT-B/16 with Adam at a constant lr 1e-4, which the report gives; epochs and batch size are this "
        "package's choice).")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    epochs: int = Field(10, ge=1, description="This package's choice: the report does not give the number of epochs.")
    batch_size: int = Field(32, ge=1, description="This package's choice: the report does not give the batch size.")
    eval_batch_size: int = Field(128, ge=1)
    eval_every: int = Field(1, ge=1,
                            description="Evaluate on the test split every N epochs (and always after the last).")
    lr: float = Field(1e-4, gt=0, description="Adam's learning rate, constant (`training.lr`: the report's 'a constant "
                                             "learning rate of 0.0001').")
    image_size: int | None = Field(None, ge=8, description="Defaults to the classifier's pretrained input size.")
    cutmix_alpha: float = Field(1.0, gt=0)
    cutmix_prob: float = Field(0.5, ge=0, le=1)
    randaugment_num_ops: int = Field(2, ge=0)
    randaugment_magnitude: int = Field(9, ge=0, le=30)
    num_workers: int = Field(2, ge=0)
    jobs: int = Field(1, ge=1, description="Configurations (method x proportion x seed) trained at once, each in its "
                      "own process on the same device: speed only, each seeds itself, so the results are those of "
                      "one at a time. A ViT-B/16 at batch 32 leaves most of a large GPU idle; each job needs its own "
                      "memory (3.5 GiB on an H200).")
    amp: bool = Field(True, description="Mixed precision on CUDA (ignored on the CPU).")
    equal_steps: bool = Field(False, description="true: every method trains for its backbone's Baseline number of "
                              "optimisation steps (ceil(n_real / batch_size) * epochs), so a larger SGID set sees "
                              "fewer epochs (the last one partial) and the schedule shape (warm-up, cosine) spans "
                              "those steps; false: every method trains for the same number of epochs.")
    deterministic: bool = Field(False, description="true: training on a GPU uses only deterministic kernels "
                                "(torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG, cuDNN deterministic, "
                                "no cuDNN benchmark), so a rerun on the same GPU and software reproduces the training "
                                "files; false: the same accuracies within seed noise. The CPU is deterministic "
                                "either way.")

    @field_validator("sgid_proportions", "filtered_proportions", "combined_proportions", "method_proportions")
    @classmethod
    def _props(cls, v: list[float]) -> list[float]:
        for p in v:
            if not 0 <= p <= 1:
                raise ValueError(f"every SGID proportion must lie in [0, 1]; got {p}")
        return v

    @field_validator("backbones")
    @classmethod
    def _distinct_backbones(cls, v: list[BackboneParams]) -> list[BackboneParams]:
        names = [b.name for b in v]
        if len(set(names)) != len(names):
            raise ValueError(f"each backbone name may appear once; got {names}")
        return v
