import pandas as pd

from sgid_utils.curation import select_best


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
    cands = pd.read_parquet(p.run.dir / "curation" / "candidates.parquet")
    curated = pd.read_parquet(p.run.dir / "curation" / "curated.parquet")
    threshold = p.curation.upscale_threshold
    up = cands[cands.variant == "upscaled"]
    assert len(up) and (up.short_side < threshold).all()
    assert set(up.image_id) == set(cands[cands.short_side < threshold].image_id)
    assert (up[["input_width", "input_height"]].min(axis=1) >= threshold - 8).all()
    assert curated.image_id.is_unique and set(curated.image_id) == set(cands.image_id)
    assert cands.similarity.between(-1, 1).all()
    small = curated[curated.short_side < threshold]
    assert (small.variant == "upscaled").all()
