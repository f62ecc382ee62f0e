import math
import os

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from sgid_utils.core import catalog
from sgid_utils.core.files import write_json
from sgid_utils.core.fingerprints import backbone_fingerprint, fingerprint
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.runner import run_stage
from sgid_utils.core.sharing import SHARED_STAGES, baselines, lenders, share_baselines, variant_params
from sgid_utils.errors import StageError
from sgid_utils.params.backbones import backbones
from sgid_utils.params.load import ParamsError, load_params
from sgid_utils.params.methods import idle_stages
from sgid_utils.preflight.projection import full_run_counts, variant_costs
from sgid_utils.stages import ablations

from .conftest import REPO, copy_stages, resnet_scratch_entry


def test_extends_merges_sections_over_the_base(tmp_path):
    for name in ("pets", "flowers"):
        p = load_params(REPO / "params" / f"{name}_ablations.yaml")
        base = load_params(REPO / "params" / f"{name}.yaml")
        assert p.generation == base.generation and p.run.dir == base.run.dir
        assert {a.name for a in p.ablations} >= {"label-only", "caption-only", "fixed-guidance",
                                                 "strength-0.2", "strength-0.5"}
        for a in p.ablations:  # every variant's overrides are valid params
            variant_params(p, a.name, a.set)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"run": {"name": "b", "dir": "r", "reports_dir": "q"},
                                                        "dataset": {"source": "pets"},
                                                        "generation": {"strength": 0.4}}))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({"extends": "base.yaml", "generation": {"num_candidates": 5}}))
    child = load_params(tmp_path / "child.yaml")
    assert (child.generation.strength, child.generation.num_candidates, child.run.name) == (0.4, 5, "b")
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ParamsError, match="extends"):
        load_params(tmp_path / "loop.yaml")


def test_bad_ablation_override_stops_before_any_work(make_params, tmp_path):
    params = make_params("abl-bad", ablations=[{"name": "x", "set": {"generation.strenght": 0.2}}])
    with pytest.raises(ParamsError, match="Did you mean 'strength'"):
        ablations.run(params)
    assert not RunDir.of(params).variant_root("x").exists()


def test_a_label_only_variant_reuses_upstream_and_reports_its_own_comparison(make_params, pipeline_run):
    params = make_params("abl", ablations=[{"name": "label-only", "set": {"generation.prompt": "label_only"}}])
    copy_stages(pipeline_run, params, "data", "captioning", "similarity", "training")
    table = ablations.run(params)
    variant = RunDir.of(variant_params(params, "label-only", {"generation.prompt": "label_only"}))
    assert all(os.path.islink(variant.stage(s)) for s in ("data", "captioning", "similarity"))
    # The Baseline does not depend on generation: the base run's models are reused, not retrained.
    assert all(os.path.islink(variant.config_dir(f"baseline_seed{s}")) for s in (0, 1))
    assert not os.path.islink(variant.config_dir("sgid100_seed0"))
    prompts = pd.read_parquet(catalog.path(variant, "manifest_raw")).prompt
    assert prompts.str.fullmatch(r"A picture of [A-Za-z ]+").all()
    row = table.set_index("Variant").loc["label-only"]
    assert row["Changes"] == "generation.prompt=label_only" and "(n=2)" in row["SGID (100%)"]
    assert catalog.path(RunDir.of(params), "ablations_md").exists()
    # the variant's own results stage
    assert catalog.path(variant, "significance").exists() and catalog.path(variant, "accuracy_md").exists()
    results = pd.read_parquet(catalog.path(variant, "training_results"))
    assert sorted(results.setting.unique()) == ["Baseline", "SGID (100%)"]


def test_a_variant_of_a_several_backbone_run_shares_the_first_backbones_baselines(make_params, pipeline_run,
                                                                                  tiny_backbones, assets):
    """Variants train the first backbone: its finished Baselines are linked while its recipe is the one they were made
    with; a reference table of another backbone stays with the base run."""
    entries = [{"name": "vit", "label": "ViT", "model": f"local-dir:{assets[0] / 'vit'}"},
               resnet_scratch_entry(tiny_backbones)]
    params = make_params("several", training={"backbones": entries, "methods": ["baseline"]},
                         results={"references": [{"label": "R", "source": "s", "values": {"Baseline": 0.5},
                                                  "backbone": "resnet"}]})
    copy_stages(pipeline_run, params, "data", "captioning", "similarity", "generation", "upscaling", "curation")
    run_stage("training", params)
    variant = variant_params(params, "label-only", {"generation.prompt": "label_only"})
    assert variant.references.tables == []
    assert share_baselines(params, variant) == ["vit-baseline_seed0", "vit-baseline_seed1"]
    other = variant_params(params, "other", {"generation.prompt": "label_only"})
    write_json(RunDir.of(params).backbone_fingerprint("vit"), {"lr": 1.0})  # as if the base had trained another recipe
    assert share_baselines(params, other) == []


