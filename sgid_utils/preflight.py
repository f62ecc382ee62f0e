"""Preflight: check a run can go through and say how long and how much disk it will take, before hours of GPU.

``preflight(params)`` returns ✓/✗ records (every model and data set id resolvable, installed versions
against ``constraints.txt``, the device, the run directory writable with room), then, when they pass,
runs a canary: the registry's stages through ``runner.run_stage`` on 2 images per class, one seed, one
epoch, in a scratch run under the reports. Its seconds per item, times the full run's item counts
(``sgid_utils.projection``), give the expected wall-clock and disk, written to ``reports/<run>/preflight.md``.
The command line, notebook 00 and the report print the same lines.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import huggingface_hub
import pandas as pd
import timm.models
from huggingface_hub.errors import CacheNotFound
from packaging.requirements import Requirement

from .data import HUB_IDS
from .errors import USER_ERRORS
from .io import read_table, write_text
from .models import create_classifier, resolve_device
from .projection import (
    disk_need_bytes,
    full_run_counts,
    gib,
    hms,
    images_per_config,
    other_bytes,
    png_bytes_per_pixel,
    project_seconds,
)
from .rundir import RunDir
from .runner import run_stage
from .schema import Params
from .stages import NAMES
from .training import configs

CONSTRAINTS = Path(__file__).resolve().parent.parent / "constraints.txt"
CANARY_PER_CLASS = 2


@dataclass(frozen=True)
class Check:
    """One ✓/✗ line: what was checked, the verdict, what was found, and what to do when it failed."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    @property
    def line(self) -> str:
        return f"{'✓' if self.ok else '✗'} {self.name}: {self.detail}" + (f"\n    fix: {self.fix}" if self.fix and not self.ok else "")


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
        return pd.DataFrame(self.rows, columns=["stage", "canary items", "measured s/item", "full-run items", "expected", "basis"])

    def markdown(self) -> str:
        lines = ["# Preflight", "", *[f"    {c.line}" for c in self.checks], ""]
        if self.rows:
            lines += ["## Projection", "", self.table().to_markdown(index=False), ""]
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


# --- checks -----------------------------------------------------------------------------------------------------------
def _cached(repo_id: str, repo_type: str) -> int | None:
    """Bytes the Hugging Face cache holds for this repo, or None when it holds none."""
    try:
        info = huggingface_hub.scan_cache_dir()
    except CacheNotFound:
        return None
    sizes = [r.size_on_disk for r in info.repos if r.repo_id == repo_id and r.repo_type == repo_type]
    return sizes[0] if sizes else None


