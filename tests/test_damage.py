"""Damage each kind of file a finished run reads back the way a crash leaves it (cut short, emptied, garbage), rerun
what reads it, and check one of two outcomes: rc 0 with outputs equal to an undamaged run's, or one line naming it.

Driven by the registry and the catalog, like the kill-and-resume test: a stage's per-item files are whatever its folder
holds beside its catalog entries and its fingerprint, so a new kind of file is covered without a new test.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sgid_utils.augment.training import load_checkpoint
from sgid_utils.core import catalog
from sgid_utils.core.files import read_json
from sgid_utils.core.registry import NAMES, get
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.runner import run_all, run_stage
from sgid_utils.errors import CorruptFileError

from .conftest import REPO
from .test_resume import _same

DAMAGES = ("cut short", "emptied", "garbage")
FOLDERS = [name for name in NAMES if get(name).folder]


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "cut short":
        path.write_bytes(data[: len(data) // 2])
    elif how == "emptied":
        path.write_bytes(b"")
    else:
        path.write_bytes(random.Random(path.name).randbytes(max(64, len(data))))


def _catalog_files(run: RunDir) -> dict[Path, tuple[str, dict[str, str]]]:
    """Every catalog file of a run (per configuration where keyed): its name and keys, by path."""
    configs = catalog.load(run, "training_results").config if catalog.exists(run, "training_results") else []
    files = {}
    for name, e in catalog.BY_NAME.items():
        for keys in [{"config": c} for c in configs] if e.keys else [{}]:
            files[e.path(run, **keys)] = (name, keys)
    return files


def _kind(path: Path, folder: Path, names: set[str]) -> tuple[str, str]:
    """A file's kind (its path in the stage folder with each part that names an item or a configuration as '*') and
    the item or configuration it belongs to."""
    parts, owner = [], ""
    for part in path.relative_to(folder).parts:
        stem = part.split(".")[0]
        if (name := re.sub(r"_[a-z]\d+$", "", stem)) in names:  # an item's k-th candidate, m-th synthetic image
            parts.append("*" + part[len(stem):])
            owner = owner or name
        else:
            parts.append(part)
    return "/".join(parts), owner


def per_item_kinds(ref: RunDir, stage: str) -> dict[str, list[Path]]:
    """The files of a finished stage folder that are neither catalog entries nor fingerprints, by kind; up to one per
    way of damage, each of another item (a damaged record alone redoes its item's files)."""
    names = set(catalog.load(ref, "images").image_id) | {p.stem for p in ref.items(stage).glob("*.json")}
    if catalog.exists(ref, "training_results"):
        names |= set(catalog.load(ref, "training_results").config)
    listed, folder, kinds, used = _catalog_files(ref), ref.stage(stage), {}, set()
    for path in sorted(ref.files(stage)):
        kind, owner = _kind(path, folder, names)
        if path in listed or path.name.startswith("_") or owner in used or len(kinds.get(kind, [])) == len(DAMAGES):
            continue
        kinds.setdefault(kind, []).append(path)
        used |= {owner} - {""}
    return kinds


def _copy(pipeline_run, params) -> tuple[RunDir, RunDir]:
    ref, run = RunDir.of(pipeline_run), RunDir.of(params)
    shutil.copytree(ref.root, run.root, symlinks=True)
    return ref, run


def _run(params, stage: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SGID_FAULT_KILL_AFTER_WRITES"}
    return subprocess.run([sys.executable, "-m", "sgid_utils", "run", stage, "--params", str(params.source_file)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("stage", FOLDERS)
def test_damaged_per_item_files_are_set_aside_and_redone_identically(stage, make_params, pipeline_run, capsys):
    """Up to three files of each per-item kind, one per way of damage; the stage's rerun (in this process, as
    ``run STAGE`` does it) redoes just those items."""
    ref = RunDir.of(pipeline_run)
    kinds = per_item_kinds(ref, stage)
    if stage == "training":  # a finished run keeps no checkpoint: put a damaged one where a killed run leaves it
        kinds["*/checkpoint.pt"] = [ref.checkpoint(c) for c in catalog.load(ref, "training_results").config
                                    if c not in {p.parent.name for files in kinds.values() for p in files}][:3]
    if not kinds:
        pytest.skip(f"stage {stage} keeps no per-item files")
    params = make_params(f"damage-{stage}")
    ref, run = _copy(pipeline_run, params)
    damaged = []
    for kind, files in kinds.items():
        for file, how in zip(files, DAMAGES):
            file = run.root / file.relative_to(ref.root)
            if kind.endswith("checkpoint.pt"):
                run.result(file.parent.name).unlink()
                torch.save({"epoch": 0, "model": torch.zeros(64)}, file)
            damage(file, how)
            damaged.append((kind, how, file))
    run_all(params, [stage])
    stderr = capsys.readouterr().err
    for kind, how, file in damaged:
        assert file.with_name(f"{file.name}.damaged").exists(), (kind, how)
        assert f"{file} is damaged" in stderr, (kind, how)
        assert kind.endswith("checkpoint.pt") or file.exists(), (kind, how)  # redone (a finished run drops checkpoints)
    for name in get(stage).writes:
        if catalog.entry(name).keys == ("config",):
            for config in catalog.load(ref, "training_results").config:
                _same(name, ref, run, config=config)
        else:
            _same(name, ref, run)
    for kind, how, file in damaged:  # generated images byte for byte (the manifests' images are compared above too)
        if file.suffix == ".png":
            assert file.read_bytes() == (ref.root / file.relative_to(run.root)).read_bytes(), (kind, how)


@pytest.mark.parametrize("stage", [name for name in NAMES if get(name).keys])
def test_a_damaged_fingerprint_is_one_clear_error(stage, make_params, pipeline_run):
    """Not rebuilt: it is the only record of the params that made the folder's outputs."""
    params = make_params(f"fingerprint-{stage}")
    _, run = _copy(pipeline_run, params)
    file = run.fingerprint_file(stage)
    damage(file, DAMAGES[NAMES.index(stage) % len(DAMAGES)])
    with pytest.raises(CorruptFileError) as caught:
        run_stage(stage, params)
    assert str(file) in str(caught.value) and f"delete {file} and rerun" in str(caught.value)
    if stage == "training":  # and on the command line: one line, status 2, no traceback
        out = _run(params, stage)
        assert out.returncode == 2 and "Traceback" not in out.stderr and str(file) in out.stderr, out.stderr[-2000:]


def test_every_damaged_catalog_file_names_itself(pipeline_run, tmp_path):
    """Whole-stage outputs (tables, manifests, summaries): a clear error, every entry and every way of damage."""
    ref, run = RunDir.of(pipeline_run), RunDir(tmp_path / "run", tmp_path / "reports")
    tried = 0
    for source, (name, keys) in sorted(_catalog_files(ref).items()):
        if not source.exists() or source.suffix not in (".parquet", ".csv", ".json"):
            continue
        file = catalog.path(run, name, **keys)
        for how in DAMAGES:
            file.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, file)
            damage(file, how)
            with pytest.raises(CorruptFileError, match=re.escape(str(file))):
                catalog.load(run, name, **keys)
            tried += 1
    assert tried >= 3 * 20


def test_a_damaged_generated_image_stops_its_reader_and_its_stage_makes_it_again(make_params, pipeline_run):
    """Garbled inside (its PNG signature and end intact, so only decoding finds it): training, which reads it, stops
    with one line and moves it aside; the generation stage then finds its record incomplete and makes it again, byte for
    byte, from its own seeds."""
    params = make_params("damaged-image")
    ref, run = _copy(pipeline_run, params)
    curated = catalog.load(run, "curated")
    image = Path(curated[curated.generation_pass == "raw"].path.iloc[0])
    data = bytearray(image.read_bytes())
    data[60:-20] = random.Random(0).randbytes(len(data) - 80)
    image.write_bytes(bytes(data))
    config = next(c for c in catalog.load(run, "training_results").config if c.startswith("sgid100"))
    shutil.rmtree(run.config_dir(config))  # training reads the curated images again
    out = _run(params, "training")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert str(image) in out.stderr and "run generation" in out.stderr
    assert image.with_name(f"{image.name}.damaged").exists() and not image.exists()
    with pytest.raises(CorruptFileError, match="moved aside"):  # asked again before regenerating: the same advice
        run_stage("training", params)
    run_all(params, ["generation"])  # (training then goes on: the training stage's own test above)
    assert image.read_bytes() == (ref.root / image.relative_to(run.root)).read_bytes()
    _same("manifest_raw", ref, run)


def test_a_checkpoint_is_read_as_data_only(tmp_path):
    """A pickled callable in a checkpoint is refused, never run; the package's own state (numpy RNG) still loads."""
    import numpy as np

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "epoch": Payload()}, evil)
    with pytest.raises(CorruptFileError, match="not a data-only checkpoint"):
        load_checkpoint(evil)
    assert not marker.exists() and evil.exists()
    good = tmp_path / "good.pt"
    torch.save({"numpy": np.random.get_state(), "torch": torch.get_rng_state(), "history": [{"loss": float("nan")}]},
               good)
    state = load_checkpoint(good)
    assert state["numpy"][0] == "MT19937" and (state["numpy"][1] == np.random.get_state()[1]).all()
    good.write_bytes(good.read_bytes()[:100])
    assert load_checkpoint(good) is None and good.with_name("good.pt.damaged").exists()


def test_every_run_directory_reader_is_data_only():
    """No unpickling of a run directory's files anywhere in the package."""
    package = REPO / "sgid_utils"
    risky = re.compile(r"weights_only\s*=\s*False|allow_pickle\s*=\s*True|pickle\.loads?\(|read_pickle|joblib\.load")
    found = [f"{p.relative_to(REPO)}:{n}" for p in package.rglob("*.py")
             for n, line in enumerate(p.read_text().splitlines(), 1) if risky.search(line)]
    assert not found, found


def test_a_damaged_provenance_record_is_rebuilt(make_params, pipeline_run):
    """Small metadata nothing depends on: moved aside and written again by the stage's next start."""
    params = make_params("provenance")
    _, run = _copy(pipeline_run, params)
    record = run.provenance("data")
    damage(record, "cut short")
    run_stage("data", params)
    assert len(read_json(record)["starts"]) == 1 and record.with_name(f"{record.name}.damaged").exists()
