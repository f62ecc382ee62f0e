"""The run-directory map: the run's folders, its stages' own files, and the run as a whole.

Stages, notebooks, ablations and tests ask a ``RunDir`` (or, for a file one stage hands
to another or to the report, the catalog: ``core.catalog``, which declares those paths)
for a path and never join paths under ``run.dir`` or ``run.reports_dir`` themselves.
Layout (``<run>`` is ``run.dir``, ``<reports>`` is ``run.reports_dir``)::

    <run>/params.yaml                        the validated params of the last stage started
    <run>/provenance/<stage>.json            when, on what machine and with which versions each stage last started
    <run>/data/                              images.parquet, skipped.csv, files/ (hub images)
    <run>/captioning/                        items/<image>.json, captions.parquet
    <run>/similarity/                        items/, scores.parquet, best_captions.parquet
    <run>/generation/{raw,upscaled}/         items/, images/<image>_k<k>.png, manifest_<pass>.parquet,
                                             edges/<image>.png (generation.generator: controlnet)
    <run>/curation/                          scores_<pass>/, embeddings_<pass>/, candidates.parquet,
                                             curated[_filtered].parquet, filters_summary.json
    <run>/training/                          <config>/{checkpoint.pt,metrics.csv,predictions.parquet,result.json},
                                             training_results.parquet, _backbone-<name>.json (each listed
                                             backbone's recipe)
    <run>/results/                           significance.parquet
    <reports>/index.html                     the run's report page (``sgid_utils.reporting.page``)
    <reports>/tables/  <reports>/figures/  <reports>/notebooks/{NN_name.ipynb,NN_name.html}
    <reports>/ablations/<variant>/
    <reports>/preflight.md  <reports>/preflight/{run,reports}/   the preflight report and its canary's scratch run

Every stage folder with outputs holds ``_params.json``, the fingerprint of the params
that made it (``sgid_utils.core.fingerprints``). A damaged per-item file is kept beside its
place as ``<name>.damaged`` (``core.files.set_aside``) while its item is done again. A run made before the stage
and file renames (issue 29) is read and resumed in place, never migrated: its ``captions/`` folder and
``provenance/<old stage>.json`` records (``RunDir.stage``, ``RunDir.provenance``), and its old file names
(``catalog.Entry.old_file``), wherever only they exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from sgid_utils.core.registry import OLD_FOLDERS, RENAMED_STAGES, get
from sgid_utils.params.load import RUN_PARAMS_FILE
from sgid_utils.params.schema import Params

Pass = Literal["raw", "upscaled"]


def kept(folder: Path, name: str, *old: str) -> Path:
    """``folder/name``, or ``folder/<an old name>`` where only that exists (a file, a folder or a link to one).

    Runs made before a rename are read in place, never migrated: a run's stage folder may be a link into another
    run (``run.reuse``, an ablation variant's base), which a migration of either one would break. A resumed old
    run goes on writing under its old names; a new run, or a run that links an old one's folder, uses the new."""
    for candidate in (name, *old):
        if (folder / candidate).exists() or (folder / candidate).is_symlink():
            return folder / candidate
    return folder / name


@dataclass(frozen=True)
class RunDir:
    root: Path
    reports: Path
    PARAMS_FILE: ClassVar[str] = RUN_PARAMS_FILE  # what ``--run-dir`` alone reads (``params.load.load_run_params``)

    @classmethod
    def of(cls, params: Params) -> RunDir:
        return cls(Path(params.run.dir), Path(params.run.reports_dir))

    # --- the run as a whole ---------------------------------------------------------------------------------------
    @property
    def params_copy(self) -> Path:
        return self.root / self.PARAMS_FILE

    @property
    def assets_lock(self) -> Path:
        """Held while the smoke profile's tiny models and image folder are built (one process builds, others wait)."""
        return self.root / ".smoke-assets.lock"

    def provenance(self, stage: str) -> Path:
        """The record the runner writes as a stage starts (``sgid_utils.core.provenance``); a run made before the
        stage renames keeps its record under the old name (``kept``)."""
        name = get(stage).name
        old = [f"{old}.json" for old, new in RENAMED_STAGES.items() if new == name]
        return kept(self.root / "provenance", f"{name}.json", *old)

    def stage(self, name: str) -> Path:
        """The folder a registered stage writes (its ``folder`` in the registry; KeyError for a stage without one);
        a run made before the stage renames keeps the old folder (``OLD_FOLDERS``, ``kept``)."""
        stage = get(name)
        if stage.folder is None:
            raise KeyError(f"stage '{name}' keeps no folder in the run directory; it writes report tables only")
        return kept(self.root, stage.folder, *[OLD_FOLDERS[stage.name]] if stage.name in OLD_FOLDERS else [])

    def relative(self, path: Path | str) -> str:
        """A path inside the run directory as stored in records and tables: relative, so the run dir can move."""
        return str(Path(path).relative_to(self.root))

    def absolute(self, stored: str) -> Path:
        """A stored (relative) path back inside this run directory."""
        return self.root / stored

    def fingerprint_file(self, stage: str) -> Path:
        return self.stage(stage) / "_params.json"

    def items(self, stage: str) -> Path:
        """One JSON record per finished item of a per-item stage."""
        return self.stage(stage) / "items"

    def variant_root(self, name: str) -> Path:
        """An ablation variant's own run directory, beside this one."""
        return Path(f"{self.root}-{name}")

    # --- a stage's own files (those it hands on are the catalog's: ``core.catalog``) --------------------------------
    def data_file(self, image_id: str, extension: str) -> Path:
        """Where an image that came as bytes (a hub data set) is written."""
        return self.stage("data") / "files" / f"{image_id}.{extension}"

    # --- generation -----------------------------------------------------------------------------------------------
    @staticmethod
    def generation_stage(generation_pass: Pass) -> str:
        return "generation" if generation_pass == "raw" else "upscaling"

    def generated_image(self, generation_pass: Pass, image_id: str, k: int) -> Path:
        return self.stage(self.generation_stage(generation_pass)) / "images" / f"{image_id}_k{k}.png"

    def edge_map(self, generation_pass: Pass, image_id: str) -> Path:
        """The Canny edge map a ControlNet candidate was conditioned on, at the model-input size."""
        return self.stage(self.generation_stage(generation_pass)) / "edges" / f"{image_id}.png"

    # --- curation -------------------------------------------------------------------------------------------------
    def candidate_scores(self, generation_pass: Pass) -> Path:
        """Per-source records of the CLIP similarity of each candidate to its source."""
        return self.stage("curation") / f"scores_{generation_pass}"

    def embeddings(self, generation_pass: Pass, image_id: str) -> Path:
        return self.stage("curation") / f"embeddings_{generation_pass}" / f"{image_id}.npz"

    # --- the other generative augmentations (config.methods) ----------------------------------------------------
    def real_guidance_image(self, image_id: str, m: int = 0) -> Path:
        """The m-th image of a real image (its recipe's M; the first keeps the name it always had)."""
        return self.stage("real_guidance") / "images" / (f"{image_id}.png" if m == 0 else f"{image_id}_{m}.png")

    def class_token(self, label: int) -> Path:
        """DA-Fusion's learned token of one class: ``{token: embedding}`` (safetensors), as load_textual_inversion
        reads it. Named by the class's item (its label), like the record beside it."""
        return self.stage("inversion") / "tokens" / f"{label}.safetensors"

    def da_fusion_image(self, image_id: str, m: int) -> Path:
        return self.stage("da_fusion") / "images" / f"{image_id}_m{m}.png"

    # --- training -------------------------------------------------------------------------------------------------
    def config_dir(self, config: str) -> Path:
        """One training configuration's folder, e.g. ``training/sgid100_seed0``."""
        return self.stage("training") / config

    def backbone_fingerprint(self, backbone: str) -> Path:
        """A listed backbone's recipe, recorded beside its runs (``fingerprints.backbone_fingerprint``)."""
        return self.stage("training") / f"_backbone-{backbone}.json"

    def result(self, config: str) -> Path:
        return self.config_dir(config) / "result.json"

    def checkpoint(self, config: str) -> Path:
        return self.config_dir(config) / "checkpoint.pt"

    # --- reports --------------------------------------------------------------------------------------------------
    @property
    def tables(self) -> Path:
        return self.reports / "tables"

    @property
    def figures(self) -> Path:
        return self.reports / "figures"

    @property
    def notebooks(self) -> Path:
        """Executed copies of the numbered notebooks."""
        return self.reports / "notebooks"

    def executed_notebook(self, name: str) -> Path:
        return self.notebooks / f"{name}.ipynb"

    def notebook_html(self, name: str) -> Path:
        """An executed notebook rendered as HTML beside it, for the report page to link."""
        return self.notebooks / f"{name}.html"

    @property
    def report_page(self) -> Path:
        """The run's one HTML page (tables, figures, links to the rendered notebooks)."""
        return self.reports / "index.html"

    def variant_reports(self, name: str) -> Path:
        return self.reports / "ablations" / name

    # --- preflight ------------------------------------------------------------------------------------------------
    @property
    def preflight_report(self) -> Path:
        return self.reports / "preflight.md"

    @property
    def canary(self) -> RunDir:
        """The preflight canary's scratch run: under the reports, never inside the user's run directory."""
        return RunDir(self.reports / "preflight" / "run", self.reports / "preflight" / "reports")

    def files(self, stage: str) -> list[Path]:
        """Every file a stage folder holds (empty when it has none yet)."""
        folder = self.stage(stage)
        return [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