def _hub_check(name: str, repo_id: str, repo_type: str, key: str) -> Check:
    """A hub id: ✓ when cached or (online) on the Hub; offline and not cached: ✗ with the download command."""
    flag = " --repo-type dataset" if repo_type == "dataset" else ""
    fix = f"hf download {repo_id}{flag} --local-dir DIR, then set {key} (or go online)"
    size = _cached(repo_id, repo_type)
    if size is not None:
        return Check(name, True, f"{repo_id} in the Hugging Face cache ({gib(size)})")
    if huggingface_hub.constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return Check(name, False, f"{repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE=1", fix)
    try:
        api = huggingface_hub.HfApi()
        info = (api.dataset_info if repo_type == "dataset" else api.model_info)(repo_id, files_metadata=True)
    except Exception as exc:  # noqa: BLE001 - any hub failure is one ✗ line naming the id
        return Check(name, False, f"{repo_id} not reachable on the Hub ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                     fix + "; check the id and that you accepted its licence")
    size = sum(s.size or 0 for s in info.siblings or [])
    gated = f"; gated ({info.gated}): accept its licence on the Hub and log in" if info.gated else ""
    return Check(name, True, f"{repo_id} on the Hub, {gib(size)} to download (all files){gated}")


def check_model(params: Params, key: str) -> Check:
    """A models.* entry: a local folder that exists (or that the smoke profile builds), or a hub id."""
    ref = getattr(params.models, key)
    local = ref.removeprefix("local-dir:")
    if ref.startswith("local-dir:") or Path(local).is_absolute() or Path(local).exists():
        if Path(local).is_dir():
            return Check(f"models.{key}", True, f"local folder {local}")
        if params.smoke.build_models:
            return Check(f"models.{key}", True, f"{local} (the smoke profile builds it on first use)")
        return Check(f"models.{key}", False, f"local folder {local} does not exist",
                     f"download the model into it or set models.{key} to a hub id")
    repo_id = ref
    if key == "classifier":  # a timm name: its weights live in the hub repo its pretrained config names
        try:
            repo_id = timm.models.get_pretrained_cfg(ref).hf_hub_id or f"timm/{ref}"
        except Exception:  # noqa: BLE001 - an unknown name is reported by the hub check below
            repo_id = f"timm/{ref}"
    return _hub_check(f"models.{key}", repo_id, "model", f"models.{key} to {'local-dir:' if key == 'classifier' else ''}DIR")


def check_dataset(params: Params) -> Check:
    ds = params.dataset
    if ds.source == "imagefolder":
        missing = [str(p) for p in (ds.path, ds.test_path) if p is not None and not Path(p).is_dir()]
        if not missing or params.smoke.build_dataset:
            return Check("dataset", True, f"image folder {ds.path}" + (" (built by the smoke profile)" if missing else ""))
        return Check("dataset", False, f"image folder(s) {', '.join(missing)} not found", "set dataset.path / dataset.test_path")
    hub_id = ds.hf_id or HUB_IDS[ds.source]
    if Path(hub_id).exists():
        return Check("dataset", True, f"local data set {hub_id}")
    return _hub_check("dataset", hub_id, "dataset", "dataset.hf_id to DIR")


def check_versions(constraints: Path = CONSTRAINTS) -> Check:
    """Installed versions against constraints.txt: a difference is a warning (✓ with a note), not a failure."""
    if not constraints.is_file():
        return Check("versions", True, f"{constraints.name} not found (installed package): not compared")
    differ, pinned = [], 0
    for line in constraints.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        req, pinned = Requirement(line), pinned + 1
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            differ.append(f"{req.name} not installed ({req.specifier})")
            continue
        if not req.specifier.contains(have, prereleases=True):
            differ.append(f"{req.name} {have} ({req.specifier})")
    note = f"; warning, differ from the tested ones: {', '.join(differ)}" if differ else ""
    return Check("versions", True, f"{pinned - len(differ)}/{pinned} as in {constraints.name}{note}")


def check_device(params: Params) -> Check:
    try:
        device = resolve_device(params)
    except RuntimeError as exc:
        return Check("device", False, str(exc), "set run.device: auto or cpu, or pick a GPU runtime")
    return Check("device", True, str(device) + ("" if device.type == "cuda" else " (no GPU: fine for smoke, hours for a full run)"))


def _existing(folder: Path) -> Path:
    """The folder itself or its nearest ancestor that exists."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_disk(folder: Path, min_free_gb: float) -> list[Check]:
    """Writable and with room, probed in the nearest existing folder so a failing preflight creates nothing."""
    probe_dir = _existing(Path(folder))
    try:
        if not probe_dir.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(probe_dir))
        fd, probe = tempfile.mkstemp(prefix=".preflight-probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return [Check("run.dir writable", False, f"cannot write {folder} ({exc.strerror} at {probe_dir})",
                      "set run.dir or --run-dir to a folder you can write")]
    free = shutil.disk_usage(probe_dir).free / 2**30
    room = Check("free disk", free >= min_free_gb, f"{free:.1f} GiB free under {probe_dir} (run.min_free_gb {min_free_gb:g})",
                 "free some space or point run.dir elsewhere")
    return [Check("run.dir writable", True, str(folder)), room]


def checks(params: Params) -> list[Check]:
    """Every check that starts nothing: ids, data set, versions, device, run directory and disk."""
    out = [check_model(params, key) for key in ("captioner", "clip", "diffusion", "classifier")]
    out += [check_dataset(params), check_versions(), check_device(params)]
    return out + check_disk(Path(params.run.dir), params.run.min_free_gb)


# --- canary -----------------------------------------------------------------------------------------------------------
def canary_params(params: Params) -> Params:
    """The same params on 2 images per class, the first seed, one epoch, SGID at 100 %, in the scratch run."""
    run = RunDir.of(params).canary
    doc = params.model_dump(mode="json")
    doc["run"].update(dir=str(run.root), reports_dir=str(run.reports))
    doc["dataset"].update(max_per_class=CANARY_PER_CLASS, max_test_per_class=CANARY_PER_CLASS)
    doc["training"].update(seeds=params.training.seeds[:1], epochs=1, sgid_proportions=[1.0],
                           filtered_proportions=[1.0])
    doc["ablations"] = []
    canary = Params.model_validate(doc)
    canary.source_file = params.source_file
    return canary


def _canary_items(canary: Params, stage: str, images: pd.DataFrame) -> int:
    run = RunDir.of(canary)
    if stage in ("generate", "upscale"):
        return len(list(run.items(stage).glob("*.json")))
    if stage == "train":
        return canary.training.epochs * sum(images_per_config(canary, int((images.split == "train").sum())))
    if stage in ("captions", "similarity", "curate"):
        return int((images.split == "train").sum())
    return 1


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
                               f"images, {len(configs(canary))} training configuration(s), in {hms(sum(seconds.values()))}"))
    return canary, seconds, items


# --- projection ---------------------------------------------------------------------------------------------------------
def _project(params: Params, report: Preflight, canary: Params, seconds: dict[str, float], items: dict[str, int]) -> None:
    run = RunDir.of(params)
    full = read_table(run.images_table, run.root) if run.images_table.exists() else None
    counts = full_run_counts(params, full)
    per_item = {s: seconds[s] / max(1, items[s]) for s in seconds}
    expected = project_seconds(per_item, counts)
    for stage in seconds:
        basis = "fixed cost, measured" if counts.items(stage) == 1 else f"extrapolated from {counts.source}"
        report.rows.append({"stage": stage, "canary items": items[stage], "measured s/item": round(per_item[stage], 3),
                            "full-run items": int(counts.items(stage)), "expected": hms(expected[stage]), "basis": basis})
    report.rows.append({"stage": "total (make reproduce, without ablations)", "canary items": "", "measured s/item": "",
                        "full-run items": "", "expected": hms(sum(expected.values())), "basis": ""})
    crun = RunDir.of(canary)
    bpp = png_bytes_per_pixel(crun)
    classes = (full if full is not None else read_table(crun.images_table)).label.nunique()
    n_params = sum(p.numel() for p in create_classifier(params.models.classifier, int(classes)).parameters())
    other = other_bytes(crun) / max(1, items.get("captions", 1))
    need = disk_need_bytes(bpp, params.generation.num_candidates, counts.raw_pixels, counts.small_pixels, n_params,
                           other, counts.train_images)
    free = shutil.disk_usage(_existing(Path(params.run.dir))).free
    report.checks.append(Check("disk for the full run", free - need >= params.run.min_free_gb * 2**30,
                               f"needs ~{gib(need)} (PNG {bpp:.2f} B/px measured, {n_params:,} classifier parameters x 4 B x 3 "
                               f"for one checkpoint), {gib(free)} free", "free space or point run.dir at a larger disk"))
    batch = params.generation.batch_size
    report.notes += counts.notes + [
        "Measured: each stage's seconds on the canary (model loading included, so per-item figures are upper bounds "
        "for long stages) and the PNG bytes per pixel. Extrapolated: everything in the 'expected' column.",
        f"Generation ran at generation.batch_size {batch if batch else 'auto (from free GPU memory on CUDA, 1 on the CPU)'}, "
        f"on at most {items.get('generate', 0)} source(s): a full run's batches can be larger, so GPU figures are pessimistic.",
        "Not in the total: the ablation profiles (make reproduce runs them after training; each variant repeats the stages "
        "whose params it changes) and each notebook's kernel start-up.",
        "Items: captions/similarity/curate = training images; generate = raw-pass sources; upscale = sources under "
        "curation.upscale_threshold; train = images x epochs summed over configurations.",
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
