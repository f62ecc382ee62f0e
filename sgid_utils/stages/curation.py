"""The curation stage (notebook 04): error analysis with upscaling, and the curated generated set training uses.

The report found that small sources turn into abstract art (SD 1.5 was trained at
512x512) and fixed it by upscaling them and picking "the best image out of the 3" by
hand. Here: the cosine similarity between the CLIP image embeddings of each source and
each of its candidates (the image tower of ``models.clip``, openai/clip-vit-base-patch32 in
the shipped profiles, the same model that scores the captions) measures the damage; sources
whose short side is below ``curation.upscale_threshold`` are upscaled (Lanczos) and
regenerated; one of the k candidates is chosen automatically by ``curation.select``
(``sgid_utils.augment.selection``; default ``most_similar``, our automatic reading of the
report's hand pick), giving ``curated.parquet``.

Every competing candidate also gets a label-consistency score (CLIP zero-shot against
the class prompts), which ``most_diverse_consistent`` (a hypothesis of this package, an
ablation variant) and the label filter use, and (beyond the paper) an out-of-fold
probability of being generated (a real-vs-generated detector on CLIP embeddings); the
filters named in ``filters.apply`` apply in order before the selection, giving
``curated_filtered.parquet``. The random choices here (the ``random`` rule, the detector's
folds) draw from the generation draw's seed (``seeding.draw_seed``): they belong to the
generated set, which ``run.draw`` redraws as a whole.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sgid_utils.augment.embeddings import class_prompt_embeddings, image_embeddings, load_embeddings
from sgid_utils.augment.filters import apply_filters, label_consistency, real_vs_generated, suggest_threshold
from sgid_utils.augment.selection import choose, competing, selection_floor
from sgid_utils.core import catalog
from sgid_utils.core.files import write_npz
from sgid_utils.core.images import load_run_image
from sgid_utils.core.resumable import BatchPlan, launched_worker, run_items, shard
from sgid_utils.core.rundir import Pass, RunDir
from sgid_utils.core.seeding import draw_seed
from sgid_utils.models.loading import load_clip, resolve_device
from sgid_utils.params.schema import Params


def score_candidates(params: Params, manifest: pd.DataFrame, generation_pass: Pass,
                     images: pd.DataFrame) -> pd.DataFrame:
    """Add ``similarity`` (CLIP cosine, source vs candidate) to a complete generation manifest; resumable per source.

    Not sharded: CLIP scoring is cheap next to generation, and whichever process gets here
    first with a complete manifest can then finish the stage (several may, with identical results).
    """
    run = RunDir.of(params)
    sources = images.set_index("image_id").path
    groups = {i: g for i, g in manifest.groupby("image_id", sort=False)}

    def start(todo: list[str]) -> BatchPlan:
        device = resolve_device(params)
        model, processor = load_clip(params.models.clip, str(device))

        def process(ids: list[str]) -> dict[str, list[dict]]:
            src = image_embeddings(model, processor, [load_run_image(sources[i]) for i in ids])
            every = image_embeddings(model, processor, [load_run_image(p) for i in ids for p in groups[i].path])
            records = {}
            for row, (image_id, emb) in enumerate(zip(ids, every.split([len(groups[i]) for i in ids]))):
                scored = groups[image_id].assign(similarity=(emb @ src[row]).cpu().tolist())
                scored["path"] = [run.relative(p) for p in scored.path]
                write_npz(run.embeddings(generation_pass, image_id), source=src[row].cpu().numpy(),
                          candidates=emb.cpu().numpy())
                records[image_id] = scored.to_dict("records")
            return records

        per_batch = max(1, params.curation.batch_size // (params.generation.num_candidates + 1))
        return BatchPlan(process, per_batch, f"scoring candidates ({generation_pass})", "curation.batch_size")

    records = run_items(run.candidate_scores(generation_pass), list(groups), start, sharded=False,
                        outputs=lambda image_id, _: [run.embeddings(generation_pass, image_id)])
    scored = catalog.with_pass_column(pd.DataFrame([r for recs in records for r in recs]))  # older records too
    scored["path"] = [str(run.absolute(p)) for p in scored.path]
    return scored


def add_quality_scores(params: Params, candidates: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Label consistency for every candidate; the detector's fake probability for competing ones."""
    classes, text, position = class_prompt_embeddings(params, candidates)
    emb, sources = load_embeddings(params, candidates)
    consistency = label_consistency(emb, text, candidates.label.map(position).to_numpy())
    out = candidates.assign(
        label_score=consistency.label_score.to_numpy(),
        predicted_label=classes.label.to_numpy()[consistency.predicted.to_numpy()],
        consistent=consistency.consistent.to_numpy(),
        competing=competing(candidates).to_numpy(),
    )
    comp = out.competing.to_numpy()
    detector = real_vs_generated(np.stack(list(sources.values())), emb[comp], folds=params.filters.detector_folds,
                                 seed=draw_seed(params))
    out["fake_probability"] = np.nan
    out.loc[comp, "fake_probability"] = detector["fake_probability"]
    summary = {k: v for k, v in detector.items() if k != "fake_probability"}
    return out, summary


