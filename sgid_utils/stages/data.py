"""Data sets: Oxford-IIIT Pets, Flowers102 (Hugging Face ``datasets``) and any image folder.

``run`` turns the chosen source into one table, ``data/images.parquet``
(image_id, split, label, class_name, path, width, height), plus the image files
themselves for hub sources. Every later stage reads that table and opens images
with ``core.images.load_image``, so EXIF orientation and RGB conversion happen the
same way everywhere. Files that cannot be used are skipped and listed, with a reason, in
``data/skipped.csv``; the run goes on.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import datasets
import pandas as pd
from PIL import Image

from sgid_utils.core import catalog
from sgid_utils.core.files import write_bytes
from sgid_utils.core.images import load_image, readable_class_name
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.seeding import derive_seed
from sgid_utils.errors import DatasetError
from sgid_utils.models.loading import model_load_error
from sgid_utils.params.schema import DatasetParams, Params
from sgid_utils.params.sources import HUB_IDS

COLUMNS = ["image_id", "split", "label", "class_name", "path", "width", "height", "origin"]


@dataclass
class _Item:
    split: str
    label: int
    origin: str
    load: object  # path or bytes


def _scan_folder(root: Path) -> tuple[list[str], list[tuple[str, Path]], list[dict]]:
    """Class folders under root -> (sorted class names, (class, file) pairs, skips)."""
    if not root.is_dir():
        raise DatasetError(f"Image folder not found: {root}. Expected {root}/<class>/*.jpg (dataset.path / "
                           "dataset.test_path).")
    skipped: list[dict] = [{"path": str(p), "reason": "hidden file" if p.name.startswith(".") else
                            "not inside a class folder (expected <folder>/<class>/<image>)"}
                           for p in sorted(root.iterdir()) if not p.is_dir()]
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[tuple[str, Path]] = []
    for cls in classes:
        for f in sorted((root / cls).rglob("*")):
            if f.is_dir():
                continue
            if any(part.startswith(".") for part in f.relative_to(root).parts):
                skipped.append({"path": str(f), "reason": "hidden file"})
            elif not f.exists():
                skipped.append({"path": str(f), "reason": "dangling symlink"})
            else:
                files.append((cls, f))
    return classes, files, skipped


def _imagefolder_items(params: Params) -> tuple[list[str], list[_Item], list[dict]]:
    ds = params.dataset
    classes, files, skipped = _scan_folder(Path(ds.path))
    test_files: list[tuple[str, Path]] = []
    if ds.test_path is not None:
        test_classes, test_files, test_skipped = _scan_folder(Path(ds.test_path))
        skipped += test_skipped
        for cls in sorted(set(test_classes) - set(classes)):
            skipped.append({"path": str(Path(ds.test_path) / cls),
                            "reason": "class not present in the training folder"})
        test_files = [(c, f) for c, f in test_files if c in classes]
    index = {c: i for i, c in enumerate(classes)}
    # Without a test folder, the held-out split is drawn after validation (see _held_out_split).
    items = [_Item("train" if ds.test_path is not None else "auto", index[c], str(f), f) for c, f in files]
    items += [_Item("test", index[c], str(f), f) for c, f in test_files]
    return classes, items, skipped


def _hub_items(params: Params) -> tuple[list[str], list[_Item], list[dict]]:
    ds_params = params.dataset
    hub_id = ds_params.hf_id or HUB_IDS[ds_params.source]
    splits = {name: "train" for name in ds_params.train_splits} | {ds_params.test_split: "test"}
    try:
        loaded = {name: datasets.load_dataset(hub_id, split=name) for name in splits}
    except Exception as exc:  # noqa: BLE001 - turned into one clear message
        raise model_load_error(hub_id, "data set", exc, what="dataset.hf_id", repo_type="dataset") from None
    first = next(iter(loaded.values()))
    for col in (ds_params.image_column, ds_params.label_column):
        if col not in first.column_names:
            raise DatasetError(
                f"Data set {hub_id} has no column '{col}' (columns: {first.column_names}); "
                "set dataset.image_column / dataset.label_column."
            )
    feature = first.features[ds_params.label_column]
    if hasattr(feature, "names"):
        classes = list(feature.names)
    else:
        labels = sorted({int(v) for d in loaded.values() for v in d[ds_params.label_column]})
        classes = [str(v) for v in labels]
    items: list[_Item] = []
    for name, role in splits.items():
        d = loaded[name].cast_column(ds_params.image_column, datasets.Image(decode=False))
        for i, row in enumerate(d):
            img = row[ds_params.image_column]
            payload = img.get("bytes") or img.get("path")
            items.append(_Item(role, int(row[ds_params.label_column]), f"{hub_id}:{name}:{i}", payload))
    return classes, items, []


def _held_out_split(items: list[_Item], params: Params) -> None:
    """Per class, a seeded-hash-ranked test_fraction of the usable images becomes 'test' (at least one)."""
    by_class: dict[int, list[_Item]] = {}
    for item in items:
        if item.split == "auto":
            by_class.setdefault(item.label, []).append(item)
    if not by_class:
        return
    root = Path(params.dataset.path)
    for members in by_class.values():
        ranked = sorted(members, key=lambda it: derive_seed(
            params.run.seed, str(Path(it.origin).relative_to(root)), purpose="split"))
        n_test = max(1, int(round(len(ranked) * params.dataset.test_fraction))) if len(ranked) > 1 else 0
        for i, item in enumerate(ranked):
            item.split = "test" if i < n_test else "train"


def _open_usable(items: list[_Item], ds: DatasetParams,
                 skipped: list[dict]) -> list[tuple[_Item, tuple[int, int]]]:
    """The items that open as images and are neither too small nor too elongated, each with its size.

    The others go to ``skipped`` with the reason: one bad file costs a line in data/skipped.csv, not the run.
    """
    usable: list[tuple[_Item, tuple[int, int]]] = []
    for item in items:
        try:
            img = load_image(item.load)
        except FileNotFoundError:
            skipped.append({"path": item.origin, "reason": "file missing"})
            continue
        except ValueError as exc:
            skipped.append({"path": item.origin, "reason": str(exc)})
            continue
        if min(img.size) < ds.min_side:
            skipped.append({"path": item.origin, "reason": f"too small ({img.width}x{img.height} < "
                                                           f"dataset.min_side {ds.min_side})"})
            continue
        if max(img.size) / min(img.size) > ds.max_aspect:
            skipped.append({"path": item.origin, "reason": f"too elongated ({img.width}x{img.height} > "
                                                           f"dataset.max_aspect {ds.max_aspect:g})"})
            continue
        usable.append((item, img.size))
    return usable


def _stored_path(run: RunDir, item: _Item, image_id: str) -> Path:
    """Where later stages open the image: a hub image's bytes are saved once under data/ in their own
    format, so that every image is a file like an image folder's; a folder image stays where it is."""
    if isinstance(item.load, bytes):
        path = run.data_file(image_id, (Image.open(io.BytesIO(item.load)).format or "png").lower())
        if not path.exists():
            write_bytes(path, item.load)
        return path
    return Path(item.load)


