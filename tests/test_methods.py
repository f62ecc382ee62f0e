"""The compared augmentations (config.methods): Real Guidance's stage, its training method, its sources, the shared
Baselines and stages of the equal-steps variant, and the measured cost in the comparison table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from sgid_utils.core import catalog
from sgid_utils.core.fingerprints import fingerprint
from sgid_utils.core.provenance import stage_seconds
from sgid_utils.core.registry import get
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.runner import run_stage
from sgid_utils.core.seeding import derive_seed, draw_seed
from sgid_utils.core.sharing import variant_params
from sgid_utils.models.loading import create_classifier
from sgid_utils.params.backbones import backbones, configs
from sgid_utils.params.load import load_params
from sgid_utils.params.methods import AUGMENTATIONS, made_per_real
from sgid_utils.params.schema import Params
from sgid_utils.params.sources import SOURCES
from sgid_utils.preflight.projection import full_run_counts
from sgid_utils.reporting.comparison import (
    HOURS,
    PROJECTED,
    PROJECTION_BASIS,
    TEST_P,
    comparison_table,
    shown,
)
from sgid_utils.reporting.stats import pooled_mcnemar, setting_predictions
from sgid_utils.stages.training import make_loaders, training_sets


def test_every_setting_of_a_compared_method_names_that_methods_code():
    keys = [k for k in SOURCES if k.startswith("real_guidance.")]
    assert len(keys) == 7
    for key in keys:
        recipe = key.endswith(("num_synthetic", "synthetic_probability"))  # its recipe: DA-Fusion's RG script
        assert SOURCES[key].origin == "method", key
        assert ("launch_real_guidance" if recipe else "real_guidance.py") in SOURCES[key].where, key


def test_every_augmentation_is_declared_with_registered_stages_and_a_catalog_entry():
    for a in AUGMENTATIONS:
        assert all(get(s) for s in a.stages)
        assert catalog.entry(a.images)
        assert a.images in get("training").reads or a.images in {"curated"}


def test_real_guidance_makes_one_seeded_image_per_training_image(pipeline_run):
    images = catalog.load(pipeline_run, "images")
    rg = catalog.load(pipeline_run, "real_guidance_images")
    train = images[images.split == "train"]
    assert sorted(rg.image_id) == sorted(train.image_id)
    assert (rg.prompt == [f"a photo of a {c}" for c in rg.class_name]).all()
    assert (rg.guidance_scale == 7.5).all() and (rg.strength == 0.5).all()
    assert list(rg.seed) == [derive_seed(draw_seed(pipeline_run), i, 0, purpose="real-guidance") for i in rg.image_id]
    sizes = train.set_index("image_id")
    for row in rg.itertuples():
        with Image.open(row.path) as img:  # back at its real image's size
            assert img.size == (sizes.width[row.image_id], sizes.height[row.image_id])


def test_real_guidance_trains_as_a_method_with_one_synthetic_image_per_real_image(pipeline_run):
    results = catalog.load(pipeline_run, "training_results")
    rg = results[results.method == "real_guidance"]
    baseline = results[results.method == "baseline"]
    assert sorted(rg.seed) == sorted(baseline.seed) and (rg.setting == "Real Guidance (100%)").all()
    assert (rg.generated_images == baseline.train_images.iloc[0]).all()
    assert {c.name for c in configs(pipeline_run) if c.method == "real_guidance"} == set(rg.config)


def test_an_untrained_method_leaves_the_train_fingerprint_of_earlier_runs(make_params):
    without = make_params("a", training={"methods": ["baseline", "sgid"]})
    other = make_params("b", training={"methods": ["baseline", "sgid"]}, real_guidance={"strength": 0.75})
    assert fingerprint(without, "training") == fingerprint(other, "training")
    assert fingerprint(without, "real_guidance") != fingerprint(other, "real_guidance")
    assert "real_guidance" in fingerprint(make_params("c"), "training")
    # DA-Fusion's p changes only training: its tokens and images stay valid
    one, other = make_params("d"), make_params("e", da_fusion={"synthetic_probability": 0.25})
    for stage in ("inversion", "da_fusion"):
        assert fingerprint(one, stage) == fingerprint(other, stage)
    assert fingerprint(one, "training") != fingerprint(other, "training")
    assert fingerprint(one, "da_fusion") != fingerprint(make_params("f", da_fusion={"num_synthetic": 3}), "da_fusion")


def test_real_guidances_recipe_adds_m_images_per_real_image_and_keeps_every_first_one(pipeline_run, tmp_path):
    """A finished run that adds Real Guidance's recipe keeps its fingerprints at the recipe's defaults. With M = 2 and
    p = 0.75 its stage makes only the second images (the first keep their files and seeds), the recipe trains on
    every image with its own p, the package's way still on the first, and the projection counts M per real image."""
    def with_recipe(root: Path, methods: list[str], **rg) -> Params:
        doc = pipeline_run.model_dump(mode="json", exclude={"source_file"})
        doc["run"]["dir"] = str(root)
        doc["training"]["methods"] = [*methods, "real_guidance_recipe"]
        doc["real_guidance"].update(rg)
        (root.parent / f"{root.name}.yaml").write_text(json.dumps(doc))  # YAML reads JSON
        return load_params(root.parent / f"{root.name}.yaml")

    at_defaults = with_recipe(tmp_path / "defaults", pipeline_run.training.methods)
    for stage in ("real_guidance", "training"):
        assert fingerprint(at_defaults, stage) == fingerprint(pipeline_run, stage)
    before = catalog.load(pipeline_run, "real_guidance_images")
    root = tmp_path / "run"
    shutil.copytree(pipeline_run.run.dir, root, symlinks=True)
    shutil.rmtree(root / "training")  # M and p change the recipe's training: a new training folder
    params = with_recipe(root, ["baseline", "real_guidance"], num_synthetic=2, synthetic_probability=0.75)
    folder = RunDir.of(params).stage("real_guidance") / "images"
    first = {Path(p).name: (folder / Path(p).name).stat().st_mtime_ns for p in before.path}
    assert fingerprint(params, "real_guidance") == fingerprint(pipeline_run, "real_guidance")  # no stale outputs
    assert made_per_real(params, "real_guidance") == 2 and made_per_real(pipeline_run, "real_guidance") == 1

    after = run_stage("real_guidance", params)
    assert list(after.m) == [0] * len(before) + [1] * len(before) and set(after.image_id) == set(before.image_id)
    firsts = after[after.m == 0].set_index("image_id")
    assert firsts.seed.to_dict() == before.set_index("image_id").seed.to_dict()
    assert {Path(p).name: Path(p).stat().st_mtime_ns for p in firsts.path} == first  # not made again
    seconds = after[after.m == 1]
    assert list(seconds.seed) == [derive_seed(draw_seed(params), i, 1, purpose="real-guidance")
                                  for i in seconds.image_id]
    assert all(Path(p).name.endswith("_1.png") for p in seconds.path)

    results = run_stage("training", params)
    recipe = results[results.method == "real_guidance_recipe"]
    package = results[results.method == "real_guidance"]
    assert len(recipe) == len(package) and (recipe.setting == "Real Guidance (its recipe)").all()
    assert (recipe.generated_images == 2 * package.generated_images.iloc[0]).all()  # every image, drawn at p
    assert fingerprint(params, "training")["real_guidance"]["synthetic_probability"] == 0.75
    # the recipe's loader replaces at its own p (real_guidance.synthetic_probability), not DA-Fusion's
    train, test, additions, classes = training_sets(params)
    cfg = next(c for c in configs(params) if c.method == "real_guidance_recipe")
    bb = backbones(params)[0]
    model = create_classifier(bb.model, classes, bb.image_size, pretrained=bb.pretrained)
    data = pd.concat([train, additions[(cfg.method, cfg.proportion)]], ignore_index=True)
    loader, _ = make_loaders(params, cfg, bb, model, data, test, torch.Generator(), torch.device("cpu"))
    assert loader.sampler.p == 0.75 != params.da_fusion.synthetic_probability
    counts = full_run_counts(params)
    assert counts.items("real_guidance") == 2 * counts.train_images


