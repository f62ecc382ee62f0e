"""Stage 06: result tables beside the paper's numbers, the bar chart and image grids.

Built only from files the training stage saved; nothing is retrained and no
number is typed in here. Reference values (the paper's, the reproduction
report's) come from the params file, with their source.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .data import load_image
from .io import write_table
from .params import Params

ORDER = ["Baseline", "CutMix", "RandAugment"]


def _setting_order(setting: str) -> tuple[int, bool, float]:
    if setting in ORDER:
        return ORDER.index(setting), False, 0.0
    digits = "".join(c for c in setting if c.isdigit() or c == ".")
    return len(ORDER), "filtered" in setting, float(digits or 0)


def format_mean_std(mean: float, std: float, n: int) -> str:
    spread = f" ± {std:.4f}" if n > 1 and not np.isnan(std) else ""
    return f"{mean:.4f}{spread} (n={n})"


def significance(results: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Each setting against the Baseline: paired seed difference with its 95% CI, McNemar per seed."""
    from .stats import compare_to_baseline, load_predictions

    if "Baseline" not in set(results.setting):
        return pd.DataFrame(columns=["setting", "mean_diff", "ci_low", "ci_high", "significant"])
    return compare_to_baseline(results, lambda config: load_predictions(params.run.dir, config))


def summary_table(results: pd.DataFrame, params: Params, sig: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per setting: mean ± sample std over seeds, the difference to the Baseline with its
    95% CI (marked significant only when the interval excludes zero), then each reference column."""
    grouped = results.groupby("setting").test_acc.agg(["mean", "std", "count"]).reset_index()
    grouped = grouped.iloc[sorted(range(len(grouped)), key=lambda i: _setting_order(grouped.setting.iloc[i]))]
    table = pd.DataFrame({
        "Method": grouped.setting,
        "Ours (mean ± std over seeds)": [format_mean_std(m, s, int(n)) for m, s, n in zip(grouped["mean"], grouped["std"], grouped["count"])],
        "mean": grouped["mean"].round(4),
        "std": grouped["std"].round(4),
        "seeds": grouped["count"].astype(int),
    })
    if sig is not None:
        _add_significance(table, sig.set_index("setting"))
    for ref in params.results.references:
        table[ref.label] = [ref.values.get(s, np.nan) for s in table.Method]
    return table.reset_index(drop=True)


def _add_significance(table: pd.DataFrame, sig: pd.DataFrame) -> None:
    def delta(m: str) -> str:
        if m not in sig.index:
            return "–"
        r = sig.loc[m]
        return f"{r.mean_diff:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}]" if r.n_seeds > 1 else f"{r.mean_diff:+.4f}"

    table["Δ vs Baseline (95% CI)"] = [delta(m) for m in table.Method]
    table["Significant"] = [("yes" if sig.loc[m, "significant"] else "no") if m in sig.index else "–" for m in table.Method]


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


def write_summary(params: Params, table: pd.DataFrame, caption: str) -> dict[str, Path]:
    out = Path(params.run.reports_dir) / "tables"
    md = out / "accuracy.md"
    write_table(out / "accuracy.csv", table)
    write_table(md, table.drop(columns=["mean", "std", "seeds"]).astype(object).fillna("–"))
    md.write_text(f"{caption}\n\n{md.read_text()}")
    return {"csv": out / "accuracy.csv", "md": md}


def save_fig(fig, params: Params, name: str) -> Path:
    """Every figure goes to reports/<run>/figures/<name>.png."""
    path = Path(params.run.reports_dir) / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    tmp.replace(path)
    return path


def accuracy_bar_chart(results: pd.DataFrame, params: Params):
    """Mean test accuracy per setting with ±1 std error bars, seeds as dots, references as markers."""
    import seaborn as sns

    table = summary_table(results, params)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(table)), 4))
    x = np.arange(len(table))
    ax.bar(x, table["mean"], yerr=table["std"].fillna(0), color=sns.color_palette("muted", len(table)), capsize=4, alpha=0.85, label="ours (mean ± std)")
    for i, setting in enumerate(table.Method):
        accs = results.loc[results.setting == setting, "test_acc"]
        ax.scatter(np.full(len(accs), i), accs, color="black", s=10, zorder=3)
    for j, ref in enumerate(params.results.references):
        vals = table[ref.label].to_numpy(dtype=float)
        ax.scatter(x, vals, marker=["D", "s", "^"][j % 3], s=40, zorder=4, label=ref.label)
    ax.set_xticks(x, table.Method, rotation=30, ha="right")
    lo = np.nanmin(np.concatenate([results.test_acc.to_numpy(), *[table[r.label].to_numpy(dtype=float) for r in params.results.references]]))
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{params.run.name}: augmentation methods")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def image_grid(rows: list[list[str]], titles: list[list[str]] | None = None, size: float = 2.2):
    """A grid of images given by path; each inner list is one row."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols, size * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(row):
                ax.imshow(load_image(row[j]))
                if titles:
                    ax.set_title(titles[i][j], fontsize=7)
    fig.tight_layout()
    return fig


def originals_vs_generated(curated: pd.DataFrame, n: int):
    """Original beside its curated SGID image, for n sources spread over classes."""
    picks = curated.sort_values(["label", "image_id"]).groupby("label").head(max(1, n // max(1, curated.label.nunique()) + 1)).head(n)
    rows = [[r.source_path, r.path] for r in picks.itertuples()]
    titles = [[f"{r.class_name} (original)", f"SGID, sim {r.similarity:.2f}"] for r in picks.itertuples()]
    return image_grid(rows, titles)


def run_results(params: Params) -> dict[str, Path]:
    """Write the accuracy table (md/csv) and the figures from saved training results."""
    from .curation import load_curated
    from .training import load_results

    results = load_results(params)
    table = summary_table(results, params, significance(results, params))
    paths = write_summary(params, table, table_caption(params, results))
    fig = accuracy_bar_chart(results, params)
    paths["bar_chart"] = save_fig(fig, params, "accuracy_by_method")
    plt.close(fig)
    curated_file = Path(params.run.dir) / "curation" / "curated.parquet"
    if curated_file.exists():
        fig = originals_vs_generated(load_curated(params), params.results.grid_examples)
        paths["grid"] = save_fig(fig, params, "originals_vs_sgid")
        plt.close(fig)
    return paths
