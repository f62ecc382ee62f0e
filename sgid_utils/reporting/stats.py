"""Is a method's gain over the Baseline larger than seed noise?

Two questions, two tests. Across training seeds, the paired difference in test
accuracy (method seed s minus Baseline seed s) gets a t confidence interval and a
paired t-test p-value. A verdict is given only with at least ``MIN_SEEDS`` common seeds
and a non-zero spread of the differences (identical differences on every seed give a
zero-width interval, which is no evidence); otherwise it is "undetermined", with the
reason. Across the settings of one table, Holm's step-down correction (statsmodels)
adjusts those p-values, and both verdicts are kept side by side. The interval covers
training seeds on one generation draw: it says nothing about another draw of captions
and generated images. On one test set, McNemar's test compares the per-image
predictions of two trained models (statsmodels); with one test per seed it is
reported beside the interval, not instead of it, because it measures test-set
sampling noise of two particular models, not the spread between training runs.

A headline verdict needs both: ``pooled_mcnemar`` pools the per-image pairs of every seed
into one McNemar test (test-set sampling: a gain of a few images out of thousands is not
evidence however steady it is across seeds), and ``joint_verdict`` gives "significant" or
"not significant" only when it and the seed interval agree, else "undetermined".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as st
from statsmodels.stats.contingency_tables import mcnemar

Predictions = Mapping[str, pd.DataFrame] | Callable[[str], pd.DataFrame]

MIN_SEEDS = 3  # with two seeds the t-interval has one degree of freedom: its width says almost nothing
ZERO_SPREAD = 1e-9  # accuracies are counts over at most ~1e5 images, so a real spread is far above this
COVERS = "training seeds on one generation draw"  # what every interval here varies, said beside every verdict
TEST_SET_COVERS = "the test images (McNemar on per-image pairs pooled over seeds)"  # what pooled_mcnemar varies
DISAGREE = "the seed interval and the test-set check disagree"
UNDETERMINED = "undetermined"


def undetermined_reason(n_seeds: int, std_diff: float) -> str:
    """Why no verdict can be given for a paired difference ('' when one can)."""
    if n_seeds < MIN_SEEDS:
        return f"{n_seeds} seed{'s' if n_seeds != 1 else ''}: need at least {MIN_SEEDS}"
    if math.isnan(std_diff):
        return "the spread of the differences was not recorded"
    if not std_diff > ZERO_SPREAD:
        return "identical difference on every seed: zero spread"
    return ""


def paired_difference(method_acc: Mapping[int, float] | pd.Series, baseline_acc: Mapping[int, float] | pd.Series,
                      confidence: float = 0.95) -> dict:
    """Mean of (method - baseline) over the seeds both have, with a t confidence interval and a paired t-test.

    Returns ``mean_diff``, ``std_diff`` (sample std), ``n_seeds``, ``seeds``, ``ci_low``, ``ci_high``,
    ``confidence``, ``p_value`` (paired t-test, two-sided), ``determined`` and ``reason`` (why not, else ''),
    and ``significant`` (determined and the interval excludes zero). The interval is computed from two seeds
    on, but a verdict needs ``MIN_SEEDS`` seeds and a non-zero spread; p is NaN where there is no verdict.
    """
    method, baseline = pd.Series(method_acc, dtype=float), pd.Series(baseline_acc, dtype=float)
    seeds = sorted(set(method.index) & set(baseline.index))
    if not seeds:
        raise ValueError(f"no seed in common: method seeds {sorted(method.index)}, baseline seeds "
                         f"{sorted(baseline.index)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    diff = method[seeds].to_numpy() - baseline[seeds].to_numpy()
    n, mean = len(diff), float(diff.mean())
    std = float(diff.std(ddof=1)) if n > 1 else float("nan")
    reason = undetermined_reason(n, std)
    low = high = p_value = float("nan")
    if n > 1:
        with warnings.catch_warnings():  # equal differences on every seed are a result, not a numerical accident
            warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
            test = st.ttest_rel(method[seeds], baseline[seeds])
            interval = test.confidence_interval(confidence)
        low, high = float(interval.low), float(interval.high)
        if not reason:
            p_value = float(test.pvalue)
    return {"mean_diff": mean, "std_diff": std, "n_seeds": n, "seeds": [int(s) for s in seeds], "ci_low": low,
            "ci_high": high, "confidence": confidence, "p_value": p_value, "determined": not reason, "reason": reason,
            "significant": bool(not reason and (low > 0 or high < 0))}


def holm(p_values: Sequence[float], alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm-adjusted p-values and rejections over one family of comparisons: statsmodels ``multipletests(...,
    method="holm")``'s steps, written out because it calls ``gc.collect()`` on every Holm call (0.3 s in a process
    holding torch and diffusers: seconds per ablation run); tests/test_stats.py checks them equal.

    An undetermined comparison (NaN p) stays in the family with p = 1: it was made and counts towards the
    number of comparisons, but it can reject nothing; its adjusted p is reported as NaN.
    """
    p = np.asarray(p_values, dtype=float)
    if p.size == 0:
        return np.array([], dtype=float), np.array([], dtype=bool)
    missing = np.isnan(p)
    order = np.argsort(np.where(missing, 1.0, p))
    ranked = np.where(missing, 1.0, p)[order]
    steps = np.arange(len(ranked), 0, -1)
    kept = np.nonzero(ranked > alpha / steps)[0]  # step down: the first p above its threshold stops the rejections
    reject, adjusted = np.empty(len(p), dtype=bool), np.empty(len(p))
    reject[order] = np.arange(len(ranked)) < (kept.min() if kept.size else len(ranked))
    adjusted[order] = np.minimum(np.maximum.accumulate(ranked * steps), 1.0)
    return np.where(missing, np.nan, adjusted), reject & ~missing


