"""SGID's weighted prompt and the similarity-to-guidance mapping.

Prompt: ``"<c*>. A picture of <label>"`` with the caption weighted 0.9 and the
label 1.5, written in compel's syntax ``(text)weight``. Captions come from BLIP,
so characters that mean something to compel are neutralised first: a stray ``)``
would otherwise end the weighted group early and silently drop the 0.9 weight.

Guidance: f(s*) = a*s*^2 + b*s* + c with the paper's (-4, 2, 1). How f(s*)
becomes the scale passed to classifier-free guidance is a parameter:

- ``direct`` (default): guidance_scale = f(s*), the report's literal reading
  ("the guidance mapping function ... is the guidance scale").
- ``scaled``: guidance_scale = base_scale * f(s*), for readers who take f as a
  modulation of SD's usual 7.5.
- ``fixed``: guidance_scale = base_scale for every image (ablation).

A scale <= 1 turns classifier-free guidance off, exactly as diffusers does.
"""

from __future__ import annotations

import re

import numpy as np

from .params import GenerationParams, GuidanceParams

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


def guidance_curve(s: np.ndarray | float, coefficients: tuple[float, float, float]) -> np.ndarray | float:
    a, b, c = coefficients
    return a * np.square(s) + b * np.asarray(s) + c


def guidance_scale(s_star: float, guidance: GuidanceParams) -> float:
    """The classifier-free guidance scale used for an image whose chosen caption scored s*."""
    f = float(guidance_curve(float(s_star), guidance.coefficients))
    if guidance.mode == "direct":
        return f
    if guidance.mode == "scaled":
        return guidance.base_scale * f
    return guidance.base_scale
