"""The upscaling stage (notebook 04): the sources below ``curation.upscale_threshold`` regenerated, upscaled first.

SD 1.5 was trained at 512x512, and the report found that small sources come out as abstract art; it
fixed that by upscaling them before img2img. This pass regenerates every such source at
``curation.upscale_to`` (default the threshold) with the raw pass's prompts, scales and seeds
(``augment.generation``); it runs before curation (``stages.curation``), which scores and compares both passes.
"""

from __future__ import annotations

import pandas as pd

from sgid_utils.augment.generation import generate
from sgid_utils.core import catalog
from sgid_utils.params.schema import Params


def run(params: Params, images: pd.DataFrame) -> pd.DataFrame | None:
    """Regenerate the sources below curation.upscale_threshold, upscaled first (the upscaled pass)."""
    return None if generate(params, "upscaled", images) is None else catalog.load(params, "manifest_upscaled")
