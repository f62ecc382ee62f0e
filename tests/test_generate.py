from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sgid_utils.augment.generation import model_input_size
from sgid_utils.augment.generation_setup import (
    COMPILE_MIN_CANDIDATES,
    MAX_AUTO_BATCH,
    auto_batch_size,
    compile_wanted,
    writer_threads,
)
from sgid_utils.augment.guidance import guidance_scale
from sgid_utils.augment.prompts import build_prompt
from sgid_utils.core import catalog
from sgid_utils.core.files import ItemStore, write_png
from sgid_utils.core.resumable import BatchPlan, Pending, in_batches, run_items
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.runner import run_stage
from sgid_utils.core.seeding import derive_seed
from sgid_utils.errors import StageError
from sgid_utils.params.schema import GenerationParams

from .conftest import copy_stages


@pytest.mark.parametrize(("size", "max_side", "short", "expected"), [
    ((500, 375), 768, None, (496, 368)),      # native size, rounded down to multiples of 8
    ((1600, 1200), 768, None, (768, 576)),    # large sources are capped
    ((500, 375), 768, 512, (680, 512)),       # upscaled so the short side is 512
    ((300, 100), 768, 512, (1024, 344)),      # beyond 2:1 the long side stops at 2 x the target
    ((500, 333), 768, 512, (768, 512)),       # 3:2 reaches the target (rounding down gave 768x504)
    ((500, 312), 768, 512, (824, 512)),       # up to 2:1 the target wins over max_side (it gave 768x480)
    ((600, 600), 768, 512, (600, 600)),       # big enough: untouched
])
def test_model_input_size(size, max_side, short, expected):
    assert model_input_size(*size, max_side, short) == expected


def test_manifest_images_seeds_and_prompts(pipeline_run):
    p = pipeline_run
    manifest = catalog.load(p, "manifest_raw")
    run = RunDir.of(p)
    assert not any(v.startswith("/") for v in pd.read_parquet(catalog.path(run, "manifest_raw")).path)
    best = pd.read_parquet(catalog.path(run, "best_captions")).merge(pd.read_parquet(catalog.path(run, "images")),
                                                                     on="image_id")
    small = best[["width", "height"]].min(axis=1) < p.curation.upscale_threshold
    # The raw pass: every large source and error_analysis_sample (1) small one per class, k candidates each.
    per_class = manifest.drop_duplicates("image_id").merge(best[small], on="image_id").groupby("label").size()
    assert (per_class == 1).all() and len(per_class) == best[small].label.nunique()
    assert set(best[~small].image_id) <= set(manifest.image_id)
    assert (len(manifest) == manifest.image_id.nunique() * p.generation.num_candidates
            < len(best) * p.generation.num_candidates)
    for row in manifest.itertuples():
        assert row.seed == derive_seed(p.run.seed, row.image_id, row.k, purpose="generate")
        src = best.set_index("image_id").loc[row.image_id]
        assert Image.open(row.path).size == (src.width, src.height)  # back to the source's size
        assert row.prompt == build_prompt(src.caption, src.class_name, p.generation)
        assert row.guidance_scale == pytest.approx(guidance_scale(src.s_star, p.generation.guidance))


def test_generation_is_deterministic_and_resumable(make_params, pipeline_run):
    """A run partly forgotten ('killed') and resumed gives byte-identical PNGs, and the same candidates as another run.

    Bytes are compared within one process and thread count: CPU float sums with another number of threads (the
    session's pipeline run may have been made under a one-thread fixture) differ in the last bits.
    """
    params = make_params("again")
    copy_stages(pipeline_run, params, "data", "captioning", "similarity")
    first = run_stage("generation", params)
    before = {path: open(path, "rb").read() for path in first.path}
    items = RunDir.of(params).items("generation")
    for image_id in first.image_id.unique()[::2]:  # forget half the items, as if the run had died before them
        (items / f"{image_id}.json").unlink()
    again = run_stage("generation", params)
    assert sorted(again.path) == sorted(before)
    for path in again.path:
        assert open(path, "rb").read() == before[path]
    cols = ["image_id", "k", "seed", "prompt", "guidance_scale"]
    other = catalog.load(pipeline_run, "manifest_raw")
    pd.testing.assert_frame_equal(again.sort_values(["image_id", "k"])[cols].reset_index(drop=True),
                                  other.sort_values(["image_id", "k"])[cols].reset_index(drop=True))
    for a, b in zip(again.sort_values(["image_id", "k"]).path, other.sort_values(["image_id", "k"]).path):
        diff = np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int))
        assert diff.max() <= 2, (a, diff.max())  # the other run's pixels too, within a level or two


