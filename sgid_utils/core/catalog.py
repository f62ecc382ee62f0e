"""The data catalog: every file a stage hands to another stage, or to the report, by name.

A stage reads and writes these files only through ``load(params, name)`` and
``save(params, name, obj)``, which dispatch on the file's kind (parquet or csv
table, markdown table, JSON, PNG figure). The registry (``core.registry``) lists
the names each stage reads and writes; the stages' upstream is derived from those
lists, and ``python -m sgid_utils stages --files`` prints them with their paths.
Each entry declares its file's path once: the folder it lives under (its stage's folder
in the run directory, from the registry, or the reports' tables or figures) and its name
there; ``core.rundir`` keeps only what belongs to the run as a whole. Moving a file is a
one-line change here (old run directories then need an ``upgrade`` or a migration).

``load`` is also the one place where a file that cannot be read (truncated or
garbled by a disk fault or a Drive sync, never by our own writes, which are
atomic) becomes a clear error naming the file, the stage that wrote it and what to
delete to redo it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from sgid_utils.core.files import read_json, read_table, write_figure, write_json, write_table
from sgid_utils.core.registry import ABLATIONS_READ, ABLATIONS_WRITE, STAGES, writer
from sgid_utils.core.rundir import RunDir, kept
from sgid_utils.errors import CorruptFileError
from sgid_utils.params.load import RENAMED_VALUES
from sgid_utils.params.schema import Params


def _with_first_m(table: pd.DataFrame) -> pd.DataFrame:
    """Real Guidance's images before its recipe existed: one per real image, the first (m = 0)."""
    return table if "m" in table.columns else table.assign(m=0)


def _with_backbone(table: pd.DataFrame) -> pd.DataFrame:
    """A table written before backbones existed: its rows are the one implicit backbone, named ""."""
    return table if "backbone" in table else table.assign(backbone="")


def renamed_column(table: pd.DataFrame, old: str, new: str) -> pd.DataFrame:
    """A table (or its per-item records) written when column ``new`` was called ``old``: renamed in place; records
    of both ages (a stage resumed across the rename) merge into the one column."""
    if old not in table:
        return table
    if new in table:
        return table.assign(**{new: table[new].fillna(table[old])}).drop(columns=old)
    return table.rename(columns={old: new})


def with_pass_column(table: pd.DataFrame) -> pd.DataFrame:
    """A generation table written when the pass column was called ``variant`` (now only an ablation variant)."""
    return renamed_column(table, "variant", "generation_pass")


# The filters renamed since runs were made (``params.load.RENAMED_VALUES``: ``similarity`` -> ``source_similarity``),
# and the names made from a filter's: its verdict column, its threshold in the filters summary.
_FILTER_NAMES = RENAMED_VALUES["filters.apply"]
_FILTER_FIELDS = {field.format(old): field.format(new) for old, new in _FILTER_NAMES.items()
                  for field in ("kept_by_{}", "{}_threshold")}


def with_filter_names(data: pd.DataFrame | dict) -> pd.DataFrame | dict:
    """A curation table (``dropped_by``, ``kept_by_<filter>``) or filters summary (``filters``,
    ``<filter>_threshold``) written before a filter's rename, under today's filter names. The candidates' score column
    ``similarity`` (the cosine to the source) keeps its name."""
    if isinstance(data, dict):
        return {_FILTER_FIELDS.get(k, k): [_FILTER_NAMES.get(f, f) for f in v] if k == "filters" else v
                for k, v in data.items()}
    table = data.rename(columns=_FILTER_FIELDS)
    return table.assign(dropped_by=table.dropped_by.replace(_FILTER_NAMES)) if "dropped_by" in table else table


def _with_curation_names(table: pd.DataFrame) -> pd.DataFrame:
    return with_filter_names(with_pass_column(table))


TABLES, FIGURES = "<tables>", "<figures>"  # the reports' folders (``RunDir.tables``, ``RunDir.figures``)


@dataclass(frozen=True)
class Entry:
    """One named file: the folder it lives under (a registered stage's, ``TABLES`` or ``FIGURES``), its file name
    there (a template of the entry's keys: ``{config}/metrics.csv``) and what it holds. Its name is the file's stem,
    or the stem and the format (``accuracy_md``) where one table is written in two."""

    name: str
    under: str
    file: str
    what: str
    keys: tuple[str, ...] = ()
    relative: bool = False  # file paths under the run directory stored relative to it (a run dir can move)
    upgrade: Callable[[Any], Any] | None = None  # brings a file an older version wrote to today's columns, on load
    old_file: str | None = None  # its name before it was named by its entry: a run made then is read in place

    def path(self, run: RunDir, **keys: str) -> Path:
        """The file in this run: ``file``, or ``old_file`` where only that exists (an older run, resumed in place as
        ``RunDir`` resumes its old folders: it goes on writing there)."""
        if set(keys) != set(self.keys):
            raise KeyError(f"catalog entry '{self.name}' needs {', '.join(self.keys) or 'no keys'}, got {sorted(keys)}")
        folder = run.tables if self.under == TABLES else run.figures if self.under == FIGURES else run.stage(self.under)
        return kept(folder, self.file.format(**keys), *([self.old_file.format(**keys)] if self.old_file else []))


