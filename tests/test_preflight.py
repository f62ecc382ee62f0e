"""Preflight: the checks, the canary on the tiny models, and the projection arithmetic by hand."""

from __future__ import annotations

import re
import time
from dataclasses import replace

import pandas as pd
import pytest

from sgid_utils.cli import main
from sgid_utils.core import catalog, registry
from sgid_utils.core.files import read_table
from sgid_utils.core.registry import STAGES, Stage
from sgid_utils.core.rundir import RunDir
from sgid_utils.params.backbones import configs
from sgid_utils.params.load import load_params
from sgid_utils.preflight.checks import check_versions
from sgid_utils.preflight.command import _canary_items, _train_rows, canary_params, preflight
from sgid_utils.preflight.projection import (
    OTHER_BYTES_STAGES,
    Counts,
    checkpoint_bytes,
    disk_need_bytes,
    full_run_counts,
    image_epochs,
    image_epochs_by_backbone,
    project_seconds,
    train_seconds_by_backbone,
)

from .conftest import REPO, resnet_scratch_entry


def _failed(report) -> dict[str, str]:
    return {c.name: c.line for c in report.checks if not c.ok}


def disk_need(report) -> float:
    """The bytes the disk check says a full run needs ('needs ~1.2 MiB ...')."""
    detail = next(c.detail for c in report.checks if c.name == "disk for the full run")
    number, unit = re.search(r"needs ~([\d.]+) (MiB|GiB)", detail).groups()
    return float(number) * 2 ** (20 if unit == "MiB" else 30)


# The canary keeps the run's settings; fewer denoising steps keep this test's canary to seconds.
FAST = {"generation": {"num_inference_steps": 4, "num_candidates": 2}}


def test_smoke_preflight_passes_offline_with_canary(make_params):
    """The canary, the projection, and a row per ablation variant: the second draw pays for captions and both generation
    passes again, equal steps only for its SGID training."""
    params = make_params(**FAST, ablations=[{"name": "sgid-equal-steps", "set": {"training.equal_steps": True}},
                                            {"name": "second-draw", "set": {"run.draw": 1}}])
    report = preflight(params)
    assert report.ok, "\n".join(c.line for c in report.checks)
    stages = [r["stage"] for r in report.rows]
    assert stages[:10] == ["data", "captioning", "similarity", "generation", "upscaling", "real_guidance", "inversion",
                           "da_fusion", "curation", "training"]
    methods = ["method SGID", "method Real Guidance", "method DA-Fusion", "method DA-Fusion (its recipe)"]
    assert stages[-8:] == ["total (make reproduce, without ablations)", *methods, "ablation sgid-equal-steps",
                           "ablation second-draw", "total with the ablation variants"]
    rows = {r["stage"]: r for r in report.rows}
    # each compared method: its own stages, their full-run items and the sum of their projected seconds
    assert rows["method Real Guidance"]["expected"] == rows["real_guidance"]["expected"]
    items = rows["real_guidance"]["full-run items"]
    assert rows["method Real Guidance"]["basis"] == f"its stages: real_guidance ({items:,}); already in the total above"
    assert "inversion (" in rows["method DA-Fusion"]["basis"] and "da_fusion (" in rows["method DA-Fusion"]["basis"]
    assert rows["ablation sgid-equal-steps"]["basis"].startswith("computes training (")
    draw = rows["ablation second-draw"]["basis"]
    assert all(f"{s} (" in draw
               for s in ("captioning", "similarity", "generation", "upscaling", "curation", "training"))
    assert any(c.name == "disk for the full run" and c.ok for c in report.checks)
    text = RunDir.of(params).preflight_report.read_text()
    assert "✓ canary" in text and "| generation" in text
    assert not RunDir.of(params).root.exists(), "the canary must not write into the user's run directory"
    canary = RunDir.of(params).canary
    assert catalog.path(canary, "images").exists() and list(canary.stage("training").glob("*/result.json"))


def test_canary_params_shrink_the_run(make_params):
    params = make_params()
    canary = canary_params(params)
    assert canary.dataset.max_per_class == 2 and canary.dataset.max_test_per_class == 2
    assert canary.training.seeds == [0] and canary.training.epochs == 1 and canary.training.sgid_proportions == [1.0]
    assert canary.training.methods == params.training.methods
    assert RunDir.of(canary).root == RunDir.of(params).canary.root != RunDir.of(params).root


