"""The results stage: result tables beside the published numbers, significance against the Baseline, the figures.

Built only from files the training stage saved; nothing is retrained and no
number is typed in here. Reference values (the report's Tables 1 and 2, the
abstract's gains) come from the params file, with their source. Every backbone
is compared with its own Baseline. Significance is computed once, here, and
written for notebooks 06 and 07 and the ablation table.
The tables' columns and cells are ``reporting.tables``'s, shared with the report page.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from sgid_utils.core import catalog
from sgid_utils.params.backbones import COMBINED, NON_GENERATIVE, backbones
from sgid_utils.params.schema import Params
from sgid_utils.reporting.plots import accuracy_bar_chart, gain_forest, originals_vs_generated
from sgid_utils.reporting.stats import (
    Predictions,
    add_holm,
    compare_to_baseline,
    holm,
    joint_verdict,
    paired_difference,
    pooled_mcnemar,
    setting_predictions,
    verdict,
)
from sgid_utils.reporting.tables import (
    JOINT,
    JOINT_HOLM,
    PAPER_DATA_SET_GAIN,
    SIGNIFICANCE_COLUMNS,
    TEST_SET_P,
    format_p,
    gains_caption,
    of_backbone,
    paper_data_set_gain,
    paper_reference,
    per_setting,
    percent,
    summary_table,
    table_caption,
)


def significance(results: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Each setting against its backbone's Baseline: paired seed difference with its 95% CI and t-test p-value,
    McNemar per seed, then Holm's correction over every row (all backbones: one table, ``stats.add_holm``)."""
    frames = []
    for bb in backbones(params):
        rows = of_backbone(results, bb.name)
        baseline = rows.loc[rows.method == "baseline", "setting"]
        if baseline.empty or rows.setting.nunique() < 2:
            continue
        sig = compare_to_baseline(rows, lambda config: catalog.load(params, "predictions", config=config),
                                  baseline=baseline.iloc[0])
        frames.append(sig.assign(backbone=bb.name))
    if not frames:
        return pd.DataFrame(columns=SIGNIFICANCE_COLUMNS)
    return add_holm(pd.concat(frames, ignore_index=True))


def verdicts(params: Params, sig: pd.DataFrame) -> list[str]:
    """``stats.verdict`` for each significance row, named by backbone when the run trains several. Each sentence
    names its verdicts (unadjusted, and after Holm's correction) and says the interval covers training seeds on
    one generation draw."""
    labels = {bb.name: bb.label for bb in backbones(params)}
    several = len(labels) > 1
    return [f"{labels.get(row.backbone, row.backbone)}: {verdict(row)}" if several else verdict(row)
            for _, row in sig.iterrows()]


def backbone_gains(results: pd.DataFrame, params: Params, predictions: Predictions | None = None) -> pd.DataFrame:
    """Per backbone: SGID's gain over the best non-generative augmentation, beside the abstract's gains
    (`references.headline`).

    The pool is Baseline, CutMix and RandAugment of the same backbone (Baseline is no augmentation at all, and it
    can be the pick); "best" is the highest mean over seeds in this run, never assumed by name. SGID is its largest
    trained proportion (our reading: the abstract does not say which proportion its gains use); the combined
    method shown is the better of SGID + CutMix and
    SGID + RandAugment. Gains are in accuracy points with the paired 95% CI over training seeds on one generation
    draw. Both picks are made after seeing the numbers: taking the best of the pool biases SGID's gain down, taking
    the better combination biases the combination's gain up. Verdicts need 3 seeds and a non-zero spread; Holm's
    family is every comparison of this table (SGID and the combination, every backbone). With ``predictions``
    (a config's prediction table by name), each gain also gets the test-set check (``stats.pooled_mcnemar``) and
    the verdict of both (``stats.joint_verdict``); without, that verdict is undetermined.
    """
    headline = params.references.headline
    rows, diffs, tests = [], [], []
    for i, bb in enumerate(backbones(params)):
        own = of_backbone(results, bb.name)
        if own.empty:
            continue
        acc = per_setting(own)
        plain = acc[acc.method.isin(NON_GENERATIVE)]
        sgid = acc[acc.method == "sgid"]
        combined = acc[acc.method.isin(COMBINED)]
        row: dict[str, object] = {"Backbone": bb.label, "backbone": bb.name}
        best = plain["mean"].idxmax() if not plain.empty else None
        row["Best non-generative"] = best or "–"
        row["its accuracy (%)"] = round(100 * float(plain.loc[best, "mean"]), 2) if best else np.nan
        top = sgid.loc[sgid.proportion.idxmax()].name if not sgid.empty else None
        row["SGID"] = top or "–"
        row["SGID accuracy (%)"] = round(100 * float(sgid.loc[top, "mean"]), 2) if top else np.nan
        diffs.append(_diff(own, top, best))
        tests.append(_test_p(own, top, best, predictions))
        row["Gain (points, 95% CI)"] = _gain(diffs[-1])
        best_combined = combined["mean"].idxmax() if not combined.empty else None
        row["Best SGID combination"] = best_combined or "–"
        diffs.append(_diff(own, best_combined, best))
        tests.append(_test_p(own, best_combined, best, predictions))
        row["Combination gain (points, 95% CI)"] = _gain(diffs[-1])
        if headline is not None:
            row[headline.label] = headline.gains.get(bb.name, np.nan)
        ref = paper_reference(params, bb, first=i == 0)
        if ref is not None:
            gain = paper_data_set_gain(params, bb, first=i == 0)
            row[PAPER_DATA_SET_GAIN] = np.nan if gain is None else gain
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    known = [d for d in diffs if d is not None]
    adjusted, reject = holm([d["p_value"] for d in known])
    holm_of = {id(d): (p, r) for d, p, r in zip(known, adjusted, reject)}
    for name, picks, checks in (("", diffs[0::2], tests[0::2]), ("Combination ", diffs[1::2], tests[1::2])):
        table[f"{name}p (paired t)"] = [format_p(d["p_value"]) if d else "–" for d in picks]
        table[f"{name}verdict (unadjusted)"] = [_verdict(d) for d in picks]
        table[f"{name}{TEST_SET_P}"] = [format_p(p) for p in checks]
        table[f"{name}{JOINT}"] = [joint_verdict(_verdict(d), p) if d else "–" for d, p in zip(picks, checks)]
        table[f"{name}p (Holm)"] = [format_p(holm_of[id(d)][0]) if d else "–" for d in picks]
        table[f"{name}verdict (Holm)"] = [_verdict(d, holm_of[id(d)]) if d else "–" for d in picks]
        table[f"{name}{JOINT_HOLM}"] = [joint_verdict(_verdict(d, holm_of[id(d)]), p) if d else "–"
                                       for d, p in zip(picks, checks)]
    return table


