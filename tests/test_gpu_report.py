"""bench/gpu_report.py end to end at tiny size on the CPU, so that the one-command GPU measurement cannot rot unnoticed
between the rare runs on a GPU: the same code path, every section written, and every figure consistent with the
measurements it is made of (rates with their times, speedups with their rates, projections with preflight's
arithmetic on the report's own rates)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # bench/ is scripts, not a package: import them as `python bench/x.py` does

from gpu_report import PROFILES, largest_batch  # noqa: E402 - importable only once bench/ is on sys.path (above)

from sgid_utils.params.backbones import backbones  # noqa: E402
from sgid_utils.params.load import load_params  # noqa: E402
from sgid_utils.params.methods import AUGMENTATIONS, BY_METHOD  # noqa: E402
from sgid_utils.preflight.projection import full_run_counts, hms, project_seconds  # noqa: E402
from sgid_utils.reporting.comparison import (  # noqa: E402
    PER_HOUR,
    PROJECTED,
    PROJECTED_FOR,
    PROJECTION_BASIS,
    TEST_P,
    shown,
)
from sgid_utils.reporting.costs import projected, projection  # noqa: E402

# Written out here, not read from gpu_report.SECTIONS: a section dropped there must fail this test.
SECTIONS = (
    "Setup",
    "Summary",
    "Generation: img2img",
    "Generation: ControlNet",
    "Generation: where the time goes",
    "Generation: the stage on mixed sizes",
    "Generation: SDPA backends",
    "Captioning and similarity",
    "Captioning against batch size",
    "Training",
    "Training: the stage's loader and concurrent jobs",
    "Compared methods: Real Guidance and DA-Fusion",
    "Peak memory and largest batch",
    "Variants: channels_last and torch.compile",
    "Projected wall-clock",
)
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    out = tmp_path_factory.mktemp("gpu") / "gpu_report.md"
    proc = subprocess.run(
        [
            sys.executable,
            "bench/gpu_report.py",
            "--size",
            "tiny",
            "--device",
            "cpu",
            "--channels-last",
            "--no-compile",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env={**os.environ, **OFFLINE},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    trace = out.with_name(f"{out.stem}_trace.json")  # the profiler trace of one generation loop, beside the report
    assert json.loads(trace.read_text())["traceEvents"]
    return out.read_text(), json.loads(out.with_suffix(".json").read_text())


def sections(text: str) -> dict[str, str]:
    parts = text.split("\n## ")[1:]
    return {p.split("\n", 1)[0]: p.split("\n", 1)[1] for p in parts}


def test_every_section_is_measured(tiny_report: tuple[str, dict]) -> None:
    found = sections(tiny_report[0])
    assert list(found) == list(SECTIONS)
    for title, body in found.items():
        assert "Not reached" not in body and "**Failed**" not in body, f"{title}: {body[:2000]}"


def positive(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_generation_rates_agree_with_each_other(tiny_report: tuple[str, dict]) -> None:
    """Speedup = batched / per-image; the floor fraction = rate x FLOPs per image / peak; batched images equal the
    per-image path's within the recorded tolerance."""
    numbers = tiny_report[1]
    peak = numbers["setup"]["peak_tflops"]
    for kind in ("img2img", "controlnet"):
        for size in ("64x64", "96x64"):
            row = numbers[f"{kind} {size}"]
            assert positive(row["per_image_img_s"]) and positive(row["batched_img_s"]), row
            assert row["speedup"] == pytest.approx(row["batched_img_s"] / row["per_image_img_s"])
            for path in ("per_image", "batched"):
                rate = row[f"{path}_img_s"]
                assert row[f"floor_fraction_{path}"] == pytest.approx(rate * row["tflop_per_image"] / peak)
            assert row["unet_steps"] == 4  # 10 steps at strength 0.3 (the tiny plan): 3, and PNDM adds one
            assert 0 <= row["max_abs_diff"] <= row["tolerance"] <= 1 / 255 + 1e-9, (kind, size, row)


def test_training_covers_every_profile_backbone(tiny_report: tuple[str, dict]) -> None:
    """One row per distinct backbone model the profiles name (read from the params files), each epoch = the split's
    images at the measured rate."""
    models = {bb.model for path in PROFILES for bb in backbones(load_params(Path(ROOT, path)))}
    trained = {k.removeprefix("train "): v for k, v in tiny_report[1].items() if k.startswith("train ")}
    assert set(trained) == models
    for row in trained.values():
        assert positive(row["train_img_s"]) and positive(row["test_img_s"]), row
        assert row["epoch_s_pets"] * row["train_img_s"] == pytest.approx(3680)  # Pets' trainval split
        assert row["epoch_s_flowers"] * row["train_img_s"] == pytest.approx(2040)  # Flowers' train + val


