"""Which backbones and training configurations a run's params ask for, and the names their results carry.

The training stage, the results and ablation tables, the report page, the preflight projection and the
benchmarks all need the same answers: each backbone with its recipe resolved (``training.*`` filling what a
listed backbone leaves unset), the methods and their groups (generative or not, CutMix, RandAugment,
combined), and every (backbone, method, proportion, seed) as a ``TrainConfig`` with its run and row names.
They are derived from the params alone, so they live here rather than in the training stage.
"""

from __future__ import annotations

from dataclasses import dataclass

from sgid_utils.params.methods import AUGMENTATIONS, BY_METHOD
from sgid_utils.params.schema import Params
from sgid_utils.params.training import INHERITED, BackboneParams

METHOD_NAMES = {"baseline": "Baseline", "cutmix": "CutMix", "randaugment": "RandAugment", "sgid": "SGID",
                "sgid_filtered": "SGID filtered", "sgid_size_matched": "SGID size-matched",
                "sgid_cutmix": "SGID + CutMix", "sgid_randaugment": "SGID + RandAugment",
                **{a.method: a.label for a in AUGMENTATIONS}}
NON_GENERATIVE = ("baseline", "cutmix", "randaugment")
GENERATIVE = ("sgid", "sgid_filtered", "sgid_size_matched", "sgid_cutmix", "sgid_randaugment",
              *(a.method for a in AUGMENTATIONS if a.method != "sgid"))
CUTMIX = ("cutmix", "sgid_cutmix")  # CutMix on every training batch (with its probability)
RANDAUGMENT = ("randaugment", "sgid_randaugment")  # RandAugment on every training image, generated ones included
COMBINED = ("sgid_cutmix", "sgid_randaugment")
_TAGS = {"sgid_filtered": "sgidf", "sgid_size_matched": "sgidsm", "sgid_cutmix": "sgidcm", "sgid_randaugment": "sgidra",
         **{a.method: a.tag for a in AUGMENTATIONS}}


def backbones(params: Params) -> list[BackboneParams]:
    """The backbones to train, each with its recipe resolved (``training.*`` fills what it leaves unset).

    None listed: the one implicit backbone, ``models.classifier`` with ``training.*`` (Adam at a constant 1e-4 as the
    report gives; epochs and batch size this package's), named "" so that its runs keep their unprefixed names
    (``baseline_seed0``).
    """
    t = params.training
    listed = t.backbones or [BackboneParams.model_construct(
        name="", model=params.models.classifier,
        source="this params file's training.* (where each default comes from: the settings table)")]
    return [b.model_copy(update={"label": b.label or b.name or b.model,
                                 **{k: getattr(t, k) for k in INHERITED if getattr(b, k) is None}}) for b in listed]


def recipe(bb: BackboneParams) -> str:
    """One line for tables, the report page and the notebooks: 'ResNet-50 (from scratch): sgd lr 0.05 cosine, ...'."""
    warmup = f" (warm-up {bb.warmup_epochs:g} epochs)" if bb.warmup_epochs else ""
    return (f"{bb.label}: {'pretrained' if bb.pretrained else 'from scratch'}, {bb.optimizer} lr {bb.lr:g} "
            f"{bb.schedule}{warmup}, {bb.epochs} epochs, batch size {bb.batch_size}")


def backbone(params: Params, name: str) -> BackboneParams:
    return next(b for b in backbones(params) if b.name == name)


@dataclass(frozen=True)
class TrainConfig:
    method: str
    seed: int
    proportion: float | None = None
    backbone: str = ""

    @property
    def setting(self) -> str:
        """Row name in a backbone's results table: 'Baseline', 'SGID (25%)', 'SGID + CutMix (100%)', ..."""
        name = METHOD_NAMES[self.method]
        return f"{name} ({self.proportion:.0%})" if self.method in GENERATIVE and self.proportion is not None else name

    @property
    def name(self) -> str:
        prefix = _TAGS.get(self.method)
        tag = f"{prefix}{round(self.proportion * 100):03d}" if prefix and self.proportion is not None else (
            prefix or self.method)
        return f"{self.backbone}-{tag}_seed{self.seed}" if self.backbone else f"{tag}_seed{self.seed}"


def configs(params: Params) -> list[TrainConfig]:
    """Every (backbone, method, proportion, seed) the params ask for, backbone by backbone."""
    t = params.training
    out = []
    proportions = {"sgid": t.sgid_proportions, "sgid_filtered": t.filtered_proportions,
                   "sgid_size_matched": t.filtered_proportions,
                   "sgid_cutmix": t.combined_proportions, "sgid_randaugment": t.combined_proportions,
                   **{m: getattr(t, a.proportions) if a.proportions else [None] for m, a in BY_METHOD.items()
                      if m != "sgid"}}
    for bb in backbones(params):
        for method in t.methods:
            for proportion in proportions.get(method, [None]):
                out += [TrainConfig(method, seed, proportion, bb.name) for seed in t.seeds]
    return out