def add_holm(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (rows of ``paired_difference``, one ``confidence``) with ``p_holm`` and ``significant_holm``.

    The family is every row of the table: all settings of all backbones one run compares, because the
    page and tables/accuracy.csv show them together (up to about 27 comparisons) and a reader scanning
    them for a "significant" cell makes all of them; a per-backbone family would correct for fewer
    comparisons than the reader makes.
    """
    if table.empty:
        return table.assign(p_holm=pd.Series(dtype=float), significant_holm=pd.Series(dtype=bool))
    levels = table["confidence"].unique()
    if len(levels) != 1:
        raise ValueError(f"one Holm family needs one confidence level; got {sorted(levels)}")
    adjusted, reject = holm(table["p_value"], alpha=1 - float(levels[0]))
    return table.assign(p_holm=adjusted, significant_holm=reject)


def mcnemar_test(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray) -> dict:
    """McNemar's test on two models' per-image correctness over the same test images.

    ``b``: images A gets right and B wrong; ``c``: the reverse. Exact binomial test when
    b + c < 25, else the chi-square statistic with continuity correction (statsmodels).
    """
    right_a, right_b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if right_a.shape != right_b.shape or right_a.ndim != 1:
        raise ValueError(f"need two equally long 1-D arrays of per-image correctness; got {right_a.shape} "
                         f"and {right_b.shape}")
    b, c = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    table = [[int((right_a & right_b).sum()), b], [c, int((~right_a & ~right_b).sum())]]
    exact = b + c < 25
    result = mcnemar(table, exact=exact, correction=True)
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue), "b": b, "c": c, "exact": exact}


def pooled_mcnemar(method_pred: pd.DataFrame, base_pred: pd.DataFrame, seeds: Sequence[int] | None = None) -> dict:
    """McNemar's test on the per-image pairs of every common seed pooled: does the test set bear the gain out?

    Inputs are prediction tables with ``seed``, ``image_id``, ``label_idx`` and ``pred`` (``setting_predictions``);
    each (seed, image) pair counts once. Returns ``mcnemar_test``'s dict plus ``n_pairs``. A gain of +4, +4 and +5
    images out of 3,669 is steady over seeds, yet 13 net images out of 11,007 pairs is weak test-set evidence.
    """
    common = sorted(set(method_pred.seed) & set(base_pred.seed)) if seeds is None else list(seeds)
    pairs = method_pred[method_pred.seed.isin(common)].merge(
        base_pred[base_pred.seed.isin(common)], on=["seed", "image_id"], suffixes=("_m", "_b"), validate="one_to_one")
    if not common or len(pairs) != base_pred.seed.isin(common).sum():
        raise ValueError(f"the two settings were not tested on the same images for seeds {common}")
    result = mcnemar_test(pairs.pred_m == pairs.label_idx_m, pairs.pred_b == pairs.label_idx_b)
    return {**result, "n_pairs": len(pairs)}


def joint_verdict(seed_word: str, test_p: float | None, alpha: float = 0.05) -> str:
    """The headline verdict: the seed interval's word where the test-set check (p of ``pooled_mcnemar``) agrees.

    'significant' needs the interval to exclude 0 and p < alpha; 'not significant' needs neither; a disagreement,
    a missing check or an undetermined interval give 'undetermined (why)'.
    """
    if seed_word.startswith(UNDETERMINED):
        return seed_word
    if test_p is None or test_p != test_p:
        return f"{UNDETERMINED} (no test-set check: the predictions are missing)"
    if seed_word not in ("significant", "not significant"):
        raise ValueError(f"unknown seed verdict {seed_word!r}")
    if (seed_word == "significant") == (test_p < alpha):
        return seed_word
    return f"{UNDETERMINED} ({DISAGREE})"


def _per_class_accuracy(pred: pd.DataFrame) -> pd.Series:
    """Accuracy per label_idx; with a ``seed`` column, the mean over seeds of each seed's accuracy."""
    correct = pred.assign(correct=pred.pred == pred.label_idx)
    keys = ["seed", "label_idx"] if "seed" in pred.columns else ["label_idx"]
    per = correct.groupby(keys).correct.mean()
    return per.groupby("label_idx").mean() if "seed" in pred.columns else per


def per_class_change(pred_method: pd.DataFrame, pred_baseline: pd.DataFrame,
                     class_names: Sequence[str]) -> pd.DataFrame:
    """Per-class test accuracy of a method and of the Baseline and the change, largest gain first.

    Inputs are prediction tables (image_id, label_idx, pred, optionally seed: accuracies
    are then averaged over seeds). ``class_names[label_idx]`` names each class.
    """
    method, baseline = _per_class_accuracy(pred_method), _per_class_accuracy(pred_baseline)
    n_images = pred_baseline.drop_duplicates("image_id").groupby("label_idx").size()
    table = pd.DataFrame({"method_acc": method, "baseline_acc": baseline, "n_images": n_images})
    table.index.name = "label_idx"
    table = table.reset_index()
    table.insert(1, "class_name", [class_names[int(i)] for i in table.label_idx])
    table["change"] = table.method_acc - table.baseline_acc
    return table.sort_values(["change", "label_idx"], ascending=[False, True], kind="stable").reset_index(drop=True)


def setting_predictions(results: pd.DataFrame, setting: str, predictions: Predictions) -> pd.DataFrame:
    """All seeds' prediction tables of one setting, stacked with a ``seed`` column."""
    get = predictions.__getitem__ if isinstance(predictions, Mapping) else predictions
    rows = results[results.setting == setting].sort_values("seed")
    if rows.empty:
        raise ValueError(f"no results for setting '{setting}'; have {sorted(results.setting.unique())}")
    return pd.concat([get(r.config).assign(seed=int(r.seed)) for r in rows.itertuples()], ignore_index=True)


def compare_to_baseline(results: pd.DataFrame, predictions: Predictions, baseline: str = "Baseline",
                        confidence: float = 0.95) -> pd.DataFrame:
    """One row per setting other than ``baseline``: the paired seed difference and per-seed McNemar tests.

    ``results`` has columns setting, seed, test_acc, config; ``predictions`` maps a
    config name to its prediction table (a dict, or a loader such as
    ``lambda c: catalog.load(params, "predictions", config=c)``). Seeds pair by number. ``significant``
    comes from the confidence interval alone. ``mcnemar_p`` lists the per-seed p-values
    (seed order); ``mcnemar_max_p`` is their maximum: below alpha only if every seed's
    pair of models differs at level alpha (an intersection-union test), a simple and
    conservative summary rather than an average of p-values.
    """
    base_acc = results[results.setting == baseline].set_index("seed").test_acc
    base_pred = setting_predictions(results, baseline, predictions)
    rows = []
    for setting in [s for s in dict.fromkeys(results.setting) if s != baseline]:
        diff = paired_difference(results[results.setting == setting].set_index("seed").test_acc, base_acc, confidence)
        method_pred = setting_predictions(results, setting, predictions)
        p_values = []
        for seed in diff["seeds"]:
            pair = method_pred[method_pred.seed == seed].merge(
                base_pred[base_pred.seed == seed], on="image_id", suffixes=("_m", "_b"), validate="one_to_one")
            if len(pair) != (base_pred.seed == seed).sum():
                raise ValueError(f"'{setting}' and '{baseline}' seed {seed} were not tested on the same images")
            p_values.append(mcnemar_test(pair.pred_m == pair.label_idx_m, pair.pred_b == pair.label_idx_b)["p_value"])
        pooled = pooled_mcnemar(method_pred, base_pred, diff["seeds"])
        rows.append({"setting": setting, "baseline": baseline, **diff,
                     "mcnemar_p": p_values, "mcnemar_max_p": max(p_values), "mcnemar_pooled_p": pooled["p_value"],
                     "mcnemar_pooled_net": pooled["b"] - pooled["c"]})
    return pd.DataFrame(rows)


def _get(row: Mapping | pd.Series, key: str, default: object = None) -> object:
    """A row's value, or ``default`` where a table written before that column existed lacks it (or has NaN)."""
    value = row.get(key, default) if hasattr(row, "get") else default
    return default if value is None or (isinstance(value, float) and math.isnan(value)) else value


def verdict_word(row: Mapping | pd.Series, adjusted: bool = False) -> str:
    """'significant', 'not significant' or 'undetermined' for a ``paired_difference`` row: unadjusted, or after Holm."""
    if reason_of(row):
        return UNDETERMINED
    key = "significant_holm" if adjusted else "significant"
    if adjusted and _get(row, key) is None:
        return "–"  # a table written before the Holm column existed
    return "significant" if bool(row[key]) else "not significant"


def reason_of(row: Mapping | pd.Series) -> str:
    """The row's stored reason ('' when a verdict was given), recomputed for tables written before it was stored."""
    stored = _get(row, "reason")
    if stored is not None:
        return str(stored)
    return undetermined_reason(int(row["n_seeds"]), float(_get(row, "std_diff", float("nan"))))


def verdict(row: Mapping | pd.Series) -> str:
    """A sentence from a ``compare_to_baseline`` row: the difference in accuracy points, its interval, what the
    interval covers, and both verdicts by name (unadjusted, and after Holm's correction when the row has it)."""
    mean, n = 100 * float(row["mean_diff"]), int(row["n_seeds"])
    direction = "above" if mean > 0 else "below" if mean < 0 else "equal to"
    amount = f"{abs(mean):.2f} points " if mean != 0 else ""
    head = f"{row['setting']} is {amount}{direction} {row['baseline']}"
    covers = f"{n} {COVERS.replace('seeds', 'seed') if n == 1 else COVERS}"
    reason = reason_of(row)
    if reason:
        ci = "" if n < 2 else (f"{row['confidence']:.0%} CI {100 * row['ci_low']:+.2f} to {100 * row['ci_high']:+.2f} "
                               f"points; ")
        return f"{head} ({ci}{covers}): {UNDETERMINED} ({reason})."
    ci = f"{row['confidence']:.0%} CI {100 * row['ci_low']:+.2f} to {100 * row['ci_high']:+.2f} points"
    p = _get(row, "p_value")
    tested = f"; paired t-test p = {p:.3g}" if p is not None else ""
    plain = verdict_word(row)
    text = f"{head} ({ci}{tested}; {covers}): {plain} unadjusted (" + (
        "the interval excludes 0" if plain == "significant" else "the interval includes 0") + ")"
    holm_p = _get(row, "p_holm")
    if holm_p is not None:
        text += f"; {verdict_word(row, adjusted=True)} after Holm's correction over all settings of the table " \
                f"(Holm p = {holm_p:.3g})"
    return text + "."
