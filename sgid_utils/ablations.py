"""Ablations and generative baselines under the same protocol (beyond the paper).

An ablation profile (``params/*_ablations.yaml``) extends a data set's params file and
lists variants, each a set of overrides of the generation stage: a label-only prompt
(the Real-Guidance-style baseline), a caption-only prompt, a fixed guidance scale
instead of f(s*), other strengths on a subset. Each variant is its own run directory,
``<run.dir>-<name>``, trained with the same seeds as Baseline and SGID at 100 %, so
every row carries its own mean ± std and its own paired comparison to its Baseline.
Captions, similarity and the Baseline runs are shared with the base run, or with a variant
run before, through symbolic links when the variant leaves what they depend on unchanged
(the strength variants share one data subset, its captions and its Baselines).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .io import read_json, write_table
from .params import Params, ParamsError, load_params

SHARED_STAGES = ("data", "captions", "similarity")


def variant_params(params: Params, name: str, overrides: dict) -> Params:
    """The params of one variant: the base file with its overrides, in its own run directory."""
    sets = {**overrides, "run.dir": f"{params.run.dir}-{name}", "run.name": f"{params.run.name}-{name}",
            "run.reports_dir": str(Path(params.run.reports_dir) / "ablations" / name),
            "training.methods": ["baseline", "sgid"], "training.sgid_proportions": [1.0]}
    return load_params(params.source_file, sets)


def share_upstream(base: Params, variant: Params) -> list[str]:
    """Link the base run's data/captions/similarity into the variant when they were made with the same params."""
    linked = []
    for stage in SHARED_STAGES:
        src, dst = Path(base.run.dir) / stage, Path(variant.run.dir) / stage
        if dst.exists() or not (src / "_params.json").exists():
            continue
        if read_json(src / "_params.json") != variant.stage_fingerprint(stage):
            break  # a later stage depends on this one: stop sharing here
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src.resolve(), dst, target_is_directory=True)
        linked.append(stage)
    return linked


def share_baselines(base: Params, variant: Params) -> list[str]:
    """Link the base run's finished Baseline runs into the variant.

    A Baseline does not depend on generation, so a prompt or guidance variant would retrain exactly
    the same models; a variant that changes the data (a subset) trains its own.
    """
    from .training import TrainConfig

    fingerprint = Path(base.run.dir) / "training" / "_params.json"
    if not fingerprint.exists():
        return []
    before, now = read_json(fingerprint), variant.stage_fingerprint("train_baseline")
    if any(before.get(k) != v for k, v in now.items()):
        return []
    linked = []
    for seed in variant.training.seeds:
        name = TrainConfig("baseline", seed).name
        src, dst = Path(base.run.dir) / "training" / name, Path(variant.run.dir) / "training" / name
        if (src / "result.json").exists() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src.resolve(), dst, target_is_directory=True)
            linked.append(name)
    return linked


def _mean_std(acc: pd.DataFrame, setting: str) -> str:
    from .results import format_mean_std

    return format_mean_std(acc.loc[setting, "mean"], acc.loc[setting, "std"], int(acc.loc[setting, "count"]))


def run_ablations(params: Params) -> pd.DataFrame:
    """Run every variant of ``params.ablations`` through generation, curation and training; tabulate."""
    from .captioning import run_captions
    from .curation import run_curation
    from .generation import run_generation
    from .results import significance
    from .similarity import run_similarity
    from .training import run_training

    from .pipeline import StageError, shard

    if not params.ablations:
        raise ParamsError(f"{params.source_file} lists no ablations: use an ablation profile such as params/pets_ablations.yaml")
    if shard()[1] > 1:
        raise StageError("Ablations run their variants' stages one after another in one process; run them without "
                         "--shard or accelerate launch (shard the base run's stages instead).")
    variants = [(a, variant_params(params, a.name, a.set)) for a in params.ablations]  # validate all first
    rows, finished = [], [params]
    for ablation, variant in variants:
        for earlier in finished:  # the first run made with the same upstream params is linked
            share_upstream(earlier, variant)
            share_baselines(earlier, variant)
        for stage in (run_captions, run_similarity, run_generation, run_curation):
            stage(variant)
        results = run_training(variant)
        finished.append(variant)
        sig = significance(results, variant).set_index("setting").loc["SGID (100%)"]
        acc = results.groupby("setting").test_acc.agg(["mean", "std", "count"])
        rows.append({
            "Variant": ablation.name, "Changes": ", ".join(f"{k}={v}" for k, v in ablation.set.items()),
            "Baseline": _mean_std(acc, "Baseline"),
            "SGID (100%)": _mean_std(acc, "SGID (100%)"),
            "Δ (95% CI)": f"{sig.mean_diff:+.4f} [{sig.ci_low:+.4f}, {sig.ci_high:+.4f}]",
            "Significant": "yes" if sig.significant else "no",
        })
    table = pd.DataFrame(rows)
    out = Path(params.run.reports_dir) / "tables"
    write_table(out / "ablations.csv", table)
    write_table(out / "ablations.md", table)
    return table