def test_variants_on_the_same_subset_share_its_captions_and_baselines_with_one_or_two_processes(make_params,
                                                                                                monkeypatch):
    variants = [{"name": "s2", "set": {"dataset.max_per_class": 3, "generation.strength": 0.2}},
                {"name": "label", "set": {"generation.prompt": "label_only"}},
                {"name": "s5", "set": {"dataset.max_per_class": 3, "generation.strength": 0.5}}]
    one, two = make_params("one", ablations=variants), make_params("two", ablations=variants)
    runs = [variant_params(two, v["name"], v["set"]) for v in variants]
    lent = lenders(two, runs)  # no base run: s5 takes the subset, captions and Baselines from s2
    assert [lent[2][k] for k in ("data", "captioning", "similarity", "generation", "baselines")] == [0, 0, 0, None, 0]
    assert set(lent[1].values()) == {None}  # the label-only variant shares nothing with the subset runs
    # two processes (label beside s2, then s5 after s2) give the one-process run's links, tables and set metrics
    pd.testing.assert_frame_equal(ablations.run(one), ablations.run(two, jobs=2))
    assert catalog.load(one, "ablation_set_metrics").equals(catalog.load(two, "ablation_set_metrics"))
    for params in (one, two):
        first, second = (RunDir(RunDir.of(params).variant_root(n), RunDir.of(params).reports) for n in ("s2", "s5"))
        assert not os.path.islink(first.stage("captioning"))  # nothing made with the base data to share
        assert all(os.path.realpath(second.stage(s)) == str(first.stage(s).resolve())
                   for s in ("data", "captioning", "similarity"))
        assert all(os.path.realpath(second.config_dir(f"baseline_seed{s}"))
                   == str(first.config_dir(f"baseline_seed{s}").resolve()) for s in (0, 1))
        assert not os.path.islink(second.stage("generation"))

    monkeypatch.setenv("SGID_SHARD", "0/2")
    with pytest.raises(StageError, match="one process"):
        ablations.run(one)


def test_the_split_check_gives_each_difference_with_its_interval_and_says_what_it_cannot_show():
    from sgid_utils.stages.ablations import split_check

    flowers = load_params(REPO / "params" / "flowers.yaml")  # Paper 0.9570, report 0.9822
    cell = split_check(flowers, pd.Series({0: 0.9591, 1: 0.9601, 2: 0.9611}))
    # mean 0.9601, sample std 0.001, 3 seeds: half-width t(0.975, 2) * 0.001 / sqrt(3) = 0.25 points
    assert cell.startswith("Paper (Li et al. 2023) 95.70 %: +0.31 [+0.06, +0.56]; Reproduction report (Ho et al.) "
                           "98.22 %: -2.21 [-2.46, -1.96]")
    assert cell.endswith("cannot identify the report's protocol)")
    assert "nearest" not in cell and "nearer" not in cell
    assert split_check(load_params(REPO / "params" / "smoke.yaml").model_copy(
        update={"references": flowers.references.model_copy(update={"tables": []})}), pd.Series({0: 0.5})) == "–"


@pytest.mark.parametrize("profile", ["smoke_ablations.yaml", "pets_ablations.yaml", "flowers_ablations.yaml"])
def test_every_shipped_variant_is_valid_params_on_the_first_backbone(profile):
    """Variants are validated before any work; on the smoke profile (three backbones) each trains the first only."""
    params = load_params(REPO / "params" / profile)
    for ablation in params.ablations:
        variant = variant_params(params, ablation.name, ablation.set)
        assert len(backbones(variant)) == 1 and backbones(variant)[0].model == backbones(params)[0].model
        assert variant.training.methods == ["baseline", "sgid"]
        assert set(variant.smoke.tiny_backbones) <= {b.name for b in backbones(variant)}


