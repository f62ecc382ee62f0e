"""Ablations, generative baselines and two controls under the same protocol (beyond the paper).

An ablation profile (``params/*_ablations.yaml``) extends a data set's params file and
lists variants, each a set of overrides: a label-only prompt (the Real-Guidance-style
baseline), a caption-only prompt, a fixed guidance scale instead of f(s*), another
selection rule, other strengths on a subset, the ControlNet generator (SGID + ControlNet)
at the report's strength 0.3 and above. Two variants are controls of the main verdict:

- ``sgid-equal-steps`` (``training.equal_steps: true``): SGID at 100 % trained for the
  Baseline's number of optimisation steps, so its row says whether SGID's gain survives
  equal compute (with equal epochs it takes twice the Baseline's steps);
- ``second-draw`` (``run.draw: 1``): captions, candidates and selection redrawn, trained
  on the same data split and training seeds, so its row says whether the gain holds on a
  new generation draw (every other interval covers training seeds on one draw).

Each variant is its own run directory, ``<run.dir>-<name>``, trained with the same seeds
as Baseline and SGID at 100 %, so every row carries its own mean ± std and its own paired
comparison to its Baseline. Stages up to curation and the Baseline runs are shared with the
base run, or with a variant run before, through symbolic links when the variant leaves
what they depend on unchanged (the strength variants share one data subset, its captions
and its Baselines; both controls share the base run's Baselines).
"""

from __future__ import annotations

import pandas as pd

from .errors import ParamsError, StageError
from .fingerprints import backbone_fingerprint, baseline_fingerprint, baseline_view
from .io import read_json, read_table, write_table
from .params import load_params
from .quality_report import CURATED, set_metrics
from .results import format_delta, format_mean_std, load_significance, per_setting, primary, verdict_cell
from .resumable import shard
from .rundir import RunDir
from .runner import run_stage
from .schema import Params
from .stats import add_holm
from .sharing import link, link_stages
from .stages import between, upstream_closure
from .training import TrainConfig, backbones, load_results

# The stages up to curation: shared while their params are unchanged (a training-only variant such as equal steps
# reuses the curated set; a selection-rule variant the generated images; a prompt variant only the captions and scores).
SHARED_STAGES = upstream_closure("curate")
# What a strength / generator sweep variant may change (notebook 07 tabulates those by strength and generator).
SWEEP_KEYS = {"generation.strength", "generation.generator", "models.controlnet", "dataset.max_per_class"}


def variant_params(params: Params, name: str, overrides: dict) -> Params:
    """The params of one variant: the base file with its overrides, in its own run directory, trained as Baseline
    and SGID (100 %) on the first backbone only (a variant changes generation, not the classifier)."""
    run = RunDir.of(params)
    first = [b.name for b in params.training.backbones[:1]]
    sets = {**overrides, "run.dir": str(run.variant_root(name)), "run.name": f"{params.run.name}-{name}",
            "run.reports_dir": str(run.variant_reports(name)),
            "training.methods": ["baseline", "sgid"], "training.sgid_proportions": [1.0],
            "training.backbones": [b.model_dump(mode="json") for b in params.training.backbones[:1]],
            "smoke.tiny_backbones": {k: v for k, v in params.smoke.tiny_backbones.items() if k in first},
            "results.references": [r.model_dump(mode="json") for r in params.results.references
                                   if r.backbone is None or r.backbone in first],
            "results.headline": None}  # the per-backbone gains belong to the base run
    return load_params(params.source_file, sets)


def share_baselines(base: Params, variant: Params) -> list[str]:
    """Link the base run's finished Baseline runs into the variant.

    A Baseline does not depend on generation, so a prompt or guidance variant would retrain exactly
    the same models; a variant that changes the data (a subset) trains its own.
    """
    have, want = RunDir.of(base), RunDir.of(variant)
    if not have.fingerprint("train").exists():
        return []
    before, now = baseline_view(read_json(have.fingerprint("train"))), baseline_fingerprint(variant)
    if any(before.get(k) != v for k, v in now.items()):
        return []
    bb = backbones(variant)[0]
    if bb.name and (not have.backbone_fingerprint(bb.name).exists()
                    or read_json(have.backbone_fingerprint(bb.name)) != backbone_fingerprint(bb)):
        return []  # the base run trained this backbone with another recipe (or not at all)
    linked = []
    for seed in variant.training.seeds:
        name = TrainConfig("baseline", seed, backbone=bb.name).name
        if have.result(name).exists() and not want.config_dir(name).exists():
            link(have.config_dir(name), want.config_dir(name))
            linked.append(name)
    return linked


# Column names of the ablation table (the report page reads the first four).
DELTA, SIGNIFICANT, SIGNIFICANT_HOLM, P_HOLM = ("Δ (points, 95% CI)", "Significant (unadjusted)",
                                              "Significant (Holm over variants)", "p (Holm)")


def ablation_row(name: str, changes: dict, variant: Params) -> tuple[dict[str, str], pd.Series]:
    """One line of the ablation table (the variant's Baseline and SGID at 100 %, their paired difference) and the
    significance row behind it, whose p-value joins the table's Holm family."""
    results = primary(variant, load_results(variant))
    acc = per_setting(results)
    baseline = acc[acc.method == "baseline"].index[0]
    sgid = acc[(acc.method == "sgid") & (acc.proportion == 1.0)].index[0]
    sig = primary(variant, load_significance(variant)).set_index("setting").loc[sgid]

    def cell(setting: str) -> str:
        return format_mean_std(acc.loc[setting, "mean"], acc.loc[setting, "std"], int(acc.loc[setting, "count"]))

    row = {"Variant": name, "Changes": ", ".join(f"{k}={v}" for k, v in changes.items()),
           "Baseline": cell(baseline), "SGID (100%)": cell(sgid), DELTA: format_delta(sig),
           SIGNIFICANT: verdict_cell(sig), "Control": control_answer(changes, sig),
           "Baseline nearest to": nearest_reference(variant, acc.loc[baseline, "mean"])
           if any(k.startswith("dataset.train_splits") for k in changes) else "–"}
    return row, sig