ENTRIES: tuple[Entry, ...] = (
    # data
    Entry("images", "data", "images.parquet", "one row per usable image: split, label, class, path, size",
          relative=True),
    Entry("skipped", "data", "skipped.csv", "files the data stage could not use, with the reason"),
    # captions and similarity
    Entry("captions", "captioning", "captions.parquet", "every BLIP caption per training image (nucleus and beam)"),
    Entry("scores", "similarity", "scores.parquet", "CLIP similarity of every caption to its image"),
    Entry("best_captions", "similarity", "best_captions.parquet", "each image's most similar caption and its score s*",
          old_file="best.parquet"),
    # generation
    Entry("manifest_raw", "generation", "manifest_raw.parquet",
          "the raw pass's candidates: source, prompt, scale, seed, file", relative=True, upgrade=with_pass_column,
          old_file="manifest.parquet"),
    Entry("manifest_upscaled", "upscaling", "manifest_upscaled.parquet",
          "the upscaled pass's candidates (small sources regenerated larger)", relative=True, upgrade=with_pass_column,
          old_file="manifest.parquet"),
    # curation
    Entry("candidates", "curation", "candidates.parquet", "every candidate with its CLIP and quality scores",
          relative=True, upgrade=_with_curation_names),
    Entry("curated", "curation", "curated.parquet", "one chosen candidate per source: the set SGID trains on",
          relative=True, upgrade=_with_curation_names),
    Entry("curated_filtered", "curation", "curated_filtered.parquet",
          "the chosen candidates that passed the quality filters (SGID filtered)", relative=True,
          upgrade=_with_curation_names),
    Entry("filters_summary", "curation", "filters_summary.json", "the filters' detector, threshold and kept counts",
          upgrade=with_filter_names, old_file="quality.json"),
    # the other generative augmentations (config.methods)
    Entry("real_guidance_images", "real_guidance", "real_guidance_images.parquet",
          "Real Guidance's images: one per training image (M while its recipe trains: m), with its prompt, scale, "
          "strength and seed", relative=True, upgrade=_with_first_m, old_file="images.parquet"),
    Entry("class_tokens", "inversion", "class_tokens.parquet",
          "DA-Fusion's token per class: its file, images, steps, first and last loss, how far it moved",
          relative=True, old_file="tokens.parquet"),
    Entry("da_fusion_images", "da_fusion", "da_fusion_images.parquet",
          "DA-Fusion's M images per training image, with the token, prompt, strength and seed", relative=True,
          old_file="images.parquet"),
    # training
    Entry("training_results", "training", "training_results.parquet",
          "one row per training configuration: accuracy, steps, time", upgrade=_with_backbone,
          old_file="results.parquet"),
    Entry("metrics", "training", "{config}/metrics.csv", "one configuration's per-epoch metrics", ("config",)),
    Entry("predictions", "training", "{config}/predictions.parquet", "one configuration's test predictions",
          ("config",)),
    # results and quality: the report's tables and figures
    Entry("significance", "results", "significance.parquet", "every setting against its Baseline, with verdicts",
          upgrade=_with_backbone),
    Entry("accuracy", TABLES, "accuracy.csv", "the accuracy table beside the published numbers"),
    Entry("accuracy_md", TABLES, "accuracy.md", "the accuracy table as markdown, with its caption"),
    Entry("significance_csv", TABLES, "significance.csv", "the significance table, for the report"),
    Entry("backbone_gains", TABLES, "backbone_gains.csv", "SGID's gain per backbone beside the abstract's "
          "(references.headline)"),
    Entry("backbone_gains_md", TABLES, "backbone_gains.md", "the backbone gains as markdown"),
    Entry("accuracy_by_method", FIGURES, "accuracy_by_method.png", "accuracy per method beside the published ones"),
    Entry("originals_vs_sgid", FIGURES, "originals_vs_sgid.png", "training images beside their SGID image"),
    Entry("gain_forest", FIGURES, "gain_forest.png", "each gain with its interval, per backbone"),
    Entry("set_metrics", TABLES, "set_metrics.csv", "consistency and diversity of each generated set"),
    Entry("per_class_change", TABLES, "per_class_change.csv", "per-class accuracy change, best SGID setting"),
    Entry("consistency_vs_diversity", FIGURES, "consistency_vs_diversity.png",
          "each generated set on our consistency and diversity metrics"),
    Entry("comparison", TABLES, "comparison.csv",
          "which augmentation: each method's gain over the best non-generative one and its measured cost"),
    Entry("comparison_md", TABLES, "comparison.md", "the comparison as markdown, with its caption"),
    Entry("gain_vs_cost", FIGURES, "gain_vs_cost.png", "each method's gain against its device hours"),
    # the ablation profiles (``run ablations``)
    Entry("ablations", TABLES, "ablations.csv", "each ablation variant against the main run"),
    Entry("ablations_md", TABLES, "ablations.md", "the ablation table as markdown"),
    Entry("ablation_set_metrics", TABLES, "ablation_set_metrics.csv", "each variant's curated set metrics"),
)
BY_NAME = {entry.name: entry for entry in ENTRIES}


