"""Several backbones, each with its recipe; SGID combined with CutMix and RandAugment; the per-backbone tables."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from sgid_utils.augment.training import lr_factor
from sgid_utils.core import catalog
from sgid_utils.core.files import write_table
from sgid_utils.core.fingerprints import backbone_fingerprint, fingerprint
from sgid_utils.core.registry import upstream_closure
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.runner import prepare_run, run_stage
from sgid_utils.errors import ModelLoadError, ParamsError, StageError, StaleOutputsError
from sgid_utils.models.loading import create_classifier, preprocessing
from sgid_utils.params.backbones import backbones, configs
from sgid_utils.params.training import BackboneParams
from sgid_utils.reporting.facts import key_facts
from sgid_utils.stages.results import backbone_gains
from sgid_utils.stages.training import training_sets

from .conftest import copy_stages, resnet_scratch_entry

REAL = {  # the three backbones of params/pets_backbones.yaml: (input side, mean, std) their timm configs give
    "vit_base_patch16_224.orig_in21k": (224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "resnet50": (224, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    "vit_base_patch16_clip_224.laion2b": (224, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
}


def backbone_entries(tiny_backbones, vit_folder) -> list[dict]:
    return [
        {"name": "vit", "label": "ViT", "model": f"local-dir:{vit_folder}"},
        resnet_scratch_entry(tiny_backbones),
        {"name": "clip", "label": "CLIP ViT", "model": f"local-dir:{tiny_backbones / 'clip-vit'}", "optimizer": "adamw",
         "lr": 1e-5, "weight_decay": 0.1, "schedule": "cosine"},
    ]


@pytest.mark.parametrize("name", sorted(REAL))
def test_each_real_backbone_takes_its_preprocessing_from_its_timm_config(name):
    """Offline: the architecture with the pretrained config of its tag, no weights; size, mean and std as timm says."""
    with torch.device("meta"):
        model = create_classifier(name, 37, pretrained=False)
    side, mean, std = REAL[name]
    cfg = timm.get_pretrained_cfg(name)
    assert preprocessing(model) == (side, tuple(mean), tuple(std))
    assert preprocessing(model) == (cfg.input_size[-1], tuple(cfg.mean), tuple(cfg.std))
    assert preprocessing(model, image_size=96)[0] == 96


def test_tiny_backbones_keep_the_preprocessing_of_the_real_ones(tiny_backbones):
    for folder, name in (("resnet50", "resnet50"), ("clip-vit", "vit_base_patch16_clip_224.laion2b")):
        model = create_classifier(f"local-dir:{tiny_backbones / folder}", 3)
        assert preprocessing(model)[1:] == REAL[name][1:]


def test_a_from_scratch_backbone_starts_from_random_weights_and_loads_nothing(tiny_backbones, tmp_path):
    folder = tiny_backbones / "resnet50"
    saved = load_file(folder / "model.safetensors")
    torch.manual_seed(1)
    pretrained = create_classifier(f"local-dir:{folder}", 3)
    scratch = create_classifier(f"local-dir:{folder}", 3, pretrained=False)
    key = "conv1.weight"
    assert torch.equal(pretrained.state_dict()[key], saved[key])  # the pretrained path loads the saved weights ...
    assert not torch.equal(scratch.state_dict()[key], saved[key])  # ... the scratch path does not
    # No weight file is even read: without one the scratch path still builds, the pretrained one cannot.
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    (bare / "model.safetensors").unlink()
    assert isinstance(create_classifier(f"local-dir:{bare}", 3, pretrained=False), torch.nn.Module)
    with pytest.raises(ModelLoadError, match="Could not load"):
        create_classifier(f"local-dir:{bare}", 3)
    # A hub name from scratch asks no hub (the tests run with HF_HUB_OFFLINE=1).
    with torch.device("meta"):
        assert create_classifier("resnet50", 3, pretrained=False).fc.out_features == 3


def test_warmup_then_cosine_and_constant_schedules():
    bb = BackboneParams(name="r", model="resnet50", pretrained=False, optimizer="sgd", lr=0.1, schedule="cosine",
                        warmup_epochs=1, epochs=3)
    f = lr_factor(bb, steps_per_epoch=4)  # 4 warm-up steps, then a half cosine over 8 steps
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and f(8) == pytest.approx(0.5) and f(12) == pytest.approx(0.0, abs=1e-12)
    constant = lr_factor(BackboneParams(name="v", model="vit", lr=1e-4, epochs=3), 4)
    assert {constant(s) for s in range(12)} == {1.0}


def test_backbone_params_are_validated(make_params, tiny_backbones, assets):
    entries = backbone_entries(tiny_backbones, assets[0] / "vit")
    with pytest.raises(ParamsError, match="each backbone name may appear once"):
        make_params("dup", training={"backbones": [entries[0], entries[0]]})
    with pytest.raises(ParamsError, match="optimizer"):
        make_params("opt", training={"backbones": [{**entries[0], "optimizer": "lamb"}]})
    with pytest.raises(ParamsError, match="'resnet': warmup_epochs 5 is longer than its 2 epochs"):
        make_params("warmup", training={"epochs": 2, "backbones": [{**entries[1], "warmup_epochs": 5}]})
    with pytest.raises(ParamsError, match="labels must differ"):
        make_params("labels", training={"backbones": [entries[0], {**entries[1], "label": entries[0]["label"]}]})
    with pytest.raises(ParamsError, match=r"backbone\(s\) \['resnet50'\]"):
        make_params("headline", training={"backbones": entries},
                    results={"headline": {"label": "Paper", "source": "abstract", "gains": {"resnet50": 1.72}}})
    params = make_params("ok", training={"backbones": entries, "methods": ["baseline", "sgid_cutmix"], "seeds": [0]})
    assert [c.name for c in configs(params)] == ["vit-baseline_seed0", "vit-sgidcm100_seed0", "resnet-baseline_seed0",
                                                 "resnet-sgidcm100_seed0", "clip-baseline_seed0",
                                                 "clip-sgidcm100_seed0"]
    resnet = backbones(params)[1]
    assert (resnet.epochs, resnet.batch_size, resnet.lr, resnet.pretrained) == (1, 4, 0.05, False)  # unset: training.*


def test_combined_methods_add_the_generated_images_and_apply_the_augmentation(make_params, pipeline_run):
    """Same seed, same initial weights: SGID + CutMix and SGID + RandAugment train on SGID's images (as many as SGID)
    and their losses differ from SGID's (the augmentation ran); a dropped part fails one of the two checks."""
    params = make_params("combined", training={"methods": ["baseline", "sgid", "sgid_cutmix", "sgid_randaugment"],
                                               "seeds": [0], "sgid_proportions": [1.0], "cutmix_prob": 1.0})
    copy_stages(pipeline_run, params, "data", "captioning", "similarity", "generation", "upscaling", "curation")
    table = run_stage("training", params).set_index("method")
    assert table.loc["sgid", "generated_images"] > 0
    for method in ("sgid_cutmix", "sgid_randaugment"):
        assert table.loc[method, "generated_images"] == table.loc["sgid", "generated_images"]
        assert table.loc[method, "train_images"] == table.loc["sgid", "train_images"]
    run = RunDir.of(params)
    loss = {m: pd.read_csv(catalog.path(run, "metrics", config=table.loc[m, "config"])).train_loss.iloc[0]
            for m in table.index}
    assert loss["sgid_cutmix"] != loss["sgid"] and loss["sgid_randaugment"] != loss["sgid"]
    _, _, additions, _ = training_sets(params)
    pd.testing.assert_frame_equal(additions[("sgid_cutmix", 1.0)], additions[("sgid", 1.0)])


