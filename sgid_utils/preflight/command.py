"""Preflight: check a run can go through and say how long and how much disk it will take, before hours of GPU.

``preflight(params)`` returns ✓/✗ records (every model and data set id resolvable, installed versions
against ``constraints.txt``, the device, the run directory writable with room), then, when they pass,
runs a canary: the registry's stages through ``runner.run_stage`` on 2 images per class, one seed, one
epoch, in a scratch run under the reports. Its seconds per item, times the full run's item counts
(``sgid_utils.preflight.projection``), give the expected wall-clock and disk, written to ``reports/<run>/preflight.md``.
The command line, notebook 00 and the report print the same lines.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from sgid_utils.core import catalog
from sgid_utils.core.files import read_table, write_text
from sgid_utils.core.registry import NAMES, RECORDED_UNITS, get
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.runner import run_stage
from sgid_utils.core.sharing import reuse_plan, reuse_source, variant_params
from sgid_utils.errors import USER_ERRORS
from sgid_utils.models.loading import create_classifier
from sgid_utils.params.backbones import backbones, configs
from sgid_utils.params.methods import AUGMENTATIONS
from sgid_utils.params.schema import Params
from sgid_utils.preflight.checks import Check, checks, existing_folder
from sgid_utils.preflight.projection import (
    OTHER_BYTES_STAGES,
    Counts,
    disk_need_bytes,
    full_run_counts,
    gib,
    hms,
    image_epochs_by_backbone,
    other_bytes,
    png_bytes_per_pixel,
    project_seconds,
    train_seconds_by_backbone,
    variant_costs,
)

CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"
CANARY_PER_CLASS = 2
CANARY_INVERSION_STEPS = 5  # DA-Fusion's 1000 steps per class, timed on 5 and projected per step


@dataclass
class Preflight:
    """Everything a preflight found: the checks, and (after a canary) the per-stage figures."""

    checks: list[Check]
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows,
                            columns=["stage", "canary items", "measured s/item", "full-run items", "expected", "basis"])

    def markdown(self) -> str:
        lines = ["# Preflight", "", *[f"    {c.line}" for c in self.checks], ""]
        if self.rows:
            lines += ["## Projection", "", self.table().to_markdown(index=False), ""]
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


# --- checks -----------------------------------------------------------------------------------------------------------
def canary_params(params: Params) -> Params:
    """The same params on 2 images per class, the first seed, one epoch, SGID at 100 %, in the scratch run."""
    run = RunDir.of(params).canary
    doc = params.model_dump(mode="json")
    doc["run"].update(dir=str(run.root), reports_dir=str(run.reports), reuse=None)
    doc["dataset"].update(max_per_class=CANARY_PER_CLASS, max_test_per_class=CANARY_PER_CLASS)
    doc["training"].update(seeds=params.training.seeds[:1], epochs=1, sgid_proportions=[1.0],
                           filtered_proportions=[1.0], combined_proportions=[1.0])
    for backbone in doc["training"]["backbones"]:
        backbone.update(epochs=1, warmup_epochs=0)
    doc["da_fusion"].update(inversion_steps=min(CANARY_INVERSION_STEPS, params.da_fusion.inversion_steps),
                            num_synthetic=1)
    doc["real_guidance"].update(num_synthetic=1)  # seconds per image are measured on one image per real image
    doc["ablations"] = []
    canary = Params.model_validate(doc)
    canary.source_file = params.source_file
    return canary


def _canary_items(canary: Params, stage: str, images: pd.DataFrame) -> int:
    """The canary's items of ``stage`` in its registry unit: the generation passes' sources from their item records
    (what the canary generated), every other unit counted as for a full run."""
    if get(stage).unit in RECORDED_UNITS:
        return len(list(RunDir.of(canary).items(stage).glob("*.json")))
    return int(full_run_counts(canary, images).items(stage))


def run_canary(params: Params, report: Preflight) -> tuple[Params, dict[str, float], dict[str, int]] | None:
    """Every registered stage on the canary params, timed; a stage that fails becomes a ✗ line and stops the canary."""
    canary = canary_params(params)
    shutil.rmtree(RunDir.of(params).canary.root.parent, ignore_errors=True)  # fresh timings, no stale fingerprints
    seconds, items = {}, {}
    images = None
    for stage in NAMES:
        start = time.perf_counter()
        try:
            result = run_stage(stage, canary)
        except Exception as exc:  # noqa: BLE001 - the canary reports any failure as a ✗ line
            cmd = f"python -m sgid_utils run {stage} --params {params.source_file}"
            kind = "" if isinstance(exc, USER_ERRORS) else f"{type(exc).__name__}: "
            report.checks.append(Check(f"canary {stage}", False, kind + str(exc).splitlines()[0][:400],
                                       f"fix that, or run the stage alone for the full traceback: {cmd}"))
            return None
        seconds[stage] = time.perf_counter() - start
        images = result if stage == "data" else images
        items[stage] = _canary_items(canary, stage, images)
    report.checks.append(Check("canary", True, f"every stage ran on {int((images.split == 'train').sum())} training "
                               f"images, {len(configs(canary))} training configuration(s), in "
                               f"{hms(sum(seconds.values()))}"))
    return canary, seconds, items


# --- projection -------------------------------------------------------------------------------------------------------
def _train_rows(params: Params, canary: Params, seconds: float, counts: Counts, basis: str) -> list[dict]:
    """One training row per backbone, each at its own measured seconds per image-epoch (and a 'seconds' key)."""
    crun = RunDir.of(canary)
    n_canary = int((read_table(catalog.path(crun, "images")).split == "train").sum())
    split = train_seconds_by_backbone(canary, seconds)
    canary_items = image_epochs_by_backbone(canary, n_canary)
    full_items = image_epochs_by_backbone(params, counts.train_images)
    rows = []
    for bb in backbones(params):
        per = split[bb.name] / max(1, canary_items[bb.name])
        rows.append({"stage": f"train: {bb.label}", "canary items": canary_items[bb.name],
                     "measured s/item": round(per, 3), "full-run items": full_items[bb.name],
                     "expected": hms(per * full_items[bb.name]), "basis": basis, "seconds": per * full_items[bb.name]})
    return rows


def _ablation_rows(params: Params, per_item: dict[str, float], train_rate: float, images: pd.DataFrame | None,
                   ) -> tuple[list[dict], float, float]:
    """One row per ablation variant (the stages it computes itself, at the canary's rates; training at the first
    backbone's rate), and the pixels the variants generate: (rows, raw pixels, small pixels)."""
    variants = [(a.name, variant_params(params, a.name, a.set)) for a in params.ablations]
    rows, raw, small = [], 0.0, 0.0
    for cost in variant_costs(params, variants, images):
        seconds = {s: (train_rate if s == "training" else per_item[s]) * n for s, n in cost.items.items()}
        what = ", ".join(f"{s} ({n:,.0f})" if s != "results" else s for s, n in cost.items.items())
        rows.append({"stage": f"ablation {cost.name}", "canary items": "", "measured s/item": "", "full-run items": "",
                     "expected": hms(sum(seconds.values())), "basis": f"computes {what}; links the rest",
                     "seconds": sum(seconds.values())})
        raw, small = raw + cost.raw_pixels, small + cost.small_pixels
    return rows, raw, small


def _method_rows(params: Params, expected: dict[str, float], counts: Counts, linked: list[str]) -> list[dict]:
    """One row per generative augmentation the run trains: the stages it needs, their full-run items and the sum of
    their projected seconds (a breakdown of the total above: a stage two methods share counts in both rows)."""
    rows = []
    for a in AUGMENTATIONS:
        if a.method not in params.training.methods:
            continue
        what = ", ".join(f"{s} (linked)" if s in linked else f"{s} ({counts.items(s):,.0f})" for s in a.stages)
        rows.append({"stage": f"method {a.label}", "canary items": "", "measured s/item": "", "full-run items": "",
                     "expected": hms(sum(expected.get(s, 0.0) for s in a.stages)),
                     "basis": f"its stages: {what}; already in the total above"})
    return rows


def _project(params: Params, report: Preflight, canary: Params, seconds: dict[str, float],
             items: dict[str, int]) -> None:
    linked = reuse_plan(params).shared if params.run.reuse is not None else []
    run = reuse_source(params) if "data" in linked else RunDir.of(params)
    full = catalog.load(run, "images", missing=None)  # a damaged table: the catalog's one-line error
    counts = full_run_counts(params, full)
    # Stages run.reuse links cost nothing here and write no images.
    counts = replace(counts, raw_pixels=0.0 if "generation" in linked else counts.raw_pixels,
                     small_pixels=0.0 if "upscaling" in linked else counts.small_pixels)
    per_item = {s: seconds[s] / max(1, items[s]) for s in seconds}
    expected = {s: 0.0 if s in linked else t for s, t in project_seconds(per_item, counts).items()}
    train_rate = per_item["training"]  # seconds per image-epoch of the first backbone (the one variants train)
    for stage in seconds:
        basis = "fixed cost, measured" if counts.items(stage) == 1 else f"extrapolated from {counts.source}"
        basis = f"linked from run.reuse {params.run.reuse}: not recomputed" if stage in linked else basis
        if stage == "training" and len(backbones(params)) > 1:
            rows = _train_rows(params, canary, seconds[stage], counts, basis)
            first = rows[0]
            train_rate = first["seconds"] / first["full-run items"] if first["full-run items"] else train_rate
            expected[stage] = sum(r.pop("seconds") for r in rows)
            report.rows += rows
            continue
        report.rows.append({"stage": stage, "canary items": items[stage], "measured s/item": round(per_item[stage], 3),
                            "full-run items": int(counts.items(stage)), "expected": hms(expected[stage]),
                            "basis": basis})
    report.rows.append({"stage": "total (make reproduce, without ablations)", "canary items": "", "measured s/item": "",
                        "full-run items": "", "expected": hms(sum(expected.values())), "basis": ""})
    report.rows += _method_rows(params, expected, counts, linked)
    ablation_rows, ablation_raw, ablation_small = _ablation_rows(params, per_item, train_rate, full)
    if ablation_rows:
        ablations = sum(r.pop("seconds") for r in ablation_rows)
        report.rows += ablation_rows + [{
            "stage": "total with the ablation variants", "canary items": "", "measured s/item": "",
            "full-run items": "", "expected": hms(sum(expected.values()) + ablations), "basis": ""}]
    crun = RunDir.of(canary)
    bpp = png_bytes_per_pixel(crun)
    classes = (full if full is not None else read_table(catalog.path(crun, "images"))).label.nunique()
    # the largest backbone's checkpoint (architecture only: nothing downloaded)
    n_params = max(sum(p.numel() for p in create_classifier(b.model, int(classes), pretrained=False).parameters())
                   for b in backbones(params))
    other = other_bytes(crun, [s for s in OTHER_BYTES_STAGES if s not in linked]) / max(1, items.get("captioning", 1))
    need = disk_need_bytes(bpp, params.generation.num_candidates, counts.raw_pixels + ablation_raw,
                           counts.small_pixels + ablation_small, n_params, other, counts.train_images)
    free = shutil.disk_usage(existing_folder(Path(params.run.dir))).free
    report.checks.append(Check("disk for the full run", free - need >= params.run.min_free_gb * 2**30,
                               f"needs ~{gib(need)} (PNG {bpp:.2f} B/px measured, {n_params:,} classifier "
                               f"parameters x 4 B x 3 for one checkpoint), {gib(free)} free",
                               "free space or point run.dir at a larger disk"))
    batch = params.generation.batch_size
    report.notes += counts.notes + [
        "Measured: each stage's seconds on the canary (model loading included, so per-item figures are upper bounds "
        "for long stages) and the PNG bytes per pixel. Extrapolated: everything in the 'expected' column.",
        "Generation ran at generation.batch_size "
        f"{batch if batch else 'auto (from free GPU memory on CUDA, 1 on the CPU)'}, on at most "
        f"{items.get('generation', 0)} source(s): a full run's batches can be larger, so GPU figures are pessimistic.",
        ("Ablation variants (one row each): the stages a variant computes itself, those whose params it changes (a "
         "second generation draw redoes captions, similarity, both generation passes and curation; equal steps only "
         "its SGID training), at the canary's rates; each trains Baseline and SGID (100 %) on the first backbone, "
         "its Baselines linked when unchanged. Their generated images are in the disk need. "
         if params.ablations else "Not in the total: the ablation profiles (make reproduce runs them after "
         "training; each variant repeats the stages whose params it changes). ")
        + "Not counted: each notebook's kernel start-up.",
        "Items: captioning/similarity/curation = training images; generation = raw-pass sources; upscaling = sources "
        "under curation.upscale_threshold; training = images x epochs summed over configurations (one row per "
        "backbone when there are several, each at its own measured rate; the canary tests after its one epoch, so a "
        "backbone that tests only every few epochs is projected a little high).",
    ]


def preflight(params: Params, canary: bool = True) -> Preflight:
    """Checks, then (when they pass and ``canary``) the canary and the projection; writes reports/<run>/preflight.md."""
    report = Preflight(checks(params))
    if report.ok and canary:
        measured = run_canary(params, report)
        if measured is not None:
            _project(params, report, *measured)
    elif not report.ok:
        report.notes.append("A check failed: no stage was started.")
    try:
        write_text(RunDir.of(params).preflight_report, report.markdown())
    except OSError as exc:
        report.notes.append(f"The report could not be written ({exc.strerror}).")
    return report