def _diff(results: pd.DataFrame, setting: str | None, over: str | None) -> dict | None:
    """The paired difference over seeds of two settings of one backbone, or None when either is missing."""
    if setting is None or over is None:
        return None
    return paired_difference(results[results.setting == setting].set_index("seed").test_acc,
                             results[results.setting == over].set_index("seed").test_acc)


def _test_p(results: pd.DataFrame, setting: str | None, over: str | None,
            predictions: Predictions | None) -> float | None:
    """The pooled McNemar p of two settings of one backbone over their common seeds; None without predictions."""
    if setting is None or over is None or predictions is None:
        return None
    return pooled_mcnemar(setting_predictions(results, setting, predictions),
                          setting_predictions(results, over, predictions))["p_value"]


def _gain(diff: dict | None) -> str:
    """'+1.72 [+0.40, +3.04]' points: a paired difference and its 95% CI (no CI with one seed)."""
    if diff is None:
        return "–"
    if diff["n_seeds"] < 2:
        return f"{100 * diff['mean_diff']:+.2f}"
    return f"{100 * diff['mean_diff']:+.2f} [{100 * diff['ci_low']:+.2f}, {100 * diff['ci_high']:+.2f}]"


def _verdict(diff: dict | None, holm_result: tuple[float, bool] | None = None) -> str:
    """A gain's verdict cell: 'significant', 'not significant' or 'undetermined (why)'; Holm's when given."""
    if diff is None:
        return "–"
    if not diff["determined"]:
        return f"undetermined ({diff['reason']})"
    yes = bool(holm_result[1]) if holm_result is not None else diff["significant"]
    return "significant" if yes else "not significant"


def write_summary(params: Params, table: pd.DataFrame, caption: str) -> dict[str, object]:
    """tables/accuracy.csv as computed (references and mean/std as fractions) and accuracy.md in percent throughout."""
    csv = catalog.save(params, "accuracy", table)
    shown = table.drop(columns=["mean", "std", "seeds"])
    for ref in params.references.tables:
        if ref.label in shown:
            shown[ref.label] = [percent(v) for v in shown[ref.label]]
    md = catalog.save(params, "accuracy_md", shown.astype(object).fillna("–"), caption=caption)
    return {"csv": csv, "md": md}


def run(params: Params, images: pd.DataFrame) -> dict[str, object]:
    """Significance (written once), the accuracy table (md/csv) and the figures, from saved training results."""
    results = catalog.load(params, "training_results")
    sig = significance(results, params)
    catalog.save(params, "significance", sig)
    catalog.save(params, "significance_csv", sig)
    table = summary_table(results, params, sig)
    paths = write_summary(params, table, table_caption(params, results))
    gains = backbone_gains(results, params, lambda config: catalog.load(params, "predictions", config=config))
    paths["gains_csv"] = catalog.save(params, "backbone_gains", gains)
    paths["gains_md"] = catalog.save(params, "backbone_gains_md",
                                     gains.drop(columns="backbone").astype(object).fillna("–"),
                                     caption=gains_caption(params, gains))
    if len(sig):
        fig = gain_forest(sig, params)
        paths["forest"] = catalog.save(params, "gain_forest", fig)
        plt.close(fig)
    fig = accuracy_bar_chart(results, table, params)
    paths["bar_chart"] = catalog.save(params, "accuracy_by_method", fig)
    plt.close(fig)
    if catalog.exists(params, "curated"):
        fig = originals_vs_generated(catalog.load(params, "curated"), params.references.grid_examples)
        paths["grid"] = catalog.save(params, "originals_vs_sgid", fig)
        plt.close(fig)
    return paths
