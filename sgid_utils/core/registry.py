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
  ``optional_reads``: files it reads when they exist, written by a later step (``run ablations``);
- ``keys``: the params keys its own outputs depend on; its fingerprint adds the
  upstream stages' keys (``core.fingerprints``). A stage without keys keeps no
  fingerprint: it is recomputed from its inputs every time it runs;
- ``folder``: where under the run directory it keeps its files (``core.rundir``);
  None for a stage that writes only report tables;
- ``unit``: what its time scales with (``Unit``): preflight's canary and projection count
  these items, a stage "once" is a fixed cost;
- ``version_key`` and ``code_version``: the params key whose code version names this stage's
  code, and that version (1 is recorded as nothing, as every run before versions existed).
  ``CODE_VERSIONS`` is derived from them; a bump reaches every stage holding the key and
  those downstream (``core.fingerprints``, ``core.code_hashes``).

To add a stage: write ``sgid_utils/stages/<name>.py`` with a ``run`` function (a per-item
stage only says how to process a batch, see ``core.resumable``), name the files it writes
in ``core.catalog`` (each path declared there once), add a line here with its reads, writes,
keys, folder and unit, and call ``run_stage("<name>", params)`` from its notebook. Preflight,
the ablation variants and the catalog tests derive the rest from this line.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

# The units a stage's time scales with; preflight.projection.Counts counts each for a full run.
Unit = Literal["once", "per training image", "per raw source", "per small source", "per class-step",
               "per synthetic image", "per image-epoch"]
# Units counted from the canary's own item records (the generation passes' sources), not from its data table.
RECORDED_UNITS = ("per raw source", "per small source")


@dataclass(frozen=True)
class Stage:
    name: str
    notebook: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    folder: str | None = None
    unit: Unit = "once"
    version_key: str | None = None
    code_version: int = 1
    optional_reads: tuple[str, ...] = ()  # read when present, written later (``run ablations``): no upstream

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
TRAINING = ("training_results", "metrics", "predictions")
# Code versions above 1 (bumped when a stage's code gives other outputs for the same params, so that a run dir keeps
# one version's files): data 2 (dataset): hyphens kept in class names; loose files and classes without test images
# listed. captioning 2 (captioning): nucleus sampling batched, each image's tokens drawn from its own seed
# (SeededNucleusSampler). upscaling 2 (curation.upscale_to): upscaled sizes rounded to the nearest multiple of 8, the
# target winning over max_side. training 2 (training): evaluation autocasts only when training does (training.amp).
# A bump of ``generation`` reaches both generation passes (they share augment/generation.py), one of
# ``curation.upscale_to`` the upscaled pass alone, one of the inversion's DA-Fusion's images too.
STAGES: tuple[Stage, ...] = (
    Stage("data", "01_captioning", (), ("images", "skipped"), ("dataset", "run.seed"), "data",
          version_key="dataset", code_version=2),
    # run.draw (the generation draw) reaches the captions' nucleus sampling, the candidates' seeds and curation's
    # random choices; the data and training stages do not read it (a second draw keeps the split and the training
    # seeds).
    # The captioning folder keeps the entry ``captions`` (captioning/captions.parquet); runs made before the stage
    # renames have it as captions/ (``OLD_FOLDERS``).
    Stage("captioning", "01_captioning", ("images",), ("captions",),
          ("models.captioner", "captioning", "run.draw"), "captioning", "per training image", "captioning", 2),
    Stage("similarity", "02_similarity", ("images", "captions"), ("scores", "best_captions"), ("models.clip",),
          "similarity", "per training image", "models.clip"),
    Stage("generation", "03_generation", ("images", "best_captions"), ("manifest_raw",),
          ("models.diffusion", "models.controlnet", "generation", "curation.upscale_threshold",
           "curation.error_analysis_sample", "run.draw"),
          "generation/raw", "per raw source", "generation"),
    # The upscaled regeneration does not depend on which small sources the raw pass sampled. Its folder is the
    # generation folder's upscaled pass (generation/upscaled), beside the raw pass's generation/raw.
    Stage("upscaling", "04_curation", ("images", "best_captions"), ("manifest_upscaled",),
          ("models.diffusion", "models.controlnet", "generation", "curation.upscale_threshold", "curation.upscale_to",
           "run.draw"),
          "generation/upscaled", "per small source", "curation.upscale_to", 2),
    # Real Guidance (config.methods): img2img from each real image with a class prompt; no captions, no selection.
    # The compared methods' stages are a fixed cost while training.methods does not train them (they skip).
    Stage("real_guidance", "03_generation", ("images",), ("real_guidance_images",),
          ("models.diffusion", "real_guidance", "run.draw"), "methods/real_guidance", "per training image",
          "real_guidance"),
    # DA-Fusion (config.methods): a textual-inversion token per class, then M img2img images per real image with it.
    Stage("inversion", "03_generation", ("images",), ("class_tokens",), INVERSION_KEYS, "methods/inversion",
          "per class-step", "da_fusion.inversion_steps"),
    Stage("da_fusion", "03_generation", ("images", "class_tokens"), ("da_fusion_images",), DA_FUSION_KEYS,
          "methods/da_fusion", "per synthetic image", "da_fusion.num_synthetic"),
    Stage("curation", "04_curation", ("images", *MANIFESTS),
          ("candidates", "curated", "curated_filtered", "filters_summary"), ("curation", "filters", "run.draw"),
          "curation", "per training image", "curation"),
    Stage("training", "05_training",
          ("images", "curated", "curated_filtered", "real_guidance_images", "da_fusion_images"), TRAINING,
          ("models.classifier", "training", "da_fusion.synthetic_probability"), "training",
          "per image-epoch", "training", 2),
    Stage("results", "06_results", ("curated", "training_results", "predictions"),
          ("significance", "accuracy", "accuracy_md", "significance_csv", "backbone_gains", "backbone_gains_md",
           "accuracy_by_method", "originals_vs_sgid", "gain_forest"), (), "results"),
    Stage("quality", "07_quality",
          ("images", "candidates", "curated", "curated_filtered", "training_results", "predictions"),
          ("set_metrics", "per_class_change", "consistency_vs_diversity"), optional_reads=("ablation_set_metrics",)),
    # Which augmentation: every generative method's gain beside its measured cost (the runner's provenance records).
    Stage("comparison", "08_comparison", ("images", "training_results", "predictions", "significance"),
          ("comparison", "comparison_md", "gain_vs_cost")),
)
BY_NAME = {stage.name: stage for stage in STAGES}
NAMES = [stage.name for stage in STAGES]
# Stages renamed since runs were made (old name -> new: a stage's name is its folder's, its params section's and its
# notebook's noun), the one table of old names: ``current`` reads them with a deprecation line. A run directory made
# before keeps its folders and provenance records under the names below; ``core.rundir`` reads them where only they
# exist.
RENAMED_STAGES = {"captions": "captioning", "generate": "generation", "upscale": "upscaling", "curate": "curation",
                  "train": "training", "compare": "comparison"}
