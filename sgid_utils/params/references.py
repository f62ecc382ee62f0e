"""The params ``references`` section: the published numbers a run is set beside (reference tables, headline gains).

They are the paper's and the reproduction report's accuracies, not settings of the method: the results stage and the
report page print them next to this run's, and nothing computed depends on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class Section(BaseModel):
    """Every params section: an unknown key or a wrong type is an error, also when set after loading."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def containing(placeholder: str) -> AfterValidator:
    """A text field that must hold ``placeholder`` (a prompt's ``{label}``), checked as the params load (the error
    names the key)."""

    def check(text: str) -> str:
        if placeholder not in text:
            raise ValueError(f"must contain {placeholder}")
        return text

    return AfterValidator(check)


def _multiple_of_8(size: int) -> int:
    if size % 8:
        raise ValueError("must be a multiple of 8 (the VAE's downsampling factor)")
    return size


# A square canvas the Stable Diffusion VAE takes: a multiple of 8 pixels.
CanvasSize = Annotated[int, Field(ge=8), AfterValidator(_multiple_of_8)]



class ReferenceTable(Section):
    label: str
    source: str
    values: dict[str, float]
    backbone: str | None = Field(None, description="The training.backbones name these values belong to; "
                                 "None: the first backbone.")
    dataset: str | None = Field(None, description="The data set the numbers were measured on (a dataset.source: "
                                "pets, flowers); the paper's per-data-set gain is shown only when it is the run's.")
    assumed_backbone: str | None = Field(None, description="The backbone we assume the numbers are for, when the "
                                         "source names none (the report's tables name no backbone).")


class HeadlineGains(Section):
    """The abstract's gains of SGID over "the best augmentation baseline" (pool unstated), per backbone name.

    The abstract writes "1.72%"; reading it as accuracy points is ours, and whether it is a mean over the paper's
    data sets is not stated anywhere we can read.
    """

    label: str
    source: str
    gains: dict[str, float]


class ReferencesParams(Section):
    """Called ``results`` before (its list ``references``, now ``tables``): the old names still load."""

    tables: list[ReferenceTable] = Field(default_factory=list)
    headline: HeadlineGains | None = Field(None,
                                           description="Shown beside the per-backbone gain table (results stage).")
    grid_examples: int = Field(6, ge=1)
    gpu_rates: Path | None = Field(None, description="A `make gpu-report` JSON (reports/gpu/gpu_report.json, or the "
                                   "checked-in docs/gpu/*.json): the comparison projects each method's cost to the "
                                   "full data set on its GPU. None: the column says 'no GPU report'.")
