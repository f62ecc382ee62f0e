from pathlib import Path

import pytest
import yaml

from sgid_utils.params.backbones import METHOD_NAMES, backbones
from sgid_utils.params.load import ParamsError, load_params, parse_override

from .conftest import REPO


def _write(tmp_path: Path, doc: dict) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


BASE = {"run": {"name": "x", "dir": "runs/x", "reports_dir": "reports/x"},
        "dataset": {"source": "imagefolder", "path": "data"}}


def _with(section: str, key: str, value) -> dict:
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    doc.setdefault(section, {})[key] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "needles"),
    [
        (_with("generation", "strenght", 0.3), ["generation.strenght", "Did you mean 'strength'", "bad.yaml"]),
        (_with("generation", "strength", 1.5), ["generation.strength", "less than or equal to 1"]),
        (_with("generation", "strength", 0), ["generation.strength", "greater than 0"]),
        (_with("generation", "strength", "high"), ["generation.strength", "valid number"]),
        (_with("generation", "num_candidates", -1), ["generation.num_candidates"]),
        (_with("training", "sgid_proportions", [0.5, 1.5]), ["training.sgid_proportions", "[0, 1]"]),
        (_with("training", "seeds", []), ["training.seeds"]),
        (_with("training", "methods", ["baseline", "mixup"]), ["training.methods"]),
        (_with("captioning", "num_beam", 12), ["num_beam (12) cannot exceed", "num_beams"]),
        (_with("dataset", "source", "cifar"), ["dataset.source", "pets", "flowers", "imagefolder"]),
        ({"run": BASE["run"], "dataset": {"source": "imagefolder"}}, ["dataset.path must name the image folder"]),
        ({**BASE, "trainig": {}}, ["unknown key 'trainig'", "Did you mean 'training'"]),
        ({"dataset": BASE["dataset"]}, ["missing required key 'run'"]),
        (_with("run", "device", "gpu"), ["run.device", "should match pattern"]),
        (_with("training", "methods", ["baseline", "sgid_filtered"]), ["sgid_filtered but filters.apply is empty"]),
        (_with("generation", "prompt_template", "a photo"), ["generation.prompt_template", "must contain {label}"]),
        (_with("real_guidance", "prompt", "a photo"), ["real_guidance.prompt", "must contain {label}"]),
        (_with("da_fusion", "prompt", "a photo"), ["da_fusion.prompt", "must contain {token}"]),
        (_with("da_fusion", "resolution", 500), ["da_fusion.resolution", "multiple of 8"]),
        (_with("real_guidance", "resolution", 500), ["real_guidance.resolution", "multiple of 8"]),
    ],
)
def test_bad_params_name_file_and_key(tmp_path, doc, needles):
    with pytest.raises(ParamsError) as err:
        load_params(_write(tmp_path, doc))
    for needle in needles:
        assert needle in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "b.yaml"
    bad.write_text("run: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_relative_paths_resolve_against_the_params_folder(tmp_path, monkeypatch):
    f = _write(tmp_path, {**BASE, "models": {"captioner": "../m/blip", "clip": "openai/clip-vit-base-patch32",
                                               "classifier": "local-dir:./vit"}})
    monkeypatch.chdir("/")
    p = load_params(f)
    assert p.run.dir == (tmp_path / "runs/x").resolve()
    assert p.dataset.path == (tmp_path / "data").resolve()
    assert p.models.captioner == str((tmp_path.parent / "m/blip").resolve())
    assert p.models.clip == "openai/clip-vit-base-patch32"  # a hub id stays a hub id
    assert p.models.classifier == f"local-dir:{(tmp_path / 'vit').resolve()}"


def test_overrides_are_validated_like_the_file(tmp_path):
    f = _write(tmp_path, BASE)
    assert load_params(f, dict([parse_override("generation.strength=0.5")])).generation.strength == 0.5
    assert load_params(f, dict([parse_override("training.seeds=[4, 5]")])).training.seeds == [4, 5]
    with pytest.raises(ParamsError, match="generation.strength"):
        load_params(f, {"generation.strength": 2})
    with pytest.raises(ParamsError, match="expected key.path=value"):
        parse_override("generation.strength")


def test_environment_redirects_run_dir_but_explicit_overrides_win(tmp_path, monkeypatch):
    monkeypatch.setenv("SGID_RUN_DIR", str(tmp_path / "elsewhere"))
    f = _write(tmp_path, BASE)
    assert load_params(f).run.dir == tmp_path / "elsewhere"
    assert load_params(f, {"run.dir": str(tmp_path / "explicit")}).run.dir == tmp_path / "explicit"


@pytest.mark.parametrize("name", ["pets", "flowers"])
def test_shipped_profiles_hold_the_published_settings(name):
    """The report's numbers (its own remedies: prompt weights, k; f(s*) as it quotes the paper; strength, Adam at
    1e-4, ...) and our automatic reading of the report's hand pick as the selection rule."""
    p = load_params(REPO / "params" / f"{name}.yaml")
    g, t = p.generation, p.training
    assert p.dataset.source == name
    assert p.models.captioner == "Salesforce/blip-image-captioning-base"
    assert p.models.clip == "openai/clip-vit-base-patch32"
    assert p.models.diffusion == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert p.models.classifier == "vit_base_patch16_224.orig_in21k"
    assert (p.captioning.num_nucleus, p.captioning.num_beam) == (10, 10)
    assert (g.caption_weight, g.label_weight, g.strength, g.num_candidates) == (0.9, 1.5, 0.3, 3)
    assert g.guidance.coefficients == (-4.0, 2.0, 1.0)
    assert g.prompt_template == "{caption}. A picture of {label}"
    assert p.curation.upscale_threshold == 512 and p.curation.select == "most_similar"
    assert ((t.lr, t.cutmix_alpha, t.cutmix_prob, t.randaugment_num_ops, t.randaugment_magnitude)
            == (1e-4, 1.0, 0.5, 2, 9))
    assert t.sgid_proportions == [0.25, 0.5, 0.75, 1.0]
    assert len(t.seeds) >= 2
    paper = p.references.tables[0]
    assert set(paper.values) == {"Baseline", "CutMix", "RandAugment", "SGID (100%)"}
    expected = {"pets": 0.9338, "flowers": 0.9717}[name]
    assert paper.values["SGID (100%)"] == expected


def test_flowers_trains_on_train_and_validation_not_test():
    p = load_params(REPO / "params" / "flowers.yaml")
    assert p.dataset.train_splits == ["train", "validation"]
    assert p.dataset.test_split == "test"


def test_smoke_profile_is_offline():
    p = load_params(REPO / "params" / "smoke.yaml")
    for ref in p.models.model_dump().values():
        assert Path(ref.removeprefix("local-dir:")).is_absolute(), ref
    # every backbone a local folder the profile builds (tiny_backbones or models.classifier)
    for backbone in p.training.backbones:
        assert backbone.model.startswith("local-dir:/"), backbone.model
        assert backbone.name in p.smoke.tiny_backbones or backbone.model == p.models.classifier
    assert p.smoke.build_models and p.smoke.build_dataset
    compared = load_params(REPO / "params" / "smoke_methods.yaml").training.methods  # `make smoke` runs both
    assert len(p.training.seeds) >= 2 and set(p.training.methods) | set(compared) == set(METHOD_NAMES)
    assert {b.pretrained for b in p.training.backbones} == {True, False}  # from scratch and pretrained


def test_backbone_profiles_extend_the_data_sets_and_keep_the_vit_recipe():
    for name in ("pets", "flowers"):
        base, p = load_params(REPO / "params" / f"{name}.yaml"), load_params(REPO / "params" / f"{name}_backbones.yaml")
        assert not base.training.backbones  # models.classifier with training.* (Adam, constant 1e-4: the report's)
        assert p.run.reuse == base.run.dir and p.run.dir != base.run.dir
        vit, resnet, clip = backbones(p)
        implicit = backbones(base)[0]
        assert (vit.model, vit.optimizer, vit.lr, vit.schedule, vit.epochs, vit.batch_size) == (
            implicit.model, implicit.optimizer, implicit.lr, implicit.schedule, implicit.epochs, implicit.batch_size)
        assert (resnet.model, resnet.pretrained) == ("resnet50", False)
        assert clip.model == "vit_base_patch16_clip_224.laion2b" and clip.pretrained
        assert set(p.references.headline.gains) == {b.name for b in backbones(p)}
        assert {"sgid_cutmix", "sgid_randaugment"} <= set(p.training.methods)


def test_code_versions_make_older_outputs_stale(make_params, tmp_path):
    from sgid_utils.core.files import pin_fingerprint
    from sgid_utils.core.fingerprints import CODE_VERSIONS, fingerprint
    from sgid_utils.errors import StaleOutputsError

    params = make_params()
    for stage in ("captioning", "similarity", "generation", "upscaling", "curation", "training"):
        assert fingerprint(params, stage)["captioning.code_version"] == CODE_VERSIONS["captioning"]
    assert "captioning.code_version" not in fingerprint(params, "data")
    older = {k: v for k, v in fingerprint(params, "captioning").items() if k != "captioning.code_version"}
    file = tmp_path / "captioning" / "_params.json"
    pin_fingerprint(file, older, "captioning")  # a run dir captioned by the code before version 2
    with pytest.raises(StaleOutputsError, match="captioning.code_version: was None, now 2"):
        pin_fingerprint(file, fingerprint(params, "captioning"), "captioning")


def test_quick_profile_runs_the_pets_method_on_a_subset():
    """params/pets_quick.yaml: Pets' models, prompts, generation and training recipe; only the counts shrink."""
    from sgid_utils.params.backbones import configs
    from sgid_utils.preflight.projection import full_run_counts

    quick, full = (load_params(REPO / "params" / f"{name}.yaml") for name in ("pets_quick", "pets"))
    assert (quick.models, quick.captioning, quick.similarity, quick.generation) == (
        full.models, full.captioning, full.similarity, full.generation)
    assert quick.curation.model_copy(update={"error_analysis_sample": 5}) == full.curation
    assert quick.training.model_copy(update={"methods": full.training.methods, "seeds": full.training.seeds,
                                              "sgid_proportions": full.training.sgid_proportions,
                                              "eval_every": 1}) == full.training
    assert quick.dataset.max_per_class == 8 and quick.dataset.max_test_per_class is None  # the whole test split
    assert sorted(c.name for c in configs(quick)) == sorted(
        f"{m}_seed{s}" for m in ("baseline", "randaugment", "sgid100") for s in (0, 1, 2))
    assert full_run_counts(quick).train_images == 8 * 37
    assert quick.run.dir != full.run.dir
