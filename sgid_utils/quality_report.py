"""Stage 07: the generated set's quality and where SGID helps, as tables notebook 07 shows.

Two tables beyond the paper's accuracy table:

- ``set_metrics.csv``: each image set (the real sources, raw and upscaled candidates,
  the curated set, the filtered one) on the paper's two axes, semantic consistency and
  diversity, from the CLIP embeddings curation saved;
- ``per_class_change.csv``: per-class test accuracy of SGID at its largest proportion
  against the Baseline (averaged over seeds), largest gain first;

and the consistency-diversity figure of the first (with the ablation variants' curated sets when
their profile has run), so the report page has it whether or not notebook 07 ran.

The significance of every setting comes from the results stage (``results.load_significance``).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .curation import class_prompt_embeddings, load_candidates, load_curated, load_embeddings, selections
from .data import class_names
from .io import read_table, write_table
from .plots import consistency_diversity, save_fig
from .results import primary
from .rundir import RunDir
from .schema import Params
from .set_metrics import consistency_metrics, source_distance, within_class_spread
from .stats import per_class_change, setting_predictions
from .training import load_predictions, load_results

CONSISTENCY_DIVERSITY = "07_consistency_vs_diversity"


def _chosen(candidates: pd.DataFrame, picked: pd.DataFrame) -> np.ndarray:
    """Mask over ``candidates`` of the rows in ``picked`` (same image, variant and candidate index)."""
    keys = ["image_id", "variant", "k"]
    return candidates.set_index(keys).index.isin(picked.set_index(keys).index)


CURATED = "curated (selected)"  # the set curation.select picked: the one SGID trains on


def set_metrics(params: Params) -> pd.DataFrame:
    """The paper's two axes for each image set, from the saved CLIP embeddings.

    Semantic consistency: mean CLIP score of each image with its own class prompt, and the accuracy
    of CLIP zero-shot classification over the class prompts. Diversity: mean (1 - cosine) between a
    generated image and its source, and the mean pairwise (1 - cosine) within each class. Besides the
    sets the run made, one row per selection rule ("selected: <rule>") shows what each rule would pick.
    """
    candidates = load_candidates(params)
    emb, sources = load_embeddings(params, candidates)
    classes, text, position = class_prompt_embeddings(params, candidates)
    source_label = candidates.drop_duplicates("image_id").set_index("image_id").label
    real_ids = list(sources)
    real = np.stack([sources[i] for i in real_ids])
    real_labels = source_label.loc[real_ids].map(position).to_numpy()
    sets = {"real (sources)": ("run", None), "generated (raw)": ("run", candidates.variant == "raw"),
            "generated (upscaled)": ("run", candidates.variant == "upscaled"),
            CURATED: ("run", _chosen(candidates, load_curated(params)))}
    if RunDir.of(params).curated_table(filtered=True).exists():
        sets["curated (filtered)"] = ("run", _chosen(candidates, load_curated(params, filtered=True)))
    for rule, picked in selections(params, candidates).items():
        sets[f"rule: {rule}"] = ("selection rule", _chosen(candidates, picked))
    rows = []
    for name, (kind, mask) in sets.items():
        if mask is None:
            e, labels, dist = real, real_labels, np.nan
        else:
            mask = np.asarray(mask)
            if not mask.any():
                continue
            sub = candidates[mask]
            e, labels = emb[mask], sub.label.map(position).to_numpy()
            dist = float(source_distance(e, np.stack([sources[i] for i in sub.image_id])).mean())
        c = consistency_metrics(e, text, labels)
        rows.append({"set": name, "kind": kind, "images": len(e), "label score": c["mean_label_score"],
                     "zero-shot accuracy": c["zero_shot_accuracy"], "distance to source": dist,
                     "within-class spread": within_class_spread(e, labels)})
    return pd.DataFrame(rows)


def top_sgid_setting(results: pd.DataFrame) -> str | None:
    """The setting of SGID at its largest proportion (chosen by method and proportion), if it was trained."""
    sgid = results[results.method == "sgid"]
    return None if sgid.empty else str(sgid.loc[sgid.proportion.idxmax(), "setting"])


def class_changes(params: Params, images: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame | None:
    """Per-class accuracy change of SGID at its largest proportion against the Baseline (first backbone); None without both."""
    results = primary(params, results)
    top = top_sgid_setting(results)
    if top is None or not (results.method == "baseline").any():
        return None
    names = class_names(images)
    baseline = results.loc[results.method == "baseline", "setting"].iloc[0]

    def loader(config: str) -> pd.DataFrame:
        return load_predictions(params, config)

    return per_class_change(setting_predictions(results, top, loader), setting_predictions(results, baseline, loader),
                            [names[label] for label in sorted(names)])


def load_set_metrics(params: Params) -> pd.DataFrame | None:
    """The sets' consistency and diversity as the quality stage wrote them, or None before it has run."""
    path = RunDir.of(params).table("set_metrics.csv")
    return read_table(path) if path.exists() else None


def load_variant_set_metrics(params: Params) -> pd.DataFrame | None:
    """The ablation variants' curated sets on the two axes (written by ``run ablations``), if that has run."""
    path = RunDir.of(params).table("ablation_set_metrics.csv")
    return read_table(path) if path.exists() else None


def run_quality_report(params: Params, images: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Write set_metrics.csv, per_class_change.csv and the consistency-diversity figure; return the tables."""
    run = RunDir.of(params)
    out = {"set_metrics": set_metrics(params)}
    write_table(run.table("set_metrics.csv"), out["set_metrics"])
    fig = consistency_diversity(out["set_metrics"], load_variant_set_metrics(params))
    save_fig(fig, params, CONSISTENCY_DIVERSITY)
    plt.close(fig)
    change = class_changes(params, images, load_results(params))
    if change is not None:
        out["per_class_change"] = change
        write_table(run.table("per_class_change.csv"), change)
    return out
