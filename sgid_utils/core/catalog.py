"""The data catalog: every file a stage hands to another stage, or to the report, by name.

A stage reads and writes these files only through ``load(params, name)`` and
``save(params, name, obj)``, which dispatch on the file's kind (parquet or csv
table, markdown table, JSON, PNG figure). The registry (``core.registry``) lists
the names each stage reads and writes; the stages' upstream is derived from those
lists, and ``python -m sgid_utils stages --files`` prints them with their paths.
Where a file lives is the run-directory map's business (``core.rundir``): an entry
only names a ``RunDir`` path, so moving a file is still a one-line change there.

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

from sgid_utils.config.schema import Params
from sgid_utils.core.files import read_json, read_table, write_figure, write_json, write_table
from sgid_utils.core.registry import ABLATIONS_READ, ABLATIONS_WRITE, STAGES, writer
from sgid_utils.core.rundir import RunDir
from sgid_utils.errors import CorruptFileError


def _with_backbone(table: pd.DataFrame) -> pd.DataFrame:
    """A table written before backbones existed: its rows are the one implicit backbone, named ""."""
    return table if "backbone" in table else table.assign(backbone="")


@dataclass(frozen=True)
class Entry:
    """One named file: where it lives (a ``RunDir`` path, given the entry's keys) and what it holds."""

    name: str
    where: Callable[..., Path]
    what: str
    keys: tuple[str, ...] = ()
    relative: bool = False  # file paths under the run directory stored relative to it (a run dir can move)
    upgrade: Callable[[Any], Any] | None = None  # brings a file an older version wrote to today's columns, on load

    def path(self, run: RunDir, **keys: str) -> Path:
        if set(keys) != set(self.keys):
            raise KeyError(f"catalog entry '{self.name}' needs {', '.join(self.keys) or 'no keys'}, got {sorted(keys)}")
        return self.where(run, **keys)


ENTRIES: tuple[Entry, ...] = (
    # data
    Entry("images", lambda r: r.images_table, "one row per usable image: split, label, class, path, size",
          relative=True),
    Entry("skipped", lambda r: r.skipped_table, "files the data stage could not use, with the reason"),
    # captions and similarity
    Entry("captions", lambda r: r.captions_table, "every BLIP caption per training image (nucleus and beam)"),
    Entry("scores", lambda r: r.scores_table, "CLIP similarity of every caption to its image"),
    Entry("best_captions", lambda r: r.best_table, "each image's most similar caption and its score s*"),
    # generation
    Entry("manifest_raw", lambda r: r.manifest("raw"), "the raw pass's candidates: source, prompt, scale, seed, file",
          relative=True),
    Entry("manifest_upscaled", lambda r: r.manifest("upscaled"),
          "the upscaled pass's candidates (small sources regenerated larger)", relative=True),
    # curation
    Entry("candidates", lambda r: r.candidates_table, "every candidate with its CLIP and quality scores",
          relative=True),
    Entry("curated", lambda r: r.curated_table(), "one chosen candidate per source: the set SGID trains on",
          relative=True),
    Entry("curated_filtered", lambda r: r.curated_table(filtered=True),
          "the chosen candidates that passed the quality filters (SGID filtered)", relative=True),
    Entry("quality_summary", lambda r: r.quality_summary, "the filters' detector, threshold and kept counts"),
    # the other generative augmentations (config.methods)
    Entry("real_guidance_images", lambda r: r.real_guidance_table,
          "Real Guidance's images: one per training image, with its prompt, scale, strength and seed", relative=True),
    Entry("class_tokens", lambda r: r.class_tokens_table,
          "DA-Fusion's token per class: its file, images, steps, first and last loss, how far it moved",
          relative=True),
    Entry("da_fusion_images", lambda r: r.da_fusion_table,
          "DA-Fusion's M images per training image, with the token, prompt, strength and seed", relative=True),
    # training
    Entry("training_results", lambda r: r.training_table, "one row per training configuration: accuracy, steps, time",
          upgrade=_with_backbone),
    Entry("history", lambda r, config: r.history(config), "one configuration's per-epoch metrics", ("config",)),
    Entry("predictions", lambda r, config: r.predictions(config), "one configuration's test predictions",
          ("config",)),
    # results and quality: the report's tables and figures
    Entry("significance", lambda r: r.significance_table, "every setting against its Baseline, with verdicts",
          upgrade=_with_backbone),
    Entry("accuracy", lambda r: r.table("accuracy.csv"), "the accuracy table beside the published numbers"),
    Entry("accuracy_md", lambda r: r.table("accuracy.md"), "the accuracy table as markdown, with its caption"),
    Entry("significance_csv", lambda r: r.table("significance.csv"), "the significance table, for the report"),
    Entry("backbone_gains", lambda r: r.table("backbone_gains.csv"), "SGID's gain per backbone beside the abstract's"),
    Entry("backbone_gains_md", lambda r: r.table("backbone_gains.md"), "the backbone gains as markdown"),
    Entry("accuracy_figure", lambda r: r.figure("accuracy_by_method"), "accuracy per method beside the published ones"),
    Entry("originals_figure", lambda r: r.figure("originals_vs_sgid"), "training images beside their SGID image"),
    Entry("gain_forest_figure", lambda r: r.figure("gain_forest"), "each gain with its interval, per backbone"),
    Entry("set_metrics", lambda r: r.table("set_metrics.csv"), "consistency and diversity of each generated set"),
    Entry("class_changes", lambda r: r.table("per_class_change.csv"), "per-class accuracy change, best SGID setting"),
    Entry("consistency_figure", lambda r: r.figure("07_consistency_vs_diversity"),
          "each generated set on our consistency and diversity metrics"),
    Entry("comparison", lambda r: r.table("comparison.csv"),
          "which augmentation: each method's gain over the best non-generative one and its measured cost"),
    Entry("comparison_md", lambda r: r.table("comparison.md"), "the comparison as markdown, with its caption"),
    Entry("comparison_figure", lambda r: r.figure("08_gain_vs_cost"), "each method's gain against its device hours"),
    # the ablation profiles (``run ablations``)
    Entry("ablations", lambda r: r.table("ablations.csv"), "each ablation variant against the main run"),
    Entry("ablations_md", lambda r: r.table("ablations.md"), "the ablation table as markdown"),
    Entry("ablation_set_metrics", lambda r: r.table("ablation_set_metrics.csv"), "each variant's curated set metrics"),
)
BY_NAME = {entry.name: entry for entry in ENTRIES}


# Upgrades whose code lives above core, registered by the module that defines the column (``register_upgrade``).
UPGRADES: dict[str, Callable[[Any], Any]] = {}


def register_upgrade(name: str, upgrade: Callable[[Any], Any]) -> None:
    """Bring entry ``name`` as an older version wrote it to today's columns on load, with code above core: the
    ``method`` module that makes the column registers it (``sgid_utils.method`` imports it, so a stage that uses
    any method code has it), and core imports nothing above it."""
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
    docs/ARCHITECTURE.md shows."""
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
