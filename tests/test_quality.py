import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import linalg

from sgid_utils.augment.embeddings import image_embeddings, text_embeddings
from sgid_utils.augment.filters import (
    apply_filters,
    class_prompts,
    detector_filter,
    label_consistency,
    real_vs_generated,
    source_similarity_filter,
    suggest_threshold,
    zero_shot_scores,
)
from sgid_utils.augment.selection import select
from sgid_utils.core.images import load_image
from sgid_utils.models.loading import load_clip
from sgid_utils.reporting.set_metrics import (
    consistency_metrics,
    fid_kid,
    source_distance,
    within_class_spread,
)


def test_source_similarity_filter_and_threshold():
    c = pd.DataFrame({"similarity": [0.9, 0.5, 0.49, np.nan, 0.7]})
    assert source_similarity_filter(c, 0.5).tolist() == [True, True, False, False, True]  # >= keeps, NaN drops
    sims = np.linspace(0, 1, 101)
    assert suggest_threshold(sims, 0.05) == pytest.approx(0.05)
    assert suggest_threshold([0.3, np.nan, 0.9], 0.0) == pytest.approx(0.3)  # quantile 0 keeps every scored one
    with pytest.raises(ValueError, match="quantile"):
        suggest_threshold(sims, 1.5)


def test_class_prompts():
    assert class_prompts(["Great Pyrenees", "pink primrose"], "pet") == [
        "a photo of a Great Pyrenees, a type of pet.", "a photo of a pink primrose, a type of pet."]
    assert class_prompts(["Maine Coon"]) == ["a photo of a Maine Coon."]


def _orthogonal_case():
    text = torch.eye(3, 4)  # three class prompts along e0, e1, e2
    images = torch.tensor([[1.0, 0, 0, 0],         # class 0: exactly its prompt
                           [0, 0.6, 0.8, 0],       # class 1, but closer to class 2
                           [2.4, 0, 1.8, 0]])      # class 2, closer to class 0; not unit length
    return images, text, [0, 1, 2]


def test_label_consistency_with_orthogonal_embeddings():
    images, text, labels = _orthogonal_case()
    scores = zero_shot_scores(images, text)
    assert scores.numpy() == pytest.approx(np.array([[1, 0, 0], [0, 0.6, 0.8], [0.8, 0, 0.6]]), abs=1e-6)
    table = label_consistency(images, text, labels)
    assert table.label_score.tolist() == pytest.approx([1.0, 0.6, 0.6], abs=1e-6)
    assert table.predicted.tolist() == [0, 2, 0]
    assert table.consistent.tolist() == [True, False, False]
    m = consistency_metrics(images, text, labels)
    assert m == pytest.approx({"mean_label_score": 2.2 / 3, "zero_shot_accuracy": 1 / 3, "n": 3}, abs=1e-6)
    with pytest.raises(ValueError, match="index the 3 class prompts"):
        label_consistency(images, text, [0, 1, 3])


def test_detector_separates_separable_embeddings():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(40, 16))
    gen = rng.normal(size=(30, 16)) + np.r_[8.0, np.zeros(15)]  # 8 sd apart along one axis
    r = real_vs_generated(real, gen, folds=5, seed=0)
    assert r["cv_accuracy"] > 0.95 and r["folds"] == 5
    assert r["chance_accuracy"] == pytest.approx(40 / 70)
    assert r["fake_probability"].shape == (30,) and (r["fake_probability"] > 0.5).mean() > 0.9
    again = real_vs_generated(real, gen, folds=5, seed=0)
    assert np.array_equal(again["fake_probability"], r["fake_probability"])  # seeded folds


def test_detector_is_at_chance_on_one_distribution():
    rng = np.random.default_rng(1)
    same = rng.normal(size=(300, 8))
    r = real_vs_generated(same[:150], same[150:], folds=5, seed=0)
    assert abs(r["cv_accuracy"] - 0.5) < 0.1
    assert abs(r["fake_probability"].mean() - 0.5) < 0.1


def test_detector_on_tiny_inputs():
    rng = np.random.default_rng(2)
    r = real_vs_generated(rng.normal(size=(3, 4)), rng.normal(size=(2, 4)) + 5, folds=5)
    assert r["folds"] == 2 and r["fake_probability"].shape == (2,)
    with pytest.raises(ValueError, match="at least 2 real and 2 generated"):
        real_vs_generated(rng.normal(size=(5, 4)), rng.normal(size=(1, 4)))