def test_every_stage_records_its_seconds_and_the_comparison_counts_each_methods_stages(pipeline_run):
    seconds = {s: stage_seconds(pipeline_run, s)[0] for s in AUGMENTATIONS[0].stages + ("real_guidance",)}
    assert all(v > 0 for v in seconds.values()), seconds
    table = catalog.load(pipeline_run, "comparison")
    rg = table[table.Method == "Real Guidance (100%)"].iloc[0]
    sgid = table[table.Method == "SGID (100%)"].iloc[0]
    assert abs(rg[HOURS] * 3600 - seconds["real_guidance"]) < 0.01
    assert abs(sgid[HOURS] * 3600 - sum(seconds[s] for s in AUGMENTATIONS[0].stages)) < 0.01
    assert "CPU only" in rg.Device
    assert set(table["Synthetic per real"]) == {0.5, 1.0, pipeline_run.da_fusion.num_synthetic}
    recomputed = comparison_table(pipeline_run, catalog.load(pipeline_run, "training_results"))
    pd.testing.assert_frame_equal(recomputed.drop(columns=HOURS), table.drop(columns=HOURS), check_dtype=False)
    assert table[PROJECTED].isna().all() and table[PROJECTION_BASIS].str.startswith("no GPU report").all()
    # projected on the H200 report's rates: the full data set's items, each method's stages; Real Guidance (no
    # captions, k = 1) costs less than SGID, and the column names the data set and the GPU
    h200 = pipeline_run.model_copy(update={"references": pipeline_run.references.model_copy(
        update={"gpu_rates": Path(__file__).resolve().parents[1] / "docs/gpu/h200_2026-12-04_full.json"})})
    projected = comparison_table(h200, catalog.load(pipeline_run, "training_results"),
                                 full_run_counts).set_index("Method")
    assert projected.loc["Real Guidance (100%)", PROJECTED] < projected.loc["SGID (100%)", PROJECTED]
    assert (projected[PROJECTED] > 0).all() and "derived from FLOPs" in projected.loc["DA-Fusion (100%)",
                                                                                       PROJECTION_BASIS]
    assert f"{PROJECTED} (full data/train, NVIDIA H200)" in shown(projected.reset_index())
    # the same two checks as SGID's headline verdict: the seed interval and the test set (pooled McNemar)
    results = catalog.load(pipeline_run, "training_results")
    first = results[results.backbone == results.backbone.iloc[0]]
    def preds(setting):
        return setting_predictions(first, setting,
                                   lambda c: catalog.load(pipeline_run, "predictions", config=c))
    expected = pooled_mcnemar(preds("Real Guidance (100%)"), preds(rg["Best non-generative"]))["p_value"]
    assert rg[TEST_P] == pytest.approx(expected)


