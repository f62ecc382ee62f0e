"""The stage registry: every stage of the SGID chain declared once, in the order it runs.

The command line (``run STAGE``, ``run all``, ``stages``), the papermill runner and
``make reproduce`` (which ask ``python -m sgid_utils stages``), ablations, the
fingerprint chain and the tests all read this list. Each stage names:

- its code: the module ``sgid_utils.stages.<name>`` and its function ``run(params, images)``,
  which gets the params and the data stage's table (the runner makes it first; the data
  stage's own ``run`` takes the params alone);
- ``notebook``: the numbered notebook that narrates it;
- ``reads`` and ``writes``: the files it takes from earlier stages and hands on, by their
  names in the data catalog (``core.catalog``); ``upstream`` is derived from them;
- ``keys``: the params keys its own outputs depend on; its fingerprint adds the
  upstream stages' keys (``core.fingerprints``). A stage without keys keeps no
  fingerprint: it is recomputed from its inputs every time it runs;
- ``folder``: where under the run directory it keeps its files (``core.rundir``);
  None for a stage that writes only report tables.

To add a stage: write ``sgid_utils/stages/<name>.py`` with a ``run`` function (a per-item
stage only says how to process a batch, see ``core.resumable``), name the files it writes
in ``core.catalog`` (their paths in ``core.rundir``), add a line here, and call
``run_stage("<name>", params)`` from its notebook.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    name: str
    notebook: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    folder: str | None = None

    @property
    def function(self) -> Callable[..., Any]:
        """``run`` of ``sgid_utils.stages.<name>``, imported when the stage runs (not when the registry is read)."""
        return importlib.import_module(f"sgid_utils.stages.{self.name}").run

    @property
    def upstream(self) -> tuple[str, ...]:
        """The stages that write what this one reads, less those reached through another of them."""
        direct = [writer(name) for name in self.reads]
        reached = {n for d in direct for n in upstream_closure(d) if n != d}
        return tuple(n for n in NAMES if n in direct and n not in reached)


MANIFESTS = ("manifest_raw", "manifest_upscaled")
# DA-Fusion's settings by the stage they change (p, the replacement probability, changes only training).
INVERSION_KEYS = ("models.diffusion", "da_fusion.initializer_token", "da_fusion.inversion_steps",
                  "da_fusion.inversion_batch_size", "da_fusion.inversion_lr", "da_fusion.scale_lr",
                  "da_fusion.inversion_weight_decay", "da_fusion.flip_p", "da_fusion.resolution", "run.draw")
DA_FUSION_KEYS = (*INVERSION_KEYS, "da_fusion.prompt", "da_fusion.guidance_scale", "da_fusion.strengths",
                  "da_fusion.num_synthetic", "da_fusion.num_inference_steps")
TRAINING = ("training_results", "history", "predictions")
STAGES: tuple[Stage, ...] = (
    Stage("data", "01_captioning", (), ("images", "skipped"), ("dataset", "run.seed"), "data"),
    # run.draw (the generation draw) reaches the captions' nucleus sampling, the candidates' seeds and curation's
    # random choices; the data and train stages do not read it (a second draw keeps the split and the training seeds).
    Stage("captions", "01_captioning", ("images",), ("captions",),
          ("models.captioner", "captioning", "run.draw"), "captions"),
    Stage("similarity", "02_similarity", ("images", "captions"), ("scores", "best_captions"), ("models.clip",),
          "similarity"),
    Stage("generate", "03_generation", ("images", "best_captions"), ("manifest_raw",),
          ("models.diffusion", "models.controlnet", "generation", "curation.upscale_threshold",
           "curation.error_analysis_sample", "run.draw"),
          "generation/raw"),
    # The upscaled regeneration does not depend on which small sources the raw pass sampled.
    Stage("upscale", "04_error_analysis_upscaling", ("images", "best_captions"), ("manifest_upscaled",),
          ("models.diffusion", "models.controlnet", "generation", "curation.upscale_threshold", "curation.upscale_to",
           "run.draw"),
          "generation/upscaled"),
    # Real Guidance (config.methods): img2img from each real image with a class prompt; no captions, no selection.
    Stage("real_guidance", "03_generation", ("images",), ("real_guidance_images",),
          ("models.diffusion", "real_guidance", "run.draw"), "methods/real_guidance"),
    # DA-Fusion (config.methods): a textual-inversion token per class, then M img2img images per real image with it.
    Stage("inversion", "03_generation", ("images",), ("class_tokens",), INVERSION_KEYS, "methods/inversion"),
    Stage("da_fusion", "03_generation", ("images", "class_tokens"), ("da_fusion_images",), DA_FUSION_KEYS,
          "methods/da_fusion"),
    Stage("curate", "04_error_analysis_upscaling", ("images", *MANIFESTS),
          ("candidates", "curated", "curated_filtered", "quality_summary"), ("curation", "quality", "run.draw"),
          "curation"),
    Stage("train", "05_training", ("images", "curated", "curated_filtered", "real_guidance_images", "da_fusion_images"),
          TRAINING,
          ("models.classifier", "training", "da_fusion.synthetic_probability"), "training"),
    Stage("results", "06_results", ("curated", "training_results", "predictions"),
          ("significance", "accuracy", "accuracy_md", "significance_csv", "backbone_gains", "backbone_gains_md",
           "accuracy_figure", "originals_figure", "gain_forest_figure"), (), "results"),
    Stage("quality", "07_quality_and_statistics",
          ("images", "candidates", "curated", "curated_filtered", "training_results", "predictions"),
          ("set_metrics", "class_changes", "consistency_figure")),
    # Which augmentation: every generative method's gain beside its measured cost (the runner's provenance records).
    Stage("compare", "08_methods", ("training_results", "significance"),
          ("comparison", "comparison_md", "comparison_figure")),
)
BY_NAME = {stage.name: stage for stage in STAGES}
NAMES = [stage.name for stage in STAGES]
# ``run ablations`` is no stage of the chain: it reruns the chain per variant and writes the ablation tables.
ABLATIONS_READ = ("training_results", "significance")
ABLATIONS_WRITE = ("ablations", "ablations_md", "ablation_set_metrics")


def writer(name: str) -> str:
    """The stage that writes the catalog entry ``name`` ('ablations' for the ablation tables)."""
    for stage in STAGES:
        if name in stage.writes:
            return stage.name
    if name in ABLATIONS_WRITE:
        return "ablations"
    raise KeyError(f"no stage writes '{name}'")


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
