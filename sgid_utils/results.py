"""Stage 06: result tables beside the paper's numbers, significance against the Baseline, the figures.

Built only from files the training stage saved; nothing is retrained and no
number is typed in here. Reference values (the paper's, the reproduction
report's, the paper's headline gains) come from the params file, with their
source. Every backbone is compared with its own Baseline. Significance is
computed once, here, and written for notebooks 06 and 07 and the ablation table.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .curation import load_curated
from .io import read_table, write_table
from .plots import accuracy_bar_chart, originals_vs_generated, save_fig
from .rundir import RunDir
from .schema import BackboneParams, Params
from .stats import COVERS, add_holm, compare_to_baseline, holm, paired_difference, reason_of, verdict, verdict_word
from .training import COMBINED, METHOD_NAMES, NON_GENERATIVE, backbones, load_predictions, load_results, recipe

SIGNIFICANCE_COLUMNS = ["backbone", "setting", "mean_diff", "ci_low", "ci_high", "p_value", "determined", "reason",
                        "significant", "p_holm", "significant_holm"]
# The accuracy table's columns (tables/accuracy.csv); the numeric copies mean/std/seeds are accuracy fractions.
OURS = "Ours (%, mean ± std over seeds)"
DELTA = "Δ vs Baseline (points, 95% CI)"
SIGNIFICANT = "Significant (unadjusted)"
SIGNIFICANT_HOLM = "Significant (Holm)"
P_VALUE, P_HOLM = "p (paired t)", "p (Holm)"
PAPER_DATA_SET_GAIN = "Paper, this data set (points)"  # backbone_gains: the paper's own per-data-set gain


def percent(value: float, digits: int = 2) -> str:
    """An accuracy fraction as the paper prints it: percent, two decimals ('93.38'); NaN as a dash."""
    return "–" if value is None or value != value else f"{100 * value:.{digits}f}"


def format_mean_std(mean: float, std: float, n: int) -> str:
    """'93.38 ± 0.12 (n=3)': mean ± sample std over seeds of an accuracy fraction, in percent (no spread with 1 seed)."""
    spread = f" ± {100 * std:.2f}" if n > 1 and not np.isnan(std) else ""
    return f"{100 * mean:.2f}{spread} (n={n})"


def format_delta(row: pd.Series) -> str:
    """'+1.23 [-0.40, +2.86]': a significance row's mean difference and CI in accuracy points (no CI with one seed)."""
    if row.n_seeds > 1:
        return f"{100 * row.mean_diff:+.2f} [{100 * row.ci_low:+.2f}, {100 * row.ci_high:+.2f}]"
    return f"{100 * row.mean_diff:+.2f}"


def verdict_cell(row: pd.Series, adjusted: bool = False) -> str:
    """A significance row's verdict for a table cell: 'yes', 'no' or 'undetermined (reason)'; unadjusted or Holm's."""
    word = verdict_word(row, adjusted)
    if word == "undetermined":
        return f"undetermined ({reason_of(row)})"
    return {"significant": "yes", "not significant": "no"}.get(word, word)


