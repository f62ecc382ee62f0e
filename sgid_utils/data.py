"""Data sets: Oxford-IIIT Pets, Flowers102 (Hugging Face ``datasets``) and any image folder.

``prepare_dataset`` turns the chosen source into one table, ``data/images.parquet``
(image_id, split, label, class_name, path, width, height), plus the image files
themselves for hub sources. Every later stage reads that table and opens images
with ``load_image``, so EXIF orientation and RGB conversion happen the same way
everywhere. Files that cannot be used are skipped and listed, with a reason, in
``data/skipped.csv``; the run goes on.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import datasets
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DatasetError
from .io import read_table, write_bytes, write_table
from .models import model_load_error
from .rundir import RunDir
from .schema import Params
from .seeding import derive_seed

HUB_IDS = {"pets": "timm/oxford-iiit-pet", "flowers": "dpdl-benchmark/oxford_flowers102"}
COLUMNS = ["image_id", "split", "label", "class_name", "path", "width", "height", "origin"]


def load_image(source: str | Path | bytes) -> Image.Image:
    """Open an image as 8-bit RGB: EXIF rotation applied, first frame, transparency on white.

    Raises ``ValueError`` with a readable reason for anything that is not a usable image.
    """
    if not isinstance(source, bytes) and not Path(source).exists():
        raise FileNotFoundError(
            f"Image {source} is gone. It was listed when the data stage ran: restore it, or delete the run's data/ "
            "folder and every later stage's to rebuild from the current files."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            img.seek(0)
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError) as exc:
        raise ValueError(f"not a readable image ({type(exc).__name__}: {exc})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"too large to open safely ({exc})") from None
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping to white.
        img = img.point(lambda v: v / 256).convert("L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def readable_class_name(raw: str, case: str = "title") -> str:
    """'great_pyrenees' -> 'Great Pyrenees'; 'Maine_Coon' -> 'Maine Coon' (prompts want words).

    Hyphens are part of a name ('hard-leaved pocket orchid') and stay.
    """
    words = raw.replace("_", " ").split()
    if case == "title":
        words = ["-".join(p[:1].upper() + p[1:] for p in w.split("-")) for w in words]
    return " ".join(words)


@dataclass
class _Item:
    split: str
    label: int
    origin: str
    load: object  # path or bytes


def _scan_folder(root: Path) -> tuple[list[str], list[tuple[str, Path]], list[dict]]:
    """Class folders under root -> (sorted class names, (class, file) pairs, skips)."""
    if not root.is_dir():
        raise DatasetError(f"Image folder not found: {root}. Expected {root}/<class>/*.jpg (dataset.path / dataset.test_path).")
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
            skipped.append({"path": str(Path(ds.test_path) / cls), "reason": "class not present in the training folder"})
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
        ranked = sorted(members, key=lambda it: derive_seed(params.run.seed, str(Path(it.origin).relative_to(root)), purpose="split"))
        n_test = max(1, int(round(len(ranked) * params.dataset.test_fraction))) if len(ranked) > 1 else 0
        for i, item in enumerate(ranked):
            item.split = "test" if i < n_test else "train"


def prepare_dataset(params: Params) -> pd.DataFrame:
    """Build (or reuse) the images table; skips bad files and caps per class."""
    run = RunDir.of(params)
    if run.images_table.exists():
        return read_table(run.images_table, run.root)
    ds = params.dataset
    classes, items, skipped = _imagefolder_items(params) if ds.source == "imagefolder" else _hub_items(params)
    usable: list[tuple[_Item, Image.Image]] = []
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
            skipped.append({"path": item.origin, "reason": f"too small ({img.width}x{img.height} < dataset.min_side {ds.min_side})"})
            continue
        if max(img.size) / min(img.size) > ds.max_aspect:
            skipped.append({"path": item.origin, "reason": f"too elongated ({img.width}x{img.height} > dataset.max_aspect {ds.max_aspect:g})"})
            continue
        usable.append((item, img.size))
    _held_out_split([it for it, _ in usable], params)
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
        if isinstance(item.load, bytes):
            path = run.data_file(image_id, (Image.open(io.BytesIO(item.load)).format or "png").lower())
            if not path.exists():
                write_bytes(path, item.load)
        else:
            path = Path(item.load)
        rows.append({
            "image_id": image_id, "split": item.split, "label": item.label,
            "class_name": readable_class_name(classes[item.label], ds.class_name_case),
            "path": str(path), "width": width, "height": height, "origin": item.origin,
        })
    df = pd.DataFrame(rows, columns=COLUMNS)
    usable = sorted(df.loc[df.split == "train", "label"].unique())
    for label, cls in enumerate(classes):
        if label not in usable:
            skipped.append({"path": cls, "reason": "class has no usable training image: left out"})
    if len(usable) < 2:
        raise DatasetError(
            f"Only {len(usable)} class(es) with usable training images in {ds.path or ds.hf_id or ds.source}; "
            f"need at least two. See the skipped files: {[s['reason'] for s in skipped][:5]}"
        )
    df = df[df.label.isin(usable)].reset_index(drop=True)
    untested = [classes[label] for label in usable if not ((df.split == "test") & (df.label == label)).any()]
    skipped += [{"path": name, "reason": "class has no test image: its accuracy is not measured"} for name in untested]
    write_table(run.skipped_table, pd.DataFrame(skipped, columns=["path", "reason"]))
    if len(untested) == len(usable):
        raise DatasetError(
            f"No test image for any training class of {ds.path or ds.hf_id or ds.source}: every later stage would run "
            "for hours and training could not be scored. With dataset.test_path, its class folders must be named like "
            f"dataset.path's ({', '.join(classes[label] for label in usable[:5])}, ...); or leave dataset.test_path unset "
            "to hold out dataset.test_fraction of each class. The skipped files and why: " + str(run.skipped_table)
        )
    if untested:
        warnings.warn(f"{len(untested)} training class(es) have no test image ({', '.join(untested[:5])}); "
                      f"listed in {run.skipped_table}", UserWarning, stacklevel=2)
    write_table(run.images_table, df, run.root)
    return df


def load_images_table(params: Params) -> pd.DataFrame:
    run = RunDir.of(params)
    return read_table(run.images_table, run.root)


def load_skipped(params: Params) -> pd.DataFrame:
    return read_table(RunDir.of(params).skipped_table)


def class_names(df: pd.DataFrame) -> dict[int, str]:
    return dict(sorted(zip(df.label.astype(int), df.class_name)))
