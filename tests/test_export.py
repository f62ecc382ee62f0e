"""The curated set exported as a Hugging Face image folder loads back with `datasets`, one row per curated image."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from PIL import Image

from sgid_utils.core import catalog
from sgid_utils.errors import StageError
from sgid_utils.reporting.export import dataset_card, export_curated, metadata


def test_export_round_trips_through_the_imagefolder_loader(pipeline_run, tmp_path):
    out = export_curated(pipeline_run, tmp_path / "set")
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "cache"))
    assert list(loaded) == ["train"]
    rows = loaded["train"]
    curated = catalog.load(pipeline_run, "curated")
    assert len(rows) == len(curated) and rows.num_rows == curated.image_id.nunique()
    table = rows.remove_columns("image").to_pandas().set_index("source_image_id").loc[curated.image_id]
    assert table.label.tolist() == curated.class_name.tolist()
    assert table.label_id.tolist() == curated.label.tolist()
    assert table.seed.tolist() == curated.seed.tolist() and table.prompt.tolist() == curated.prompt.tolist()
    np.testing.assert_allclose(table.similarity, curated.similarity, rtol=1e-6)
    np.testing.assert_allclose(table.guidance_scale, curated.guidance_scale, rtol=1e-6)
    np.testing.assert_allclose(table.s_star, curated.s_star, rtol=1e-6)
    # CSV has no empty string: an empty caption (a tiny random BLIP makes some) loads as null
    captions = catalog.load(pipeline_run, "best_captions").set_index("image_id").caption.loc[curated.image_id]
    assert [c if isinstance(c, str) else None for c in table.caption] == [c or None for c in captions]
    assert table.label_consistent.tolist() == curated.consistent.astype(bool).tolist()
    assert table.kept_by_filters.tolist() == curated.kept.astype(bool).tolist()
    assert (table.strength == pipeline_run.generation.strength).all() and (table.generator == "local:sd").all()
    # each image is the generated file, pixel for pixel, in its class's folder
    by_id = curated.set_index("image_id")
    for example in rows.select(range(3)):
        source = by_id.loc[example["source_image_id"]]
        assert np.array_equal(np.asarray(example["image"]), np.asarray(Image.open(source.path)))
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: other\n") and "the licence of your own images" in card
    assert f"{len(curated)} images generated" in card


def test_the_card_names_the_source_licence(pipeline_run):
    pets = pipeline_run.model_copy(update={"dataset": pipeline_run.dataset.model_copy(update={"source": "pets"})})
    card = dataset_card(pets, metadata(pets).drop(columns="path"))
    assert "license: cc-by-sa-4.0" in card and "Oxford-IIIT Pet" in card
    flowers = pipeline_run.model_copy(update={"dataset": pipeline_run.dataset.model_copy(update={"source": "flowers"})})
    assert "license: unknown" in dataset_card(flowers, metadata(flowers).drop(columns="path"))


def test_export_refuses_a_folder_that_holds_files(pipeline_run, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(StageError, match="not empty"):
        export_curated(pipeline_run, tmp_path)