# Upgrades whose code lives above core, registered by the module that defines the column (``register_upgrade``).
UPGRADES: dict[str, Callable[[Any], Any]] = {}


def register_upgrade(name: str, upgrade: Callable[[Any], Any]) -> None:
    """Bring entry ``name`` as an older version wrote it to today's columns on load, with code above core: the
    ``augment`` module that makes the column registers it (``sgid_utils.augment`` imports it, so a stage that uses
    any of the method's pieces has it), and core imports nothing above it."""
    entry(name)
    UPGRADES[name] = upgrade


def entry(name: str) -> Entry:
    if name not in BY_NAME:
        raise KeyError(f"no catalog entry '{name}'; the entries are {', '.join(BY_NAME)}")
    return BY_NAME[name]


def _rundir(params: Params | RunDir) -> RunDir:
    return params if isinstance(params, RunDir) else RunDir.of(params)


def path(params: Params | RunDir, name: str, **keys: str) -> Path:
    """Where the named file lives in this run."""
    run = _rundir(params)
    return entry(name).path(run, **keys)


def exists(params: Params | RunDir, name: str, **keys: str) -> bool:
    return path(params, name, **keys).exists()


def _redo(run: RunDir, name: str, file: Path) -> str:
    """What to delete to redo the file: itself, which the stage rewrites from its kept item records or inputs; for a
    per-configuration file, that configuration's folder (a configuration with a result is otherwise skipped)."""
    stage = writer(name)
    command = "run ablations" if stage == "ablations" else f"run {stage}"
    target = file.parent if entry(name).keys else file
    return (f"written by stage '{stage}'. Delete {target} and rerun `python -m sgid_utils {command} --params ...` "
            f"(or its notebook); finished work the stage keeps elsewhere is reused")


_REQUIRED = object()


def load(params: Params | RunDir, name: str, missing: Any = _REQUIRED, **keys: str) -> Any:
    """Read a named file: a table (parquet, csv) as a DataFrame, JSON as its object.

    A missing file says which stage to run (or gives ``missing``, for a file that is optional where it is read);
    an unreadable one says which file is damaged and what to delete."""
    run = _rundir(params)
    e = entry(name)
    file = e.path(run, **keys)
    if not file.exists():
        if missing is not _REQUIRED:
            return missing
        raise FileNotFoundError(f"{file} ({name}: {e.what}) does not exist: run stage '{writer(name)}' first")
    try:
        data = read_json(file) if file.suffix == ".json" else read_table(file, run.root if e.relative else None)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CorruptFileError(f"{file} ({name}) cannot be read ({reason}); it is damaged, {_redo(run, name, file)}.") \
            from None
    for upgrade in (e.upgrade, UPGRADES.get(name)):
        data = upgrade(data) if upgrade else data
    return data


def save(params: Params | RunDir, name: str, obj: Any, caption: str | None = None, **keys: str) -> Path:
    """Write a named file atomically, by its kind: a DataFrame as parquet, csv or markdown (with ``caption`` above
    it), a dict or list as JSON, a matplotlib figure as PNG."""
    run = _rundir(params)
    e = entry(name)
    file = e.path(run, **keys)
    if file.suffix == ".json":
        return write_json(file, obj)
    if file.suffix == ".png":
        return write_figure(file, obj)
    return write_table(file, obj, run.root if e.relative else None, caption=caption)


def files_table() -> str:
    """Every stage with the files it reads and writes and their paths (``<run>`` is run.dir, ``<reports>``
    run.reports_dir; ``reads?``: read when present): what ``python -m sgid_utils stages --files`` prints and
    docs/RUNS.md shows."""
    run = RunDir(Path("<run>"), Path("<reports>"))
    lines = []
    for name, notebook, reads, optional, writes in [
            (s.name, s.notebook, s.reads, s.optional_reads, s.writes) for s in STAGES] + [
            ("ablations", "(run ablations)", ABLATIONS_READ, (), ABLATIONS_WRITE)]:
        lines.append(f"{name} ({notebook})")
        for verb, names in (("reads", reads), ("reads?", optional), ("writes", writes)):
            for n in names:
                e = entry(n)
                where = e.path(run, **{k: f"<{k}>" for k in e.keys})
                lines.append(f"  {verb:<6} {n:<21} {where}")
    return "\n".join(lines) + "\n"