def test_batched_stage_matches_the_per_image_pipeline(make_params, pipeline_run):
    """generation.batch_size > 1 (the CUDA default) gives the per-image pipeline's images within a level or two."""
    params = make_params("batched", generation={"batch_size": 4})
    copy_stages(pipeline_run, params, "data", "captioning", "similarity")
    batched = catalog.load(params, "manifest_raw") if run_stage("generation", params) is not None else None
    reference = catalog.load(pipeline_run, "manifest_raw")
    assert batched is not None and len(batched) == len(reference)
    cols = ["image_id", "k", "seed", "prompt", "guidance_scale", "input_width", "input_height"]
    pd.testing.assert_frame_equal(batched.sort_values(["image_id", "k"])[cols].reset_index(drop=True),
                                  reference.sort_values(["image_id", "k"])[cols].reset_index(drop=True))
    for a, b in zip(batched.sort_values("path").path, reference.sort_values("path").path):
        diff = np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int))
        assert diff.max() <= 2, (a, diff.max())


def test_auto_batch_size_follows_free_memory_and_input_size():
    import torch


    gib = 2**30  # 0.4 GiB per candidate at 512 x 512 in fp16, 80 % of the free memory used
    assert auto_batch_size(20 * gib, 512, 512, 3, torch.float16) == 13  # 16 GiB / 1.2 GiB per source
    assert auto_batch_size(75 * gib, 512, 512, 3, torch.float16) == MAX_AUTO_BATCH  # an idle H100: capped
    assert auto_batch_size(13 * gib, 512, 512, 3, torch.float16) == 8  # a T4 after the weights
    assert auto_batch_size(13 * gib, 768, 512, 3, torch.float16) == 5  # 1.5x the pixels
    assert auto_batch_size(13 * gib, 512, 512, 3, torch.float32) == 4  # twice the bytes per value
    assert auto_batch_size(1 * gib, 768, 768, 3, torch.float16) == 1  # never below one
    # the ControlNet's rows: 1.4x bytes
    assert auto_batch_size(20 * gib, 512, 512, 3, torch.float16, controlnet=True) == 9


def test_in_batches_halves_a_batch_that_runs_out_of_memory_down_to_one():
    import torch

    done: list[tuple[int, int]] = []

    def work(start: int, stop: int) -> None:
        if stop - start > 3:
            raise torch.OutOfMemoryError("CUDA out of memory")
        done.append((start, stop))

    in_batches(10, 8, work, what="testing", setting="x.batch_size")
    assert done == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]  # every item once, in order, at the size that fits
    done.clear()
    in_batches(13, 16, work, what="testing", setting="x.batch_size")
    assert done == [(0, 3), (3, 6), (6, 9), (9, 12), (12, 13)]  # halved from the failed chunk's 13, not from 16

    def never_fits(start: int, stop: int) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(StageError, match=r"while testing, even at 1 per batch \(x.batch_size was halved down to 1\)\. "
                                         r"Free GPU memory \(another process may hold it\), or y\."):
        in_batches(4, 4, never_fits, what="testing", setting="x.batch_size", other=", or y")


def test_png_compress_level_changes_the_bytes_not_the_pixels(make_params, pipeline_run):
    """The stage at zlib levels 0 (inline, the CPU default) and 9 (on 2 writer threads and a loader thread, the CUDA
    path's, with ``resumable.Pending`` records), in one process, so the same float sums: equal pixels, other files."""
    runs = {}
    for level, threads in ((0, None), (9, 2)):
        params = make_params(f"png{level}", generation={"png_compress_level": level, "writer_threads": threads})
        copy_stages(pipeline_run, params, "data", "captioning", "similarity")
        runs[level] = run_stage("generation", params).sort_values(["image_id", "k"]).reset_index(drop=True)
    for stored, packed in zip(runs[0].path, runs[9].path):
        assert np.array_equal(np.asarray(Image.open(stored)), np.asarray(Image.open(packed)))
        assert Path(packed).stat().st_size < Path(stored).stat().st_size


