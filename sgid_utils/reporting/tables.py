"""The result tables' columns and cells: how accuracies, differences, p-values and verdicts are printed.

The results stage writes the accuracy table with these, the ablation table reuses its cells, the quality
report and the ablations take the first backbone's rows through ``primary``, and the report page reads
the tables back by these column names. Keeping the names and the formatting in one place is what lets the
page find the columns the stages wrote; nothing here reads or writes a file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sgid_utils.core import catalog
from sgid_utils.params.backbones import METHOD_NAMES, NON_GENERATIVE, backbones, configs, recipe
from sgid_utils.params.schema import Params
from sgid_utils.params.training import BackboneParams
from sgid_utils.reporting.stats import COVERS, TEST_SET_COVERS, reason_of, verdict_word

SIGNIFICANCE_COLUMNS = ["backbone", "setting", "mean_diff", "ci_low", "ci_high", "p_value", "determined", "reason",
                        "significant", "p_holm", "significant_holm"]
# The accuracy table's columns (tables/accuracy.csv); the numeric copies mean/std/seeds are accuracy fractions.
OURS = "Ours (%, mean ± std over seeds)"
GENERATED = "Generated images"  # how many generated images a setting adds to the real ones (filtering drops some)
DELTA = "Δ vs Baseline (points, 95% CI)"
SIGNIFICANT = "Significant (unadjusted)"
SIGNIFICANT_HOLM = "Significant (Holm)"
P_VALUE, P_HOLM = "p (paired t)", "p (Holm)"
# backbone_gains: the paper-labelled reference table's gain (`references.tables`), when it names the run's data set.
PAPER_DATA_SET_GAIN = "Paper's gain, this data set (points, assumed ViT-B/16)"
# backbone_gains: the test-set check of each gain and the verdict of both checks (stats.joint_verdict).
TEST_SET_P = "test-set p (McNemar, pooled over seeds)"
JOINT = "verdict (seeds and test set)"
JOINT_HOLM = "verdict (Holm, seeds and test set)"

# Column names of the ablation table (the report page reads the first three).
ABLATION_DELTA, ABLATION_SIGNIFICANT, ABLATION_SIGNIFICANT_HOLM, ABLATION_P_HOLM = (
    "Δ (points, 95% CI)", "Significant (unadjusted)", "Significant (Holm over variants)", "p (Holm)")


@dataclass(frozen=True)
class Control:
    """A control of the main verdict: an ablation variant (``variant``, a name checked outside the repo) that sets
    ``key``. The ablation table answers ``question`` in its Control column; the report page names it ``label``
    beside the verdict, finding its row by the key when a profile gives the variant a label."""

    variant: str
    key: str
    label: str
    question: str


# The controls of the main verdict, declared once: a new control is a line here and a variant in the profiles.
CONTROLS = (
    Control("sgid-equal-steps", "training.equal_steps", "equal steps (SGID trained for the Baseline's steps)",
            "Does SGID's gain survive equal compute (the Baseline's steps)?"),
    Control("second-draw", "run.draw", "second generation draw (captions, candidates, selection redrawn)",
            "Does SGID's gain hold on a new generation draw?"),
)


def percent(value: float, digits: int = 2) -> str:
    """An accuracy fraction in percent, two decimals ('93.38'); NaN as a dash."""
    return "–" if value is None or value != value else f"{100 * value:.{digits}f}"


def format_mean_std(mean: float, std: float, n: int) -> str:
    """'93.38 ± 0.12 (n=3)': mean ± sample std over seeds of an accuracy fraction, in percent
    (no spread with 1 seed)."""
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
    """The first backbone's rows: the one ablation variants, the quality report and the references
    compare by default."""
    return of_backbone(table, backbones(params)[0].name)


def per_setting(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std and count of test accuracy per setting, in method order (then proportion)."""
    extra = {"generated": ("generated_images", "max")} if "generated_images" in results else {}
    grouped = results.groupby("setting").agg(method=("method", "first"), proportion=("proportion", "first"),
                                             mean=("test_acc", "mean"), std=("test_acc", "std"),
                                             count=("test_acc", "count"), **extra)
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


def _backbone_table(results: pd.DataFrame, params: Params, bb: BackboneParams, sig: pd.DataFrame | None,
                    first: bool) -> pd.DataFrame:
    grouped = per_setting(results)
    table = pd.DataFrame({
        "Backbone": bb.label,
        "Method": grouped.index,
        OURS: [format_mean_std(m, s, int(n)) for m, s, n in zip(grouped["mean"], grouped["std"], grouped["count"])],
        "mean": grouped["mean"].round(4).to_numpy(),
        "std": grouped["std"].round(4).to_numpy(),
        "seeds": grouped["count"].astype(int).to_numpy(),
        **({GENERATED: grouped["generated"].astype(int).to_numpy()} if "generated" in grouped else {}),
    })
    if sig is not None:
        rows = sig.set_index("setting")

        def column(show) -> list[str]:
            return [show(rows.loc[m]) if m in rows.index else "–" for m in table.Method]

        table[DELTA] = column(format_delta)
        table[P_VALUE] = column(lambda r: format_p(r.get("p_value")))
        table[SIGNIFICANT] = column(verdict_cell)
        table[P_HOLM] = column(lambda r: format_p(r.get("p_holm")))
        table[SIGNIFICANT_HOLM] = column(lambda r: verdict_cell(r, adjusted=True))
        table["McNemar p (max over seeds)"] = column(lambda r: f"{r['mcnemar_max_p']:.3g}")
        table["McNemar p (pooled over seeds)"] = column(lambda r: format_p(r.get("mcnemar_pooled_p")))
    for ref in params.references.tables:
        mine = ref.backbone == bb.name if ref.backbone is not None else first
        table[ref.label] = [ref.values.get(s, np.nan) if mine else np.nan for s in table.Method]
    return table.reset_index(drop=True)