def with_holm(rows: list[dict[str, str]], sigs: list[pd.Series]) -> pd.DataFrame:
    """The ablation table with Holm's correction over its variants: a reader scanning a dozen rows for a
    'significant' one makes a dozen comparisons (each variant's own table holds one, so it cannot correct them)."""
    adjusted = add_holm(pd.DataFrame(sigs).reset_index(drop=True)) if sigs else None
    table = pd.DataFrame(rows)
    if adjusted is not None:
        table.insert(table.columns.get_loc(SIGNIFICANT) + 1, SIGNIFICANT_HOLM,
                     [verdict_cell(r, adjusted=True) for _, r in adjusted.iterrows()])
        table.insert(table.columns.get_loc(SIGNIFICANT_HOLM) + 1, P_HOLM,
                     ["–" if pd.isna(p) else f"{p:.3g}" for p in adjusted.p_holm])
    return table


# The two controls of the main verdict: the key a variant sets, and the question its row answers.
CONTROLS = {"training.equal_steps": "Does SGID's gain survive equal compute (the Baseline's steps)?",
            "run.draw": "Does SGID's gain hold on a new generation draw?"}


def control_answer(changes: dict, sig: pd.Series) -> str:
    """For a control variant (``CONTROLS``), its question and the answer its paired comparison gives (unadjusted;
    the Holm column beside it corrects over all variants; the interval covers training seeds); '–' otherwise."""
    questions = [q for key, q in CONTROLS.items() if key in changes]
    if not questions:
        return "–"
    word = verdict_cell(sig)
    if word == "yes":
        answer = "yes: SGID significantly above its Baseline" if sig.mean_diff > 0 else \
            "no: SGID significantly below its Baseline"
    elif word == "no":
        answer = "no significant gain"
    else:
        answer = word
    return f"{' '.join(questions)} {answer} (unadjusted; the interval covers training seeds)"


def nearest_reference(params: Params, baseline: float) -> str:
    """Which reference Baseline (the paper's, the report's: params.results.references) a measured one is nearest to.

    How the Flowers split hypotheses are told apart: each protocol's Baseline lands nearer one published number.
    """
    refs = [(r.label, r.values["Baseline"]) for r in params.results.references if "Baseline" in r.values]
    if not refs:
        return "–"
    label, value = min(refs, key=lambda ref: abs(ref[1] - baseline))
    return f"{label} ({100 * value:.2f} %, Δ {100 * (baseline - value):+.2f} points)"


def run_ablations(params: Params) -> pd.DataFrame:
    """Run every variant of ``params.ablations`` from captions to results; tabulate their comparisons."""
    if not params.ablations:
        raise ParamsError(f"{params.source_file} lists no ablations: use an ablation profile such as params/pets_ablations.yaml")
    if shard()[1] > 1:
        raise StageError("Ablations run their variants' stages one after another in one process; run them without "
                         "--shard or accelerate launch (shard the base run's stages instead).")
    variants = [(a, variant_params(params, a.name, a.set)) for a in params.ablations]  # validate all first
    rows, sigs, finished = [], [], [params]
    sets = [curated_set_metrics(params, "base run")] if RunDir.of(params).candidates_table.exists() else []
    for ablation, variant in variants:
        for earlier in finished:  # the first run made with the same upstream params is linked
            link_stages(RunDir.of(earlier), variant, SHARED_STAGES)
            share_baselines(earlier, variant)
        for stage in between("captions", "results"):
            run_stage(stage.name, variant)
        finished.append(variant)
        row, sig = ablation_row(ablation.label or ablation.name, ablation.set, variant)
        rows.append(row)
        sigs.append(sig)
        sets.append(curated_set_metrics(variant, ablation.label or ablation.name, ablation.set))
    table = with_holm(rows, sigs)
    run = RunDir.of(params)
    write_table(run.table("ablations.csv"), table)
    write_table(run.table("ablations.md"), table)
    write_table(run.table("ablation_set_metrics.csv"), pd.DataFrame(sets))
    return table


def load_ablation_table(params: Params) -> pd.DataFrame | None:
    """The ablation table ``run ablations`` wrote for this run, or None before its profile has run."""
    path = RunDir.of(params).table("ablations.csv")
    return read_table(path) if path.exists() else None


def curated_set_metrics(params: Params, name: str, changes: dict | None = None) -> dict:
    """The curated set of one run on the consistency and diversity axes, with the generator and strength that made
    it, for notebook 07's plot of the variants (SGID + ControlNet beside plain SGID at each strength).

    ``sweep``: the variant changes only the generator, its settings, the strength and the subset, so notebook 07's
    strength-by-generator table compares like with like (not a prompt or guidance variant at the same strength).
    """
    row = set_metrics(params).set_index("set").loc[CURATED].drop("kind")
    sweep = bool(changes) and all(k in SWEEP_KEYS or k.startswith("generation.controlnet.") for k in changes)
    return {"Variant": name, "generator": params.generation.generator, "strength": params.generation.strength,
            "sweep": sweep, **row.to_dict()}
