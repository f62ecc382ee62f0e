import numpy as np
import pandas as pd
import pytest

from sgid_utils.results import format_mean_std, load_significance, summary_table, write_summary
from sgid_utils.rundir import RunDir


def test_summary_mean_std_order_and_references(make_params):
    params = make_params(results={"references": [{"label": "Paper", "source": "arXiv 2302.02070",
                                                  "values": {"Baseline": 0.92, "SGID (100%)": 0.93}}]})
    results = pd.DataFrame({
        "backbone": "",  # the implicit backbone (models.classifier)
        "setting": ["SGID (100%)", "Baseline", "Baseline", "CutMix", "SGID (25%)", "SGID (100%)"],
        "method": ["sgid", "baseline", "baseline", "cutmix", "sgid", "sgid"],
        "proportion": [1.0, None, None, None, 0.25, 1.0],
        "test_acc": [0.90, 0.80, 0.84, 0.81, 0.70, 0.92],
    })
    t = summary_table(results, params)
    assert t.Method.tolist() == ["Baseline", "CutMix", "SGID (25%)", "SGID (100%)"]
    base = t.set_index("Method").loc["Baseline"]
    assert base["mean"] == pytest.approx(0.82) and base["std"] == pytest.approx(np.std([0.80, 0.84], ddof=1), abs=1e-4)
    assert base["Ours (mean ± std over seeds)"] == "0.8200 ± 0.0283 (n=2)"
    assert t.set_index("Method").loc["CutMix", "Ours (mean ± std over seeds)"] == "0.8100 (n=1)"
    assert t.set_index("Method")["Paper"].to_dict() == pytest.approx(
        {"Baseline": 0.92, "CutMix": np.nan, "SGID (25%)": np.nan, "SGID (100%)": 0.93}, nan_ok=True)
    paths = write_summary(params, t, "caption line")
    md = paths["md"].read_text()
    assert md.startswith("caption line") and "| Baseline" in md and "–" in md
    assert pd.read_csv(paths["csv"]).shape == t.shape


def test_format_mean_std():
    assert format_mean_std(0.5, 0.01, 3) == "0.5000 ± 0.0100 (n=3)"
    assert format_mean_std(0.5, float("nan"), 1) == "0.5000 (n=1)"


def test_run_results_writes_tables_and_figures(pipeline_run):
    run = RunDir.of(pipeline_run)
    assert run.table("accuracy.md").exists() and run.table("accuracy.csv").exists()
    assert run.figure("accuracy_by_method").stat().st_size > 1000
    assert run.figure("originals_vs_sgid").exists()
    table = pd.read_csv(run.table("accuracy.csv"))
    assert {"Δ vs Baseline (95% CI)", "Significant"} <= set(table.columns)
    assert table.set_index("Method").loc["Baseline", "Significant"] == "–"
    # Significance is computed once and written; the table's Δ column is read from that file.
    sig = load_significance(pipeline_run).set_index("setting")
    assert set(sig.index) == set(table.Method) - {"Baseline"}
    assert pd.read_csv(run.table("significance.csv")).setting.tolist() == sig.index.tolist()
    for method, significant in table.set_index("Method").Significant.drop("Baseline").items():
        assert significant == ("yes" if sig.loc[method, "significant"] else "no")
    results = pd.read_parquet(run.results_table)
    assert table.set_index("Method")["mean"].to_dict() == pytest.approx(
        results.groupby("setting").test_acc.mean().round(4).to_dict())