def test_projection_formula_by_hand(make_params):
    counts = Counts(train_images=100, raw_sources=40, small_sources=70, raw_pixels=40 * 250_000,
                    small_pixels=70 * 100_000, train_image_epochs=3_000, source="hand")
    seconds = project_seconds({"data": 2.0, "captioning": 0.5, "generation": 3.0, "upscaling": 2.0,
                               "training": 0.01}, counts)
    assert seconds == {"data": 2.0, "captioning": 50.0, "generation": 120.0, "upscaling": 140.0, "training": 30.0}
    assert checkpoint_bytes(1_000_000) == 12_000_000  # 4 bytes x (weights + 2 Adam moments)
    # 1.5 B/px x 3 candidates x (10 M + 7 M px) = 76.5 MB; + 12 MB checkpoint; + 100 images x 1 kB
    assert (disk_need_bytes(1.5, 3, counts.raw_pixels, counts.small_pixels, 1_000_000, 1_000, 100)
            == 76_500_000 + 12_000_000 + 100_000)
    # Training images per configuration: baseline 10; SGID 50 % adds 5, 100 % adds 10 (one curated image per source);
    # times the epochs (training.epochs: 1 here).
    params = make_params(training={"methods": ["baseline", "sgid"], "seeds": [0], "sgid_proportions": [0.5, 1.0]})
    assert image_epochs(params, 10) == [10, 15, 20]
    # Each backbone its own epochs: 2 for the first, training.epochs (1) for the second.
    two = make_params("two", training={"methods": ["baseline", "sgid"], "seeds": [0], "sgid_proportions": [1.0],
                                       "backbones": [
                                           {"name": "a", "model": "resnet50", "pretrained": False, "epochs": 2},
                                           {"name": "b", "model": "resnet50", "pretrained": False}]})
    assert image_epochs(two, 10) == [20, 40, 10, 20]


def test_counts_from_split_sizes():
    params = load_params(REPO / "params/pets.yaml")
    counts = full_run_counts(params)
    assert counts.train_images == 3680 and counts.small_sources == 3312  # 90 % assumed small
    assert counts.raw_sources == 3680 - 3312 + 5 * 37
    # 6 methods: 3 plain x 3680 + SGID 25/50/75/100 % + filtered 100 % + size-matched 100 % (counted at the
    # unfiltered size: an upper bound), 3 seeds, 10 epochs
    extra = sum(int(p * 3680 + 0.5) for p in (0.25, 0.5, 0.75, 1.0, 1.0, 1.0))
    assert counts.train_image_epochs == 10 * 3 * (9 * 3680 + extra)
    flowers = full_run_counts(load_params(REPO / "params/flowers.yaml"))
    assert flowers.train_images == 2040 and flowers.small_sources == 2040 and flowers.raw_sources == 510


def test_uncached_hub_id_fails_fast_offline(make_params):
    params = make_params()
    params.models.clip = "openai/clip-vit-base-patch32"  # never downloaded: conftest points HF_HOME at an empty folder
    start = time.perf_counter()
    report = preflight(params)
    assert time.perf_counter() - start < 15, "an offline check must not wait on the network"
    failed = _failed(report)
    assert list(failed) == ["models.clip"]
    assert ("openai/clip-vit-base-patch32" in failed["models.clip"]
            and "hf download openai/clip-vit-base-patch32" in failed["models.clip"])
    assert not report.rows and not RunDir.of(params).root.exists()
    assert not RunDir.of(params).canary.root.exists(), "no stage may start after a failed check"


def test_uncached_hub_dataset_names_repo_type(make_params):
    params = make_params(dataset={"source": "pets", "path": None, "test_path": None})
    failed = _failed(preflight(params, canary=False))
    assert "hf download timm/oxford-iiit-pet --repo-type dataset" in failed["dataset"]