def test_the_two_controls_equal_steps_and_a_second_draw(make_params, pipeline_run):
    """sgid-equal-steps trains SGID (100 %) for exactly its Baseline's steps; second-draw redraws captions, candidates
    and selection on the same data split, training seeds and Baselines. Both rows answer their question."""
    params = make_params("controls", ablations=[{"name": "sgid-equal-steps", "set": {"training.equal_steps": True}},
                                                {"name": "second-draw", "set": {"run.draw": 1}}])
    copy_stages(pipeline_run, params, "data", "captioning", "similarity", "generation", "upscaling", "curation",
                "training")
    table = ablations.run(params).set_index("Variant")
    base = RunDir.of(params)
    equal = variant_params(params, "sgid-equal-steps", {"training.equal_steps": True})
    draw = variant_params(params, "second-draw", {"run.draw": 1})
    n_real = int((pd.read_parquet(catalog.path(base, "images")).split == "train").sum())
    baseline_steps = math.ceil(n_real / params.training.batch_size) * params.training.epochs

    # Equal steps: the Baseline is the base run's model (linked), and SGID at 100 % stops at its step count, where the
    # base run's SGID at 100 % (twice the images, the same epochs) took about twice as many.
    results = catalog.load(equal, "training_results").set_index("config")
    assert all(os.path.islink(RunDir.of(equal).config_dir(f"baseline_seed{s}")) for s in (0, 1))
    assert all(os.path.islink(RunDir.of(equal).stage(s)) for s in ("data", "captioning", "generation", "curation"))
    assert results.steps.tolist() == [baseline_steps] * 4
    base_sgid = (catalog.load(params, "training_results").set_index("config")
                 .loc[["sgid100_seed0", "sgid100_seed1"], "steps"])
    assert (base_sgid > baseline_steps).all()

    # Second draw: same split (the data stage linked) and the same Baseline models; new captions and candidates.
    dr = RunDir.of(draw)
    assert os.path.islink(dr.stage("data")) and not os.path.islink(dr.stage("captioning"))
    for name in ("baseline_seed0", "baseline_seed1"):
        assert os.path.realpath(dr.config_dir(name)) == str(base.config_dir(name).resolve())
    first, second = (pd.read_parquet(catalog.path(r, "manifest_raw")).set_index(["image_id", "k"]) for r in (base, dr))
    assert set(second.index) == set(first.index)  # the same sources (the error-analysis sample is run.seed's)
    assert not set(first.seed) & set(second.seed)
    for key in first.index:
        a = np.asarray(Image.open(base.absolute(first.loc[key, "path"])), dtype=np.int16)
        b = np.asarray(Image.open(dr.absolute(second.loc[key, "path"])), dtype=np.int16)
        assert np.abs(a - b).max() > 0, f"candidate {key} is the same in both draws"
    caps = [pd.read_parquet(catalog.path(r, "captions")).query("decoding == 'nucleus'").caption.tolist()
            for r in (base, dr)]
    assert caps[0] != caps[1]
    assert catalog.load(draw, "training_results").query("method == 'sgid'").seed.tolist() == [0, 1]

    assert table.loc["sgid-equal-steps", "Control"].startswith("Does SGID's gain survive equal compute")
    assert table.loc["second-draw", "Control"].startswith("Does SGID's gain hold on a new generation draw?")


def test_the_controls_are_projected_with_the_stages_they_recompute():
    """Preflight's projection: the second draw pays captions, similarity, both generation passes and curation again;
    equal steps only its SGID runs, at the Baseline's image-epochs; both reuse the base run's Baselines."""
    params = load_params(REPO / "params" / "pets_ablations.yaml")
    variants = [(a.name, variant_params(params, a.name, a.set)) for a in params.ablations]
    costs = {c.name: c for c in variant_costs(params, variants)}
    counts = full_run_counts(params)
    n, epochs, seeds = counts.train_images, params.training.epochs, len(params.training.seeds)
    draw = costs["second-draw"]
    assert draw.items == {"captioning": n, "similarity": n, "generation": counts.raw_sources,
                          "upscaling": counts.small_sources, "curation": n, "training": seeds * 2 * n * epochs,
                          "results": 1}
    assert (draw.raw_pixels, draw.small_pixels) == (counts.raw_pixels, counts.small_pixels)
    equal = costs["sgid-equal-steps"]
    assert equal.items == {"training": seeds * n * epochs, "results": 1} and equal.raw_pixels == equal.small_pixels == 0
    assert costs["select-most-diverse-consistent"].items == {"curation": n, "training": seeds * 2 * n * epochs,
                                                             "results": 1}
    # The strength sweep's first variant makes its subset's data, captions and Baselines; the next ones link them.
    first, second = costs["strength-0.2"].items, costs["strength-0.3"].items
    assert {"data", "captioning"} <= set(first) and not {"data", "captioning", "similarity"} & set(second)
    assert first["training"] == 1.5 * second["training"]  # Baseline (n) + SGID (2n) against SGID alone


