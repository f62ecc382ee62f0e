"""Reuse another run's finished stage folders, by symbolic link, while they were made with the same params.

Ablation variants share their base run's captions, scores and images this way, and a profile that only
changes training (``params/pets_backbones.yaml``) names the data set's main run in ``run.reuse`` and trains
on its generated images instead of generating them again. A stage is linked only when its recorded
fingerprint equals the one this run's params give; a fingerprint holds every upstream stage's keys, so a stage
downstream of one made with other params differs too and is computed here.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from sgid_utils.config.schema import Params
from sgid_utils.core.errors import StageError
from sgid_utils.core.files import changed_keys, read_json
from sgid_utils.core.fingerprints import fingerprint
from sgid_utils.core.registry import upstream_closure
from sgid_utils.core.rundir import RunDir


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
    recorded = have.fingerprint_file(stage)
    return read_json(recorded) == fingerprint(params, stage) if recorded.exists() else None


@dataclass
class LinkPlan:
    """What this run shares with ``have``: ``shared`` (linked already or to link now, in order), ``to_link`` (the
    part not linked yet) and ``differ`` (stages ``have`` made with other params; they are computed here)."""

    shared: list[str]
    to_link: list[str]
    differ: list[str]


def plan_links(have: RunDir, params: Params, stages: list[str]) -> LinkPlan:
    """Which of ``stages`` this run can take from ``have``: each whose recorded fingerprint equals this run's, since a
    fingerprint holds every upstream stage's keys too. A stage this run made itself is kept; a dangling link (the run
    it pointed at moved) is an error."""
    want, plan = RunDir.of(params), LinkPlan([], [], [])
    for stage in stages:
        mine = want.stage(stage)
        if mine.is_symlink() and not mine.exists():
            raise StageError(f"{mine} links to {os.readlink(mine)}, which no longer exists (a moved or deleted run?); "
                             "remove the link to recompute or relink that stage.")
        if mine.is_symlink():
            plan.shared.append(stage)
        elif not mine.exists():
            alike = made_alike(have, params, stage)
            plan.shared += [stage] if alike else []
            plan.to_link += [stage] if alike else []
            plan.differ += [stage] if alike is False else []
    return plan


def link_stages(have: RunDir, params: Params, stages: list[str]) -> LinkPlan:
    """Link ``have``'s folders of ``stages`` into ``params``' run dir where their fingerprints match."""
    plan = plan_links(have, params, stages)
    for stage in plan.to_link:
        link(have.stage(stage), RunDir.of(params).stage(stage))
    return plan


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


def reuse_plan(params: Params) -> LinkPlan:
    """What ``run.reuse`` shares, without linking (preflight's check and projection)."""
    return plan_links(reuse_source(params), params, upstream_closure("curate"))


def reuse_run(params: Params) -> list[str]:
    """``run.reuse``: link the named run's stages up to curation that were made with the same params; the others are
    computed here. Says so once, when it links (the first stage call of a run)."""
    if RunDir.of(params).stage("curate").exists():
        return []  # linked (or made here) before
    have, stages, want = reuse_source(params), upstream_closure("curate"), RunDir.of(params)
    first = not any(want.stage(s).exists() or want.stage(s).is_symlink() for s in stages)
    plan = link_stages(have, params, stages)
    if first or plan.to_link:
        message = f"[sgid] run.reuse: linked {', '.join(plan.to_link) or 'nothing'} from {have.root}"
        if plan.differ:
            keys = sorted({k for stage in plan.differ
                           for k in changed_keys(read_json(have.fingerprint_file(stage)), fingerprint(params, stage))})
            message += f"; made there with other params ({', '.join(keys)}), so run here: {', '.join(plan.differ)}"
        print(message, file=sys.stderr)
    return plan.to_link