def test_detector_filter_drops_the_most_surely_fake():
    p = np.array([0.2, 0.9, 0.5, 0.9, 0.1])
    assert detector_filter(p, 0.4).tolist() == [True, False, True, False, True]  # round(2.0) = 2
    assert detector_filter(p, 0.3).tolist() == [True, False, True, False, True]  # round(1.5) = 2 (half up)
    assert detector_filter(p, 0.2).tolist() == [True, False, True, True, True]   # tie at 0.9: the earlier goes
    assert detector_filter(p, 0.0).all() and not detector_filter(p, 1.0).any()


def _candidates() -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": ["a", "b", "b", "a", "a"], "generation_pass": "raw", "k": [0, 0, 1, 1, 2],
        "path": ["c0", "c1", "c2", "c3", "c4"],
        "similarity": [0.90, 0.20, 0.80, 0.70, 0.95],
        "consistent": [True, True, False, True, True],
        "fake_probability": [0.10, 0.90, 0.20, 0.80, 0.30],
    })


def test_apply_filters_in_order_records_who_dropped_what():
    out = apply_filters(_candidates(), ["source_similarity", "label", "detector"], source_similarity_threshold=0.5,
                        detector_drop_fraction=0.25)
    # source_similarity drops c1, label drops c2; the detector sees c0, c3, c4 and drops round(0.75) = 1: c3.
    assert out.kept.tolist() == [True, False, False, False, True]
    assert out.dropped_by.fillna("-").tolist() == ["-", "source_similarity", "label", "detector", "-"]
    assert out.kept_by_source_similarity.tolist() == [True, False, True, True, True]
    assert out.kept_by_label.tolist() == [True, pd.NA, False, True, True]
    assert out.kept_by_detector.tolist() == [True, pd.NA, pd.NA, False, True]
    best = select(out[out.kept], "most_similar")
    assert best.path.tolist() == ["c4"]  # source b lost all its candidates: it contributes nothing


def test_apply_filters_order_matters_for_the_detector():
    candidates = _candidates().set_axis([0, 0, 1, 1, 2])  # a repeated index (e.g. from concat) is fine
    out = apply_filters(candidates, ["detector", "source_similarity", "label"], source_similarity_threshold=0.5,
                        detector_drop_fraction=0.25)
    # The detector now sees all five and drops round(1.25) = 1: c1; c3 survives.
    assert out.kept.tolist() == [True, False, False, True, True]
    assert out.dropped_by.fillna("-").tolist() == ["-", "detector", "label", "-", "-"]
    assert out.kept_by_source_similarity.tolist() == [True, pd.NA, True, True, True]
    only_label = apply_filters(_candidates(), ["label"])
    assert only_label.kept.tolist() == [True, True, False, True, True]
    assert "kept_by_source_similarity" not in only_label and "similarity" in only_label  # score columns are kept


def test_apply_filters_rejects_bad_requests():
    c = _candidates()
    with pytest.raises(ValueError, match="distinct names"):
        apply_filters(c, ["source_similarity", "clip"], source_similarity_threshold=0.5)
    with pytest.raises(ValueError, match="distinct names"):
        apply_filters(c, ["label", "label"])
    with pytest.raises(ValueError, match="fake_probability"):
        apply_filters(c.drop(columns="fake_probability"), ["detector"])
    with pytest.raises(ValueError, match="source_similarity_threshold"):
        apply_filters(c, ["source_similarity"])


def test_source_distance_and_within_class_spread_by_hand():
    gen = np.array([[1.0, 0], [0, 1], [1, 1]])
    src = np.array([[2.0, 0], [1, 0], [1, 0]])
    assert source_distance(gen, src) == pytest.approx([0.0, 1.0, 1 - 1 / math.sqrt(2)])
    emb = torch.tensor([[1.0, 0], [0, 1], [-1, 0], [1, 1], [2, 2], [0, 3]])
    labels = [0, 0, 0, 1, 1, 2]
    # class 0 pairs: 1, 2, 1 -> 4/3; class 1: identical directions -> 0; class 2: one image, skipped.
    assert within_class_spread(emb, labels) == pytest.approx((4 / 3 + 0) / 2)
    assert math.isnan(within_class_spread(emb[:2], [0, 1]))


class PooledColours(torch.nn.Module):
    """A tiny feature extractor: mean colour of each image quadrant (12 features) from uint8 input."""

    num_features = 12

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 2).flatten(1)


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real))


