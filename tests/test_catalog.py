"""The data catalog and the registry agree: every file read is written earlier, once, at a path of its own; upstream
is derived from the files; an unreadable file is a clear error naming the file, its stage and what to delete."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pandas as pd
import pytest

from sgid_utils.core import catalog, code_hashes
from sgid_utils.core.registry import (
    ABLATIONS_READ,
    ABLATIONS_WRITE,
    NAMES,
    STAGES,
    get,
    upstream_closure,
    writer,
)
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.runner import run_stage
from sgid_utils.errors import CorruptFileError

from .conftest import REPO, copy_stages


def test_every_file_a_stage_reads_is_written_by_an_earlier_stage():
    for stage in STAGES:
        for name in stage.reads:
            assert NAMES.index(writer(name)) < NAMES.index(stage.name), (stage.name, name)
    assert all(writer(name) in NAMES for name in ABLATIONS_READ)  # `run ablations` reads what the chain wrote


def test_every_entry_has_exactly_one_writer_and_a_path_of_its_own():
    written = [n for s in STAGES for n in s.writes] + list(ABLATIONS_WRITE)
    assert sorted(written) == sorted(catalog.BY_NAME), "an entry no stage writes, or one written twice"
    run = RunDir(Path("/run"), Path("/reports"))
    paths = [catalog.entry(n).path(run, **{k: "c" for k in catalog.entry(n).keys}) for n in catalog.BY_NAME]
    assert len(set(paths)) == len(paths), "two names share a path"


def test_an_entry_is_named_by_its_file():
    """Its name is its file's stem, or the stem and the format where one table is written in two (``accuracy_md``
    beside ``accuracy``; ``significance_csv``, the report's copy of the results stage's ``significance``)."""
    stems = {}
    for e in catalog.ENTRIES:
        stems.setdefault(Path(e.file).stem, []).append(Path(e.file).suffix)
    for e in catalog.ENTRIES:
        file = Path(e.file)
        twice = len(set(stems[file.stem])) > 1 and e.name == f"{file.stem}_{file.suffix[1:]}"
        assert e.name == file.stem or twice, f"catalog entry '{e.name}' names the file {e.file}"
    run = RunDir(Path("/run"), Path("/reports"))
    olds = [e.path(run).with_name(e.old_file) for e in catalog.ENTRIES if e.old_file]
    news = [e.path(run, **{k: "c" for k in e.keys}) for e in catalog.ENTRIES]
    assert len(set(olds)) == len(olds) and not set(olds) & set(news), "an old file name is ambiguous"


def test_an_entry_s_old_file_is_read_where_only_it_exists(tmp_path):
    run = RunDir(tmp_path / "run", tmp_path / "reports")
    best = catalog.entry("best_captions")
    assert catalog.path(run, "best_captions") == run.stage("similarity") / "best_captions.parquet"
    catalog.save(run, "best_captions", pd.DataFrame({"image_id": ["a"]}))
    (run.stage("similarity") / "best_captions.parquet").rename(run.stage("similarity") / best.old_file)
    assert catalog.path(run, "best_captions").name == "best.parquet"  # an older run, read and resumed in place
    assert catalog.load(run, "best_captions").image_id.tolist() == ["a"]
    catalog.save(run, "best_captions", pd.DataFrame({"image_id": ["b"]}))
    assert not (run.stage("similarity") / "best_captions.parquet").exists()
    assert catalog.load(run, "best_captions").image_id.tolist() == ["b"]


def test_upstream_is_derived_from_the_files():
    """Each stage's upstream reaches the writer of every file it reads, and names none reached through another."""
    for stage in STAGES:
        reached = {n for u in stage.upstream for n in upstream_closure(u)}
        assert {writer(name) for name in stage.reads} <= reached, stage.name
        assert not any(u in upstream_closure(v) for u in stage.upstream for v in stage.upstream if u != v), stage.name
    assert get("curation").upstream == ("generation", "upscaling") and get("data").upstream == ()
    assert all(callable(get(n).function) for n in NAMES)