OLD_FOLDERS = {"captioning": "captions"}  # per stage, its folder's old name (the other folders kept theirs)
# ``run ablations`` is no stage of the chain: it reruns the chain per variant and writes the ablation tables, from
# each variant's results and curated sets.
ABLATIONS_READ = ("training_results", "significance", "candidates", "curated", "curated_filtered")
ABLATIONS_WRITE = ("ablations", "ablations_md", "ablation_set_metrics")
# Per params key, its code version above 1; per stage with one, the key that names its code (``version_key``).
CODE_VERSIONS = {s.version_key: s.code_version for s in STAGES if s.version_key and s.code_version > 1}
CODE_VERSION_KEY = {s.name: s.version_key for s in STAGES if s.version_key}


def writer(name: str) -> str:
    """The stage that writes the catalog entry ``name`` ('ablations' for the ablation tables)."""
    for stage in STAGES:
        if name in stage.writes:
            return stage.name
    if name in ABLATIONS_WRITE:
        return "ablations"
    raise KeyError(f"no stage writes '{name}'")


def current(name: str) -> str:
    """A stage's name today: an old name (``RENAMED_STAGES``) gives its new one, with one deprecation line on stderr
    (the one place old names are read: the command line, ``run_stage`` and every lookup here go through it)."""
    if name in RENAMED_STAGES:
        print(f"[sgid] deprecated stage name '{name}': it is now '{RENAMED_STAGES[name]}' (the old name still runs; "
              "rename it)", file=sys.stderr)
        return RENAMED_STAGES[name]
    if name not in BY_NAME:
        raise KeyError(f"no stage '{name}'; the stages are {', '.join(NAMES)}")
    return name


def get(name: str) -> Stage:
    return BY_NAME[current(name)]


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
    return list(STAGES[NAMES.index(current(first)):NAMES.index(current(last)) + 1])


def ablation_stages() -> list[Stage]:
    """The stages an ablation variant runs itself: those that make what ``run ablations`` reads, in order, less the
    data stage, which the runner makes before any stage (``core.runner``)."""
    needed = {n for name in ABLATIONS_READ for n in upstream_closure(writer(name))}
    return [stage for stage in STAGES if stage.name in needed and stage.name != NAMES[0]]


def notebooks(first: str | None = None, last: str | None = None) -> list[str]:
    """The numbered notebooks of the stages from ``first`` to ``last`` (default: all), in order, once each."""
    chosen = between(first or NAMES[0], last or NAMES[-1])
    return list(dict.fromkeys(stage.notebook for stage in chosen))