@pytest.mark.parametrize("profile", ["pets_ablations.yaml", "flowers_ablations.yaml", "smoke_ablations.yaml"])
def test_who_lends_a_variant_its_stages_agrees_with_the_projection(profile, tmp_path, assets):
    """``lenders`` from the base run's records (what ``run ablations`` links and waits for under --jobs) and from its
    params (what preflight's ``variant_costs`` projects) name the same stages as made by each variant itself, once the
    base run has made everything with its params."""
    file = REPO / "params" / profile
    if profile.startswith("smoke"):  # its image folder exists once a smoke run built it: the tests' own stands in
        file = tmp_path / profile
        file.write_text(yaml.safe_dump({"extends": str(REPO / "params" / profile), "dataset": {
            "path": str(assets[1] / "train"), "test_path": str(assets[1] / "test")}}))
    params = load_params(file, {"run.dir": str(tmp_path / "base")})
    have = RunDir.of(params)
    for stage in [*SHARED_STAGES, "training"]:
        write_json(have.fingerprint_file(stage), fingerprint(params, stage))
    first = backbones(params)[0]
    if first.name:
        write_json(have.backbone_fingerprint(first.name), backbone_fingerprint(first))
    for name in baselines(params):
        have.result(name).parent.mkdir(parents=True, exist_ok=True)
        have.result(name).write_text("{}")
    variants = [(a.name, variant_params(params, a.name, a.set)) for a in params.ablations]
    lent = lenders(params, [v for _, v in variants])
    for cost, mine, (_, variant) in zip(variant_costs(params, variants), lent, variants):
        idle = idle_stages(variant.training.methods)  # a compared method's stages that skip: they cost nothing
        assert {s for s in SHARED_STAGES if mine[s] is None} - idle == set(cost.items) - {"training", "results"}, \
            cost.name


@pytest.mark.parametrize("profile", ["smoke_ablations.yaml", "pets_ablations.yaml", "flowers_ablations.yaml"])
def test_every_profile_runs_both_controls_and_the_selection_hypothesis(profile):
    variants = {a.name: a.set for a in load_params(REPO / "params" / profile).ablations}
    assert variants["sgid-equal-steps"] == {"training.equal_steps": True}
    assert variants["second-draw"] == {"run.draw": 1}
    assert variants["select-most-diverse-consistent"] == {"curation.select": "most_diverse_consistent"}
    assert "select-most-similar" not in variants  # the default now


def test_the_ablation_table_corrects_its_variants_with_holm():
    """Each variant's own table holds one comparison; the ablation table's Holm column corrects over all its rows."""
    import pandas as pd
    from statsmodels.stats.multitest import multipletests

    from sgid_utils.reporting.stats import paired_difference
    from sgid_utils.reporting.tables import ABLATION_P_HOLM, ABLATION_SIGNIFICANT, ABLATION_SIGNIFICANT_HOLM
    from sgid_utils.stages.ablations import with_holm

    baseline = {0: 0.80, 1: 0.81, 2: 0.79, 3: 0.80}
    methods = [{0: 0.83, 1: 0.835, 2: 0.815, 3: 0.826}, {0: 0.81, 1: 0.815, 2: 0.80, 3: 0.804}, {0: 0.80, 1: 0.82}]
    sigs = [pd.Series({**paired_difference(m, baseline), "setting": f"v{i}", "baseline": "baseline"})
            for i, m in enumerate(methods)]
    rows = [{"Variant": f"v{i}", ABLATION_SIGNIFICANT: "x", "Control": "–"} for i in range(3)]
    table = with_holm(rows, sigs)
    determined = [s.p_value for s in sigs[:2]]
    expected = multipletests(determined + [1.0], method="holm")[1][:2]
    assert [float(p) for p in table[ABLATION_P_HOLM][:2]] == pytest.approx(expected, rel=1e-2)
    assert table[ABLATION_P_HOLM][2] == "–"
    assert table[ABLATION_SIGNIFICANT_HOLM][2].startswith("undetermined (2 seeds")
    columns = table.columns.tolist()
    assert columns.index(ABLATION_SIGNIFICANT_HOLM) == columns.index(ABLATION_SIGNIFICANT) + 1