def test_the_runs_doc_shows_the_files_the_registry_declares():
    doc = (REPO / "docs" / "RUNS.md").read_text()
    assert catalog.files_table() in doc, "regenerate with `python -m sgid_utils stages --files`"
    out = subprocess.run([sys.executable, "-m", "sgid_utils", "stages", "--files"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert out == catalog.files_table()


def test_save_and_load_by_name_round_trip_each_kind(make_params):
    params = make_params()
    table = pd.DataFrame({"image_id": ["a"], "path": [str(RunDir.of(params).root / "data" / "a.png")]})
    catalog.save(params, "images", table)
    assert catalog.load(params, "images").path[0] == table.path[0]  # stored relative, read back absolute
    assert pd.read_parquet(catalog.path(params, "images")).path[0] == "data/a.png"
    catalog.save(params, "filters_summary", {"kept": 3})
    assert catalog.load(params, "filters_summary") == {"kept": 3}
    with pytest.raises(KeyError, match="needs config"):
        catalog.path(params, "predictions")
    with pytest.raises(FileNotFoundError, match="run stage 'similarity' first"):
        catalog.load(params, "best_captions")


@pytest.mark.parametrize("name, damage", [("best_captions", "truncate"), ("filters_summary", "garble"),
                                          ("skipped", "garble")])
def test_an_unreadable_file_names_itself_its_stage_and_what_to_delete(name, damage, make_params, pipeline_run):
    params = make_params()
    copy_stages(pipeline_run, params, "data", "captioning", "similarity", "generation", "upscaling", "curation")
    file = catalog.path(params, name)
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00\xff{garbled" + data[5:])
    with pytest.raises(CorruptFileError) as caught:
        catalog.load(params, name)
    message = str(caught.value)
    assert str(file) in message and f"stage '{writer(name)}'" in message and f"Delete {file}" in message


def test_a_truncated_table_stops_the_next_stage_with_one_line(make_params, pipeline_run):
    """The issue's case: truncate similarity/best.parquet of a finished run, then `run generation`."""
    params = make_params()
    copy_stages(pipeline_run, params, "data", "captioning", "similarity")
    best = catalog.path(params, "best_captions")
    best.write_bytes(best.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match="similarity"):
        run_stage("generation", params)
    out = subprocess.run([sys.executable, "-m", "sgid_utils", "run", "generation", "--params", str(params.source_file)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr and str(best) in out.stderr


def test_a_damaged_per_configuration_file_says_to_delete_its_folder(tmp_path):
    """A configuration with a result is skipped on a rerun: deleting only the damaged file would never redo it."""
    run = RunDir(tmp_path / "run", tmp_path / "reports")
    file = catalog.path(run, "predictions", config="baseline_seed0")
    file.parent.mkdir(parents=True)
    file.write_bytes(b"PAR1 garbled")
    with pytest.raises(CorruptFileError, match=f"Delete {file.parent} and rerun"):
        catalog.load(run, "predictions", config="baseline_seed0")


# --- what the stages' code reads and writes, found statically ---------------------------------------------------------
FOLLOWED = ("sgid_utils.stages.", "sgid_utils.augment.", "sgid_utils.reporting.")
READ_CALLS = {"load", "exists", "path"}


@cache
def _module(module: str) -> tuple[dict[str, ast.AST], dict[str, tuple[str, str]]]:
    """A module's top-level functions by name, and the names it imports from the followed modules."""
    tree = ast.parse(code_hashes.module_file(module).read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    imported = {a.asname or a.name: (node.module, a.name) for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(FOLLOWED) for a in node.names}
    return functions, imported


def _names(arg: ast.expr) -> list[str]:
    """The catalog names an argument can be (as patterns): a string, an f-string (``manifest_.*``), either branch of
    a conditional; none for a variable."""
    if isinstance(arg, ast.IfExp):
        return _names(arg.body) + _names(arg.orelse)
    if isinstance(arg, ast.JoinedStr):
        return ["".join(re.escape(v.value) if isinstance(v, ast.Constant) else ".*" for v in arg.values)]
    return [re.escape(arg.value)] if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else []


def catalog_calls(module: str, function: str = "run") -> set[tuple[str, str]]:
    """(read or save, name pattern) of every ``catalog.*`` call that ``function`` makes, directly or through the
    functions it names in its own module and in the followed modules it imports from."""
    found, seen, todo = set(), set(), [(module, function)]
    while todo:
        mod, name = todo.pop()
        functions, imported = _module(mod)
        if (mod, name) in seen or name not in functions:
            continue
        seen.add((mod, name))
        for node in ast.walk(functions[name]):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "catalog" and len(node.args) > 1
                    and node.func.attr in READ_CALLS | {"save"}):
                kind = "save" if node.func.attr == "save" else "read"
                found |= {(kind, pattern) for pattern in _names(node.args[1])}
            elif isinstance(node, ast.Name) and node.id in functions:
                todo.append((mod, node.id))
            elif isinstance(node, ast.Name) and node.id in imported:
                todo.append(imported[node.id])
    return found


def test_every_catalog_call_of_a_stage_matches_its_declared_reads_and_writes():
    """Static: the files each stage's ``run`` loads (or checks, or asks the path of), directly or through the stage,
    method and reporting functions it calls, are among its declared reads, optional reads or writes; what it saves is
    among its writes, and it saves every one of them."""
    steps = [(s.name, (*s.reads, *s.optional_reads), s.writes) for s in STAGES]
    for name, reads, writes in [*steps, ("ablations", ABLATIONS_READ, ABLATIONS_WRITE)]:
        calls = catalog_calls(f"sgid_utils.stages.{name}")
        for kind, pattern in calls:
            allowed = writes if kind == "save" else (*reads, *writes)
            assert any(re.fullmatch(pattern, n) for n in allowed), f"stage '{name}' {kind}s undeclared '{pattern}'"
        saved = [p for kind, p in calls if kind == "save"]
        assert all(any(re.fullmatch(p, n) for p in saved) for n in writes), f"stage '{name}' declares an unsaved write"
