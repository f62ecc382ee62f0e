"""The quality stage: the generated set's quality and where SGID helps, as tables notebook 07 shows.

Two tables beyond the paper's accuracy table:

- ``set_metrics.csv``: each image set (the real sources, raw and upscaled candidates,
  the curated set, the filtered one) on our two metrics for the abstract's 'semantic consistency and image
  diversity', from the CLIP embeddings curation saved;
- ``per_class_change.csv``: per-class test accuracy of SGID at its largest proportion
  against the Baseline (averaged over seeds), largest gain first;

and the consistency-diversity figure of the first (with the ablation variants' curated sets when
their profile has run), so the report page has it whether or not notebook 07 ran.

It reads the curated sets and the training results through the catalog (``core.catalog``), and, once
``run ablations`` has written it, the variants' set metrics (``ablation_set_metrics``, optional: no stage of
the chain writes it, so the registry does not list it among the stage's inputs).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from sgid_utils.core import catalog
from sgid_utils.core.images import class_names
from sgid_utils.params.schema import Params
from sgid_utils.reporting.plots import consistency_diversity
from sgid_utils.reporting.set_metrics import set_metrics
from sgid_utils.reporting.stats import per_class_change, setting_predictions
from sgid_utils.reporting.tables import primary


def top_sgid_setting(results: pd.DataFrame) -> str | None:
    """The setting of SGID at its largest proportion (chosen by method and proportion), if it was trained."""
    sgid = results[results.method == "sgid"]
    return None if sgid.empty else str(sgid.loc[sgid.proportion.idxmax(), "setting"])


def class_changes(params: Params, images: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame | None:
    """Per-class accuracy change of SGID at its largest proportion against the Baseline (first backbone);
    None without both."""
    results = primary(params, results)
    top = top_sgid_setting(results)
    if top is None or not (results.method == "baseline").any():
        return None
    names = class_names(images)
    baseline = results.loc[results.method == "baseline", "setting"].iloc[0]

    def loader(config: str) -> pd.DataFrame:
        return catalog.load(params, "predictions", config=config)

    return per_class_change(setting_predictions(results, top, loader), setting_predictions(results, baseline, loader),
                            [names[label] for label in sorted(names)])


def run(params: Params, images: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Write set_metrics.csv, per_class_change.csv and the consistency-diversity figure; return the tables."""
    out = {"set_metrics": set_metrics(params)}
    catalog.save(params, "set_metrics", out["set_metrics"])
    fig = consistency_diversity(out["set_metrics"], catalog.load(params, "ablation_set_metrics", missing=None))
    catalog.save(params, "consistency_vs_diversity", fig)
    plt.close(fig)
    change = class_changes(params, images, catalog.load(params, "training_results"))
    if change is not None:
        out["per_class_change"] = change
        catalog.save(params, "per_class_change", change)
    return out