def test_write_png_level_is_lossless(tmp_path):
    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.arange(48), np.arange(64))[..., None] + rng.integers(0, 8, (48, 64, 3))
    image = Image.fromarray(ramp.astype(np.uint8))
    paths = [write_png(tmp_path / f"{level}.png", image, level) for level in (0, 1, 9)]
    assert paths[0].stat().st_size > paths[1].stat().st_size > paths[2].stat().st_size
    assert all(np.array_equal(np.asarray(Image.open(p)), np.asarray(image)) for p in paths)


def test_a_batch_still_writing_is_recorded_only_once_its_files_are_there(tmp_path):
    """``Pending``: a batch's records wait for its writes (on other threads) while the next batch runs; a failed
    write is raised, and the batches before it keep their records."""
    ids = [f"i{n}" for n in range(6)]
    store = ItemStore(tmp_path / "items")
    seen: list[dict[str, tuple[bool, bool]]] = []

    def write(item: str) -> None:
        if item == "i5":
            raise OSError("disk full")
        (tmp_path / f"{item}.txt").write_text(item)

    with ThreadPoolExecutor(2) as pool:
        def process(batch: list[str]) -> Pending:
            seen.append({i: (store.done(i), (tmp_path / f"{i}.txt").exists()) for i in ids})
            return Pending({i: {"file": i} for i in batch}, [pool.submit(write, i) for i in batch])

        with pytest.raises(OSError, match="disk full"):
            run_items(tmp_path / "items", ids, lambda todo: BatchPlan(process, 2, "testing", "x.batch_size"),
                      sharded=False)
    assert [[i for i, (done, _) in snapshot.items() if done] for snapshot in seen] == [[], [], ["i0", "i1"]]
    assert all(exists for snapshot in seen for done, exists in snapshot.values() if done)
    assert store.todo(ids) == ["i4", "i5"]  # the failed batch has no record; the two before it have


def test_compile_and_writer_thread_rules():
    import torch

    gen, cuda, cpu = GenerationParams(), torch.device("cuda"), torch.device("cpu")
    assert gen.compile is None
    assert not compile_wanted(gen, cuda, COMPILE_MIN_CANDIDATES - 1)
    assert compile_wanted(gen, cuda, COMPILE_MIN_CANDIDATES)  # Pets' upscaled pass: ~3,600 sources x 3
    assert not compile_wanted(gen, cpu, 10**6)
    assert compile_wanted(GenerationParams(compile=True), cuda, 1)
    assert not compile_wanted(GenerationParams(compile=False), cuda, 10**6)
    assert not compile_wanted(GenerationParams(compile=True), cpu, 10**6)
    assert writer_threads(gen, cpu) == 0 and writer_threads(gen, cuda) >= 1  # inline on the CPU, threads beside a GPU
    assert writer_threads(GenerationParams(writer_threads=3), cpu) == 3


def test_the_raw_pass_samples_small_sources_per_class_seeded():
    from types import SimpleNamespace

    from sgid_utils.augment.generation import raw_pass

    sizes = [(100, 80)] * 7 + [(600, 520)] * 2  # per class: 7 small sources, 2 at or above the threshold
    sources = pd.DataFrame({"image_id": [f"c{c}_{i}" for c in range(3) for i in range(9)],
                            "label": [c for c in range(3) for _ in range(9)],
                            "width": [w for _ in range(3) for w, _ in sizes],
                            "height": [h for _ in range(3) for _, h in sizes]})

    def params(sample, seed=0):
        return SimpleNamespace(curation=SimpleNamespace(upscale_threshold=512, error_analysis_sample=sample),
                               run=SimpleNamespace(seed=seed))

    chosen = raw_pass(params(5), sources)
    large = sources.width >= 512
    assert chosen[large].all()  # every source at or above the threshold
    assert (chosen & ~large).groupby(sources.label).sum().tolist() == [5, 5, 5]  # 5 small ones per class
    assert chosen.equals(raw_pass(params(5), sources))  # seeded: the same sample every time
    assert not chosen.equals(raw_pass(params(5, seed=1), sources))  # and the run seed picks it
    assert raw_pass(params(20), sources).all() and raw_pass(params("all"), sources).all()


def test_error_analysis_sample_all_and_bad_values_through_the_params_file(make_params):
    from sgid_utils.params.load import ParamsError

    assert make_params("all", curation={"error_analysis_sample": "all"}).curation.error_analysis_sample == "all"
    assert make_params("three", curation={"error_analysis_sample": 3}).curation.error_analysis_sample == 3
    for bad in (0, "some"):
        with pytest.raises(ParamsError, match="curation.error_analysis_sample"):
            make_params(f"bad{bad}", curation={"error_analysis_sample": bad})
