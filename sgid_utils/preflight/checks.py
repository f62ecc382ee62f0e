"""The checks preflight runs before anything starts: ids, versions, device, run directory, disk.

Each returns ``Check`` records, so the command line, notebook 00 and ``preflight.md`` print the same
✓/✗ lines; a failed one says what to do. Nothing here writes to the run directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import timm.models
import torch
from huggingface_hub.errors import CacheNotFound
from packaging.requirements import Requirement

from sgid_utils.core.sharing import reuse_plan
from sgid_utils.errors import StageError
from sgid_utils.models.loading import resolve_device
from sgid_utils.params.schema import Params
from sgid_utils.params.sources import HUB_IDS
from sgid_utils.params.versions import version_problems
from sgid_utils.preflight.projection import gib

CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"


@dataclass(frozen=True)
class Check:
    """One ✓/✗ line: what was checked, the verdict, what was found, and what to do when it failed."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    @property
    def line(self) -> str:
        return (f"{'✓' if self.ok else '✗'} {self.name}: {self.detail}"
                + (f"\n    fix: {self.fix}" if self.fix and not self.ok else ""))


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
    if (huggingface_hub.constants.HF_HUB_OFFLINE
            or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")):
        return Check(name, False, f"{repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE=1", fix)
    try:
        api = huggingface_hub.HfApi()
        info = (api.dataset_info if repo_type == "dataset" else api.model_info)(repo_id, files_metadata=True)
    except Exception as exc:  # noqa: BLE001 - any hub failure is one ✗ line naming the id
        return Check(name, False,
                     f"{repo_id} not reachable on the Hub ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                     fix + "; check the id and that you accepted its licence")
    size = sum(s.size or 0 for s in info.siblings or [])
    gated = f"; gated ({info.gated}): accept its licence on the Hub and log in" if info.gated else ""
    return Check(name, True, f"{repo_id} on the Hub, {gib(size)} to download (all files){gated}")


def check_model(params: Params, key: str) -> Check:
    """A models.* entry: a local folder that exists (or that the smoke profile builds), or a hub id."""
    return _check_ref(params, f"models.{key}", getattr(params.models, key), is_timm=key == "classifier")


def check_backbones(params: Params) -> list[Check]:
    """Each training.backbones model: pretrained ones like models.classifier; from-scratch ones download nothing."""
    out = []
    for b in params.training.backbones:
        name = f"training.backbones[{b.name}].model"
        if b.pretrained or b.model.startswith("local-dir:"):
            out.append(_check_ref(params, name, b.model, is_timm=True))
        else:
            known = timm.is_model(b.model)
            out.append(Check(name, known, f"{b.model}: timm architecture, random initial weights (nothing to download)",
                             "name a timm architecture (timm.list_models())"))
    return out


def _check_ref(params: Params, name: str, ref: str, is_timm: bool) -> Check:
    local = ref.removeprefix("local-dir:")
    if ref.startswith("local-dir:") or Path(local).is_absolute() or Path(local).exists():
        if Path(local).is_dir():
            return Check(name, True, f"local folder {local}")
        if params.smoke.build_models:
            return Check(name, True, f"{local} (the smoke profile builds it on first use)")
        return Check(name, False, f"local folder {local} does not exist",
                     f"download the model into it or set {name} to a hub id")
    repo_id = ref
    if is_timm:  # a timm name: its weights live in the hub repo its pretrained config names
        try:
            repo_id = timm.models.get_pretrained_cfg(ref).hf_hub_id or f"timm/{ref}"
        except Exception:  # noqa: BLE001 - an unknown name is reported by the hub check below
            repo_id = f"timm/{ref}"
    return _hub_check(name, repo_id, "model", f"{name} to {'local-dir:' if is_timm else ''}DIR")


def check_dataset(params: Params) -> Check:
    ds = params.dataset
    if ds.source == "imagefolder":
        missing = [str(p) for p in (ds.path, ds.test_path) if p is not None and not Path(p).is_dir()]
        if not missing or params.smoke.build_dataset:
            return Check("dataset", True,
                         f"image folder {ds.path}" + (" (built by the smoke profile)" if missing else ""))
        return Check("dataset", False, f"image folder(s) {', '.join(missing)} not found",
                     "set dataset.path / dataset.test_path")
    hub_id = ds.hf_id or HUB_IDS[ds.source]
    if Path(hub_id).exists():
        return Check("dataset", True, f"local data set {hub_id}")
    return _hub_check("dataset", hub_id, "dataset", "dataset.hf_id to DIR")


def check_versions(constraints: Path = CONSTRAINTS) -> Check:
    """Installed versions against constraints.txt: a difference is a warning (✓ with a note), not a failure."""
    if not constraints.is_file():
        return Check("versions", True, f"{constraints.name} not found (installed package): not compared")
    pins = [Requirement(line) for raw in constraints.read_text().splitlines() if (line := raw.split("#")[0].strip())]
    differ = version_problems(pins)  # the import-time check's comparison, against the pins instead of the bounds
    note = f"; warning, differ from the tested ones: {', '.join(differ)}" if differ else ""
    return Check("versions", True, f"{len(pins) - len(differ)}/{len(pins)} as in {constraints.name}{note}")


def check_device(params: Params) -> Check:
    """The device, and on CUDA its name, free memory and half-precision support (generation runs in fp16)."""
    try:
        device = resolve_device(params)
    except RuntimeError as exc:
        return Check("device", False, str(exc), "set run.device: auto or cpu, or pick a GPU runtime")
    if device.type != "cuda":
        return Check("device", True,
                     f"{device} (no GPU: fine for smoke; the canary's rates below say how slow a full run is)")
    free, total = torch.cuda.mem_get_info(device)
    bf16 = "bf16 yes" if torch.cuda.is_bf16_supported() else "bf16 no"
    return Check("device", True, f"{device}: {torch.cuda.get_device_name(device)}, {free / 2**30:.1f} of "
                 f"{total / 2**30:.1f} GiB free, fp16 yes, {bf16}")


def check_persistent(folder: Path) -> Check:
    """On Colab, a run directory under /content but outside the Drive mount is lost when the runtime disconnects."""
    folder = Path(folder).resolve()
    on_colab = folder.is_relative_to("/content")
    on_drive = folder.is_relative_to("/content/drive")
    if on_colab and not on_drive:
        return Check("run.dir persistent", False, f"{folder} is on the Colab runtime's disk, lost on disconnect",
                     'mount Drive (from google.colab import drive; drive.mount("/content/drive")) and set '
                     'run_dir under /content/drive/MyDrive/...')
    return Check("run.dir persistent", True, "on Google Drive" if on_drive else "not a Colab runtime disk")


def existing_folder(folder: Path) -> Path:
    """The folder itself or its nearest ancestor that exists."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_disk(folder: Path, min_free_gb: float) -> list[Check]:
    """Writable and with room, probed in the nearest existing folder so a failing preflight creates nothing."""
    probe_dir = existing_folder(Path(folder))
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
    room = Check("free disk", free >= min_free_gb,
                 f"{free:.1f} GiB free under {probe_dir} (run.min_free_gb {min_free_gb:g})",
                 "free some space or point run.dir elsewhere")
    return [Check("run.dir writable", True, str(folder)), room]


def check_reuse(params: Params) -> list[Check]:
    """``run.reuse``: the named run finished curation (else the run would stop), and which stages it will share."""
    if params.run.reuse is None:
        return []
    try:
        plan = reuse_plan(params)
    except StageError as exc:  # what is wrong, then (after the first sentence, when there is one) what to do
        what, _, fix = str(exc).partition(". ")
        return [Check("run.reuse", False, what, fix)]
    detail = f"{', '.join(plan.shared) or 'no stage'} linked from {params.run.reuse}"
    detail += f"; made there with other params, so run here: {', '.join(plan.differ)}" if plan.differ else ""
    return [Check("run.reuse", True, detail)]


def checks(params: Params) -> list[Check]:
    """Every check that starts nothing: ids, data set, versions, device, run directory and disk."""
    # The ControlNet only where a stage loads it (notebook 03's side by side under img2img says so itself if missing).
    controlnet = params.generation.generator == "controlnet" or any(
        a.set.get("generation.generator") == "controlnet" for a in params.ablations)
    keys = ("captioner", "clip", "diffusion") + (("controlnet",) if controlnet else ()) + (
        () if params.training.backbones else ("classifier",))
    out = [check_model(params, key) for key in keys] + check_backbones(params)
    # The LCM-LoRA where the run or a variant samples with it (generation.sampler: lcm).
    gen = params.generation
    loras = {a.set.get("generation.lcm.lora", gen.lcm.lora) for a in params.ablations
             if a.set.get("generation.sampler", gen.sampler) == "lcm"}
    loras |= {gen.lcm.lora} if gen.sampler == "lcm" else set()
    out += [_check_ref(params, "generation.lcm.lora", ref, is_timm=False) for ref in sorted(loras)]
    out += [check_dataset(params), check_versions(), check_device(params), *check_reuse(params)]
    return out + check_disk(Path(params.run.dir), params.run.min_free_gb) + [check_persistent(Path(params.run.dir))]


# --- canary -----------------------------------------------------------------------------------------------------------
