import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from sgid_utils.core import catalog
from sgid_utils.core.rundir import RunDir
from sgid_utils.params.load import load_params
from sgid_utils.reporting.plots import gain_forest
from sgid_utils.reporting.tables import (
    DELTA,
    GENERATED,
    OURS,
    PAPER_DATA_SET_GAIN,
    SIGNIFICANT,
    SIGNIFICANT_HOLM,
    format_delta,
    format_mean_std,
    gains_caption,
    summary_table,
)
from sgid_utils.stages.results import backbone_gains, write_summary

from .conftest import REPO


def test_summary_mean_std_order_and_references(make_params):
    params = make_params(results={"references": [{"label": "Paper", "source": "arXiv 2302.02070",
                                                  "values": {"Baseline": 0.92, "SGID (100%)": 0.93}}]})
    results = pd.DataFrame({
        "backbone": "",  # the implicit backbone (models.classifier)
        "setting": ["SGID (100%)", "Baseline", "Baseline", "CutMix", "SGID (25%)", "SGID (100%)"],
        "method": ["sgid", "baseline", "baseline", "cutmix", "sgid", "sgid"],
        "proportion": [1.0, None, None, None, 0.25, 1.0],
        "test_acc": [0.90, 0.80, 0.84, 0.81, 0.70, 0.92],
        "generated_images": [40, 0, 0, 0, 10, 40],
    })
    t = summary_table(results, params)
    assert t.Method.tolist() == ["Baseline", "CutMix", "SGID (25%)", "SGID (100%)"]
    assert t[GENERATED].tolist() == [0, 0, 10, 40]  # each setting says how many generated images it adds
    base = t.set_index("Method").loc["Baseline"]
    assert base["mean"] == pytest.approx(0.82) and base["std"] == pytest.approx(np.std([0.80, 0.84], ddof=1), abs=1e-4)
    assert base[OURS] == "82.00 ± 2.83 (n=2)"  # percent, as the paper prints accuracy
    assert t.set_index("Method").loc["CutMix", OURS] == "81.00 (n=1)"
    assert t.set_index("Method")["Paper"].to_dict() == pytest.approx(
        {"Baseline": 0.92, "CutMix": np.nan, "SGID (25%)": np.nan, "SGID (100%)": 0.93}, nan_ok=True)
    paths = write_summary(params, t, "caption line")
    md = paths["md"].read_text()
    assert md.startswith("caption line") and "| Baseline" in md and "–" in md
    assert "92.00" in md and "0.92" not in md  # the md shows the references in percent too
    assert pd.read_csv(paths["csv"]).shape == t.shape


def test_format_mean_std():
    assert format_mean_std(0.5, 0.01, 3) == "50.00 ± 1.00 (n=3)"
    assert format_mean_std(0.5, float("nan"), 1) == "50.00 (n=1)"
    row = pd.Series({"mean_diff": 0.0123, "ci_low": -0.004, "ci_high": 0.0286, "n_seeds": 3})
    assert format_delta(row) == "+1.23 [-0.40, +2.86]"  # points


def test_run_results_writes_tables_and_figures(pipeline_run):
    run = RunDir.of(pipeline_run)
    assert catalog.path(run, "accuracy_md").exists() and catalog.path(run, "accuracy").exists()
    assert catalog.path(run, "accuracy_by_method").stat().st_size > 1000
    assert catalog.path(run, "originals_vs_sgid").exists()
    table = pd.read_csv(catalog.path(run, "accuracy"))
    assert {DELTA, SIGNIFICANT, SIGNIFICANT_HOLM, "p (paired t)", "p (Holm)"} <= set(table.columns)
    assert table.set_index("Method").loc["Baseline", SIGNIFICANT] == "–"
    # Significance is computed once and written; the table's Δ column is read from that file.
    sig = catalog.load(pipeline_run, "significance").set_index("setting")
    assert set(sig.index) == set(table.Method) - {"Baseline"}
    assert pd.read_csv(catalog.path(run, "significance_csv")).setting.tolist() == sig.index.tolist()
    assert {"p_value", "p_holm", "significant", "significant_holm", "reason"} <= set(sig.columns)
    for method, significant in table.set_index("Method")[SIGNIFICANT].drop("Baseline").items():
        row = sig.loc[method]
        assert significant == (f"undetermined ({row.reason})" if row.reason else "yes" if row.significant else "no")
    determined = sig[sig.p_value.notna()]
    if len(determined):  # Holm over every row of the table, undetermined rows counted as p = 1
        expected = multipletests(sig.p_value.fillna(1.0), method="holm")[1]
        assert sig.p_holm.dropna().tolist() == pytest.approx(expected[sig.p_value.notna().to_numpy()].tolist())
    results = pd.read_parquet(catalog.path(run, "training_results"))
    assert table.set_index("Method")["mean"].to_dict() == pytest.approx(
        results.groupby("setting").test_acc.mean().round(4).to_dict())


def _gain_rows(accs: dict[str, dict[str, list[float]]]) -> pd.DataFrame:
    methods = {"Baseline": ("baseline", None), "CutMix": ("cutmix", None), "RandAugment": ("randaugment", None),
               "SGID (100%)": ("sgid", 1.0), "SGID + CutMix (100%)": ("sgid_cutmix", 1.0)}
    return pd.DataFrame([{"backbone": backbone, "setting": setting, "method": methods[setting][0],
                          "proportion": methods[setting][1], "seed": seed, "test_acc": acc}
                         for backbone, settings in accs.items() for setting, seeds in settings.items()
                         for seed, acc in enumerate(seeds)])


