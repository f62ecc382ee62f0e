"""Ablations, generative baselines and two controls under the same protocol (beyond the paper).

An ablation profile (``params/*_ablations.yaml``) extends a data set's params file and
lists variants, each a set of overrides: a label-only prompt (the Real-Guidance-style
baseline), a caption-only prompt, a fixed guidance scale instead of f(s*), another
selection rule, other strengths on a subset, the ControlNet generator (SGID + ControlNet)
at the report's strength 0.3 (`generation.strength`) and above. Two variants are controls of the main verdict:

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

from functools import partial

import pandas as pd

from sgid_utils.core import catalog
from sgid_utils.core.registry import ablation_stages
from sgid_utils.core.resumable import shard
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.runner import run_stage
from sgid_utils.core.sharing import BASE, SHARED_STAGES, lenders, link_stages, share_baselines, variant_params
from sgid_utils.core.workers import run_ordered
from sgid_utils.errors import ParamsError, StageError
from sgid_utils.params.schema import AblationParams, Params
from sgid_utils.reporting.set_metrics import CURATED, set_metrics
from sgid_utils.reporting.stats import add_holm, paired_difference
from sgid_utils.reporting.tables import (
    ABLATION_DELTA,
    ABLATION_P_HOLM,
    ABLATION_SIGNIFICANT,
    ABLATION_SIGNIFICANT_HOLM,
    CONTROLS,
    format_delta,
    format_mean_std,
    per_setting,
    primary,
    verdict_cell,
)

# What a strength / generator sweep variant may change (notebook 07 tabulates those by strength and generator).
SWEEP_KEYS = {"generation.strength", "generation.generator", "models.controlnet", "dataset.max_per_class"}


def ablation_row(name: str, changes: dict, variant: Params) -> tuple[dict[str, str], pd.Series]:
    """One line of the ablation table (the variant's Baseline and SGID at 100 %, their paired difference) and the
    significance row behind it, whose p-value joins the table's Holm family."""
    results = primary(variant, catalog.load(variant, "training_results"))
    acc = per_setting(results)
    baseline = acc[acc.method == "baseline"].index[0]
    sgid = acc[(acc.method == "sgid") & (acc.proportion == 1.0)].index[0]
    sig = primary(variant, catalog.load(variant, "significance")).set_index("setting").loc[sgid]

    def cell(setting: str) -> str:
        return format_mean_std(acc.loc[setting, "mean"], acc.loc[setting, "std"], int(acc.loc[setting, "count"]))

    row = {"Variant": name, "Changes": ", ".join(f"{k}={v}" for k, v in changes.items()),
           "Baseline": cell(baseline), "SGID (100%)": cell(sgid), ABLATION_DELTA: format_delta(sig),
           ABLATION_SIGNIFICANT: verdict_cell(sig), "Control": control_answer(changes, sig),
           SPLIT_CHECK: split_check(variant, results[results.setting == baseline].set_index("seed").test_acc)
           if any(k.startswith("dataset.train_splits") for k in changes) else "–"}
    return row, sig


def with_holm(rows: list[dict[str, str]], sigs: list[pd.Series]) -> pd.DataFrame:
    """The ablation table with Holm's correction over its variants: a reader scanning a dozen rows for a
    'significant' one makes a dozen comparisons (each variant's own table holds one, so it cannot correct them)."""
    adjusted = add_holm(pd.DataFrame(sigs).reset_index(drop=True)) if sigs else None
    table = pd.DataFrame(rows)
    if adjusted is not None:
        table.insert(table.columns.get_loc(ABLATION_SIGNIFICANT) + 1, ABLATION_SIGNIFICANT_HOLM,
                     [verdict_cell(r, adjusted=True) for _, r in adjusted.iterrows()])
        table.insert(table.columns.get_loc(ABLATION_SIGNIFICANT_HOLM) + 1, ABLATION_P_HOLM,
                     ["–" if pd.isna(p) else f"{p:.3g}" for p in adjusted.p_holm])
    return table


def control_answer(changes: dict, sig: pd.Series) -> str:
    """For a control variant (``CONTROLS``), its question and the answer its paired comparison gives (unadjusted;
    the Holm column beside it corrects over all variants; the interval covers training seeds); '–' otherwise."""
    questions = [c.question for c in CONTROLS if c.key in changes]
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


# The split check's column: this protocol's Baseline minus each published Baseline.
SPLIT_CHECK = "Baseline − published Baselines (points, 95% CI)"


def split_check(params: Params, baseline: pd.Series) -> str:
    """This protocol's Baseline (accuracy per seed) minus each reference Baseline (params.references.tables), in
    points with its 95% t-interval over seeds, and a reminder of what that cannot show.

    A Baseline near a published number is consistent with that protocol, not evidence of it: other differences
    (epochs, preprocessing, the copy of the data) move a Baseline as much, so this cannot identify the report's
    protocol. '–' without reference Baselines.
    """
    refs = [(r.label, r.values["Baseline"]) for r in params.references.tables if "Baseline" in r.values]
    if not refs:
        return "–"
    cells = [f"{label} {100 * value:.2f} %: "
             f"{format_delta(pd.Series(paired_difference(baseline, {s: value for s in baseline.index})))}"
             for label, value in refs]
    return "; ".join(cells) + " (over training seeds; a near value cannot identify the report's protocol)"


def run(params: Params, jobs: int = 1) -> pd.DataFrame:
    """Run every variant of ``params.ablations`` from captions to results, on ``jobs`` processes (each variant
    starts once the earlier variants it links from are done: ``lenders``); tabulate their comparisons."""
    if not params.ablations:
        raise ParamsError(f"{params.source_file} lists no ablations: use an ablation profile such as "
                          "params/pets_ablations.yaml")
    if shard()[1] > 1:
        raise StageError("Ablations run their variants' stages one after another in one process; run them without "
                         "--shard or accelerate launch (shard the base run's stages instead).")
    variants = [(a, variant_params(params, a.name, a.set)) for a in params.ablations]  # validate all first
    runs = [v for _, v in variants]
    lent = lenders(params, runs)
    after = [{j for j in mine.values() if j not in (None, BASE)} for mine in lent]
    calls = [partial(run_variant, a, v, params, [runs[j] for j in sorted(deps)])
             for (a, v), deps in zip(variants, after)]
    made = [sum(j is None for j in mine.values()) for mine in lent]  # what each makes itself: the longest go first
    base_set = catalog.exists(params, "candidates")
    if base_set:  # the base run's curated set, beside the variants' in notebook 07's plot: a call of its own
        calls, after, made = [*calls, partial(curated_set_metrics, params, "base run")], [*after, set()], [*made, 0]
    done = run_ordered(calls, after, jobs, made)
    sets, done = (done[-1:], done[:-1]) if base_set else ([], done)
    rows, sigs = [row for row, _, _ in done], [sig for _, sig, _ in done]
    table = with_holm(rows, sigs)
    catalog.save(params, "ablations", table)
    catalog.save(params, "ablations_md", table)
    catalog.save(params, "ablation_set_metrics", pd.DataFrame(sets + [metrics for _, _, metrics in done]))
    return table


def run_variant(ablation: AblationParams, variant: Params, base: Params,
                earlier: list[Params]) -> tuple[dict[str, str], pd.Series, dict]:
    """One variant from captions to results, after linking what the base run and the earlier variants that lend it
    something (``lenders``) made with the same params: the first that has a stage lends it. Its table row,
    significance row and curated set's metrics."""
    for lender in [base, *earlier]:
        link_stages(RunDir.of(lender), variant, SHARED_STAGES)
        share_baselines(lender, variant)
    for stage in ablation_stages():
        run_stage(stage.name, variant)
    name = ablation.label or ablation.name
    return *ablation_row(name, ablation.set, variant), curated_set_metrics(variant, name, ablation.set)


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
