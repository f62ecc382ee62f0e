import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from sgid_utils.core import catalog
from sgid_utils.core.images import load_image
from sgid_utils.core.rundir import RunDir
from sgid_utils.models.loading import load_clip
from sgid_utils.stages.similarity import pick_best


def test_pick_best_takes_the_highest_score_per_image():
    scores = pd.DataFrame({
        "image_id": ["a", "a", "a", "b", "b"], "method": ["nucleus", "beam", "beam", "nucleus", "beam"],
        "rank": [0, 0, 1, 0, 0], "caption": ["x", "y", "z", "u", "v"], "score": [0.2, 0.4, 0.3, 0.5, 0.5],
    })
    best = pick_best(scores)
    assert best.set_index("image_id").caption.to_dict() == {"a": "y", "b": "v"}  # tie -> beam before nucleus
    assert best.s_star.tolist() == [0.4, 0.5]


def test_scores_are_clip_cosine_similarities(pipeline_run):
    run = RunDir.of(pipeline_run)
    scores = pd.read_parquet(catalog.path(run, "scores"))
    best = pd.read_parquet(catalog.path(run, "best_captions"))
    images = pd.read_parquet(catalog.path(run, "images")).set_index("image_id")
    assert len(scores) == len(pd.read_parquet(catalog.path(run, "captions")))
    top = scores.loc[scores.groupby("image_id").score.idxmax()].set_index("image_id")
    assert top.score.to_dict() == pytest.approx(best.set_index("image_id").s_star.to_dict())
    # Recompute one score directly with the CLIP model.
    row = scores.iloc[0]
    model, proc = load_clip(pipeline_run.models.clip)
    img = proc(images=[load_image(images.loc[row.image_id, "path"])], return_tensors="pt")
    txt = proc(text=[row.caption], return_tensors="pt", padding=True, truncation=True, max_length=77)
    with torch.no_grad():
        i = F.normalize(model.get_image_features(**img).pooler_output, dim=-1)
        t = F.normalize(model.get_text_features(**txt).pooler_output, dim=-1)
    assert float((i * t).sum()) == pytest.approx(row.score, abs=1e-5)