def test_best_non_generative_augmentation_is_read_from_the_numbers(make_params, tiny_backbones, assets):
    params = make_params("gains", training={"backbones": backbone_entries(tiny_backbones, assets[0] / "vit")[:2]},
                         results={"headline": {"label": "Paper", "source": "abstract",
                                               "gains": {"resnet": 1.72, "vit": 0.33}}})
    rows = []
    accs = {  # vit: RandAugment best; resnet: CutMix best, and Baseline listed first
        "vit": {"Baseline": 0.80, "CutMix": 0.81, "RandAugment": 0.84, "SGID (100%)": 0.86,
                "SGID + CutMix (100%)": 0.85},
        "resnet": {"Baseline": 0.50, "CutMix": 0.58, "RandAugment": 0.55, "SGID (100%)": 0.57,
                   "SGID + CutMix (100%)": 0.61},
    }
    methods = {"Baseline": ("baseline", None), "CutMix": ("cutmix", None), "RandAugment": ("randaugment", None),
               "SGID (100%)": ("sgid", 1.0), "SGID + CutMix (100%)": ("sgid_cutmix", 1.0)}
    for backbone, settings in accs.items():
        for setting, acc in settings.items():
            for seed, noise in ((0, -0.01), (1, 0.01)):
                method, proportion = methods[setting]
                rows.append({"backbone": backbone, "setting": setting, "method": method, "proportion": proportion,
                             "seed": seed, "test_acc": acc + noise})
    gains = backbone_gains(pd.DataFrame(rows), params).set_index("backbone")
    assert gains.loc["vit", "Best non-generative"] == "RandAugment"
    assert gains.loc["resnet", "Best non-generative"] == "CutMix"
    assert gains.loc["vit", "Gain (points, 95% CI)"].startswith("+2.00")
    assert gains.loc["resnet", "Gain (points, 95% CI)"].startswith("-1.00")
    assert gains.loc["resnet", "Combination gain (points, 95% CI)"].startswith("+3.00")
    assert gains.loc["resnet", "Paper"] == 1.72 and gains.loc["vit", "Paper"] == 0.33


