"""SGID's similarity-to-guidance mapping: the classifier-free guidance scale of each image from its s*.

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

import numpy as np

from .schema import GuidanceParams


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