def of_backbone(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows of one backbone (results, significance) by its name ('' for the implicit models.classifier one)."""
    return table[table.backbone == name]


def primary(params: Params, table: pd.DataFrame) -> pd.DataFrame:
    """The first backbone's rows: the one ablation variants, the quality report and the references compare by default."""
    return of_backbone(table, backbones(params)[0].name)


def significance(results: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Each setting against its backbone's Baseline: paired seed difference with its 95% CI and t-test p-value,
    McNemar per seed, then Holm's correction over every row (all backbones: one table, ``stats.add_holm``)."""
    frames = []
    for bb in backbones(params):
        rows = of_backbone(results, bb.name)
        baseline = rows.loc[rows.method == "baseline", "setting"]
        if baseline.empty or rows.setting.nunique() < 2:
            continue
        sig = compare_to_baseline(rows, lambda config: load_predictions(params, config), baseline=baseline.iloc[0])
        frames.append(sig.assign(backbone=bb.name))
    if not frames:
        return pd.DataFrame(columns=SIGNIFICANCE_COLUMNS)
    return add_holm(pd.concat(frames, ignore_index=True))


def load_significance(params: Params) -> pd.DataFrame:
    table = read_table(RunDir.of(params).significance_table)
    return table if "backbone" in table else table.assign(backbone="")  # written before backbones existed


def verdicts(params: Params, sig: pd.DataFrame) -> list[str]:
    """``stats.verdict`` for each significance row, named by backbone when the run trains several. Each sentence
    names its verdicts (unadjusted, and after Holm's correction) and says the interval covers training seeds on
    one generation draw."""
    labels = {bb.name: bb.label for bb in backbones(params)}
    several = len(labels) > 1
    return [f"{labels.get(row.backbone, row.backbone)}: {verdict(row)}" if several else verdict(row) for _, row in sig.iterrows()]


def load_accuracy_table(params: Params) -> pd.DataFrame:
    """The accuracy table as the results stage wrote it (``summary_table``'s columns)."""
    return read_table(RunDir.of(params).table("accuracy.csv"))


def per_setting(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std and count of test accuracy per setting, in method order (then proportion)."""
    grouped = results.groupby("setting").agg(method=("method", "first"), proportion=("proportion", "first"),
                                             mean=("test_acc", "mean"), std=("test_acc", "std"),
                                             count=("test_acc", "count"))
    order = list(METHOD_NAMES)
    grouped["_rank"] = [(order.index(m), p if p == p and p is not None else 0.0)
                        for m, p in zip(grouped.method, grouped.proportion)]
    return grouped.sort_values("_rank", kind="stable").drop(columns="_rank")


def summary_table(results: pd.DataFrame, params: Params, sig: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (backbone, setting): mean ± sample std over seeds in percent, the difference to that backbone's
    Baseline in points with its 95% CI, the paired t-test p-value and Holm's adjusted one, both verdicts
    ('undetermined (why)' below 3 seeds or with zero spread), the largest of the per-seed McNemar p-values,
    then each reference column as an accuracy fraction (filled on the rows of the backbone the reference names)."""
    tables = []
    for i, bb in enumerate(backbones(params)):
        rows = of_backbone(results, bb.name)
        if not rows.empty:
            own_sig = None if sig is None else of_backbone(sig, bb.name)
            tables.append(_backbone_table(rows, params, bb, own_sig, first=i == 0))
    return pd.concat(tables, ignore_index=True)


def _backbone_table(results: pd.DataFrame, params: Params, bb: BackboneParams, sig: pd.DataFrame | None, first: bool) -> pd.DataFrame:
    grouped = per_setting(results)
    table = pd.DataFrame({
        "Backbone": bb.label,
        "Method": grouped.index,
        OURS: [format_mean_std(m, s, int(n)) for m, s, n in zip(grouped["mean"], grouped["std"], grouped["count"])],
        "mean": grouped["mean"].round(4).to_numpy(),
        "std": grouped["std"].round(4).to_numpy(),
        "seeds": grouped["count"].astype(int).to_numpy(),
    })
    if sig is not None:
        rows = sig.set_index("setting")

        def column(show) -> list[str]:
            return [show(rows.loc[m]) if m in rows.index else "–" for m in table.Method]

        table[DELTA] = column(format_delta)
        table[P_VALUE] = column(lambda r: _p(r.get("p_value")))
        table[SIGNIFICANT] = column(verdict_cell)
        table[P_HOLM] = column(lambda r: _p(r.get("p_holm")))
        table[SIGNIFICANT_HOLM] = column(lambda r: verdict_cell(r, adjusted=True))
        table["McNemar p (max over seeds)"] = column(lambda r: f"{r['mcnemar_max_p']:.3g}")
    for ref in params.results.references:
        mine = ref.backbone == bb.name if ref.backbone is not None else first
        table[ref.label] = [ref.values.get(s, np.nan) if mine else np.nan for s in table.Method]
    return table.reset_index(drop=True)


def _p(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.3g}"


def paper_reference(params: Params, bb: BackboneParams, first: bool):
    """The reference table the paper published for this backbone (label starting 'Paper'), or None."""
    for ref in params.results.references:
        if ref.label.lower().startswith("paper") and (ref.backbone == bb.name if ref.backbone is not None else first):
            return ref
    return None


def paper_data_set_gain(params: Params, bb: BackboneParams, first: bool) -> float | None:
    """The paper's own gain on this data set, in points: its SGID (100%) minus the best of its non-generative rows.

    Computed from the paper-labelled reference table of the params file (as the report quotes it), with the same
    pool as ours (Baseline, CutMix, RandAugment), so it compares like with like with this run's per-data-set gain;
    the abstract's headline gains are averages over seven data sets.
    """
    ref = paper_reference(params, bb, first)
    pool = [ref.values[METHOD_NAMES[m]] for m in NON_GENERATIVE if ref and METHOD_NAMES[m] in ref.values]
    if ref is None or "SGID (100%)" not in ref.values or not pool:
        return None
    return round(100 * (ref.values["SGID (100%)"] - max(pool)), 2)


def backbone_gains(results: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Per backbone: SGID's gain over the best non-generative augmentation, beside the paper's gains.

    The pool is Baseline, CutMix and RandAugment of the same backbone (Baseline is no augmentation at all, and it
    can be the pick); "best" is the highest mean over seeds in this run, never assumed by name. SGID is its largest
    trained proportion, as in the paper's headline; the combined method shown is the better of SGID + CutMix and
    SGID + RandAugment. Gains are in accuracy points with the paired 95% CI over training seeds on one generation
    draw. Both picks are made after seeing the numbers: taking the best of the pool biases SGID's gain down, taking
    the better combination biases the combination's gain up. Verdicts need 3 seeds and a non-zero spread; Holm's
    family is every comparison of this table (SGID and the combination, every backbone).
    """
    headline = params.results.headline
    rows, diffs = [], []
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
        row["Gain (points, 95% CI)"] = _gain(diffs[-1])
        best_combined = combined["mean"].idxmax() if not combined.empty else None
        row["Best SGID combination"] = best_combined or "–"
        diffs.append(_diff(own, best_combined, best))
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
    for name, picks in (("", diffs[0::2]), ("Combination ", diffs[1::2])):
        table[f"{name}p (paired t)"] = [_p(d["p_value"]) if d else "–" for d in picks]
        table[f"{name}verdict (unadjusted)"] = [_verdict(d) for d in picks]
        table[f"{name}p (Holm)"] = [_p(holm_of[id(d)][0]) if d else "–" for d in picks]
        table[f"{name}verdict (Holm)"] = [_verdict(d, holm_of[id(d)]) if d else "–" for d in picks]
    return table


def _diff(results: pd.DataFrame, setting: str | None, over: str | None) -> dict | None:
    """The paired difference over seeds of two settings of one backbone, or None when either is missing."""
    if setting is None or over is None:
        return None
    return paired_difference(results[results.setting == setting].set_index("seed").test_acc,
                             results[results.setting == over].set_index("seed").test_acc)


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


def gains_caption(params: Params, gains: pd.DataFrame | None = None) -> str:
    """What the gains table compares, where every number comes from, and how the picks bias it."""
    headline = params.results.headline
    parts = [
        "Gain of SGID (its largest proportion) over the best non-generative method of the same backbone, in accuracy "
        "points, paired over training seeds " f"{params.training.seeds} on one generation draw (95% t-interval). "
        "The best non-generative method is picked from this run's numbers among Baseline (no augmentation), CutMix "
        "and RandAugment: picking the best of three biases SGID's gain down; the combination shown is the better "
        "of SGID + CutMix and SGID + RandAugment, which biases the combination's gain up. Verdicts need at least "
        "3 seeds and a non-zero spread; Holm's correction runs over every comparison of this table."]
    if gains is not None and "Best non-generative" in gains:
        on_baseline = [str(b) for b, n in zip(gains.Backbone, gains["Best non-generative"]) if n == "Baseline"]
        if on_baseline:
            parts.append(f"For {', '.join(on_baseline)} the best non-generative method is Baseline: no augmentation "
                         "beat training without any, so SGID is compared with no augmentation at all.")
    if headline is not None:
        parts.append(f"{headline.label}: {headline.source}; the abstract gives one number per backbone, averaged "
                     "over the paper's seven data sets, not this data set's gain.")
    for i, bb in enumerate(backbones(params)):
        ref = paper_reference(params, bb, first=i == 0)
        if ref is not None and paper_data_set_gain(params, bb, first=i == 0) is not None:
            parts.append(f"{PAPER_DATA_SET_GAIN} ({bb.label}): the paper's SGID (100%) minus its best of Baseline, "
                         f"CutMix and RandAugment on this data set, from '{ref.label}' ({ref.source}): the "
                         "like-for-like "
                         "number for this run's gain.")
    scratch = [bb.label for bb in backbones(params) if not bb.pretrained]
    if scratch:
        parts.append(f"{', '.join(scratch)}: the recipe and its resize-only Baseline are this package's choice; the "
                     "paper's protocol for it is unknown.")
    return " ".join(parts)


def table_caption(params: Params, results: pd.DataFrame) -> str:
    ds = params.dataset
    splits = "+".join(ds.train_splits) if ds.source != "imagefolder" else "train folder"
    refs = "; ".join(f"{r.label}: {r.source}" for r in params.results.references)
    n_train = int((results.train_images - results.generated_images).iloc[0]) if len(results) else 0
    recipes = "; ".join(recipe(bb) for bb in backbones(params))
    return (
        f"Test accuracy in percent on {ds.source} (trained on {splits}, {n_train} real images; tested on split "
        f"'{ds.test_split}'), {recipes}, seeds {params.training.seeds}. Δ: in accuracy points, paired over "
        f"{COVERS} against the same backbone's Baseline, 95% t-interval. Verdicts need at least 3 seeds and a "
        "non-zero spread of the differences (else 'undetermined'); 'unadjusted' tests each setting on its own, "
        f"'Holm' corrects for every comparison of the table (all backbones). {refs}"
    )


def write_summary(params: Params, table: pd.DataFrame, caption: str) -> dict[str, object]:
    """tables/accuracy.csv as computed (references and mean/std as fractions) and accuracy.md in percent throughout."""
    run = RunDir.of(params)
    csv, md = run.table("accuracy.csv"), run.table("accuracy.md")
    write_table(csv, table)
    shown = table.drop(columns=["mean", "std", "seeds"])
    for ref in params.results.references:
        if ref.label in shown:
            shown[ref.label] = [percent(v) for v in shown[ref.label]]
    write_table(md, shown.astype(object).fillna("–"), caption=caption)
    return {"csv": csv, "md": md}


def run_results(params: Params, images: pd.DataFrame) -> dict[str, object]:
    """Significance (written once), the accuracy table (md/csv) and the figures, from saved training results."""
    run = RunDir.of(params)
    results = load_results(params)
    sig = significance(results, params)
    write_table(run.significance_table, sig)
    write_table(run.table("significance.csv"), sig)
    table = summary_table(results, params, sig)
    paths = write_summary(params, table, table_caption(params, results))
    gains = backbone_gains(results, params)
    paths["gains_csv"] = write_table(run.table("backbone_gains.csv"), gains)
    paths["gains_md"] = write_table(run.table("backbone_gains.md"), gains.drop(columns="backbone").astype(object).fillna("–"),
                                    caption=gains_caption(params, gains))
    fig = accuracy_bar_chart(results, table, params)
    paths["bar_chart"] = save_fig(fig, params, "accuracy_by_method")
    plt.close(fig)
    if run.curated_table().exists():
        fig = originals_vs_generated(load_curated(params), params.results.grid_examples)
        paths["grid"] = save_fig(fig, params, "originals_vs_sgid")
        plt.close(fig)
    return paths