def format_p(value: float | None) -> str:
    """A p-value as a table cell: three significant digits; missing (NaN or None) as a dash."""
    return "–" if value is None or value != value else f"{value:.3g}"


def paper_reference(params: Params, bb: BackboneParams, first: bool):
    """The paper-labelled reference table (label starting 'Paper', `references.tables`) for this backbone, or None."""
    for ref in params.references.tables:
        if ref.label.lower().startswith("paper") and (ref.backbone == bb.name if ref.backbone is not None else first):
            return ref
    return None


def paper_data_set_gain(params: Params, bb: BackboneParams, first: bool) -> float | None:
    """The paper-labelled reference table's gain (`references.tables`), in points: its SGID (100%) minus the
    best of its rows among Baseline, CutMix and RandAugment (our pool), or None unless it names the run's data set.

    The report's 'Benchmark in Paper' column names no backbone (its ``assumed_backbone`` says ours), so this is the
    nearest number to this run's gain, not a like-for-like one.
    """
    ref = paper_reference(params, bb, first)
    if ref is not None and ref.dataset != params.dataset.source:
        return None
    pool = [ref.values[METHOD_NAMES[m]] for m in NON_GENERATIVE if ref and METHOD_NAMES[m] in ref.values]
    if ref is None or "SGID (100%)" not in ref.values or not pool:
        return None
    return round(100 * (ref.values["SGID (100%)"] - max(pool)), 2)


def gains_caption(params: Params, gains: pd.DataFrame | None = None) -> str:
    """What the gains table compares, where every number comes from, and how the picks bias it."""
    headline = params.references.headline
    parts = [
        "Gain of SGID (its largest proportion) over the best non-generative method of the same backbone, in accuracy "
        "points, paired over training seeds " f"{params.training.seeds} on one generation draw (95% t-interval). "
        "The best non-generative method is picked from this run's numbers among Baseline (no augmentation), CutMix "
        "and RandAugment (our reading of the abstract's unnamed pool): picking the best of three biases SGID's gain "
        "down and its verdict too ('significantly worse' comes up more often than nominal); the combination shown "
        "is the better of SGID + CutMix and SGID + RandAugment, which biases the combination's gain up. Verdicts "
        "need at least 3 seeds and a non-zero spread; Holm's correction runs over every comparison of this table. "
        f"The interval covers {COVERS}; the test-set check covers {TEST_SET_COVERS}; the verdict of both is given "
        "only where they agree, else it is undetermined."]
    if gains is not None and "Best non-generative" in gains:
        on_baseline = [str(b) for b, n in zip(gains.Backbone, gains["Best non-generative"]) if n == "Baseline"]
        if on_baseline:
            parts.append(f"For {', '.join(on_baseline)} the best non-generative method is Baseline: no augmentation "
                         "beat training without any, so SGID is compared with no augmentation at all.")
    if headline is not None:
        parts.append(f"{headline.label}: {headline.source}; the abstract gives one number per backbone and names "
                     "no data set; whether it is a mean over the paper's data sets is not stated.")
    for i, bb in enumerate(backbones(params)):
        ref = paper_reference(params, bb, first=i == 0)
        if ref is not None and paper_data_set_gain(params, bb, first=i == 0) is not None:
            assumed = f"; backbone assumed: {ref.assumed_backbone}" if ref.assumed_backbone else ""
            parts.append(f"{PAPER_DATA_SET_GAIN} ({bb.label}): the 'Benchmark in Paper' SGID (100%) minus its best of "
                         "Baseline, "
                         f"CutMix and RandAugment on {ref.dataset}, from '{ref.label}' ({ref.source}{assumed}): the "
                         "nearest published number to this run's gain, not a like-for-like one.")
    scratch = [bb.label for bb in backbones(params) if not bb.pretrained]
    if scratch:
        parts.append(f"{', '.join(scratch)}: the recipe and its resize-only Baseline are this package's choice; the "
                     "paper's protocol for it is not stated in what we can read.")
    return " ".join(parts)


def table_caption(params: Params, results: pd.DataFrame) -> str:
    ds = params.dataset
    splits = "+".join(ds.train_splits) if ds.source != "imagefolder" else "train folder"
    refs = "; ".join(f"{r.label}: {r.source}" for r in params.references.tables)
    n_train = int((results.train_images - results.generated_images).iloc[0]) if len(results) else 0
    recipes = "; ".join(recipe(bb) for bb in backbones(params))
    return (
        f"Test accuracy in percent on {ds.source} (trained on {splits}, {n_train} real images; tested on split "
        f"'{ds.test_split}'), {recipes}, seeds {params.training.seeds}. Δ: in accuracy points, paired over "
        f"{COVERS} against the same backbone's Baseline, 95% t-interval. Verdicts need at least 3 seeds and a "
        "non-zero spread of the differences (else 'undetermined'); 'unadjusted' tests each setting on its own, "
        f"'Holm' corrects for every comparison of the table (all backbones). {refs}"
    )


def histories(params: Params) -> pd.DataFrame:
    """Every finished configuration's per-epoch metrics in one table, with its backbone, setting and seed."""
    frames = [catalog.load(params, "metrics", config=cfg.name).assign(backbone=cfg.backbone, setting=cfg.setting,
                                                                       seed=cfg.seed)
              for cfg in configs(params) if catalog.exists(params, "metrics", config=cfg.name)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
