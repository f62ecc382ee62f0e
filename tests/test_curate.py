import pandas as pd
import pytest

from sgid_utils.augment.selection import select
from sgid_utils.core import catalog
from sgid_utils.core.rundir import RunDir


def _candidates() -> pd.DataFrame:
    """Source a: raw k0-1 and an upscaled regeneration k0-2; source b: raw only."""
    return pd.DataFrame({
        "image_id": ["a"] * 5 + ["b"] * 3,
        "generation_pass": ["raw", "raw", "upscaled", "upscaled", "upscaled", "raw", "raw", "raw"],
        "k": [0, 1, 0, 1, 2, 0, 1, 2],
        "similarity": [0.99, 0.5, 0.6, 0.7, 0.9, 0.3, 0.8, 0.75],
        "consistent": [True, True, True, True, True, False, False, False],
        "path": list("pqrstuvw"),
    })


def test_most_similar_prefers_the_upscaled_regeneration_then_similarity():
    best = select(_candidates(), "most_similar").set_index("image_id")
    assert best.loc["a", "path"] == "t"  # the upscaled regeneration replaces raw (0.99 is raw), best of its k
    assert best.loc["b", "path"] == "v"
    assert not best.fallback.any()


def test_most_diverse_consistent_takes_the_least_similar_acceptable_candidate():
    best = select(_candidates(), "most_diverse_consistent", min_similarity=0.65).set_index("image_id")
    assert best.loc["a", "path"] == "s"  # 0.7 >= 0.65 and consistent; 0.6 is below the floor; 0.9 is closer
    assert best.loc["b", "path"] == "v"  # nothing consistent: falls back to the most similar, and says so
    assert best.fallback.to_dict() == {"a": False, "b": True}
    assert (select(_candidates(), "most_diverse_consistent", min_similarity=0.5).set_index("image_id")
            .loc["a", "path"] == "r")
    with pytest.raises(ValueError, match="min_similarity"):
        select(_candidates(), "most_diverse_consistent")


def test_random_selection_is_seeded_and_covers_every_source():
    picks = {seed: select(_candidates(), "random", seed=seed).path.tolist() for seed in range(12)}
    assert picks[3] == select(_candidates(), "random", seed=3).path.tolist()  # the same seed, the same picks
    assert all(p[0] in "rst" and p[1] in "uvw" for p in picks.values())  # only competing candidates, one per source
    assert len({p[0] for p in picks.values()}) > 1  # and the seed matters


def test_small_sources_are_upscaled_and_each_source_gets_one_image(pipeline_run):
    p = pipeline_run
    cands = pd.read_parquet(catalog.path(RunDir.of(p), "candidates"))
    curated = pd.read_parquet(catalog.path(RunDir.of(p), "curated"))
    threshold = p.curation.upscale_threshold
    up = cands[cands.generation_pass == "upscaled"]
    assert len(up) and (up.short_side < threshold).all()
    assert set(up.image_id) == set(cands[cands.short_side < threshold].image_id)
    assert (up[["input_width", "input_height"]].min(axis=1) >= threshold - 8).all()
    assert curated.image_id.is_unique and set(curated.image_id) == set(cands.image_id)
    assert cands.similarity.between(-1, 1).all()
    small = curated[curated.short_side < threshold]
    assert (small.generation_pass == "upscaled").all()


def test_quality_scores_filters_and_the_filtered_set(pipeline_run):

    p = pipeline_run
    cands = catalog.load(p, "candidates")
    comp = cands[cands.competing]
    assert comp.fake_probability.between(0, 1).all() and cands[~cands.competing].fake_probability.isna().all()
    assert (comp.consistent == (comp.predicted_label == comp.label)).all()
    summary = catalog.load(p, "filters_summary")
    assert summary["filters"] == ["source_similarity", "label", "detector"]
    assert 0 <= summary["detector"]["cv_accuracy"] <= 1
    # Every competing candidate was kept or dropped by a named filter, in order.
    assert set(comp.dropped_by.dropna()) <= {"source_similarity", "label", "detector"}
    assert (comp[comp.dropped_by == "source_similarity"].similarity < summary["source_similarity_threshold"]).all()
    assert (comp[comp.dropped_by == "label"].consistent == False).all()  # noqa: E712 - element-wise on a Series
    assert (comp[comp.kept.astype(bool)].similarity >= summary["source_similarity_threshold"]).all()
    assert comp[comp.kept.astype(bool)].consistent.all()
    filtered = pd.read_parquet(catalog.path(RunDir.of(p), "curated_filtered"))
    kept = comp[comp.kept.astype(bool)]
    assert filtered.image_id.is_unique and set(filtered.image_id) == set(kept.image_id)
    assert p.curation.select == summary["select"] == "most_similar"  # the default
    for row in filtered.itertuples():  # the rule's property, checked on the candidates themselves
        assert not row.fallback and row.similarity == kept[kept.image_id == row.image_id].similarity.max()
    # The hypothesis (an ablation variant) on the same candidates: the least similar eligible one, else a fallback.
    from sgid_utils.augment.selection import choose

    floor = summary["select_floor"]
    for row in choose(p, kept, floor, "most_diverse_consistent").itertuples():
        own = kept[kept.image_id == row.image_id]
        eligible = own[own.consistent.astype(bool) & (own.similarity >= floor)]
        if len(eligible):
            assert not row.fallback and row.similarity == eligible.similarity.min()
        else:
            assert row.fallback and row.similarity == own.similarity.max()


def test_the_default_selection_is_the_closest_reading_of_the_reports_hand_pick(tmp_path):
    """curation.select defaults to most_similar; most_diverse_consistent is a hypothesis, as its description says."""
    from sgid_utils.params.schema import CurationParams

    field = CurationParams.model_fields["select"]
    assert CurationParams().select == "most_similar"
    assert "our automatic reading" in field.description and "hypothesis" in field.description


def test_the_random_rule_follows_the_generation_draw(make_params):
    """run.draw redraws curation's random choices too; draw 0 keeps run.seed's."""
    from sgid_utils.augment.selection import choose
    from sgid_utils.core.seeding import draw_seed

    zero, one = make_params("d0", run={"seed": 3}), make_params("d1", run={"seed": 3, "draw": 1})
    picks = {p.run.draw: choose(p, _candidates(), 0.0, "random").path.tolist() for p in (zero, one)}
    assert picks[0] == select(_candidates(), "random", seed=3).path.tolist()
    assert picks[1] == select(_candidates(), "random", seed=draw_seed(one)).path.tolist() != picks[0]
