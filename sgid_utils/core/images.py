"""How every stage opens an image, and how a class is named: one place for both.

The stages, the figures and the image cache open image files with ``load_image``, so EXIF orientation,
the first frame of an animation, 16-bit greyscale and transparency are handled the same way everywhere
(the data stage skips what it cannot open; every later stage then sees the same pixels).
``readable_class_name`` turns a folder or label name into the words the prompts use, and ``class_names``
maps the images table's labels to those names.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError


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


def class_names(df: pd.DataFrame) -> dict[int, str]:
    return dict(sorted(zip(df.label.astype(int), df.class_name)))
