"""Stage 04: error analysis with upscaling, and the curated generated set training uses.

The report found that small sources turn into abstract art (SD 1.5 was trained at
512x512) and fixed it by upscaling them and picking the best of 3 candidates by
hand. Here: CLIP image-image cosine similarity between each source and each of
its candidates measures the damage; sources whose short side is below
``curation.upscale_threshold`` are upscaled (Lanczos) and regenerated; the best
of the k candidates by that similarity is chosen automatically (``curated.parquet``).

Beyond the paper, every competing candidate also gets a label-consistency score
(CLIP zero-shot against the class prompts) and an out-of-fold probability of being
generated (a real-vs-generated detector on CLIP embeddings); the filters named in
``quality.filters`` apply in order before best-of-k, giving ``curated_filtered.parquet``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .data import load_image
from .generation import load_manifest, run_generation
from .io import ItemStore, check_fingerprint, read_json, read_table, write_json, write_npz, write_table
from .models import load_clip, resolve_device
from .params import Params
from .pipeline import ensure_inputs, gpu_memory_hint
from .quality import apply_filters, class_prompts, label_consistency, real_vs_generated, suggest_threshold
from .similarity import image_embeddings, text_embeddings


def score_candidates(params: Params, manifest: pd.DataFrame, variant: str, images: pd.DataFrame) -> pd.DataFrame:
    """Add ``similarity`` (CLIP cosine, source vs candidate) to a complete generation manifest; resumable per source.

    Not sharded: CLIP scoring is cheap next to generation, and whichever process gets here
    first with a complete manifest can then finish the stage (several may, with identical results).
    """
    stage_dir = Path(params.run.dir) / "curation"
    store = ItemStore(stage_dir / f"scores_{variant}")
    sources = images.set_index("image_id")
    groups = {i: g for i, g in manifest.groupby("image_id", sort=False)}
    todo = store.todo(groups)
    if todo:
        device = resolve_device(params)
        model, processor = load_clip(params.models.clip, str(device))
        per_batch = max(1, params.curation.batch_size // (params.generation.num_candidates + 1))
        for start in tqdm(range(0, len(todo), per_batch), desc=f"score ({variant})", unit="batch"):
            ids = todo[start:start + per_batch]
            with gpu_memory_hint("scoring candidates", f"Lower curation.batch_size (now {params.curation.batch_size})."):
                src = image_embeddings(model, processor, [load_image(sources.loc[i, "path"]) for i in ids])
                every = image_embeddings(model, processor, [load_image(p) for i in ids for p in groups[i].path])
                for row, (image_id, emb) in enumerate(zip(ids, every.split([len(groups[i]) for i in ids]))):
                    cands = groups[image_id]
                    scored = cands.assign(similarity=(emb @ src[row]).cpu().tolist())
                    scored["path"] = [str(Path(p).relative_to(params.run.dir)) for p in scored.path]
                    write_npz(_embedding_file(params, variant, image_id), source=src[row].cpu().numpy(),
                              candidates=emb.cpu().numpy())
                    store.put(image_id, scored.to_dict("records"))
    scored = pd.DataFrame([r for i in groups for r in store.get(i)])
    scored["path"] = [str(Path(params.run.dir) / p) for p in scored.path]
    return scored


def _embedding_file(params: Params, variant: str, image_id: str) -> Path:
    return Path(params.run.dir) / "curation" / f"embeddings_{variant}" / f"{image_id}.npz"


def load_embeddings(params: Params, candidates: pd.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """CLIP embeddings saved while scoring: one row per candidate (in table order), and each source's."""
    rows, sources = [], {}
    for (variant, image_id), group in candidates.groupby(["variant", "image_id"], sort=False):
        with np.load(_embedding_file(params, variant, image_id)) as f:
            sources[image_id] = f["source"]
            rows.append(pd.DataFrame({"_pos": group.index, "_emb": list(f["candidates"][group.k.to_numpy()])}))
    order = pd.concat(rows).set_index("_pos").loc[candidates.index, "_emb"]
    return np.stack(order.to_list()), sources


def competing(candidates: pd.DataFrame) -> pd.Series:
    """The candidates that compete in best-of-k: the upscaled regeneration where there is one, else raw."""
    upscaled = candidates.groupby("image_id").variant.transform(lambda v: (v == "upscaled").any())
    return (candidates.variant == "upscaled") | ~upscaled


def class_prompt_embeddings(params: Params, candidates: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, dict[int, int]]:
    """CLIP embeddings of the class prompts: (one row per class sorted by label, text embeddings, label -> row)."""
    device = resolve_device(params)
    model, processor = load_clip(params.models.clip, str(device))
    classes = candidates.drop_duplicates("label").sort_values("label")
    text = text_embeddings(model, processor, class_prompts(classes.class_name.tolist(), params.quality.class_noun)).cpu().numpy()
    return classes, text, {int(label): i for i, label in enumerate(classes.label)}


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
    detector = real_vs_generated(np.stack(list(sources.values())), emb[comp], folds=params.quality.detector_folds, seed=params.run.seed)
    out["fake_probability"] = np.nan
    out.loc[comp, "fake_probability"] = detector["fake_probability"]
    summary = {k: v for k, v in detector.items() if k != "fake_probability"}
    return out, summary


