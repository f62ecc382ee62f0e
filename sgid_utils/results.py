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
from .stats import compare_to_baseline, paired_difference, verdict
from .training import COMBINED, METHOD_NAMES, NON_GENERATIVE, backbones, load_predictions, load_results, recipe

SIGNIFICANCE_COLUMNS = ["backbone", "setting", "mean_diff", "ci_low", "ci_high", "significant"]


def format_mean_std(mean: float, std: float, n: int) -> str:
    spread = f" ± {std:.4f}" if n > 1 and not np.isnan(std) else ""
    return f"{mean:.4f}{spread} (n={n})"


def format_delta(row: pd.Series) -> str:
    """'+0.0123 [-0.0040, +0.0286]': a significance row's mean difference with its CI (no CI with one seed)."""
    if row.n_seeds > 1:
        return f"{row.mean_diff:+.4f} [{row.ci_low:+.4f}, {row.ci_high:+.4f}]"
    return f"{row.mean_diff:+.4f}"


def of_backbone(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows of one backbone (results, significance) by its name ('' for the implicit models.classifier one)."""
    return table[table.backbone == name]


def primary(params: Params, table: pd.DataFrame) -> pd.DataFrame:
    """The first backbone's rows: the one ablation variants, the quality report and the references compare by default."""
    return of_backbone(table, backbones(params)[0].name)


def significance(results: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Each setting against its backbone's Baseline: paired seed difference with its 95% CI, McNemar per seed."""
    frames = []
    for bb in backbones(params):
        rows = of_backbone(results, bb.name)
        baseline = rows.loc[rows.method == "baseline", "setting"]
        if baseline.empty or rows.setting.nunique() < 2:
            continue
        sig = compare_to_baseline(rows, lambda config: load_predictions(params, config), baseline=baseline.iloc[0])
        frames.append(sig.assign(backbone=bb.name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SIGNIFICANCE_COLUMNS)


def load_significance(params: Params) -> pd.DataFrame:
    table = read_table(RunDir.of(params).significance_table)
    return table if "backbone" in table else table.assign(backbone="")  # written before backbones existed


def verdicts(params: Params, sig: pd.DataFrame) -> list[str]:
    """``stats.verdict`` for each significance row, named by backbone when the run trains several."""
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
    """One row per (backbone, setting): mean ± sample std over seeds, the difference to that backbone's
    Baseline with its 95% CI (marked significant only when the interval excludes zero) and the largest of
    the per-seed McNemar p-values, then each reference column (filled on the rows of the backbone the
    reference names)."""
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
        "Ours (mean ± std over seeds)": [format_mean_std(m, s, int(n)) for m, s, n in zip(grouped["mean"], grouped["std"], grouped["count"])],
        "mean": grouped["mean"].round(4).to_numpy(),
        "std": grouped["std"].round(4).to_numpy(),
        "seeds": grouped["count"].astype(int).to_numpy(),
    })
    if sig is not None:
        rows = sig.set_index("setting")
        table["Δ vs Baseline (95% CI)"] = [format_delta(rows.loc[m]) if m in rows.index else "–" for m in table.Method]
        table["Significant"] = [("yes" if rows.loc[m, "significant"] else "no") if m in rows.index else "–" for m in table.Method]
        table["McNemar p (max over seeds)"] = [f"{rows.loc[m, 'mcnemar_max_p']:.3g}" if m in rows.index else "–"
                                               for m in table.Method]
    for ref in params.results.references:
        mine = ref.backbone == bb.name if ref.backbone is not None else first
        table[ref.label] = [ref.values.get(s, np.nan) if mine else np.nan for s in table.Method]
    return table.reset_index(drop=True)


def backbone_gains(results: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Per backbone: SGID's gain over the best non-generative augmentation, beside the paper's headline gain.

    "Best" is read off this run's numbers (highest mean over seeds among Baseline, CutMix and RandAugment),
    never assumed by name; SGID is its largest trained proportion, as in the paper's headline; the combined
    method shown is the better of SGID + CutMix and SGID + RandAugment. Gains are in accuracy points with the
    paired 95% CI over seeds (the best baseline is picked after seeing the numbers, so the interval is optimistic).
    """
    headline = params.results.headline
    rows = []
    for bb in backbones(params):
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
        row["its accuracy"] = round(float(plain.loc[best, "mean"]), 4) if best else np.nan
        top = sgid.loc[sgid.proportion.idxmax()].name if not sgid.empty else None
        row["SGID"] = top or "–"
        row["SGID accuracy"] = round(float(sgid.loc[top, "mean"]), 4) if top else np.nan
        row["Gain (points, 95% CI)"] = _gain(own, top, best)
        best_combined = combined["mean"].idxmax() if not combined.empty else None
        row["Best SGID combination"] = best_combined or "–"
        row["Combination gain (points, 95% CI)"] = _gain(own, best_combined, best)
        if headline is not None:
            row[headline.label] = headline.gains.get(bb.name, np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def _gain(results: pd.DataFrame, setting: str | None, over: str | None) -> str:
    """'+1.72 [+0.40, +3.04]' points: the paired difference over seeds of two settings of one backbone."""
    if setting is None or over is None:
        return "–"
    diff = paired_difference(results[results.setting == setting].set_index("seed").test_acc,
                             results[results.setting == over].set_index("seed").test_acc)
    if diff["n_seeds"] < 2:
        return f"{100 * diff['mean_diff']:+.2f}"
    return f"{100 * diff['mean_diff']:+.2f} [{100 * diff['ci_low']:+.2f}, {100 * diff['ci_high']:+.2f}]"


def gains_caption(params: Params) -> str:
    headline = params.results.headline
    ref = f" {headline.label}: {headline.source}" if headline else ""
    return ("Gain of SGID over the best non-generative augmentation of the same backbone (picked from the numbers), "
            f"in accuracy points, paired over seeds {params.training.seeds}.{ref}")


def table_caption(params: Params, results: pd.DataFrame) -> str:
    ds = params.dataset
    splits = "+".join(ds.train_splits) if ds.source != "imagefolder" else "train folder"
    refs = "; ".join(f"{r.label}: {r.source}" for r in params.results.references)
    n_train = int((results.train_images - results.generated_images).iloc[0]) if len(results) else 0
    recipes = "; ".join(recipe(bb) for bb in backbones(params))
    return (
        f"Test accuracy on {ds.source} (trained on {splits}, {n_train} real images; tested on split "
        f"'{ds.test_split}'), {recipes}, seeds {params.training.seeds}. Δ: paired over seeds against the same backbone's "
        f"Baseline, 95% t-interval, each setting tested on its own (no correction for multiple comparisons). {refs}"
    )


def write_summary(params: Params, table: pd.DataFrame, caption: str) -> dict[str, object]:
    run = RunDir.of(params)
    csv, md = run.table("accuracy.csv"), run.table("accuracy.md")
    write_table(csv, table)
    write_table(md, table.drop(columns=["mean", "std", "seeds"]).astype(object).fillna("–"), caption=caption)
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
                                    caption=gains_caption(params))
    fig = accuracy_bar_chart(results, table, params)
    paths["bar_chart"] = save_fig(fig, params, "accuracy_by_method")
    plt.close(fig)
    if run.curated_table().exists():
        fig = originals_vs_generated(load_curated(params), params.results.grid_examples)
        paths["grid"] = save_fig(fig, params, "originals_vs_sgid")
        plt.close(fig)
    return paths
