"""Figures every notebook uses: one ``save_fig`` writing to the reports folder, image grids, the accuracy chart,
the consistency-diversity plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from PIL import Image

from sgid_utils.config.backbones import backbones
from sgid_utils.config.schema import GuidanceParams, Params
from sgid_utils.core.files import write_figure
from sgid_utils.core.images import load_run_image
from sgid_utils.core.rundir import RunDir
from sgid_utils.method.guidance import guidance_scale

REPORT_CAPTION_SCORES = (0.301, 0.396)  # the report, Generation of Augmented Images §2: its two example captions


def save_fig(fig, params: Params, name: str) -> Path:
    """A notebook's figure, to reports/<run>/figures/<name>.png (the stages' own figures are catalog entries)."""
    return write_figure(RunDir.of(params).figure(name), fig)


def accuracy_bar_chart(results: pd.DataFrame, table: pd.DataFrame, params: Params):
    """Mean test accuracy per setting in percent (``table``: the results stage's summary) with ±1 std error bars,
    seeds as dots, references as markers; one panel per backbone, one above the other."""
    panels = [(bb.label, bb.name) for bb in backbones(params) if (table.Backbone == bb.label).any()]
    width = max(6, 1.1 * max((table.Backbone == p).sum() for p, _ in panels))
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 4 * len(panels)), squeeze=False, sharey=True)
    refs = [table[r.label].to_numpy(dtype=float) for r in params.results.references]
    lo = 100 * np.nanmin(np.concatenate([results.test_acc.to_numpy(), *refs]))
    for ax, (panel, backbone) in zip(axes[:, 0], panels):
        rows = table[table.Backbone == panel].reset_index(drop=True)
        own = results[results.backbone == backbone]
        x = np.arange(len(rows))
        ax.bar(x, 100 * rows["mean"], yerr=100 * rows["std"].fillna(0), color=sns.color_palette("muted", len(rows)),
               capsize=4, alpha=0.85,
               label="ours (mean ± std)")
        for i, setting in enumerate(rows.Method):
            accs = own.loc[own.setting == setting, "test_acc"]
            ax.scatter(np.full(len(accs), i), 100 * accs, color="black", s=10, zorder=3)
        for j, ref in enumerate(params.results.references):
            vals = 100 * rows[ref.label].to_numpy(dtype=float)
            if not np.isnan(vals).all():
                ax.scatter(x, vals, marker=["D", "s", "^"][j % 3], s=40, zorder=4, label=ref.label)
        ax.set_xticks(x, rows.Method, rotation=30, ha="right")
        ax.set_title(panel if len(panels) > 1 else f"{params.run.name}: augmentation methods", fontsize=10)
        ax.legend(fontsize=8, loc="lower left")
    axes[0][0].set_ylim(max(0.0, lo - 5), 100)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%)")
    fig.tight_layout()
    return fig


def guidance_readings(s_star: Sequence[float], guidance: GuidanceParams):
    """The guidance scale over s* under both readings of f(s*): ``direct`` (f) and ``scaled`` (base_scale * f),
    with the run's observed s* as dots and the report's two example caption scores (CLIP ViT-B/32: 0.396 for its
    beam-search caption, 0.301 for its nucleus caption) as lines; the range real captions take was not measured here."""
    s_star = np.asarray(s_star, dtype=float)
    grid = np.linspace(min(s_star.min(), 0.0), max(s_star.max(), 0.5), 200)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, mode in zip(axes, ("direct", "scaled")):
        reading = guidance.model_copy(update={"mode": mode})
        ax.plot(grid, [guidance_scale(v, reading) for v in grid],
                label="f(s*) = {:g} s*² + {:g} s* + {:g}".format(*guidance.coefficients))
        ax.scatter(s_star, [guidance_scale(v, reading) for v in s_star], s=12, color="C1", label="this run's images")
        for k, score in enumerate(REPORT_CAPTION_SCORES):
            ax.axvline(score, color="grey", ls="--", lw=1,
                       label="the report's two example scores (CLIP B/32)" if k == 0 else None)
        ax.axhline(1.0, color="grey", ls=":", lw=1)
        formula = "f(s*)" if mode == "direct" else f"{guidance.base_scale:g} · f(s*)"
        ax.set_title(f"{mode}: scale = {formula}" + ("  (in force)" if mode == guidance.mode else ""), fontsize=9)
        ax.set_xlabel("s* (CLIP similarity of the chosen caption)")
        ax.set_ylabel("guidance scale")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def image_grid(rows: list[list[str | Image.Image]], titles: list[list[str]] | None = None, size: float = 2.2):
    """A grid of images given by path (or in memory); each inner list is one row."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols, size * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(row):
                ax.imshow(row[j] if isinstance(row[j], Image.Image) else load_run_image(row[j]))
                if titles:
                    ax.set_title(titles[i][j], fontsize=7)
    fig.tight_layout()
    return fig


def originals_vs_generated(curated: pd.DataFrame, n: int):
    """Original beside its curated SGID image, for n sources spread over classes."""
    picks = (curated.sort_values(["label", "image_id"]).groupby("label")
             .head(max(1, n // max(1, curated.label.nunique()) + 1)).head(n))
    rows = [[r.source_path, r.path] for r in picks.itertuples()]
    titles = [[f"{r.class_name} (original)", f"SGID, sim {r.similarity:.2f}"] for r in picks.itertuples()]
    return image_grid(rows, titles)


def consistency_diversity(metrics: pd.DataFrame, variants: pd.DataFrame | None = None):
    """The paper's two axes: each generated set of ``metrics`` (the quality stage's set_metrics) as a dot, the
    ablation variants' curated sets (``ablation_set_metrics.csv``) as crosses (img2img) or triangles (ControlNet),
    the real images' label score as a line. Variants are numbered on the plot and named in a numbered legend, so no
    two names can overlap however close their points lie."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    gen = metrics[metrics.set != "real (sources)"]
    sns.scatterplot(gen, x="distance to source", y="label score", hue="set", style="kind", s=90, alpha=0.8, ax=ax)
    handles, labels = ax.get_legend_handles_labels()
    if variants is not None and len(variants):  # ControlNet as triangles (older tables have no generator column)
        generators = variants["generator"] if "generator" in variants else pd.Series("img2img", index=variants.index)
        for generator, marker, _what in (("img2img", "X", "SGID"), ("controlnet", "^", "SGID + ControlNet")):
            some = variants[generators == generator]
            if len(some):
                ax.scatter(some["distance to source"], some["label score"], marker=marker, color="black", s=50)
        for number, (x, y) in enumerate(zip(variants["distance to source"], variants["label score"]), start=1):
            ax.annotate(str(number), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7,
                        bbox={"boxstyle": "circle,pad=0.15", "fc": "white", "ec": "black", "lw": 0.5, "alpha": 0.8})
        for number, (name, generator) in enumerate(zip(variants.Variant, generators), start=1):
            handles.append(plt.Line2D([], [], ls="", marker="^" if generator == "controlnet" else "X", color="black"))
            labels.append(f"{number}: {name}")
    real = metrics[metrics.set == "real (sources)"].iloc[0]
    handles.append(ax.axhline(real["label score"], color="grey", ls=":"))
    labels.append("real images' label score")
    ax.set_xlabel("diversity: mean 1 - cosine to the source")
    ax.set_ylabel("consistency: CLIP label score")
    ax.legend(handles, labels, fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    return fig