def test_an_equal_steps_variant_links_the_baselines_and_the_methods_images(make_params):
    from sgid_utils.core.runner import run_all
    from sgid_utils.stages.ablations import run as run_ablations

    params = make_params("eq", training={"methods": ["baseline", "sgid", "real_guidance"], "sgid_proportions": [1.0],
                                         "seeds": [0]},
                         ablations=[{"name": "equal-steps",
                                     "set": {"training.equal_steps": True,
                                             "training.methods": ["baseline", "sgid", "real_guidance"]}}])
    run_all(params)
    run_ablations(params)
    variant_run = variant_params(params, "equal-steps", params.ablations[0].set)
    base, variant = RunDir.of(params), RunDir.of(variant_run)
    assert variant.stage("real_guidance").is_symlink() and variant.stage("curation").is_symlink()
    assert variant.config_dir("baseline_seed0").is_symlink()
    assert variant.config_dir("baseline_seed0").resolve() == base.config_dir("baseline_seed0").resolve()
    steps = catalog.load(variant, "training_results").set_index("method").steps
    assert steps["real_guidance"] == steps["sgid"] == steps["baseline"]
    table = comparison_table(params, catalog.load(params, "training_results"))
    assert set(table.Recipe) == {"equal epochs", "equal steps (equal-steps)"}
    # a linked stage is counted at what it took in the run that made it
    assert stage_seconds(variant_run, "real_guidance") == stage_seconds(params, "real_guidance")