def test_gains_show_the_papers_own_data_set_gain_and_both_verdicts():
    params = load_params(REPO / "params" / "pets_backbones.yaml")
    rows = _gain_rows({"vit_b16_in21k": {"Baseline": [0.90, 0.91, 0.905, 0.90], "CutMix": [0.89, 0.90, 0.90, 0.895],
                                         "SGID (100%)": [0.93, 0.94, 0.93, 0.935]},
                       "resnet50_scratch": {"Baseline": [0.50, 0.52, 0.51], "RandAugment": [0.55, 0.56, 0.55],
                                            "SGID (100%)": [0.55, 0.56, 0.55]}})
    gains = backbone_gains(rows, params).set_index("backbone")
    # The paper's Pets table as the report quotes it: SGID 0.9338 - RandAugment 0.9291, from the params, not typed.
    assert gains.loc["vit_b16_in21k", PAPER_DATA_SET_GAIN] == pytest.approx(0.47)
    assert np.isnan(gains.loc["resnet50_scratch", PAPER_DATA_SET_GAIN])  # no paper table for this backbone
    assert gains.loc["vit_b16_in21k", "Best non-generative"] == "Baseline"
    assert gains.loc["vit_b16_in21k", "verdict (unadjusted)"] == "significant"
    assert (gains.loc["resnet50_scratch", "verdict (unadjusted)"]
            == "undetermined (identical difference on every seed: zero spread)")
    assert gains.loc["vit_b16_in21k", "verdict (Holm)"] in ("significant", "not significant")
    caption = gains_caption(params, backbone_gains(rows, params))
    assert "For ViT-B/16 (ImageNet-21k) the best non-generative method is Baseline" in caption
    assert "names no data set; whether it is a mean over the paper's data sets is not stated" in caption
    assert "Table 1" in caption and "backbone assumed: ViT-B/16" in caption and "not a like-for-like one" in caption
    assert "verdict too" in caption  # the best baseline is picked after seeing the numbers
    assert "assumed ViT-B/16" in PAPER_DATA_SET_GAIN
    assert "biases SGID's gain down" in caption and "biases the combination's gain up" in caption
    assert "ResNet-50 (from scratch): the recipe and its resize-only Baseline are this package's choice" in caption


def test_the_papers_data_set_gain_shows_only_on_the_data_set_its_table_names():
    params = load_params(REPO / "params" / "pets_backbones.yaml")
    rows = _gain_rows({"vit_b16_in21k": {"Baseline": [0.90, 0.91, 0.905], "SGID (100%)": [0.93, 0.94, 0.93]}})
    assert params.references.tables[0].dataset == "pets"
    other = params.model_copy(update={"dataset": params.dataset.model_copy(update={"source": "imagefolder"})})
    assert np.isnan(backbone_gains(rows, other).set_index("backbone").loc["vit_b16_in21k", PAPER_DATA_SET_GAIN])
    assert PAPER_DATA_SET_GAIN not in gains_caption(other, backbone_gains(rows, other))
    untied = params.model_copy(deep=True)
    untied.references.tables[0].dataset = None
    assert np.isnan(backbone_gains(rows, untied).set_index("backbone").loc["vit_b16_in21k", PAPER_DATA_SET_GAIN])


def test_the_forest_plot_draws_each_gain_with_its_interval_per_backbone():
    params = load_params(REPO / "params" / "pets_backbones.yaml")
    sig = pd.DataFrame([
        {"backbone": "vit_b16_in21k", "setting": "CutMix", "mean_diff": -0.002, "ci_low": -0.01, "ci_high": 0.006,
         "determined": True},
        {"backbone": "vit_b16_in21k", "setting": "SGID (100%)", "mean_diff": 0.012, "ci_low": 0.004,
         "ci_high": 0.02, "determined": True},
        {"backbone": "resnet50_scratch", "setting": "SGID (100%)", "mean_diff": 0.03, "ci_low": np.nan,
         "ci_high": np.nan, "determined": False}])
    fig = gain_forest(sig, params)
    vit, resnet = fig.axes  # side by side, each with its own settings (they differ here)
    assert [t.get_text() for t in vit.get_yticklabels()] == ["CutMix", "SGID (100%)"]
    assert vit.get_title(loc="left") == "ViT-B/16 (ImageNet-21k): gain over its Baseline"
    drawn = {c.get_label(): c for c in vit.containers}
    outside, inside = drawn["95% CI excludes 0"], drawn["95% CI includes 0"]
    assert outside.lines[0].get_xdata() == pytest.approx([1.2]) and inside.lines[0].get_xdata() == pytest.approx([-0.2])
    segments = outside.lines[2][0].get_segments()[0]  # the horizontal bar of the interval, in points
    assert [x for x, _ in segments] == pytest.approx([0.4, 2.0])
    assert not resnet.containers and resnet.collections[0].get_offsets().tolist() == [[3.0, 0.0]]  # no interval
    assert [t.get_text() for t in resnet.get_yticklabels()] == ["SGID (100%)"]
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {"95% CI excludes 0", "95% CI includes 0",
                                                                  "no verdict (see the tables)"}
    with pytest.raises(ValueError, match="no row of this run's backbones"):
        gain_forest(sig.assign(backbone="other"), params)