def test_every_backbone_is_trained_and_compared_with_its_own_baseline(make_params, pipeline_run,
                                                                      tiny_backbones, assets):
    entries = backbone_entries(tiny_backbones, assets[0] / "vit")
    training = {"methods": ["baseline", "sgid", "sgid_randaugment"], "seeds": [0, 1],
                "sgid_proportions": [1.0], "epochs": 2}
    references = {"references": [{"label": "Paper", "source": "Table 1", "values": {"Baseline": 0.92}}]}
    params = make_params("backbones", training={**training, "backbones": entries}, results=references)
    copy_stages(pipeline_run, params, "data", "captioning", "similarity", "generation", "upscaling", "curation")
    run_stage("training", params)
    paths = run_stage("results", params)
    results = catalog.load(params, "training_results")
    assert sorted(results.backbone.unique()) == ["clip", "resnet", "vit"] and len(results) == 3 * 3 * 2
    sig = catalog.load(params, "significance")
    assert sorted(sig.backbone.unique()) == ["clip", "resnet", "vit"]
    assert set(sig.setting) == {"SGID (100%)", "SGID + RandAugment (100%)"}
    for row in sig.itertuples():  # the difference is against that backbone's own Baseline, seed by seed
        own = results[results.backbone == row.backbone]
        diff = (own[own.setting == row.setting].set_index("seed").test_acc
                - own[own.method == "baseline"].set_index("seed").test_acc)
        assert row.mean_diff == pytest.approx(diff.mean())
    table = pd.read_csv(paths["csv"])
    assert table.Backbone.unique().tolist() == ["ViT", "ResNet (scratch)", "CLIP ViT"]
    # A reference table without a backbone belongs to the first one (the paper's Table 1 is the ViT's).
    assert table.loc[table.Method == "Baseline", "Paper"].tolist() == pytest.approx([0.92, np.nan, np.nan], nan_ok=True)
    assert len(pd.read_csv(paths["gains_csv"])) == 3
    # The scratch backbone really trained from random weights with its cosine schedule: the lr fell to ~0 by the end.
    history = pd.read_csv(catalog.path(RunDir.of(params), "metrics", config="resnet-baseline_seed0"))
    assert history.lr.iloc[-1] < 0.05 * 0.01 and np.isfinite(history.train_loss).all()

    # Each backbone records its own recipe: one changed makes only its runs stale; one dropped retrains nothing.
    changed = make_params("backbones",
                          training={**training, "backbones": [entries[0], {**entries[1], "lr": 0.1}, entries[2]]},
                          results=references)
    with pytest.raises(StaleOutputsError, match=r"train \(ResNet \(scratch\)\).*lr: was 0\.05, now 0\.1.*resnet-\*"):
        run_stage("training", changed)
    finished = RunDir.of(params).result("clip-baseline_seed0").stat().st_mtime_ns
    fewer = make_params("backbones", training={**training, "backbones": [entries[0], entries[2]]}, results=references)
    assert len(run_stage("training", fewer)) == 2 * 3 * 2
    assert RunDir.of(params).result("clip-baseline_seed0").stat().st_mtime_ns == finished


