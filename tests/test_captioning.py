import pandas as pd

from sgid_utils.captioning import run_captions


def test_captions_per_image_with_method_and_rank(pipeline_run):
    caps = pd.read_parquet(pipeline_run.run.dir / "captions" / "captions.parquet")
    images = pd.read_parquet(pipeline_run.run.dir / "data" / "images.parquet")
    assert set(caps.image_id) == set(images[images.split == "train"].image_id)
    per = caps.groupby(["image_id", "method"]).size().unstack()
    assert (per["nucleus"] == 3).all() and (per["beam"] == 2).all()
    assert sorted(caps[caps.method == "nucleus"]["rank"].unique()) == [0, 1, 2]
    assert caps.caption.str.len().gt(0).any()


def test_captions_do_not_depend_on_batch_size_or_resuming(make_params):
    one = run_captions(make_params("a", captioning={"batch_size": 1}))
    params = make_params("b", captioning={"batch_size": 4})
    ids = sorted(one.image_id.unique())
    run_captions(params, image_ids=ids[:3])  # a first, partial run (as if killed)
    items = params.run.dir / "captions" / "items"
    before = {p.name: p.stat().st_mtime_ns for p in items.glob("*.json")}
    four = run_captions(params)
    assert {p.name: p.stat().st_mtime_ns for p in items.glob("*.json") if p.name in before} == before  # not redone
    pd.testing.assert_frame_equal(one.reset_index(drop=True), four.reset_index(drop=True))
