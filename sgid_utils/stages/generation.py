"""The generation stage (notebook 03): the raw pass, k candidates for every training image at its own resolution.

Our reading of the report's first pass, which the curation stage diagnoses and the upscaling stage fixes by upscaling.
How a candidate is made (the weighted prompt, the guidance scale f(s*), strength, seeds, the batched
loop, the ControlNet generator) is ``augment.generation``, shared by both passes.
"""

from __future__ import annotations

import pandas as pd

from sgid_utils.augment.generation import generate
from sgid_utils.core import catalog
from sgid_utils.params.schema import Params


def run(params: Params, images: pd.DataFrame) -> pd.DataFrame | None:
    """The generation stage: k candidates for every training image at its own resolution (our reading of the report's
    first pass)."""
    return None if generate(params, "raw", images) is None else catalog.load(params, "manifest_raw")
