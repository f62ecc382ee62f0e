"""The comparison stage: which augmentation helps, at what cost: every generative method's gain beside its measured
device hours.

Built from the files the training stage saved (and those of the run's equal-steps variants, when ``run ablations``
has trained them), from the runner's records of how long each stage took and, where ``references.gpu_rates`` names a GPU
report, from its rates and the full data set's item counts (``preflight.projection``); nothing is retrained. The
table and its plot are ``reporting.comparison``'s; the report page shows them in its "Which augmentation" section.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from sgid_utils.core import catalog
from sgid_utils.params.schema import Params
from sgid_utils.preflight.projection import full_run_counts
from sgid_utils.reporting.comparison import caption, comparison_table, gain_vs_cost, shown


def run(params: Params, images: pd.DataFrame) -> pd.DataFrame:
    """The comparison table (csv with the numbers, markdown as shown) and the gain-against-cost plot."""
    table = comparison_table(params, catalog.load(params, "training_results"), full_run_counts)
    catalog.save(params, "comparison", table)
    catalog.save(params, "comparison_md", shown(table).astype(object).fillna("–"), caption=caption(table))
    if len(table):
        fig = gain_vs_cost(table)
        catalog.save(params, "gain_vs_cost", fig)
        plt.close(fig)
    return table