def test_variants_and_sdpa_backends(tiny_report: tuple[str, dict]) -> None:
    numbers = tiny_report[1]
    assert positive(numbers["variant channels_last"]["batched_img_s"])
    assert numbers["variant channels_last"]["max_abs_diff"] < 1e-4  # equal within the batched path's fp32 tolerance
    assert numbers["variant channels_last"]["graphs_first_call"] == 0  # nothing compiled without torch.compile
    backends = {k.removeprefix("sdpa "): v for k, v in numbers.items() if k.startswith("sdpa ")}
    assert set(backends) == {"default", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH", "CUDNN_ATTENTION"}
    assert backends["MATH"]["available"]  # the reference kernel runs everywhere, and gives the same images
    for name, row in backends.items():
        if row.get("available", True):
            assert positive(row["batched_img_s"]) and row["max_abs_diff"] < 1e-4, name
    text = sections(tiny_report[0])["Generation: SDPA backends"]
    unavailable = [n for n, row in backends.items() if not row.get("available", True)]
    assert all(f"| {n} | unavailable on cpu" in text for n in unavailable), text


def test_stage_level_generation_and_training(tiny_report: tuple[str, dict]) -> None:
    """The stages' own runs: rates are what their counts and times give, no busy share without CUDA, the same work
    for every training.jobs value, captions independent of the batch size."""
    numbers = tiny_report[1]
    stage = numbers["generate stage"]
    assert stage["candidates"] == 3 * stage["sources"] == 18  # k = 3 for 3 classes x 2 made-up images
    assert stage["img_s"] * stage["seconds"] == pytest.approx(stage["candidates"])
    assert stage["gpu_busy"] is None  # no GPU here: n/a, not a made-up share
    assert "n/a (no CUDA)" in sections(tiny_report[0])["Generation: the stage on mixed sizes"]
    jobs = numbers["training jobs"]
    assert list(jobs) == ["1", "2"]
    assert {row["image_epochs"] for row in jobs.values()} == {2 * 6}  # 2 configurations x 1 epoch x 6 images
    for row in jobs.values():
        assert row["img_s"] * row["seconds"] == pytest.approx(row["image_epochs"])
    loader = numbers["training loader"]
    assert loader["images"] == 6 and loader["workers"] == 0  # the stage's loader runs no workers on the CPU
    assert all(positive(loader[k]) for k in ("loader_img_s", "in_memory_img_s", "decode_img_s"))
    by_batch = numbers["captioning by batch"]
    assert list(by_batch) == ["1", "2"]
    for row in by_batch.values():
        assert row["img_s"] * row["seconds"] == pytest.approx(row["images"]) and row["same_captions"]


def test_time_split_batch_curve_and_trace(tiny_report: tuple[str, dict]) -> None:
    """The chunk's phases (each a positive time), img/s at every batch size of the curve, and the trace file."""
    numbers = tiny_report[1]
    split = numbers["time split"]
    for phase in ("VAE encode", "UNet steps", "VAE decode"):
        assert split[phase] > 0, phase
    assert any(name.startswith("prompt encoding") for name in split)
    assert any(name.startswith("resize back + PNG") for name in split) and split["writer_threads_s"] > 0
    assert list(numbers["img/s by batch"]) == ["1", "2", "4"]
    assert all(positive(r) for r in numbers["img/s by batch"].values())
    assert numbers["profiled loop"]["gpu_busy"] is None  # no GPU here: n/a, not a made-up share
    text = sections(tiny_report[0])["Generation: where the time goes"]
    assert numbers["profiled loop"]["trace"] in text


def test_projection_covers_each_profile(tiny_report: tuple[str, dict]) -> None:
    rows = tiny_report[1]["projection"]
    totals = [r["profile"] for r in rows if "total" in r["stage"]]
    assert totals == ["pets", "flowers", "pets_backbones", "flowers_backbones", "pets_quick"]
    assert set(tiny_report[1]["t4_projection_s"]) == set(totals)
    linked = [r for r in rows if r["profile"] == "pets_backbones"]
    assert [r["projected"] for r in linked if r["stage"] == "generation"] == [
        "0"
    ]  # linked from the main run by run.reuse
    listed = backbones(load_params(ROOT / "params/pets_backbones.yaml"))
    assert sum(r["stage"].startswith("train: ") for r in linked) == len(listed)


def test_projection_is_preflights_arithmetic_on_the_reported_rates(tiny_report: tuple[str, dict]) -> None:
    """params/pets.yaml's stage rows recomputed here with preflight's functions from the JSON's rates."""
    numbers = tiny_report[1]
    params = load_params(ROOT / "params/pets.yaml")
    k = params.generation.num_candidates
    kind = "controlnet" if params.generation.generator == "controlnet" else "img2img"
    per_item = {"captioning": 1 / numbers["captioning"]["batched_img_s"],
                "similarity": 1 / numbers["similarity"]["batched_img_s"],
                "generation": k / numbers[f"{kind} 64x64"]["batched_img_s"],
                "upscaling": k / numbers[f"{kind} 96x64"]["batched_img_s"]}
    expected = {stage: hms(s) for stage, s in project_seconds(per_item, full_run_counts(params)).items()}
    rows = {r["stage"]: r["projected"] for r in numbers["projection"] if r["profile"] == params.run.name}
    assert {stage: rows[stage] for stage in expected} == expected


def test_largest_batch_doubles_until_out_of_memory() -> None:
    cpu = torch.device("cpu")

    def fits_below_8(batch: int) -> None:
        if batch >= 8:
            raise torch.OutOfMemoryError(f"no room for {batch}")

    assert largest_batch(fits_below_8, 1, 64, cpu)[0] == "4 (8 ran out of memory)"
    assert largest_batch(fits_below_8, 8, 64, cpu)[0] == "none from 8 (8 ran out of memory)"
    assert largest_batch(lambda batch: None, 2, 16, cpu)[0] == ">= 16 (the search's cap)"
    assert (
        largest_batch(lambda batch: None, 128, 64, cpu)[0] == ">= 128 (the search's cap)"
    )  # a start above the cap runs once


def test_the_compared_methods_own_work_is_measured(tiny_report: tuple[str, dict]) -> None:
    """Real Guidance at its strength, DA-Fusion at each strength of its set (more UNet steps: slower), and the
    textual-inversion loop: positive rates in the JSON, at the methods' default settings."""
    numbers = tiny_report[1]
    rg, daf, inversion = numbers["real_guidance"], numbers["da_fusion"], numbers["inversion"]
    assert (rg["strength"], rg["guidance_scale"], rg["steps"], rg["unet_steps"]) == (0.5, 7.5, 50, 26)
    assert rg["img_s"] > 0 and inversion["steps_s"] > 0 and inversion["batch_size"] == 4
    assert inversion["class_s"] == pytest.approx(1000 / inversion["steps_s"])
    rates = [daf["by_strength"][s] for s in ("0.25", "0.5", "0.75", "1.0")]
    assert all(r > 0 for r in rates) and daf["img_s"] == pytest.approx(4 / sum(1 / r for r in rates))
    assert "UNet steps per image" in sections(tiny_report[0])["Compared methods: Real Guidance and DA-Fusion"]


def _report_file(tiny_report: tuple[str, dict], tmp_path: Path) -> Path:
    path = tmp_path / "gpu_report.json"
    path.write_text(json.dumps(tiny_report[1]))
    return path


def test_each_methods_cost_is_projected_from_the_reports_rates(tiny_report, make_params, tmp_path) -> None:
    """Items of the full data set x seconds per item: measured where the report measured the run's settings (Real
    Guidance here), derived from FLOPs otherwise (DA-Fusion's 10 steps and batch 2), and said so."""
    numbers = tiny_report[1]
    params = make_params(results={"gpu_rates": str(_report_file(tiny_report, tmp_path))},
                         real_guidance={"num_inference_steps": 50})
    proj = projection(params, None, full_run_counts)
    n, k = proj.counts.train_images, params.generation.num_candidates
    assert n == 12 and proj.label == f"full data/train, {numbers['setup']['device']} (tiny models: forecasts nothing)"
    seconds, basis = projected(proj, BY_METHOD["real_guidance"].stages, 1)
    assert seconds == pytest.approx(n / numbers["real_guidance"]["img_s"]) and basis == "real_guidance: measured"
    sgid, basis = projected(proj, BY_METHOD["sgid"].stages, 1)
    expected = (n / numbers["captioning"]["batched_img_s"] + n / numbers["similarity"]["batched_img_s"]
                + proj.counts.raw_sources * k / numbers["img2img 64x64"]["batched_img_s"]
                + proj.counts.small_sources * k / numbers["img2img 96x64"]["batched_img_s"])
    assert sgid == pytest.approx(expected) and "curation: not projected" in basis
    whole, basis = projected(proj, BY_METHOD["da_fusion_recipe"].stages, 1)
    one, _ = projected(proj, BY_METHOD["da_fusion"].stages, params.da_fusion.num_synthetic)
    assert "inversion, da_fusion: derived from FLOPs" in basis and 0 < one < whole  # the package's way: 1 of M images
    assert all(projected(proj, a.stages, 1)[0] > 0 for a in AUGMENTATIONS)


def test_without_a_gpu_report_the_column_says_so(make_params) -> None:
    params = make_params()
    assert params.references.gpu_rates is None and projection(params, None, None) is None
    seconds, basis = projected(None, BY_METHOD["sgid"].stages, 1)
    assert math.isnan(seconds) and basis.startswith("no GPU report")
    table = pd.DataFrame({"Synthetic per real": [1.0], "Device hours": [0.5], TEST_P: [0.5], PER_HOUR: [1.0],
                          PROJECTED: [seconds], PROJECTED_FOR: ["no GPU report"], PROJECTION_BASIS: [basis]})
    assert shown(table)[PROJECTED].tolist() == ["no GPU report"]
    table[PROJECTED], table[PROJECTED_FOR] = [0.25], ["full pets, NVIDIA H200"]
    assert shown(table)[f"{PROJECTED} (full pets, NVIDIA H200)"].tolist() == ["0.25"]
