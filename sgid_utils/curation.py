"""Stage 04: error analysis with upscaling, and the curated generated set training uses.

The report found that small sources turn into abstract art (SD 1.5 was trained at
512x512) and fixed it by upscaling them and picking the best of 3 candidates by
hand. Here: CLIP image-image cosine similarity between each source and each of
its candidates measures the damage; sources whose short side is below
``curation.upscale_threshold`` are upscaled (Lanczos) and regenerated; the best
of the k candidates by that similarity is chosen automatically.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from .data import load_image, load_images_table
from .generation import load_manifest, run_generation
from .io import ItemStore, check_fingerprint, read_table, write_table
from .models import load_clip, resolve_device
from .params import Params
from .pipeline import ensure_inputs, gpu_memory_hint, my_share
from .similarity import image_embeddings


def score_candidates(params: Params, manifest: pd.DataFrame, variant: str) -> pd.DataFrame | None:
    """Add ``similarity`` (CLIP cosine, source vs candidate) to a generation manifest; resumable per source."""
    stage_dir = Path(params.run.dir) / "curation"
    store = ItemStore(stage_dir / f"scores_{variant}")
    sources = load_images_table(params).set_index("image_id")
    groups = {i: g for i, g in manifest.groupby("image_id", sort=False)}
    todo = store.todo(my_share(groups))
    if todo:
        device = resolve_device(params)
        model, processor = load_clip(params.models.clip, str(device))
        per_batch = max(1, params.curation.batch_size // (params.generation.num_candidates + 1))
        for start in tqdm(range(0, len(todo), per_batch), desc=f"score ({variant})", unit="batch"):
            ids = todo[start:start + per_batch]
            with gpu_memory_hint("scoring candidates", f"Lower curation.batch_size (now {params.curation.batch_size})."):
                src = image_embeddings(model, processor, [load_image(sources.loc[i, "path"]) for i in ids])
                for row, image_id in enumerate(ids):
                    cands = groups[image_id]
                    emb = image_embeddings(model, processor, [load_image(p) for p in cands.path])
                    scored = cands.assign(similarity=(emb @ src[row]).cpu().tolist())
                    scored["path"] = [str(Path(p).relative_to(params.run.dir)) for p in scored.path]
                    store.put(image_id, scored.to_dict("records"))
    if not store.complete(groups):
        return None
    scored = pd.DataFrame([r for i in groups for r in store.get(i)])
    scored["path"] = [str(Path(params.run.dir) / p) for p in scored.path]
    return scored


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
    check_fingerprint(stage_dir, params.stage_fingerprint("models.clip", "curation", "generation", "run.seed"), "curate")
    raw = score_candidates(params, load_manifest(params, "raw"), "raw")
    upscaled_manifest = run_generation(params, "upscaled")
    if raw is None or upscaled_manifest is None:
        return None  # other shards are still working
    upscaled = score_candidates(params, upscaled_manifest, "upscaled") if len(upscaled_manifest) else raw.iloc[:0]
    if upscaled is None:
        return None
    candidates = pd.concat([raw, upscaled], ignore_index=True)
    info = images.set_index("image_id")[["label", "class_name", "path", "width", "height"]].rename(columns={"path": "source_path"})
    candidates = candidates.join(info, on="image_id")
    candidates["short_side"] = candidates[["width", "height"]].min(axis=1)
    write_table(stage_dir / "candidates.parquet", candidates, params.run.dir)
    write_table(stage_dir / "curated.parquet", select_best(candidates), params.run.dir)
    return load_curated(params)


def load_candidates(params: Params) -> pd.DataFrame:
    return read_table(Path(params.run.dir) / "curation" / "candidates.parquet", params.run.dir)


def load_curated(params: Params) -> pd.DataFrame:
    return read_table(Path(params.run.dir) / "curation" / "curated.parquet", params.run.dir)