def filter_candidates(params: Params, candidates: pd.DataFrame) -> tuple[pd.DataFrame, float | None]:
    """Apply quality.filters (in order) to the competing candidates; returns them and the similarity threshold used."""
    q = params.quality
    comp = candidates[candidates.competing]
    threshold = q.similarity_threshold
    if threshold is None:
        threshold = suggest_threshold(comp.similarity, q.similarity_quantile)
    return apply_filters(comp, q.filters, threshold, q.detector_drop_fraction), threshold


def select_best(candidates: pd.DataFrame) -> pd.DataFrame:
    """Best candidate per source by similarity; an upscaled regeneration replaces the raw one."""
    preferred = candidates.assign(_rank=(candidates.variant == "upscaled").astype(int))
    latest = preferred[preferred._rank == preferred.groupby("image_id")._rank.transform("max")]
    ordered = latest.sort_values(["image_id", "similarity", "k"], ascending=[True, False, True], kind="stable")
    return ordered.groupby("image_id").head(1).drop(columns="_rank").reset_index(drop=True)


def run_curation(params: Params) -> pd.DataFrame | None:
    """Score raw candidates, upscale and regenerate small sources, score again, pick best-of-k."""
    images = ensure_inputs(params)
    stage_dir = Path(params.run.dir) / "curation"
    check_fingerprint(stage_dir, params.stage_fingerprint("curate"), "curate")
    upscaled_manifest = run_generation(params, "upscaled")  # sharded: the expensive part
    if upscaled_manifest is None:
        return None  # other shards are still regenerating; the last one to finish completes the stage
    raw = score_candidates(params, load_manifest(params, "raw"), "raw", images)
    upscaled = score_candidates(params, upscaled_manifest, "upscaled", images) if len(upscaled_manifest) else raw.iloc[:0]
    candidates = pd.concat([raw, upscaled], ignore_index=True)
    info = images.set_index("image_id")[["label", "class_name", "path", "width", "height"]].rename(columns={"path": "source_path"})
    candidates = candidates.join(info, on="image_id")
    candidates["short_side"] = candidates[["width", "height"]].min(axis=1)
    candidates, detector = add_quality_scores(params, candidates)
    filtered, threshold = filter_candidates(params, candidates)
    if params.quality.filters:
        candidates = candidates.join(filtered[["kept", "dropped_by"]])
        write_table(stage_dir / "curated_filtered.parquet", select_best(filtered[filtered.kept]), params.run.dir)
    write_json(stage_dir / "quality.json", {"detector": detector, "similarity_threshold": threshold,
                                            "filters": params.quality.filters})
    write_table(stage_dir / "candidates.parquet", candidates, params.run.dir)
    write_table(stage_dir / "curated.parquet", select_best(candidates), params.run.dir)
    return load_curated(params)


def load_candidates(params: Params) -> pd.DataFrame:
    return read_table(Path(params.run.dir) / "curation" / "candidates.parquet", params.run.dir)


def load_curated(params: Params, filtered: bool = False) -> pd.DataFrame:
    name = "curated_filtered.parquet" if filtered else "curated.parquet"
    return read_table(Path(params.run.dir) / "curation" / name, params.run.dir)


def load_quality_summary(params: Params) -> dict:
    return read_json(Path(params.run.dir) / "curation" / "quality.json")


def set_metrics(params: Params) -> pd.DataFrame:
    """The paper's two axes for each image set, from the saved CLIP embeddings.

    Semantic consistency: mean CLIP score of each image with its own class prompt, and the accuracy
    of CLIP zero-shot classification over the class prompts. Diversity: mean (1 - cosine) between a
    generated image and its source, and the mean pairwise (1 - cosine) within each class.
    """
    from .quality import consistency_metrics, source_distance, within_class_spread

    candidates = load_candidates(params)
    emb, sources = load_embeddings(params, candidates)
    classes, text, position = class_prompt_embeddings(params, candidates)
    source_label = candidates.drop_duplicates("image_id").set_index("image_id").label
    real_ids = list(sources)
    real = np.stack([sources[i] for i in real_ids])
    real_labels = source_label.loc[real_ids].map(position).to_numpy()
    sets = {"real (sources)": None, "generated (raw)": candidates.variant == "raw",
            "generated (upscaled)": candidates.variant == "upscaled",
            "curated (best of k)": candidates.set_index(["image_id", "variant", "k"]).index.isin(
                select_best(candidates).set_index(["image_id", "variant", "k"]).index)}
    if "kept" in candidates:
        kept = select_best(candidates[candidates.kept.fillna(False).astype(bool)])
        sets["curated (filtered)"] = candidates.set_index(["image_id", "variant", "k"]).index.isin(
            kept.set_index(["image_id", "variant", "k"]).index)
    rows = []
    for name, mask in sets.items():
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
        rows.append({"set": name, "images": len(e), "label score": c["mean_label_score"],
                     "zero-shot accuracy": c["zero_shot_accuracy"], "distance to source": dist,
                     "within-class spread": within_class_spread(e, labels)})
    return pd.DataFrame(rows)
