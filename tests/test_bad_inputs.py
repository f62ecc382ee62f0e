"""A folder of the bad files image data sets in the wild contain: each is converted or skipped with a reason."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sgid_utils.core import catalog
from sgid_utils.core.images import load_image
from sgid_utils.core.rundir import RunDir
from sgid_utils.stages import data

GOOD = (64, 48)


def _save(img: Image.Image, path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


def build_bad_folder(root) -> dict[str, str]:
    """Writes the folder; returns {relative path: expected outcome ('ok' or a fragment of the skip reason)}."""
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (GOOD[1], GOOD[0], 3), dtype=np.uint8))
    expect: dict[str, str] = {}

    def put(rel: str, outcome: str, img: Image.Image | None = None, raw: bytes | None = None, **kw) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if raw is not None:
            path.write_bytes(raw)
        else:
            _save(img, path, **kw)
        expect[rel] = outcome

    for i in range(3):
        put(f"great_pyrenees/ok_{i}.jpg", "ok", rgb)
        put(f"Café crème/ok_{i}.png", "ok", rgb)
    put("great_pyrenees/zero_bytes.jpg", "not a readable image", raw=b"")
    jpeg = root / "_tmp.jpg"
    rgb.save(jpeg, format="JPEG")
    put("great_pyrenees/truncated.jpg", "not a readable image", raw=jpeg.read_bytes()[:300])
    jpeg.unlink()
    put("great_pyrenees/notes.jpg", "not a readable image", raw=b"this is a text file with an image name\n")
    put("great_pyrenees/no_extension", "ok", rgb, format="PNG")
    put("great_pyrenees/.DS_Store", "hidden file", raw=b"\x00\x01")
    put("great_pyrenees/cmyk.jpg", "ok", rgb.convert("CMYK"), format="JPEG")
    put("great_pyrenees/grey16.png", "ok", Image.fromarray(np.full((GOOD[1], GOOD[0]), 40000, dtype=np.uint16)))
    pal = rgb.convert("P")
    put("Café crème/palette_transparent.png", "ok", pal, transparency=0)
    put("Café crème/alpha.png", "ok", rgb.convert("RGBA"))
    put("Café crème/one_pixel.png", "too small", Image.new("RGB", (1, 1)))
    put("Café crème/elongated.png", "too elongated", Image.new("RGB", (1000, 40)))
    exif_img = rgb.copy()
    exif = exif_img.getexif()
    exif[0x0112] = 8
    put("Café crème/rotated.jpg", "ok", exif_img, format="JPEG", exif=exif)
    frames = [Image.new("RGB", GOOD, c) for c in ("red", "blue")]
    put("Café crème/animated.gif", "ok", frames[0], save_all=True, append_images=frames[1:])
    put("Café crème/bomb.png", "too large to open safely", Image.new("1", (12_500, 12_500)))
    os.symlink(root / "nowhere.jpg", root / "Café crème" / "dangling.jpg")
    expect["Café crème/dangling.jpg"] = "dangling symlink"
    (root / "empty class").mkdir()
    put("only_bad/broken.jpg", "not a readable image", raw=b"\xff\xd8\xff")
    return expect


def test_every_bad_file_is_converted_or_skipped_with_a_reason(make_params, tmp_path):
    root = tmp_path / "wild"
    expect = build_bad_folder(root)
    params = make_params(dataset={"path": str(root), "test_path": None, "test_fraction": 0.2},
                         smoke={"build_dataset": False})
    images = data.run(params)
    skipped = pd.read_csv(catalog.path(RunDir.of(params), "skipped"))
    reasons = {os.path.relpath(p, root) if p.startswith(str(root)) else p: r
               for p, r in zip(skipped.path, skipped.reason)}
    kept = {os.path.relpath(p, root) for p in images.origin}
    for rel, outcome in expect.items():
        if outcome == "ok":
            assert rel in kept, f"{rel} should have been converted and kept; skipped: {reasons.get(rel)}"
        else:
            assert rel in reasons and outcome in reasons[rel], f"{rel}: expected '{outcome}', got {reasons.get(rel)!r}"
    assert "class has no usable training image" in reasons.get("only_bad", "")
    assert sorted(images.class_name.unique()) == ["Café Crème", "Great Pyrenees"]
    for path in images.path:  # everything kept opens as 8-bit RGB
        img = load_image(path)
        assert img.mode == "RGB" and min(img.size) >= params.dataset.min_side
    rotated = images[images.origin.str.endswith("rotated.jpg")].iloc[0]
    assert (rotated.width, rotated.height) == (GOOD[1], GOOD[0])  # EXIF orientation 8 swaps the sides


def test_fewer_than_two_usable_classes_fails_early_with_the_reasons(make_params, tmp_path):
    from sgid_utils.errors import DatasetError

    root = tmp_path / "wild"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.new("RGB", (40, 40)).save(root / "a" / "x.png")
    Image.new("RGB", (40, 40)).save(root / "a" / "y.png")
    (root / "b" / "z.jpg").write_bytes(b"nope")
    params = make_params(dataset={"path": str(root), "test_path": None}, smoke={"build_dataset": False})
    with pytest.raises(DatasetError, match="need at least two.*not a readable image"):
        data.run(params)
