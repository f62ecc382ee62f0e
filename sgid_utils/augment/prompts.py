"""The weighted prompt as the report builds it (its 0.9 / 1.5 weights are its own remedy, not the paper's).

The guidance mapping is in ``sgid_utils.augment.guidance``.

Prompt: ``"<c*>. A picture of <label>"`` with the caption weighted 0.9 and the
label 1.5, written in compel's syntax ``(text)weight``. Captions come from BLIP,
so characters that mean something to compel are neutralised first: a stray ``)``
would otherwise end the weighted group early and silently drop the 0.9 weight.
"""

from __future__ import annotations

import re

import pandas as pd

from sgid_utils.core import catalog
from sgid_utils.params.schema import GenerationParams

_SIGN = re.compile(r"(?<![A-Za-z0-9])[+-]+|[+-]+(?![A-Za-z0-9])")


def escape_for_compel(text: str) -> str:
    """Make free text literal for compel: escape parentheses, drop +/- weight suffixes and backslashes.

    'well-known' keeps its hyphen (compel reads a hyphen between letters as text);
    'dog+' or ' - ' would be a weight change, so those signs become spaces.
    """
    text = text.replace("\\", " ")
    text = _SIGN.sub(" ", text)
    text = text.replace("(", r"\(").replace(")", r"\)")
    return " ".join(text.split())


def build_prompt(caption: str, label: str, gen: GenerationParams) -> str:
    """The compel prompt for one image, e.g. '(a dog on grass)0.9. A picture of (Great Pyrenees)1.5'.

    The ablations ``label_only`` ('A picture of <label>', the Real-Guidance-style baseline) and
    ``caption_only`` ('<c*>') are unweighted.
    """
    if gen.prompt == "label_only":
        return escape_for_compel(gen.prompt_template.format(caption="", label=label).lstrip(". "))
    if gen.prompt == "caption_only":
        return escape_for_compel(caption)
    weighted_caption = f"({escape_for_compel(caption)}){gen.caption_weight:g}" if caption.strip() else ""
    weighted_label = f"({escape_for_compel(label)}){gen.label_weight:g}"
    text = gen.prompt_template.format(caption=weighted_caption, label=weighted_label)
    return text.lstrip(". ").strip()


def plain_prompt(caption: str, label: str, gen: GenerationParams) -> str:
    """The same prompt without weights, for display."""
    return gen.prompt_template.format(caption=caption, label=label).lstrip(". ").strip()


def mark_duplicates(captions: pd.DataFrame) -> pd.DataFrame:
    """``duplicate``: True where the image already has this exact caption at an earlier row (the first copy is not)."""
    return captions.assign(duplicate=captions.duplicated(["image_id", "caption"], keep="first"))


def with_decoding_column(table: pd.DataFrame) -> pd.DataFrame:
    """A caption table written when the column saying how a caption was decoded (``nucleus`` / ``beam``) was called
    ``method`` (now only a training method)."""
    return catalog.renamed_column(table, "method", "decoding")


# A captions table written before a column existed or was renamed gets today's columns on load (the similarity stage
# reads ``duplicate``), as do the similarity stage's tables, which carry the captions' columns.
catalog.register_upgrade("captions", lambda t: with_decoding_column(t if "duplicate" in t else mark_duplicates(t)))
catalog.register_upgrade("scores", with_decoding_column)
catalog.register_upgrade("best_captions", with_decoding_column)
