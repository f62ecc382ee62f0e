"""Stage 06: result tables beside the paper's numbers, significance against the Baseline, the figures.

Built only from files the training stage saved; nothing is retrained and no
number is typed in here. Reference values (the paper's, the reproduction
report's) come from the params file, with their source. Significance is computed
once, here, and written for notebooks 06 and 07 and the ablation table to read.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .curation import load_curated
from .io import read_table, write_table
from .plots import accuracy_bar_chart, originals_vs_generated, save_fig
from .rundir import RunDir
from .schema import Params
from .stats import compare_to_baseline
from .training import METHOD_NAMES, load_predictions, load_results

SIGNIFICANCE_COLUMNS = ["setting", "mean_diff", "ci_low", "ci_high", "significant"]


def format_mean_std(mean: float, std: float, n: int) -> str:
    spread = f" ± {std:.4f}" if n > 1 and not np.isnan(std) else ""
    return f"{mean:.4f}{spread} (n={n})"


def format_delta(row: pd.Series) -> str:
    """'+0.0123 [-0.0040, +0.0286]': a significance row's mean difference with its CI (no CI with one seed)."""
    if row.n_seeds > 1:
        return f"{row.mean_diff:+.4f} [{row.ci_low:+.4f}, {row.ci_high:+.4f}]"
    return f"{row.mean_diff:+.4f}"


def significance(results: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Each setting against the Baseline: paired seed difference with its 95% CI, McNemar per seed."""
    baseline = results.loc[results.method == "baseline", "setting"]
    if baseline.empty:
        return pd.DataFrame(columns=SIGNIFICANCE_COLUMNS)
    return compare_to_baseline(results, lambda config: load_predictions(params, config), baseline=baseline.iloc[0])


def load_significance(params: Params) -> pd.DataFrame:
    return read_table(RunDir.of(params).significance_table)


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
    """One row per setting: mean ± sample std over seeds, the difference to the Baseline with its
    95% CI (marked significant only when the interval excludes zero), then each reference column."""
    grouped = per_setting(results)
    table = pd.DataFrame({
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
    for ref in params.results.references:
        table[ref.label] = [ref.values.get(s, np.nan) for s in table.Method]
    return table.reset_index(drop=True)


def table_caption(params: Params, results: pd.DataFrame) -> str:
    ds = params.dataset
    splits = "+".join(ds.train_splits) if ds.source != "imagefolder" else "train folder"
    refs = "; ".join(f"{r.label}: {r.source}" for r in params.results.references)
    n_train = int((results.train_images - results.generated_images).iloc[0]) if len(results) else 0
    return (
        f"Test accuracy on {ds.source} (trained on {splits}, {n_train} real images; tested on split "
        f"'{ds.test_split}'), {params.training.epochs} epochs, seeds {params.training.seeds}. Δ: paired over seeds, "
        f"95% t-interval, each setting tested on its own (no correction for multiple comparisons). {refs}"
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
    fig = accuracy_bar_chart(results, table, params)
    paths["bar_chart"] = save_fig(fig, params, "accuracy_by_method")
    plt.close(fig)
    if run.curated_table().exists():
        fig = originals_vs_generated(load_curated(params), params.results.grid_examples)
        paths["grid"] = save_fig(fig, params, "originals_vs_sgid")
        plt.close(fig)
    return paths
