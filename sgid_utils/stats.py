"""Is a method's gain over the Baseline larger than seed noise?

Two questions, two tests. Across training seeds, the paired difference in test
accuracy (method seed s minus Baseline seed s) gets a t confidence interval: a
setting is called significant only when that interval excludes zero. On one test
set, McNemar's test compares the per-image predictions of two trained models
(statsmodels); with one test per seed it is reported beside the interval, not
instead of it, because it measures test-set sampling noise of two particular
models, not the spread between training runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as st
from statsmodels.stats.contingency_tables import mcnemar

Predictions = Mapping[str, pd.DataFrame] | Callable[[str], pd.DataFrame]


def paired_difference(method_acc: Mapping[int, float] | pd.Series, baseline_acc: Mapping[int, float] | pd.Series,
                      confidence: float = 0.95) -> dict:
    """Mean of (method - baseline) over the seeds both have, with a t confidence interval.

    Returns ``mean_diff``, ``std_diff`` (sample std), ``n_seeds``, ``seeds``, ``ci_low``,
    ``ci_high``, ``confidence`` and ``significant`` (the interval excludes zero). With one
    common seed there is no interval: NaN bounds, not significant.
    """
    method, baseline = pd.Series(method_acc, dtype=float), pd.Series(baseline_acc, dtype=float)
    seeds = sorted(set(method.index) & set(baseline.index))
    if not seeds:
        raise ValueError(f"no seed in common: method seeds {sorted(method.index)}, baseline seeds {sorted(baseline.index)}")
    diff = method[seeds].to_numpy() - baseline[seeds].to_numpy()
    n, mean = len(diff), float(diff.mean())
    std = float(diff.std(ddof=1)) if n > 1 else float("nan")
    low = high = float("nan")
    if n > 1:
        with warnings.catch_warnings():  # equal differences on every seed are a result, not a numerical accident
            warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
            interval = st.ttest_rel(method[seeds], baseline[seeds]).confidence_interval(confidence)
        low, high = float(interval.low), float(interval.high)
    return {"mean_diff": mean, "std_diff": std, "n_seeds": n, "seeds": [int(s) for s in seeds], "ci_low": low,
            "ci_high": high, "confidence": confidence, "significant": bool(n > 1 and (low > 0 or high < 0))}


def mcnemar_test(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray) -> dict:
    """McNemar's test on two models' per-image correctness over the same test images.

    ``b``: images A gets right and B wrong; ``c``: the reverse. Exact binomial test when
    b + c < 25, else the chi-square statistic with continuity correction (statsmodels).
    """
    right_a, right_b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if right_a.shape != right_b.shape or right_a.ndim != 1:
        raise ValueError(f"need two equally long 1-D arrays of per-image correctness; got {right_a.shape} and {right_b.shape}")
    b, c = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    table = [[int((right_a & right_b).sum()), b], [c, int((~right_a & ~right_b).sum())]]
    exact = b + c < 25
    result = mcnemar(table, exact=exact, correction=True)
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue), "b": b, "c": c, "exact": exact}


def _per_class_accuracy(pred: pd.DataFrame) -> pd.Series:
    """Accuracy per label_idx; with a ``seed`` column, the mean over seeds of each seed's accuracy."""
    correct = pred.assign(correct=pred.pred == pred.label_idx)
    keys = ["seed", "label_idx"] if "seed" in pred.columns else ["label_idx"]
    per = correct.groupby(keys).correct.mean()
    return per.groupby("label_idx").mean() if "seed" in pred.columns else per


def per_class_change(pred_method: pd.DataFrame, pred_baseline: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
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
    ``lambda c: training.load_predictions(params, c)``). Seeds pair by number. ``significant``
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
        rows.append({"setting": setting, "baseline": baseline, **diff,
                     "mcnemar_p": p_values, "mcnemar_max_p": max(p_values)})
    return pd.DataFrame(rows)


def verdict(row: Mapping | pd.Series) -> str:
    """A sentence from a ``compare_to_baseline`` row: the difference, its interval, and what it means."""
    mean, n = row["mean_diff"], int(row["n_seeds"])
    direction = "above" if mean > 0 else "below" if mean < 0 else "equal to"
    amount = f"{abs(mean):.4f} " if mean != 0 else ""
    head = f"{row['setting']} is {amount}{direction} {row['baseline']}"
    if n < 2:
        return f"{head} (n=1 seed): one seed gives no confidence interval, so this cannot be told from seed noise."
    ci = f"{row['confidence']:.0%} CI {row['ci_low']:.4f} to {row['ci_high']:.4f}, n={n} seeds"
    if row["significant"]:
        return f"{head} ({ci}): significant."
    return f"{head} ({ci}): within seed noise (CI includes 0)."
