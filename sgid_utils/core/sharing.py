"""Reuse another run's finished stage folders (and Baseline runs), by symbolic link, while made with the same params.

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

from sgid_utils.core import catalog
from sgid_utils.core.files import changed_keys, read_fingerprint
from sgid_utils.core.fingerprints import (
    backbone_fingerprint,
    baseline_fingerprint,
    baseline_view,
    fingerprint,
)
from sgid_utils.core.registry import upstream_closure
from sgid_utils.core.rundir import RunDir
from sgid_utils.errors import StageError
from sgid_utils.params.backbones import TrainConfig, backbones
from sgid_utils.params.load import load_params
from sgid_utils.params.schema import Params


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
    return read_fingerprint(recorded) == fingerprint(params, stage) if recorded.exists() else None


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
    if not catalog.exists(have, "curated"):
        raise StageError(f"run.reuse names {source}, whose stages up to curation are not finished there (no "
                         f"{catalog.path(have, 'curated')}). Run that data set's profile first (e.g. make reproduce "
                         "PARAMS=params/pets.yaml), point run.reuse at where it ran (on Colab: your Drive run_dir), or "
                         "remove run.reuse to generate the images in this run.")
    return have


def reuse_plan(params: Params) -> LinkPlan:
    """What ``run.reuse`` shares, without linking (preflight's check and projection)."""
    return plan_links(reuse_source(params), params, upstream_closure("curation"))


def reuse_run(params: Params) -> list[str]:
    """``run.reuse``: link the named run's stages up to curation that were made with the same params; the others are
    computed here. Says so once, when it links (the first stage call of a run)."""
    if RunDir.of(params).stage("curation").exists():
        return []  # linked (or made here) before
    have, stages, want = reuse_source(params), upstream_closure("curation"), RunDir.of(params)
    first = not any(want.stage(s).exists() or want.stage(s).is_symlink() for s in stages)
    plan = link_stages(have, params, stages)
    if first or plan.to_link:
        message = f"[sgid] run.reuse: linked {', '.join(plan.to_link) or 'nothing'} from {have.root}"
        if plan.differ:
            keys = sorted({k for stage in plan.differ
                           for k in changed_keys(read_fingerprint(have.fingerprint_file(stage)),
                                                      fingerprint(params, stage))})
            message += f"; made there with other params ({', '.join(keys)}), so run here: {', '.join(plan.differ)}"
        print(message, file=sys.stderr)
    return plan.to_link


def variant_params(params: Params, name: str, overrides: dict) -> Params:
    """The params of one variant: the base file with its overrides, in its own run directory, trained as Baseline
    and SGID (100 %) on the first backbone only (a variant changes generation, not the classifier). ``run ablations``
    and preflight's projection derive a variant's params here, so they agree on what it shares with the base run."""
    run = RunDir.of(params)
    first = [b.name for b in params.training.backbones[:1]]
    sets = {**overrides, "run.dir": str(run.variant_root(name)), "run.name": f"{params.run.name}-{name}",
            "run.reports_dir": str(run.variant_reports(name)),
            # a variant of the methods comparison (equal steps) may keep its methods; others train Baseline and SGID
            "training.methods": overrides.get("training.methods", ["baseline", "sgid"]),
            "training.sgid_proportions": [1.0],
            "training.backbones": [b.model_dump(mode="json") for b in params.training.backbones[:1]],
            "smoke.tiny_backbones": {k: v for k, v in params.smoke.tiny_backbones.items() if k in first},
            "references.tables": [r.model_dump(mode="json") for r in params.references.tables
                                   if r.backbone is None or r.backbone in first],
            "references.headline": None}  # the per-backbone gains belong to the base run
    return load_params(params.source_file, sets)


# What an ablation variant may take from the base run or an earlier variant: the stages up to curation, while their
# params are unchanged (a training-only variant such as equal steps reuses the curated set; a selection-rule variant
# the generated images; a prompt variant only the captions and scores), and the Baseline runs.
# And the compared methods' images (config.methods).
SHARED_STAGES = [*upstream_closure("curation"), "real_guidance", "inversion", "da_fusion"]


def share_baselines(base: Params, variant: Params) -> list[str]:
    """Link ``base``'s finished Baseline runs into the variant (``base``: the base run or an earlier variant).

    A Baseline does not depend on generation, so a prompt or guidance variant would retrain exactly
    the same models; a variant that changes the data (a subset) trains its own.
    """
    have, want = RunDir.of(base), RunDir.of(variant)
    if not baselines_alike(have, variant):
        return []
    linked = []
    for name in baselines(variant):
        if have.result(name).exists() and not want.config_dir(name).exists():
            link(have.config_dir(name), want.config_dir(name))
            linked.append(name)
    return linked


def baselines(variant: Params) -> list[str]:
    """The variant's Baseline configurations (one per seed, first backbone): what a lender's Baselines must cover."""
    return [TrainConfig("baseline", seed, backbone=backbones(variant)[0].name).name for seed in variant.training.seeds]


def baselines_alike(have: RunDir, variant: Params) -> bool:
    """Whether ``have`` trained (or is training) its Baselines with the params ``variant`` gives them: its train
    stage's record, and the first backbone's recipe (the base run may have trained it with another, or not at all)."""
    if not have.fingerprint_file("training").exists():
        return False
    before, now = baseline_view(read_fingerprint(have.fingerprint_file("training"))), baseline_fingerprint(variant)
    if any(before.get(k) != v for k, v in now.items()):
        return False
    bb = backbones(variant)[0]
    return not bb.name or (have.backbone_fingerprint(bb.name).exists()
                           and read_fingerprint(have.backbone_fingerprint(bb.name)) == backbone_fingerprint(bb))


def same_baselines(one: Params, other: Params) -> bool:
    """Whether two runs' Baselines are the same models, from their params (``baselines_alike`` for a run not made
    yet)."""
    return (baseline_fingerprint(one) == baseline_fingerprint(other)
            and backbone_fingerprint(backbones(one)[0]) == backbone_fingerprint(backbones(other)[0]))


BASE = -1  # in ``lenders``: the base run lends it


def lenders(base: Params, runs: list[Params], recorded: bool = True) -> list[dict[str, int | None]]:
    """For each ablation variant, who lends each of its stages up to curation and its Baselines ('baselines'): the
    first run with the same fingerprint, the base run (``BASE``) first, then the earlier variants (their index); None
    where the variant makes its own. ``recorded``: the base run as its run directory records it (``run ablations``;
    it lends the Baselines only with every seed's); otherwise as its params would make it (preflight's projection).

    Under ``jobs`` > 1 a variant starts after the variants that lend it something, so it links what a one-process run
    links and never a variant's half-made folder. (``make reproduce`` finishes the base run's stages first. A base
    stage still unfinished would be finished through their links by every variant that shares it, at once: the same
    files, atomically written, with the work repeated.)"""
    have = RunDir.of(base)

    def base_lends(variant: Params, stage: str) -> bool:
        return bool(made_alike(have, variant, stage)) if recorded else fingerprint(base, stage) == fingerprint(
            variant, stage)

    def base_lends_baselines(variant: Params) -> bool:
        if recorded:
            return baselines_alike(have, variant) and all(have.result(n).exists() for n in baselines(variant))
        return "baseline" in base.training.methods and same_baselines(base, variant)

    found: list[dict[str, int | None]] = []
    for i, variant in enumerate(runs):
        mine: dict[str, int | None] = {
            stage: BASE if base_lends(variant, stage) else
            next((j for j in range(i) if fingerprint(runs[j], stage) == fingerprint(variant, stage)), None)
            for stage in SHARED_STAGES}
        mine["baselines"] = BASE if base_lends_baselines(variant) else next(
            (j for j in range(i) if same_baselines(runs[j], variant)), None)
        found.append(mine)
    return found
