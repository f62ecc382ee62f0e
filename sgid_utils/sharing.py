"""Reuse another run's finished stage folders, by symbolic link, while they were made with the same params.

Ablation variants share their base run's captions, scores and images this way, and a profile that only
changes training (``params/pets_backbones.yaml``) names the data set's main run in ``run.reuse`` and trains
on its generated images instead of generating them again. A stage is linked only when its recorded
fingerprint equals the one this run's params give; linking stops at the first stage that differs, because
every later stage depends on it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import StageError
from .fingerprints import fingerprint
from .io import read_json
from .rundir import RunDir
from .schema import Params
from .stages import upstream_closure


def link(src: Path, dst: Path) -> None:
    """``dst`` -> ``src``; a link another process made a moment earlier to the same place is fine."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src.resolve(), dst, target_is_directory=True)
    except FileExistsError:
        if not (dst.is_symlink() and Path(os.readlink(dst)) == src.resolve()):
            raise StageError(f"{dst} already exists and is not a link to {src.resolve()} (a moved or deleted run it "
                             "linked to?); remove it to recompute or relink that stage.") from None


def made_alike(have: RunDir, params: Params, stage: str) -> bool | None:
    """Whether ``have`` made ``stage`` with the params ``params`` give it (None: it has no record of the stage)."""
    recorded = have.fingerprint(stage)
    return read_json(recorded) == fingerprint(params, stage) if recorded.exists() else None


def link_stages(have: RunDir, params: Params, stages: list[str]) -> list[str]:
    """Link ``have``'s folders of ``stages`` (in order) into ``params``' run dir while their fingerprints match."""
    want = RunDir.of(params)
    linked = []
    for stage in stages:
        if want.stage(stage).is_symlink() and not want.stage(stage).exists():
            raise StageError(f"{want.stage(stage)} links to {os.readlink(want.stage(stage))}, which no longer exists (a "
                             "moved or deleted run?); remove the link to recompute or relink that stage.")
        if want.stage(stage).exists():
            continue
        alike = made_alike(have, params, stage)
        if alike is False:
            break  # a later stage depends on this one: stop sharing here
        if alike:
            link(have.stage(stage), want.stage(stage))
            linked.append(stage)
    return linked


def reuse_source(params: Params) -> RunDir:
    """``run.reuse``'s run directory; a clear error unless its stages up to curation are finished (its curated table).

    A missing or unfinished run is an error rather than a silent regeneration (hours on a GPU).
    """
    source = Path(params.run.reuse)
    have = RunDir(source, source)
    if not have.curated_table().exists():
        raise StageError(f"run.reuse names {source}, whose stages up to curation are not finished there (no "
                         f"{have.curated_table()}). Run that data set's profile first (e.g. make reproduce "
                         "PARAMS=params/pets.yaml), point run.reuse at where it ran (on Colab: your Drive run_dir), or "
                         "remove run.reuse to generate the images in this run.")
    return have


def reusable_stages(params: Params) -> list[str]:
    """The stages up to curation ``run.reuse`` would link (preflight's projection counts them as done)."""
    have, shared = reuse_source(params), []
    for stage in upstream_closure("curate"):
        alike = made_alike(have, params, stage)
        if alike is False:
            break
        shared += [stage] if alike else []
    return shared


def reuse_run(params: Params) -> list[str]:
    """``run.reuse``: link the named run's stages up to curation while they were made with the same params; stages
    made there with other params are computed here, and the runner says which were linked."""
    if RunDir.of(params).stage("curate").exists():
        return []  # linked (or made here) before
    have = reuse_source(params)
    stages = upstream_closure("curate")
    linked = link_stages(have, params, stages)
    message = f"[sgid] run.reuse: linked {', '.join(linked) or 'nothing'} from {have.root}"
    differs = next((s for s in stages if made_alike(have, params, s) is False), None)
    if differs is not None:
        before, now = read_json(have.fingerprint(differs)), fingerprint(params, differs)
        keys = ", ".join(sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k)))
        message += f"; '{differs}' was made there with other params ({keys}): it and every later stage run here"
    print(message, file=sys.stderr)
    return linked
