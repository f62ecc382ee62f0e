"""SGID's similarity-to-guidance mapping: the classifier-free guidance scale of each image from its s*.

f(s*) = a*s*^2 + b*s* + c with (-4, 2, 1), the paper's as the report quotes it: "a guidance mapping
function defined as in the original paper is used with s* being the similarity score for the caption".
s* is the raw CLIP cosine of the image and its chosen caption (sgid_utils.stages.similarity): not logit-scaled,
not a softmax over the image's captions, not CLIPScore; the report's examples (0.301, 0.396) fit that
scale. The report also says that "higher similarity scores result in higher guidance scales" and that
"the guidance scale determines how closely the image production process adheres to the semantic
guidance", but never how f(s*) becomes the scale passed to classifier-free guidance, so that is a
parameter, and each mode is a reading:

- ``direct`` (default, a reading): guidance_scale = f(s*). f peaks at s* = 0.25 (value 1.25) and falls
  above it; at the report's two example scores, 0.301 -> 1.240 and 0.396 -> 1.165, the scale is about
  1.2, close to 1, where classifier-free guidance adds little to the conditional prediction. What that
  does to the 0.9 / 1.5 prompt weights is not measured: the conditional prediction still uses the
  weighted prompt embedding at any scale.
- ``scaled`` (the other reading): guidance_scale = base_scale * f(s*) (7.5 * f(0.396) = 8.74 at the
  caption the report used), for readers who take f as a modulation of SD's usual 7.5. The ablation
  profiles run it beside ``direct`` over the same seeds ("scaled-guidance").
- ``fixed``: guidance_scale = base_scale for every image (ablation).

Neither reading makes "higher similarity, higher scale" true for s* above 0.25. A scale <= 1 turns
classifier-free guidance off, exactly as diffusers does.
"""

from __future__ import annotations

import numpy as np

from sgid_utils.params.schema import GuidanceParams


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
