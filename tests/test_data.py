import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sgid_utils.core import catalog
from sgid_utils.core.images import load_image, readable_class_name
from sgid_utils.core.rundir import RunDir
from sgid_utils.errors import DatasetError
from sgid_utils.stages import data

from .conftest import REPO


@pytest.mark.parametrize(("raw", "case", "nice"), [
    ("great_pyrenees", "title", "Great Pyrenees"), ("Maine_Coon", "title", "Maine Coon"),
    ("american_pit_bull_terrier", "title", "American Pit Bull Terrier"), ("pink primrose", "keep", "pink primrose"),
    ("english-setter", "title", "English-Setter"), ("hard-leaved pocket orchid", "keep", "hard-leaved pocket orchid"),
    ("hard-leaved pocket orchid", "title", "Hard-Leaved Pocket Orchid"),
])
def test_readable_class_names(raw, case, nice):
    assert readable_class_name(raw, case) == nice


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), "red")
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    out = load_image(_png(img, format="JPEG", exif=exif))
    assert out.size == (20, 40)


def test_modes_become_rgb():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red -> white background
    assert load_image(_png(rgba)).getpixel((0, 0)) == (255, 255, 255)
    grey16 = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    assert load_image(_png(grey16)).getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    assert load_image(_png(cmyk, format="JPEG")).mode == "RGB"
    pal = Image.new("P", (8, 8), 0)
    pal.info["transparency"] = 0
    assert load_image(_png(pal, transparency=0)).mode == "RGB"


def test_unreadable_files_raise_a_readable_reason():
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(b"not an image at all")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(_png(Image.new("RGB", (64, 64)), format="JPEG")[:200])


def _folder(root, classes: dict[str, int], size=(40, 30)):
    for cls, n in classes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", size, (i * 20, 10, 10)).save(root / cls / f"{i}.jpg")


def test_imagefolder_with_bad_files_skips_and_records(make_params, tmp_path):
    root = tmp_path / "imgs"
    _folder(root, {"cat_a": 5, "dog b": 5, "empty": 0})
    (root / "cat_a" / "broken.jpg").write_bytes(b"\x00" * 10)
    (root / "cat_a" / ".hidden.jpg").write_bytes(b"")
    Image.new("RGB", (4, 4)).save(root / "dog b" / "tiny.png")
    params = make_params(dataset={"path": str(root), "test_path": None, "test_fraction": 0.2},
                         smoke={"build_dataset": False})
    df = data.run(params)
    skipped = pd.read_csv(catalog.path(RunDir.of(params), "skipped"))
    reasons = " | ".join(skipped.reason)
    assert "not a readable image" in reasons and "hidden file" in reasons and "too small" in reasons
    assert "class has no usable training image" in reasons
    assert set(df.class_name) == {"Cat A", "Dog B"}
    assert df.groupby(["class_name", "split"]).size().to_dict() == {
        ("Cat A", "test"): 1, ("Cat A", "train"): 4, ("Dog B", "test"): 1, ("Dog B", "train"): 4}
    again = data.run(params)  # the second call reuses the table
    pd.testing.assert_frame_equal(df, again)


def test_per_class_cap_and_too_few_classes(make_params, tmp_path):
    root = tmp_path / "imgs"
    _folder(root, {"a": 6, "b": 6})
    params = make_params(dataset={"path": str(root), "test_path": None, "max_per_class": 2},
                         smoke={"build_dataset": False})
    df = data.run(params)
    assert df[df.split == "train"].groupby("label").size().tolist() == [2, 2]
    lonely = tmp_path / "lonely"
    _folder(lonely, {"only": 4})
    params = make_params("q", dataset={"path": str(lonely), "test_path": None}, smoke={"build_dataset": False})
    with pytest.raises(DatasetError, match="need at least two"):
        data.run(params)


def test_missing_folder_stops_at_params_time(make_params, tmp_path):
    from sgid_utils.params.load import ParamsError

    with pytest.raises(ParamsError, match="'dataset.path' names a folder that does not exist"):
        make_params(dataset={"path": str(tmp_path / "nowhere"), "test_path": None}, smoke={"build_dataset": False})


def test_hub_source_reads_splits_and_class_label_names(make_params, tmp_path):
    """The pets/flowers path, fed by a local parquet data set with the hub copy's layout."""
    import datasets

    feats = datasets.Features({"image": datasets.Image(),
                               "label": datasets.ClassLabel(names=["great_pyrenees", "Maine_Coon"])})
    imgs = [Image.new("RGB", (30 + i, 30), (i * 30, 0, 0)) for i in range(4)]
    for split in ("train", "test"):
        ds = datasets.Dataset.from_dict({"image": imgs, "label": [0, 1, 0, 1]}, features=feats)
        (tmp_path / "hub" / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(tmp_path / "hub" / "data" / f"{split}-00000-of-00001.parquet"))
    params = make_params(dataset={"source": "pets", "hf_id": str(tmp_path / "hub"), "path": None, "test_path": None},
                         smoke={"build_dataset": False})
    df = data.run(params)
    assert sorted(set(df.class_name)) == ["Great Pyrenees", "Maine Coon"]
    assert df.split.value_counts().to_dict() == {"train": 4, "test": 4}
    assert all(load_image(p).size[1] == 30 for p in df.path)


