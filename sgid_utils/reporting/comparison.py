"""Which augmentation: every generative method's gain over the best non-generative one, beside what it cost.

Per backbone, each generative setting of the run (SGID, Real Guidance, ... at each proportion) and of the run's
equal-steps variants (``ablations`` with ``training.equal_steps: true``, whose Baselines are the base run's, linked)
and sampler variants (``generation.sampler``: SGID with LCM-LoRA's few steps, named as a method of its own) gets
one row: synthetic images per real image, optimisation steps, accuracy, its gain over the best non-generative
method of the base run (the highest mean of Baseline, CutMix and RandAugment, picked from the numbers as
``stages.results.backbone_gains`` picks it) with the paired 95% CI over training seeds and the verdicts (unadjusted,
and Holm over this table's rows), the device hours of the stages the method needs (``params.methods``; measured by the
runner, ``core.provenance.stage_seconds``, on the machine named in the Device column) and points per device hour.

The cost is the method's generation only: every row trains the same backbone recipe, and the steps column says how
long. Non-generative methods cost no generation and have no row of their own.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sgid_utils.core import catalog
from sgid_utils.core.provenance import stage_seconds
from sgid_utils.core.sharing import variant_params
from sgid_utils.params.backbones import NON_GENERATIVE, backbones
from sgid_utils.params.methods import BY_METHOD, REPLACING
from sgid_utils.params.methods import made_per_real as made_per_section
from sgid_utils.params.samplers import sampler_label
from sgid_utils.params.schema import Params
from sgid_utils.reporting.costs import CountsOf, Projection, projected, projection
from sgid_utils.reporting.stats import (
    holm,
    joint_verdict,
    paired_difference,
    pooled_mcnemar,
    setting_predictions,
)
from sgid_utils.reporting.tables import format_mean_std, format_p, of_backbone, per_setting

GAIN = "Gain (points, 95% CI)"
TEST_P = "Test-set check (McNemar p, pooled over seeds)"
HOURS = "Device hours"
PER_HOUR = "Points per device hour"
PROJECTED = "Projected GPU hours"  # shown as "Projected GPU hours (full <data set>, <GPU>)"; reporting.costs
PROJECTED_FOR, PROJECTION_BASIS = "Projected for", "Projection basis"
NO_REPORT = "no GPU report"


def method_stages(method: str) -> tuple[str, ...]:
    """The stages a training method's images come from: SGID's chain for SGID and its filtered or combined forms."""
    return BY_METHOD[method].stages if method in BY_METHOD else BY_METHOD["sgid"].stages


def made_per_real(params: Params, method: str) -> int:
    """Synthetic images the method's last stage makes per real image (DA-Fusion: M; Real Guidance: M while its
    recipe trains; the others one)."""
    return made_per_section(params, BY_METHOD[method].section if method in BY_METHOD else None)


def method_cost(params: Params, method: str) -> tuple[float, str]:
    """Measured device seconds of the stages ``method`` needs, and the machines they ran on. A method that uses one
    of the M images its generation made per real image (DA-Fusion the package's way) is charged 1/M of that stage,
    the share a run making only those would take."""
    seconds, machines = 0.0, []
    stages = method_stages(method)
    share = 1 if method in REPLACING else made_per_real(params, method)
    for stage in stages:
        s, m = stage_seconds(params, stage)
        seconds, machines = seconds + (s / share if stage == stages[-1] else s), machines + m
    return seconds, " / ".join(dict.fromkeys(machines)) or "not recorded"


def sgid_name(params: Params) -> str:
    """SGID's name in a run under its sampler: 'SGID', or 'SGID (LCM-LoRA, 3 steps)' (a different method)."""
    gen = params.generation
    return sampler_label(gen.sampler, gen.steps, gen.strength)


def sampler_variants(params: Params, needs: str) -> list[Params]:
    """The run's variants on another sampler (``generation.sampler``: SGID by a different method) whose catalog entry
    ``needs`` exists."""
    variants = [variant_params(params, a.name, a.set) for a in params.ablations if "generation.sampler" in a.set]
    return [v for v in variants if v.generation.sampler != params.generation.sampler and catalog.exists(v, needs)]


def compared_runs(params: Params) -> list[tuple[str, Params]]:
    """The run's variants the table shows once they have finished training, with their recipe: the equal-steps ones
    (``training.equal_steps: true``, at the Baseline's steps) and those on another sampler (``sampler_variants``)."""
    out = []
    for a in params.ablations:
        if a.set.get("training.equal_steps") is True:
            variant = variant_params(params, a.name, a.set)
            if catalog.exists(variant, "training_results"):
                out.append((f"equal steps ({a.label or a.name})", variant))
    recipe = "equal steps" if params.training.equal_steps else "equal epochs"
    return out + [(recipe, v) for v in sampler_variants(params, "training_results")]


def _predictions(params: Params, results: pd.DataFrame, setting: str) -> pd.DataFrame:
    """A setting's test predictions over its seeds (``stats.setting_predictions`` from this run's files)."""
    return setting_predictions(results, setting, lambda config: catalog.load(params, "predictions", config=config))


def _rows(params: Params, results: pd.DataFrame, best: str, best_acc: pd.Series, best_pred: pd.DataFrame,
          bb_label: str, recipe: str, proj: Projection | None) -> list[dict]:
    """One row per generative setting of ``results`` (one backbone), with its paired difference to the best
    non-generative setting ``best`` (its accuracy per seed: ``best_acc``) and the test-set check against it
    (pooled McNemar on ``best_pred``, its predictions), the same two checks as SGID's headline verdict; ``proj``:
    the run's projection onto the GPU report's device (``costs.projection``)."""
    acc = per_setting(results)
    rows = []
    for setting, r in acc[~acc.method.isin(NON_GENERATIVE)].iterrows():
        own = results[results.setting == setting]
        diff = paired_difference(own.set_index("seed").test_acc, best_acc)
        diff["test_p"] = pooled_mcnemar(_predictions(params, results, setting), best_pred)["p_value"]
        seconds, device = method_cost(params, r.method)
        own_recipe = r.method in REPLACING
        d = getattr(params, BY_METHOD[r.method].section) if own_recipe else None
        own_text = f"its own (M={d.num_synthetic}, p={d.synthetic_probability:g})" if d else ""
        share = 1 if own_recipe else made_per_real(params, r.method)
        full_seconds, basis = projected(proj, method_stages(r.method), share)
        rows.append({"Backbone": bb_label, "Method": setting.replace("SGID", sgid_name(params), 1),
                     "Recipe": own_text if own_recipe else recipe,
                     "Synthetic per real": float(d.num_synthetic if d else r.proportion),
                     "Steps": int(own.steps.mean()),
                     "Accuracy (%)": format_mean_std(r["mean"], r["std"], int(r["count"])),
                     "Best non-generative": best, "_diff": diff, HOURS: seconds / 3600, "Device": device,
                     PROJECTED: full_seconds / 3600, PROJECTED_FOR: proj.label if proj else NO_REPORT,
                     PROJECTION_BASIS: basis})
    return rows


def comparison_table(params: Params, results: pd.DataFrame, counts_of: CountsOf | None = None) -> pd.DataFrame:
    """The comparison, all backbones in one table (Holm over every row), sorted per backbone by gain. ``counts_of``
    (``preflight.projection.full_run_counts``, from the comparison stage) projects the rows when references.gpu_rates is
    set."""
    rows = []
    variants = compared_runs(params)
    recipe = "equal steps" if params.training.equal_steps else "equal epochs"
    # once per run, not per backbone: it reads the GPU report and counts the full data set
    projections = {id(run): projection(run, catalog.load(run, "images", missing=None), counts_of)
                   for run in [params, *(v for _, v in variants)]}
    for bb in backbones(params):
        own = of_backbone(results, bb.name)
        acc = per_setting(own)
        pool = acc[acc.method.isin(NON_GENERATIVE)]
        if pool.empty:
            continue
        best = pool["mean"].idxmax()
        best_acc = own[own.setting == best].set_index("seed").test_acc
        best_pred = _predictions(params, own, best)
        rows += _rows(params, own, best, best_acc, best_pred, bb.label, recipe, projections[id(params)])
        for their_recipe, variant in variants if bb.name == backbones(params)[0].name else []:
            theirs = of_backbone(catalog.load(variant, "training_results"), bb.name)
            rows += _rows(variant, theirs, best, best_acc, best_pred, bb.label, their_recipe,
                          projections[id(variant)])
    if not rows:
        return pd.DataFrame(columns=["Backbone", "Method", "Recipe", GAIN, HOURS, PER_HOUR])
    diffs = [r.pop("_diff") for r in rows]
    known = [i for i, d in enumerate(diffs) if d["determined"]]
    adjusted, reject = holm([diffs[i]["p_value"] for i in known]) if known else ([], [])
    by_row = {i: (p, bool(x)) for i, p, x in zip(known, adjusted, reject)}
    table = pd.DataFrame(rows)
    table.insert(table.columns.get_loc("Best non-generative") + 1, GAIN, [_gain(d) for d in diffs])
    table.insert(table.columns.get_loc(GAIN) + 1, "gain", [round(100 * d["mean_diff"], 6) for d in diffs])  # no -0
    table.insert(table.columns.get_loc("gain") + 1, "ci_low", [100 * d["ci_low"] for d in diffs])
    table.insert(table.columns.get_loc("ci_low") + 1, "ci_high", [100 * d["ci_high"] for d in diffs])
    table.insert(table.columns.get_loc("ci_high") + 1, "p (paired t)", [format_p(d["p_value"]) for d in diffs])
    table.insert(table.columns.get_loc("p (paired t)") + 1, TEST_P, [d["test_p"] for d in diffs])
    table.insert(table.columns.get_loc(TEST_P) + 1, "Verdict (unadjusted)",
                 [joint_verdict(_verdict(d), d["test_p"]) for d in diffs])
    table.insert(table.columns.get_loc("Verdict (unadjusted)") + 1, "Verdict (Holm)",
                 [joint_verdict(_verdict(d, by_row.get(i)), d["test_p"]) for i, d in enumerate(diffs)])
    hours = table[HOURS]
    table[PER_HOUR] = np.where(hours > 0, table.gain / hours.where(hours > 0, 1.0), np.nan)
    return table


def _gain(diff: dict) -> str:
    """'+1.72 [+0.40, +3.04]': the paired difference in points and its 95% CI (no CI with one seed)."""
    if diff["n_seeds"] < 2:
        return f"{100 * diff['mean_diff']:+.2f}"
    return f"{100 * diff['mean_diff']:+.2f} [{100 * diff['ci_low']:+.2f}, {100 * diff['ci_high']:+.2f}]"


def _verdict(diff: dict, holm_result: tuple[float, bool] | None = None) -> str:
    """'significant', 'not significant' or 'undetermined (why)', as the backbone gains table words them."""
    if not diff["determined"]:
        return f"undetermined ({diff['reason']})"
    return "significant" if (holm_result[1] if holm_result is not None else diff["significant"]) else "not significant"


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """The table as the page and the markdown show it: hours and points per hour rounded, helper columns dropped."""
    out = table.drop(columns=[c for c in ("gain", "ci_low", "ci_high") if c in table]).copy()
    out["Synthetic per real"] = [f"{v:g}" for v in out["Synthetic per real"]]
    out[HOURS] = [f"{h:.4f}" if h < 0.01 else f"{h:.2f}" for h in out[HOURS]]
    out[TEST_P] = [format_p(p) for p in out[TEST_P]]
    out[PER_HOUR] = ["–" if pd.isna(v) else f"{v:+.3g}" for v in out[PER_HOUR]]
    if PROJECTED in out:
        labels = [x for x in dict.fromkeys(out.pop(PROJECTED_FOR)) if isinstance(x, str) and x != NO_REPORT]
        out[PROJECTED] = [NO_REPORT if pd.isna(h) else f"{h:.4f}" if h < 0.01 else f"{h:.2f}"
                          for h in out[PROJECTED]]
        out = out.rename(columns={PROJECTED: f"{PROJECTED} ({' / '.join(labels)})" if labels else PROJECTED})
    return out


def caption(table: pd.DataFrame) -> str:
    """What the table's numbers are; the Device column names the machine each row's hours were measured on."""
    return ("Which augmentation: each generative method's gain over the best non-generative method of the same "
            "backbone (picked from this run's means; paired over training seeds on one generation draw, 95% CI; Holm "
            "over the table's rows; a verdict only where that interval and the pooled McNemar test agree), at its "
            "synthetic images per real image and optimisation steps, beside the device hours of the stages its "
            "images need, measured by the runner on the machine the Device column names. Projected GPU hours: the "
            "same stages on the full data set (every training image, no max_per_class) at the rates of the GPU "
            "report that references.gpu_rates names (sgid_utils.reporting.costs; SGID's curation has no rate and is "
            "left out); the basis column says which rates were measured and which derived from FLOPs. Training "
            "cost is not included in either: every row trains the same recipe for the steps shown.")


def gain_vs_cost(table: pd.DataFrame):
    """Gain (points, with its 95% CI) against device hours, one marker per row, one colour per backbone."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for backbone, rows in table.groupby("Backbone", sort=False):
        low = (rows.gain - rows.ci_low).fillna(0).clip(lower=0)
        high = (rows.ci_high - rows.gain).fillna(0).clip(lower=0)
        ax.errorbar(rows[HOURS], rows.gain, yerr=[low, high], fmt="o", capsize=3, label=backbone)
        for _, r in rows.iterrows():
            ax.annotate(f"{r.Method}, {r.Recipe}", (r[HOURS], r.gain), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("device hours of the method's stages (measured)")
    ax.set_ylabel("gain over best non-generative (points)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def page_section(table: pd.DataFrame | None, table_data) -> dict | None:
    """The report page's "Which augmentation" section: one table per backbone (``table_data``: the page's table
    format) and the caption; None before the comparison stage has run."""
    if table is None or table.empty:
        return None
    return {"caption": caption(table),
            "tables": [{"backbone": b, "table": table_data(rows.drop(columns="Backbone"))}
                       for b, rows in shown(table).groupby("Backbone", sort=False)]}