def source_similarity_threshold(params: Params, candidates: pd.DataFrame) -> float:
    """filters.source_similarity_threshold, or the filters.source_similarity_quantile of the competing candidates'
    similarities to their sources."""
    q = params.filters
    if q.source_similarity_threshold is not None:
        return q.source_similarity_threshold
    return suggest_threshold(candidates[candidates.competing].similarity, q.source_similarity_quantile)


def filter_candidates(params: Params, candidates: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Apply filters.apply (in order) to the competing candidates."""
    q = params.filters
    return apply_filters(candidates[candidates.competing], q.apply, threshold, q.detector_drop_fraction)


def run(params: Params, images: pd.DataFrame) -> pd.DataFrame | None:
    """Score every candidate of both passes, filter, pick one per source (curation.select)."""
    if shard()[1] > 1 and not catalog.exists(params, "manifest_upscaled") and any(RunDir.of(params).items(
            "upscaling").glob("*.json")):
        return None  # other shards are still regenerating; the last one to finish writes the upscaling stage's table
    upscaled_manifest = catalog.load(params, "manifest_upscaled")
    if launched_worker():
        return None  # under accelerate launch the main process scores and selects once all have regenerated
    raw = score_candidates(params, catalog.load(params, "manifest_raw"), "raw", images)
    upscaled = (score_candidates(params, upscaled_manifest, "upscaled", images) if len(upscaled_manifest)
                else raw.iloc[:0])
    candidates = pd.concat([raw, upscaled], ignore_index=True)
    info = (images.set_index("image_id")[["label", "class_name", "path", "width", "height"]]
            .rename(columns={"path": "source_path"}))
    candidates = candidates.join(info, on="image_id")
    candidates["short_side"] = candidates[["width", "height"]].min(axis=1)
    candidates, detector = add_quality_scores(params, candidates)
    threshold, floor = source_similarity_threshold(params, candidates), selection_floor(params, candidates)
    if params.filters.apply:
        filtered = filter_candidates(params, candidates, threshold)
        candidates = candidates.join(filtered[["kept", "dropped_by"]])
        catalog.save(params, "curated_filtered", choose(params, filtered[filtered.kept], floor))
    curated = choose(params, candidates, floor)
    catalog.save(params, "filters_summary", {"detector": detector, "source_similarity_threshold": threshold,
                                     "filters": params.filters.apply, "select": params.curation.select,
                                     "select_floor": floor, "select_fallbacks": int(curated.fallback.sum())})
    catalog.save(params, "candidates", candidates)
    catalog.save(params, "curated", curated)
    return catalog.load(params, "curated")
