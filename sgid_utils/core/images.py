"""How every stage opens an image, and how a class is named: one place for both.

The stages, the figures and the image cache open image files with ``load_image``, so EXIF orientation,
the first frame of an animation, 16-bit greyscale and transparency are handled the same way everywhere
(the data stage skips what it cannot open; every later stage then sees the same pixels, through
``load_run_image``, which turns an image damaged since into a one-line error, and moves a generated one aside).
``readable_class_name`` turns a folder or label name into the words the prompts use, and ``class_names``
maps the images table's labels to those names.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from sgid_utils.core.files import set_aside
from sgid_utils.core.registry import STAGES
from sgid_utils.errors import CorruptFileError


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


def _maker(path: Path) -> str | None:
    """The per-item stage whose folder holds ``path`` as one of its images (``<folder>/images/<name>``, beside the
    stage's ``items/`` records), or None for any other file (a source image the data stage listed)."""
    stage_dir = path.parent.parent
    if path.parent.name != "images" or not (stage_dir / "items").is_dir():
        return None
    for stage in STAGES:
        parts = Path(stage.folder).parts if stage.folder else ()
        if parts and stage_dir.parts[-len(parts):] == parts:
            return stage.name
    return None


def load_run_image(path: str | Path) -> Image.Image:
    """``load_image`` for an image a stage reads back after the data stage listed it: a source, or a generated
    candidate. One that no longer decodes is a ``CorruptFileError`` naming it and the fix, never a traceback. A
    generated one is moved aside (``<name>.damaged``): its stage's next run finds its record incomplete and makes it
    again from its own seeds. A source is the user's file and is never moved."""
    path = Path(path)
    stage = _maker(path)
    redo = (f"rerun `python -m sgid_utils run {stage} --params ...` (or `run all`), which makes it again from its "
            "own seeds, then this stage")
    if stage and not path.exists() and path.with_name(f"{path.name}.damaged").exists():
        raise CorruptFileError(f"{path} was damaged and moved aside; {redo}.")
    try:
        return load_image(path)
    except ValueError as exc:
        if stage is None:
            raise CorruptFileError(
                f"Image {path} was listed when the data stage ran but can no longer be read ({exc}): restore it, or "
                "delete the run's data/ folder and every later stage's to rebuild from the current files.") from None
        set_aside(path, str(exc))
        raise CorruptFileError(f"{path} cannot be read ({exc}); it is damaged and was moved aside: {redo}.") from None


def readable_class_name(raw: str, case: str = "title") -> str:
    """'great_pyrenees' -> 'Great Pyrenees'; 'Maine_Coon' -> 'Maine Coon' (prompts want words).

    Hyphens are part of a name ('hard-leaved pocket orchid') and stay.
    """
    words = raw.replace("_", " ").split()
    if case == "title":
        words = ["-".join(p[:1].upper() + p[1:] for p in w.split("-")) for w in words]
    return " ".join(words)


def class_names(df: pd.DataFrame) -> dict[int, str]:
    return dict(sorted(zip(df.label.astype(int), df.class_name)))