def test_unwritable_run_dir_and_full_disk_are_lines_not_tracebacks(make_params, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    params = make_params("unwritable", run={"dir": str(blocker / "run")})
    failed = _failed(preflight(params))
    assert list(failed) == ["run.dir writable"] and "cannot write" in failed["run.dir writable"]

    roomy = make_params("full-disk")
    code = main(["preflight", "--params", str(roomy.source_file), "--set", "run.min_free_gb=1000000"])
    out = capsys.readouterr()
    assert code == 1 and "Traceback" not in out.err + out.out
    assert "✗ free disk" in out.out and "run.min_free_gb 1e+06" in out.out and "fix:" in out.out
    assert not RunDir.of(roomy).root.exists()


def test_version_mismatch_is_a_warning(tmp_path):
    pins = tmp_path / "constraints.txt"
    pins.write_text("# comment\npytest==0.0.1\nnot-a-package-sgid==1.0\n")
    check = check_versions(pins)
    assert (check.ok and "0/2" in check.detail and "pytest" in check.detail
            and "not-a-package-sgid not installed" in check.detail)


def test_cli_no_canary_passes_and_starts_nothing(make_params, capsys):
    params = make_params()
    assert main(["preflight", "--params", str(params.source_file), "--no-canary"]) == 0
    out = capsys.readouterr().out
    assert "✓ models.clip" in out and "✗" not in out and "## Projection" not in out
    assert not RunDir.of(params).root.exists() and not RunDir.of(params).canary.root.exists()
    assert RunDir.of(params).preflight_report.read_text().startswith("# Preflight")


def test_a_colab_run_dir_outside_drive_is_flagged():
    from pathlib import Path

    from sgid_utils.preflight.checks import check_persistent

    assert not check_persistent(Path("/content/runs/pets")).ok
    assert "drive.mount" in check_persistent(Path("/content/runs/pets")).fix
    assert check_persistent(Path("/content/drive/MyDrive/sgid/pets")).ok
    assert check_persistent(Path("/tmp/runs/pets")).ok


def test_a_reuse_profile_projects_only_what_it_recomputes(make_params, pipeline_run, tmp_path):
    """run.reuse: the stages it links cost nothing in the projection; an unfinished run to reuse is a ✗ line."""
    base = str(RunDir.of(pipeline_run).root)
    report = preflight(make_params("reuse-preflight", run={"reuse": base}, training={"methods": ["baseline", "sgid"]}))
    assert report.ok, "\n".join(c.line for c in report.checks)
    reuse = next(c for c in report.checks if c.name == "run.reuse")
    assert reuse.detail == f"data, captioning, similarity, generation, upscaling, curation linked from {base}"
    rows = {r["stage"]: r for r in report.rows}
    for stage in ("data", "captioning", "similarity", "generation", "upscaling", "curation"):
        assert rows[stage]["expected"] == "0.0 s" and rows[stage]["basis"].startswith("linked from run.reuse")
        assert rows[stage]["measured s/item"] > 0  # the canary still ran it: measured, then not counted
    assert rows["training"]["expected"] != "0.0 s" and "the run's data table" in rows["training"]["basis"]
    # Nor do their files count in the disk need: the same run without run.reuse writes its images and tables too.
    alone = preflight(make_params("reuse-alone", training={"methods": ["baseline", "sgid"]}))
    assert disk_need(report) < disk_need(alone)

    other = preflight(make_params("reuse-other", run={"reuse": base}, generation={"strength": 0.5}), canary=False)
    assert next(c for c in other.checks if c.name == "run.reuse").detail == (
        "data, captioning, similarity linked from " + base + "; made there with other params, so run here: "
        "generation, upscaling, curation")

    missing = make_params("reuse-missing", run={"reuse": str(tmp_path / "nowhere")})
    failed = _failed(preflight(missing))
    assert list(failed) == ["run.reuse"] and "not finished" in failed["run.reuse"] and "fix:" in failed["run.reuse"]
    assert not RunDir.of(missing).canary.root.exists(), "no stage may start after a failed check"


def test_the_controlnet_is_checked_only_where_a_stage_loads_it(make_params):
    missing = "lllyasviel/not-downloaded"
    plain = make_params("cn-unused")
    plain.models.controlnet = missing
    assert "models.controlnet" not in _failed(preflight(plain, canary=False))
    used = make_params("cn-used", generation={"generator": "controlnet"})
    used.models.controlnet = missing
    assert f"hf download {missing}" in _failed(preflight(used, canary=False))["models.controlnet"]
    variant = make_params("cn-variant", ablations=[{"name": "cn", "set": {"generation.generator": "controlnet"}}])
    variant.models.controlnet = missing
    assert "models.controlnet" in _failed(preflight(variant, canary=False))


def test_each_backbone_is_projected_at_its_own_measured_rate(make_params, tiny_backbones, assets):
    entries = [{"name": "vit", "label": "ViT", "model": f"local-dir:{assets[0] / 'vit'}"},
               {**resnet_scratch_entry(tiny_backbones), "epochs": 3}]
    params = make_params("per-backbone",
                         training={"backbones": entries, "methods": ["baseline", "sgid"], "seeds": [0]}, **FAST)
    report = preflight(params)
    assert report.ok, "\n".join(c.line for c in report.checks)
    rows = {r["stage"]: r for r in report.rows}
    assert "training" not in rows
    vit, resnet = rows["train: ViT"], rows["train: ResNet (scratch)"]
    n = full_run_counts(params).train_images  # counted from the image folder, as the projection counts it
    assert (vit["full-run items"], resnet["full-run items"]) == tuple(image_epochs_by_backbone(params, n).values())
    assert resnet["full-run items"] == 3 * vit["full-run items"]  # 3 epochs against 1
    # The canary's train seconds, split by the runs' own epoch seconds, add back up to what the canary measured ...
    canary = canary_params(params)
    split = train_seconds_by_backbone(canary, 10.0)
    assert sum(split.values()) == pytest.approx(10.0) and set(split) == {"vit", "resnet"}
    measured = {b: sum(read_table(catalog.path(RunDir.of(canary), "metrics", config=c.name)).seconds.sum()
                       for c in configs(canary) if c.backbone == b)
                for b in split}
    assert split["vit"] / split["resnet"] == pytest.approx(measured["vit"] / measured["resnet"])
    # ... and each backbone's row projects its own share at its own rate, not the mean rate of all.
    counts = full_run_counts(params)
    rows = {r["stage"]: r["seconds"] for r in _train_rows(params, canary, 10.0, counts, "basis")}
    n_canary = int((read_table(catalog.path(RunDir.of(canary), "images")).split == "train").sum())
    canary_items, full_items = image_epochs_by_backbone(canary, n_canary), image_epochs_by_backbone(params, n)
    assert rows == pytest.approx({
        "train: ViT": split["vit"] / canary_items["vit"] * full_items["vit"],
        "train: ResNet (scratch)": split["resnet"] / canary_items["resnet"] * full_items["resnet"]})


def _images(n_per_class: int, classes: int, side: int) -> pd.DataFrame:
    """A data stage's table by hand: ``n_per_class`` training images of ``side`` px per class, and one test image."""
    rows = [{"image_id": f"train_{c:03d}_{i:05d}", "split": "train", "label": c, "width": side, "height": side}
            for c in range(classes) for i in range(n_per_class)]
    rows += [{"image_id": f"test_{c:03d}", "split": "test", "label": c, "width": side, "height": side}
             for c in range(classes)]
    return pd.DataFrame(rows)


def test_every_stage_is_counted_in_its_registry_unit():
    """Preflight counts each registered stage by its declared unit: a stage with a unit nobody counts fails here."""
    params = load_params(REPO / "params/pets.yaml")
    counts = full_run_counts(params)
    per_unit = {"once": 1, "per training image": counts.train_images, "per raw source": counts.raw_sources,
                "per small source": counts.small_sources, "per image-epoch": counts.train_image_epochs}
    for stage in STAGES:
        expected = counts.methods[stage.name] if stage.name in counts.methods else per_unit[stage.unit]
        assert counts.items(stage.name) == expected, stage.name
    assert set(OTHER_BYTES_STAGES) <= {s.name for s in STAGES if s.folder}


def test_a_new_stage_is_derived_from_its_registry_line(monkeypatch):
    """The recipe 'add a stage': one registry line (its reads, writes, keys, folder, unit); its upstream, whether an
    ablation variant runs it, and preflight's canary and full-run item counts follow from it."""
    new = Stage("sharpness", "04_curation", ("images", "curated"), ("sharpness",), ("curation",),
                "curation/sharpness", "per training image")
    train = replace(registry.get("training"), reads=(*registry.get("training").reads, "sharpness"))
    stages = tuple(new if s.name == "training" else s for s in registry.STAGES)
    stages = (*stages[:stages.index(new)], new, train, *stages[stages.index(new) + 1:])
    monkeypatch.setattr(registry, "STAGES", stages)
    monkeypatch.setattr(registry, "NAMES", [s.name for s in stages])
    monkeypatch.setattr(registry, "BY_NAME", {s.name: s for s in stages})
    assert new.upstream == ("curation",) and "sharpness" in registry.get("training").upstream
    assert "sharpness" in [s.name for s in registry.ablation_stages()]
    params = load_params(REPO / "params/smoke.yaml")
    images = _images(5, 3, 64)
    assert full_run_counts(params, images).items("sharpness") == 15
    assert _canary_items(canary_params(params), "sharpness", images) == 15
