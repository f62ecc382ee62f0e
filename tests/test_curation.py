import pandas as pd

from sgid_utils.curation import select_best
from sgid_utils.rundir import RunDir


def test_select_best_prefers_upscaled_then_similarity():
    c = pd.DataFrame({
        "image_id": ["a"] * 4 + ["b"] * 2,
        "variant": ["raw", "raw", "upscaled", "upscaled", "raw", "raw"],
        "k": [0, 1, 0, 1, 0, 1],
        "similarity": [0.99, 0.5, 0.6, 0.7, 0.3, 0.8],
        "path": list("pqrstu"),
    })
    best = select_best(c).set_index("image_id")
    assert best.loc["a", "path"] == "s"  # the upscaled regeneration replaces raw, best of its k
    assert best.loc["b", "path"] == "u"


def test_small_sources_are_upscaled_and_each_source_gets_one_image(pipeline_run):
    p = pipeline_run
    cands = pd.read_parquet(RunDir.of(p).candidates_table)
    curated = pd.read_parquet(RunDir.of(p).curated_table())
    threshold = p.curation.upscale_threshold
    up = cands[cands.variant == "upscaled"]
    assert len(up) and (up.short_side < threshold).all()
    assert set(up.image_id) == set(cands[cands.short_side < threshold].image_id)
    assert (up[["input_width", "input_height"]].min(axis=1) >= threshold - 8).all()
    assert curated.image_id.is_unique and set(curated.image_id) == set(cands.image_id)
    assert cands.similarity.between(-1, 1).all()
    small = curated[curated.short_side < threshold]
    assert (small.variant == "upscaled").all()


def test_quality_scores_filters_and_the_filtered_set(pipeline_run):
    from sgid_utils.curation import load_candidates, load_quality_summary

    p = pipeline_run
    cands = load_candidates(p)
    comp = cands[cands.competing]
    assert comp.fake_probability.between(0, 1).all() and cands[~cands.competing].fake_probability.isna().all()
    assert (comp.consistent == (comp.predicted_label == comp.label)).all()
    summary = load_quality_summary(p)
    assert summary["filters"] == ["similarity", "label", "detector"] and 0 <= summary["detector"]["cv_accuracy"] <= 1
    # Every competing candidate was kept or dropped by a named filter, in order.
    assert set(comp.dropped_by.dropna()) <= {"similarity", "label", "detector"}
    assert (comp[comp.dropped_by == "similarity"].similarity < summary["similarity_threshold"]).all()
    assert (comp[comp.dropped_by == "label"].consistent == False).all()  # noqa: E712
    assert (comp[comp.kept.astype(bool)].similarity >= summary["similarity_threshold"]).all()
    assert comp[comp.kept.astype(bool)].consistent.all()
    filtered = pd.read_parquet(RunDir.of(p).curated_table(filtered=True))
    kept = comp[comp.kept.astype(bool)]
    assert filtered.image_id.is_unique and set(filtered.image_id) == set(kept.image_id)
    for row in filtered.itertuples():  # the best kept candidate of its source
        assert row.similarity == kept[kept.image_id == row.image_id].similarity.max()


def test_set_metrics_cover_real_and_generated_sets(pipeline_run):
    """The quality stage (notebook 07's tables) ran with the chain and wrote what it returns."""
    from sgid_utils.quality_report import set_metrics

    m = set_metrics(pipeline_run).set_index("set")
    assert {"real (sources)", "generated (raw)", "curated (best of k)", "curated (filtered)"} <= set(m.index)
    assert m.loc["real (sources)", "images"] == pd.read_parquet(RunDir.of(pipeline_run).best_table).shape[0]
    written = pd.read_csv(RunDir.of(pipeline_run).table("set_metrics.csv")).set_index("set")
    pd.testing.assert_frame_equal(written, m, check_dtype=False)
    change = pd.read_csv(RunDir.of(pipeline_run).table("per_class_change.csv"))
    assert set(change.class_name) == set(pd.read_parquet(RunDir.of(pipeline_run).images_table).class_name)
    assert m["zero-shot accuracy"].between(0, 1).all()
    assert m.drop(index="real (sources)")["distance to source"].between(0, 2).all()