def test_fingerprints_keep_older_runs_valid_and_see_every_recipe_change(make_params, tiny_backbones, assets):
    plain = make_params("plain")
    assert "backbones" not in fingerprint(plain, "training")["training"]  # runs made before backbones stay valid
    entries = backbone_entries(tiny_backbones, assets[0] / "vit")
    listed = make_params("listed", training={"backbones": entries})
    renamed = make_params("renamed", training={"backbones": [{**entries[0], "label": "ViT-B", "source": "typo fixed"},
                                                             *entries[1:]]})
    faster = make_params("faster", training={"backbones": [entries[0], {**entries[1], "lr": 0.1}, entries[2]]})
    # The stage's fingerprint leaves the list out; each backbone's recipe is recorded beside its runs.
    assert fingerprint(faster, "training") == fingerprint(renamed, "training") == fingerprint(listed, "training")
    assert "models.classifier" not in fingerprint(listed, "training")  # listed backbones replace it
    recipes = {name: [backbone_fingerprint(b) for b in backbones(p)] for name, p in
               (("listed", listed), ("renamed", renamed), ("faster", faster))}
    assert recipes["renamed"] == recipes["listed"]  # names cannot change a result
    assert [a == b for a, b in zip(recipes["faster"], recipes["listed"])] == [True, False, True]
    # A training.* value some backbones inherit: only theirs change (here the ViT's; ResNet and CLIP set their own lr).
    inherited = make_params("inherited", training={"backbones": entries, "lr": 2e-4})
    assert fingerprint(inherited, "training") == fingerprint(listed, "training")
    assert ([a == b for a, b in zip(map(backbone_fingerprint, backbones(inherited)), recipes["listed"])]
            == [False, True, True])
    assert fingerprint(make_params("plain-lr", training={"lr": 2e-4}), "training") != fingerprint(plain, "training")
    assert fingerprint(listed, "curation") == fingerprint(plain, "curation")  # training choices do not touch generation


def test_run_reuse_links_a_finished_run_and_refuses_an_unfinished_one(make_params, pipeline_run, tmp_path, capsys):
    base = RunDir.of(pipeline_run)
    params = make_params("reuse", run={"reuse": str(base.root)},
                         training={"methods": ["baseline", "sgid"], "seeds": [0], "sgid_proportions": [1.0]})
    table = run_stage("training", params)
    run = RunDir.of(params)
    for stage in upstream_closure("curation"):  # linked, not recomputed
        assert run.stage(stage).is_symlink() and run.stage(stage).resolve() == base.stage(stage).resolve()
    assert table.generated_images.max() == len(pd.read_parquet(catalog.path(base, "curated")))
    # Other generation params: what they change is made here (linking stops at the first stage that differs).
    other = make_params("reuse-other", run={"reuse": str(base.root)}, generation={"strength": 0.5})
    prepare_run(other)
    linked = [s for s in upstream_closure("curation") if RunDir.of(other).stage(s).is_symlink()]
    assert linked == ["data", "captioning", "similarity"]
    assert ("linked data, captioning, similarity from " + str(base.root) + "; made there with other params "
            "(generation), so run here: generation, upscaling, curation") in capsys.readouterr().err
    # A link left pointing at a run that has moved: a clear error, not a write through a dangling link.
    broken = make_params("reuse-broken", run={"reuse": str(base.root)})
    RunDir.of(broken).root.mkdir(parents=True)
    RunDir.of(broken).stage("data").symlink_to(tmp_path / "moved-away", target_is_directory=True)
    with pytest.raises(StageError, match="no longer exists"):
        prepare_run(broken)
    # A run that is missing (or has not finished curation) is an error, not hours of silent regeneration.
    with pytest.raises(StageError, match="run.reuse names .* not finished"):
        run_stage("data", make_params("reuse-missing", run={"reuse": str(tmp_path / "nowhere")}))


def test_tables_from_before_backbones_still_load_and_the_report_names_each_classifier(make_params, pipeline_run,
                                                                                       tiny_backbones, assets):
    params = make_params("old-tables", training={"backbones": backbone_entries(tiny_backbones, assets[0] / "vit")})
    copy_stages(pipeline_run, params, "data")
    run = RunDir.of(params)
    old = pd.DataFrame({"setting": ["SGID (100%)"], "mean_diff": [0.01], "ci_low": [-0.1], "ci_high": [0.12],
                        "significant": [False]})  # significance.parquet as written before backbones existed
    write_table(catalog.path(run, "significance"), old)
    assert catalog.load(params, "significance").backbone.tolist() == [""]
    models = dict(key_facts(params, pd.DataFrame()))["Models"]
    assert models.endswith("; classifiers " + ", ".join(f"{e['label']} {e['model']}" for e in
                                                       backbone_entries(tiny_backbones, assets[0] / "vit")))
