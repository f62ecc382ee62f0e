import os

import pandas as pd
import pytest
import yaml

from sgid_utils.ablations import run_ablations, variant_params
from sgid_utils.params import ParamsError, load_params
from sgid_utils.pipeline import StageError

from .conftest import REPO


def test_extends_merges_sections_over_the_base(tmp_path):
    for name in ("pets", "flowers"):
        p = load_params(REPO / "params" / f"{name}_ablations.yaml")
        base = load_params(REPO / "params" / f"{name}.yaml")
        assert p.generation == base.generation and p.run.dir == base.run.dir
        assert {a.name for a in p.ablations} >= {"label-only", "caption-only", "fixed-guidance", "strength-0.2", "strength-0.5"}
        for a in p.ablations:  # every variant's overrides are valid params
            variant_params(p, a.name, a.set)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"run": {"name": "b", "dir": "r", "reports_dir": "q"},
                                                        "dataset": {"source": "pets"}, "generation": {"strength": 0.4}}))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({"extends": "base.yaml", "generation": {"num_candidates": 5}}))
    child = load_params(tmp_path / "child.yaml")
    assert (child.generation.strength, child.generation.num_candidates, child.run.name) == (0.4, 5, "b")
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ParamsError, match="extends"):
        load_params(tmp_path / "loop.yaml")


def test_bad_ablation_override_stops_before_any_work(make_params, tmp_path):
    params = make_params("abl-bad", ablations=[{"name": "x", "set": {"generation.strenght": 0.2}}])
    with pytest.raises(ParamsError, match="Did you mean 'strength'"):
        run_ablations(params)
    assert not (tmp_path / "abl-bad" / "run-x").exists()


def test_a_label_only_variant_reuses_upstream_and_reports_its_own_comparison(make_params, pipeline_run):
    import shutil

    params = make_params("abl", ablations=[{"name": "label-only", "set": {"generation.prompt": "label_only"}}])
    for stage in ("data", "captions", "similarity", "training"):
        shutil.copytree(pipeline_run.run.dir / stage, params.run.dir / stage)
    table = run_ablations(params)
    variant = params.run.dir.with_name(params.run.dir.name + "-label-only")
    assert all(os.path.islink(variant / s) for s in ("data", "captions", "similarity"))
    # The Baseline does not depend on generation: the base run's models are reused, not retrained.
    assert all(os.path.islink(variant / "training" / f"baseline_seed{s}") for s in (0, 1))
    assert not os.path.islink(variant / "training" / "sgid100_seed0")
    prompts = pd.read_parquet(variant / "generation" / "raw" / "manifest.parquet").prompt
    assert prompts.str.fullmatch(r"A picture of [A-Za-z ]+").all()
    row = table.set_index("Variant").loc["label-only"]
    assert row["Changes"] == "generation.prompt=label_only" and "(n=2)" in row["SGID (100%)"]
    assert (params.run.reports_dir / "tables" / "ablations.md").exists()
    results = pd.read_parquet(variant / "training" / "results.parquet")
    assert sorted(results.setting.unique()) == ["Baseline", "SGID (100%)"]


def test_variants_on_the_same_subset_share_its_captions_and_baselines(make_params, monkeypatch):
    params = make_params("subset", ablations=[
        {"name": "s2", "set": {"dataset.max_per_class": 3, "generation.strength": 0.2}},
        {"name": "s5", "set": {"dataset.max_per_class": 3, "generation.strength": 0.5}},
    ])
    run_ablations(params)
    first, second = (params.run.dir.with_name(f"{params.run.dir.name}-{n}") for n in ("s2", "s5"))
    assert not os.path.islink(first / "captions")  # nothing made with the base data to share
    assert all(os.path.realpath(second / s) == str((first / s).resolve()) for s in ("data", "captions", "similarity"))
    assert all(os.path.realpath(second / "training" / f"baseline_seed{s}") == str((first / "training" / f"baseline_seed{s}").resolve())
               for s in (0, 1))
    assert not os.path.islink(second / "generation")

    monkeypatch.setenv("SGID_SHARD", "0/2")
    with pytest.raises(StageError, match="one process"):
        run_ablations(params)
