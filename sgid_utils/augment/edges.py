"""The structure condition of the ControlNet generator: the source's Canny edge map, computed by OpenCV.

``cv2.Canny`` on the RGB image, replicated to three channels, is what the canny
ControlNets for SD 1.5 were trained on (the ControlNet authors' annotator calls
``cv2.Canny(image, low, high)`` on the RGB array, and diffusers' examples stack the
result to three channels), so the edge maps here come from the same distribution.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image


def canny_edges(image: Image.Image, low_threshold: int, high_threshold: int) -> Image.Image:
    """White edges on black, same size as ``image``, three channels (the control image a canny ControlNet takes)."""
    edges = cv2.Canny(np.asarray(image.convert("RGB")), low_threshold, high_threshold)
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))