def _capped_rows(run: RunDir, classes: list[str], usable: list[tuple[_Item, tuple[int, int]]],
                 ds: DatasetParams) -> list[dict]:
    """The images table's rows, at most dataset.max_per_class (max_test_per_class) per class and split,
    for quick runs; ids number each split and class in source order ('train_003_00012')."""
    rows: list[dict] = []
    counters: dict[tuple[str, int], int] = {}
    caps = {"train": ds.max_per_class, "test": ds.max_test_per_class}
    for item, (width, height) in usable:
        key = (item.split, item.label)
        cap = caps[item.split]
        if cap is not None and counters.get(key, 0) >= cap:
            continue
        n = counters[key] = counters.get(key, 0) + 1
        image_id = f"{item.split}_{item.label:03d}_{n - 1:05d}"
        path = _stored_path(run, item, image_id)
        rows.append({
            "image_id": image_id, "split": item.split, "label": item.label,
            "class_name": readable_class_name(classes[item.label], ds.class_name_case),
            "path": str(path), "width": width, "height": height, "origin": item.origin,
        })
    return rows


def _trainable_classes(df: pd.DataFrame, classes: list[str], ds: DatasetParams,
                       skipped: list[dict]) -> tuple[pd.DataFrame, list[int]]:
    """The table without the classes that have no usable training image (listed in ``skipped``), and the
    labels kept: a class the classifier never sees cannot be learnt, and below two classes there is nothing
    to classify."""
    usable = sorted(df.loc[df.split == "train", "label"].unique())
    for label, cls in enumerate(classes):
        if label not in usable:
            skipped.append({"path": cls, "reason": "class has no usable training image: left out"})
    if len(usable) < 2:
        raise DatasetError(
            f"Only {len(usable)} class(es) with usable training images in {ds.path or ds.hf_id or ds.source}; "
            f"need at least two. See the skipped files: {[s['reason'] for s in skipped][:5]}"
        )
    return df[df.label.isin(usable)].reset_index(drop=True), usable


def _untested_classes(df: pd.DataFrame, classes: list[str], usable: list[int]) -> list[str]:
    """The training classes without a test image: trained on, but their accuracy cannot be measured."""
    return [classes[label] for label in usable if not ((df.split == "test") & (df.label == label)).any()]


def _require_a_test_image(run: RunDir, ds: DatasetParams, classes: list[str], usable: list[int],
                          untested: list[str]) -> None:
    """Stop now when no class can be scored (typically test class folders named unlike the training
    ones), rather than after hours of captioning, generation and training."""
    if len(untested) == len(usable):
        raise DatasetError(
            f"No test image for any training class of {ds.path or ds.hf_id or ds.source}: every later stage would run "
            "for hours and training could not be scored. With dataset.test_path, its class folders must be named like "
            f"dataset.path's ({', '.join(classes[label] for label in usable[:5])}, ...); or leave "
            "dataset.test_path unset to hold out dataset.test_fraction of each class. The skipped files and "
            "why: " + str(catalog.path(run, "skipped"))
        )


def run(params: Params) -> pd.DataFrame:
    """Build (or reuse) the images table; skips bad files and caps per class."""
    run = RunDir.of(params)
    if catalog.exists(params, "images"):
        return catalog.load(params, "images")
    ds = params.dataset
    classes, items, skipped = _imagefolder_items(params) if ds.source == "imagefolder" else _hub_items(params)
    usable = _open_usable(items, ds, skipped)
    _held_out_split([it for it, _ in usable], params)
    df = pd.DataFrame(_capped_rows(run, classes, usable, ds), columns=COLUMNS)
    df, labels = _trainable_classes(df, classes, ds, skipped)
    untested = _untested_classes(df, classes, labels)
    skipped += [{"path": name, "reason": "class has no test image: its accuracy is not measured"}
                for name in untested]
    catalog.save(params, "skipped", pd.DataFrame(skipped, columns=["path", "reason"]))
    _require_a_test_image(run, ds, classes, labels, untested)
    if untested:
        warnings.warn(f"{len(untested)} training class(es) have no test image ({', '.join(untested[:5])}); "
                      f"listed in {catalog.path(run, 'skipped')}", UserWarning, stacklevel=2)
    catalog.save(params, "images", df)
    return df