def test_unreachable_hub_dataset_names_the_id(make_params):
    from sgid_utils.models.loading import ModelLoadError

    params = make_params(dataset={"source": "flowers", "hf_id": "nobody/no-such-dataset", "path": None,
                                  "test_path": None},
                         smoke={"build_dataset": False})
    with pytest.raises(ModelLoadError, match="nobody/no-such-dataset"):
        data.run(params)


def test_a_test_folder_without_the_training_classes_stops_at_the_data_stage(make_params, tmp_path):
    _folder(tmp_path / "train", {"cat": 3, "dog": 3})
    _folder(tmp_path / "test", {"Cat": 2, "Dog": 2})  # named otherwise: no class in common
    params = make_params(dataset={"path": str(tmp_path / "train"), "test_path": str(tmp_path / "test")},
                         smoke={"build_dataset": False})
    with pytest.raises(DatasetError, match="No test image for any training class.*dataset.test_path"):
        data.run(params)
    assert not catalog.path(RunDir.of(params), "images").exists()  # nothing later can start
    reasons = pd.read_csv(catalog.path(RunDir.of(params), "skipped")).reason.tolist()
    assert reasons.count("class has no test image: its accuracy is not measured") == 2


def test_a_class_without_test_images_is_warned_about_and_listed(make_params, tmp_path):
    _folder(tmp_path / "train", {"cat": 3, "dog": 3})
    _folder(tmp_path / "test", {"cat": 2})
    params = make_params(dataset={"path": str(tmp_path / "train"), "test_path": str(tmp_path / "test")},
                         smoke={"build_dataset": False})
    with pytest.warns(UserWarning, match="1 training class.*dog"):
        data.run(params)
    skipped = pd.read_csv(catalog.path(RunDir.of(params), "skipped"))
    assert skipped.set_index("path").loc["dog", "reason"] == "class has no test image: its accuracy is not measured"


def test_loose_files_at_the_top_of_the_folder_are_listed(make_params, tmp_path):
    _folder(tmp_path / "imgs", {"a": 4, "b": 4})
    Image.new("RGB", (40, 30)).save(tmp_path / "imgs" / "loose.jpg")
    params = make_params(dataset={"path": str(tmp_path / "imgs"), "test_path": None}, smoke={"build_dataset": False})
    data.run(params)
    skipped = pd.read_csv(catalog.path(RunDir.of(params), "skipped")).set_index("path")
    assert skipped.loc[str(tmp_path / "imgs" / "loose.jpg"), "reason"].startswith("not inside a class folder")


def test_the_flowers_split_variant_trains_on_the_train_split_alone(make_params, tmp_path):
    """params/flowers_ablations.yaml's 'train-split-only' against the default train + validation, on a local copy."""
    import datasets

    from sgid_utils.core.sharing import variant_params
    from sgid_utils.params.load import load_params

    flowers = load_params(REPO / "params" / "flowers_ablations.yaml")
    split_only = next(a for a in flowers.ablations if a.name == "train-split-only")
    assert flowers.dataset.train_splits == ["train", "validation"]
    assert variant_params(flowers, split_only.name, split_only.set).dataset.train_splits == ["train"]
    feats = datasets.Features({"image": datasets.Image(),
                               "label": datasets.ClassLabel(names=["pink primrose", "hard-leaved pocket orchid"])})
    for split, n in (("train", 4), ("validation", 6), ("test", 2)):
        imgs = [Image.new("RGB", (30 + i, 30), (i * 30, 0, 0)) for i in range(n)]
        ds = datasets.Dataset.from_dict({"image": imgs, "label": [i % 2 for i in range(n)]}, features=feats)
        (tmp_path / "hub" / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(tmp_path / "hub" / "data" / f"{split}-00000-of-00001.parquet"))
    rows = {}
    for name, splits in (("both", ["train", "validation"]), ("train", split_only.set["dataset.train_splits"])):
        params = make_params(name, dataset={"source": "flowers", "hf_id": str(tmp_path / "hub"), "path": None,
                                            "test_path": None, "train_splits": splits, "class_name_case": "keep"},
                             smoke={"build_dataset": False})
        df = data.run(params)
        rows[name] = df.split.value_counts().to_dict()
        assert set(df.class_name) == {"pink primrose", "hard-leaved pocket orchid"}  # hyphens kept
    assert rows == {"both": {"train": 10, "test": 2}, "train": {"train": 4, "test": 2}}