def test_fid_kid_wiring_with_a_tiny_feature_extractor():
    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=g)
    gen = (real.float() * 0.6 + 60).to(torch.uint8)
    same = fid_kid(real, real.clone(), feature=PooledColours(), subset_size=1000, subsets=10, batch_size=16)
    assert same["fid"] == pytest.approx(0.0, abs=1e-4) and same["kid_subset_size"] == 40
    assert math.isfinite(same["kid_mean"]) and abs(same["kid_mean"]) < 1e-2
    diff = fid_kid(real, gen, feature=PooledColours(), subset_size=20, subsets=10, batch_size=16)
    extractor = PooledColours()
    expected = _frechet(extractor(real).double().numpy(), extractor(gen).double().numpy())
    assert diff["fid"] == pytest.approx(expected, rel=1e-3) and diff["fid"] > 0.01
    assert diff["kid_mean"] > same["kid_mean"] and math.isfinite(diff["kid_std"])
    assert (diff["n_real"], diff["n_generated"], diff["kid_subset_size"]) == (40, 40, 20)
    seeded = [fid_kid(real, gen, feature=PooledColours(), subset_size=20, subsets=3, seed=3)["kid_mean"]
              for _ in range(2)]
    assert seeded[0] == seeded[1]  # KID's random subsets come from the seed


def test_fid_and_kid_share_one_feature_pass_per_batch():
    class Counting(PooledColours):
        seen = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            Counting.seen += len(x)
            return super().forward(x)

    images = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    fid_kid(images[:24], images[24:], feature=Counting(), subset_size=10, subsets=2, batch_size=8)
    assert Counting.seen == 40  # each image once, not once per metric


def test_fid_kid_without_inception_weights_returns_none(tmp_path):
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.warns(RuntimeWarning, match="FID/KID skipped"):
        assert fid_kid(images, images, weights_path=tmp_path / "no-such-weights.pth") is None
    with pytest.raises(ValueError, match="at least 2 images"):
        fid_kid(images[:1], images, feature=PooledColours())


def test_zero_shot_with_the_tiny_clip(assets):
    models, data = assets
    model, processor = load_clip(str(models / "clip"))
    class_dirs = sorted(p for p in (data / "train").iterdir() if p.is_dir())
    names = [p.name.replace("_", " ") for p in class_dirs]
    paths = [(label, f) for label, d in enumerate(class_dirs) for f in sorted(d.glob("*.jpg"))[:2]]
    text = text_embeddings(model, processor, class_prompts(names, "pet"))
    images = image_embeddings(model, processor, [load_image(f) for _, f in paths])
    labels = [label for label, _ in paths]
    table = label_consistency(images, text, labels)
    assert len(table) == len(paths) and table.predicted.between(0, len(names) - 1).all()
    assert table.label_score.to_numpy() == pytest.approx((images @ text.T)[range(len(labels)), labels].numpy(),
                                                         abs=1e-5)
    m = consistency_metrics(images, text, labels)
    assert -1 <= m["mean_label_score"] <= 1 and m["zero_shot_accuracy"] == pytest.approx(table.consistent.mean())
    # the spread of the real embeddings, pair by pair: each class's mean (1 - cosine) over its pairs, averaged
    unit = torch.nn.functional.normalize(images.double(), dim=1)
    members = [[i for i, lab in enumerate(labels) if lab == label] for label in sorted(set(labels))]
    expected = np.mean([np.mean([1 - float(unit[i] @ unit[j]) for i, j in itertools.combinations(m, 2)])
                        for m in members if len(m) > 1])
    assert expected > 0  # two images of a class embed apart, so the comparison is not 0 == 0
    assert within_class_spread(images, labels) == pytest.approx(expected, abs=1e-5)


def test_consistency_diversity_numbers_the_variants_so_no_names_overlap():
    import matplotlib.pyplot as plt
    import pandas as pd

    from sgid_utils.reporting.plots import consistency_diversity

    metrics = pd.DataFrame({"set": ["real (sources)", "curated (selected)"], "kind": ["run", "run"],
                            "label score": [0.30, 0.28], "distance to source": [float("nan"), 0.10]})
    variants = pd.DataFrame({"Variant": ["label-only", "caption-only", "SGID + ControlNet (strength 0.5)"],
                             "generator": ["img2img", "img2img", "controlnet"],
                             "label score": [0.25, 0.25, 0.25], "distance to source": [0.2, 0.2, 0.2]})  # one point
    fig = consistency_diversity(metrics, variants)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["1", "2", "3"]  # numbers on the plot, not the long names
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert (["1: label-only", "2: caption-only", "3: SGID + ControlNet (strength 0.5)"]
            == [t for t in legend if t[0].isdigit()])
    assert "real images' label score" in legend
    plt.close(fig)
