"""The stage registry: every stage of the SGID chain declared once, in the order it runs.

The command line (``run STAGE``, ``run all``, ``stages``), the papermill runner and
``make reproduce`` (which ask ``python -m sgid_utils stages``), ablations, the
fingerprint chain and the tests all read this list. Each stage names:

- ``entry``: its function as ``"module:function"`` in ``sgid_utils``, the way Python
  entry points name code. A string, so that stage modules can import this registry
  (for their fingerprints) without an import cycle; ``Stage.function`` resolves it.
  Every function but the data stage's takes ``(params, images)``: the params and the
  data stage's table, which the runner makes first (``data:prepare_dataset`` takes the params).
- ``notebook``: the numbered notebook that narrates it.
- ``upstream``: the stages whose outputs it reads.
- ``keys``: the params keys its own outputs depend on; its fingerprint adds the
  upstream stages' keys (``sgid_utils.fingerprints``). A stage without keys keeps no
  fingerprint: it is recomputed from its inputs every time it runs.
- ``folder``: where under the run directory it keeps its files (``sgid_utils.rundir``
  gives every file in it a name); None for a stage that writes only report tables.

To add a stage: write its function (a per-item stage only says how to process a batch,
see ``sgid_utils.resumable``), add a line here, give its files properties in
``sgid_utils.rundir``, and call ``run_stage("name", params)`` from its notebook.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    name: str
    entry: str
    notebook: str
    upstream: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    folder: str | None = None

    @property
    def function(self) -> Callable[..., Any]:
        module, function = self.entry.split(":")
        return getattr(importlib.import_module(f"sgid_utils.{module}"), function)


STAGES: tuple[Stage, ...] = (
    Stage("data", "data:prepare_dataset", "01_captioning", (), ("dataset", "run.seed"), "data"),
    # run.draw (the generation draw) reaches the captions' nucleus sampling, the candidates' seeds and curation's
    # random choices; the data and train stages do not read it (a second draw keeps the split and the training seeds).
    Stage("captions", "captioning:run_captions", "01_captioning", ("data",),
          ("models.captioner", "captioning", "run.draw"), "captions"),
    Stage("similarity", "similarity:run_similarity", "02_similarity", ("captions",), ("models.clip",), "similarity"),
    Stage("generate", "generation:run_generation", "03_generation", ("similarity",),
          ("models.diffusion", "models.controlnet", "generation", "curation.upscale_threshold",
           "curation.error_analysis_sample", "run.draw"),
          "generation/raw"),
    # The upscaled regeneration does not depend on which small sources the raw pass sampled.
    Stage("upscale", "generation:run_upscaled", "04_error_analysis_upscaling", ("similarity",),
          ("models.diffusion", "models.controlnet", "generation", "curation.upscale_threshold", "curation.upscale_to",
           "run.draw"),
          "generation/upscaled"),
    Stage("curate", "curation:run_curation", "04_error_analysis_upscaling", ("generate", "upscale"),
          ("curation", "quality", "run.draw"), "curation"),
    Stage("train", "training:run_training", "05_training", ("curate",), ("models.classifier", "training"), "training"),
    Stage("results", "results:run_results", "06_results", ("train",), (), "results"),
    Stage("quality", "quality_report:run_quality_report", "07_quality_and_statistics", ("results",)),
)
BY_NAME = {stage.name: stage for stage in STAGES}
NAMES = [stage.name for stage in STAGES]


def get(name: str) -> Stage:
    if name not in BY_NAME:
        raise KeyError(f"no stage '{name}'; the stages are {', '.join(NAMES)}")
    return BY_NAME[name]


def upstream_closure(name: str) -> list[str]:
    """The stage and every stage it depends on, directly or not, in registry order."""
    wanted, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current not in wanted:
            wanted.add(current)
            todo += get(current).upstream
    return [n for n in NAMES if n in wanted]


def between(first: str, last: str) -> list[Stage]:
    """The stages from ``first`` to ``last`` inclusive, in order."""
    return list(STAGES[NAMES.index(first):NAMES.index(last) + 1])


def notebooks(first: str | None = None, last: str | None = None) -> list[str]:
    """The numbered notebooks of the stages from ``first`` to ``last`` (default: all), in order, once each."""
    chosen = between(first or NAMES[0], last or NAMES[-1])
    return list(dict.fromkeys(stage.notebook for stage in chosen))
