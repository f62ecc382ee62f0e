"""What a newcomer reads stays true: every module path, dotted package name and link to a section the docs write
exists, and tests/README.md maps every module of the package to tests that really reach it (so a new module without
tests, or a map gone stale, fails here).

The map's rules for "reaches", checked from the source text (no test is run here):

- the test imports the module (``from sgid_utils.x import y``, ``import sgid_utils.x.y``, ``from sgid_utils.x.y
  import z``);
- a stage module: the test names the stage, or a catalog entry it writes, as a string (it runs the stage by name
  and reads what it wrote), or drives every registered stage from the registry (``NAMES`` / ``STAGES``);
- ``__main__.py`` and ``cli.py``: the test runs ``python -m sgid_utils``;
- ``(through `other.py`)`` after the test: the test reaches ``other.py`` and ``other.py`` imports the module;
- a notebook (``notebooks/NN_name.ipynb``, run under nbval by ``make test``) that imports the module.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

from sgid_utils.core.registry import STAGES

from .conftest import REPO

PACKAGE = REPO / "sgid_utils"
TESTS = REPO / "tests"
MAP = TESTS / "README.md"

SUBPACKAGES = "|".join(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
# A module path as the docs write it: from the repository root (sgid_utils/..., tests/..., bench/...) or, as
# ARCHITECTURE.md does, from the package (core/rundir.py). A path inside a longer path (another repository's
# semantic_aug/augmentations/real_guidance.py), a pattern (stages/<name>.py) or a one-letter placeholder (bench/x.py)
# is not one.
PATH = re.compile(rf"(?<![\w/.<-])((?:sgid_utils/(?:(?:{SUBPACKAGES})/)?|(?:{SUBPACKAGES})/|tests/|bench/)\w\w+\.py)\b")
# Where paths are written for readers. docs/gpu/ holds dated measurement logs: they keep the paths of their day.
# This file is left out: its examples name a stale path on purpose.
PROSE = ["README.md", "Makefile", "docs/*.md", "bench/*.md", "params/*.yaml", "notebooks/*.ipynb",
         "sgid_utils/**/*.py", "sgid_utils/reporting/templates/*"]
READ = [*PROSE, "tests/*.py", "bench/*.py"]
OWN = Path(__file__).resolve()


def named_paths(text: str) -> set[str]:
    return set(PATH.findall(text))


def exists(path: str) -> bool:
    return (REPO / path).is_file() or (PACKAGE / path).is_file()


def test_the_path_pattern_finds_module_paths_and_skips_other_repositories_and_patterns():
    text = ("see sgid_utils/sources.py, core/rundir.py and `tests/test_xy.py`; its semantic_aug/augmentations/"
            "real_guidance.py, stages/<name>.py and bench/x.py are not ours")
    assert named_paths(text) == {"sgid_utils/sources.py", "core/rundir.py", "tests/test_xy.py"}
    assert not exists("sgid_utils/sources.py") and exists("sgid_utils/params/sources.py") and exists("core/rundir.py")


def test_every_module_path_the_docs_name_exists():
    files = sorted({f for pattern in READ for f in REPO.glob(pattern) if f.is_file() and f.resolve() != OWN})
    assert len(files) > 100
    stale = {f"{f.relative_to(REPO)}: {p}" for f in files for p in named_paths(f.read_text()) if not exists(p)}
    assert not stale, f"paths to modules that do not exist: {sorted(stale)}"


DOTTED = re.compile(r"(?<![\w/.])sgid_utils(?:\.\w+)+")


@functools.cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def top_level(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    """The names a module or class body defines (functions, classes, assignments, imports)."""
    names: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update((n.id, node) for target in targets for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(((a.asname or a.name).split(".")[0], node) for a in node.names)
    return names


def resolves(name: str) -> bool:
    """Whether a dotted name is a module of the package, or a name it defines (and a class's attribute), read from
    the source without importing it."""
    parts = name.removesuffix(".py").split(".")
    for i in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:i])
        module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if module.is_file():
            break
    else:
        return False
    body = parsed(module).body
    for attribute in parts[i:i + 2]:
        node = top_level(body).get(attribute)
        if node is None:
            return False
        if not isinstance(node, ast.ClassDef):
            return True
        body = node.body
    return True


def test_every_dotted_package_name_the_docs_write_resolves():
    files = sorted({f for pattern in PROSE for f in REPO.glob(pattern) if f.is_file()})  # code's imports run anyway
    names = {(f.relative_to(REPO), n) for f in files for n in DOTTED.findall(f.read_text())}
    assert len(names) > 100
    assert resolves("sgid_utils.preflight.projection.full_run_counts") and resolves("sgid_utils.core.rundir.RunDir.of")
    assert not resolves("sgid_utils.projection.full_run_counts")  # moved to sgid_utils.preflight.projection
    assert not resolves("sgid_utils.core.rundir.RunDir.nothing")
    stale = sorted(f"{f}: {n}" for f, n in names if not resolves(n))
    assert not stale, f"names that no longer exist: {stale}"


LINK = re.compile(r"\]\(((?:[\w/.-]*\.md)?)#([\w-]+)\)")  # [text](PAGE.md#anchor), or (#anchor) on the same page


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_to_a_section_finds_its_heading():
    assert slug("How f(s\\*) becomes the guidance scale") == "how-fs-becomes-the-guidance-scale"
    assert slug("Three backbones, and SGID combined with CutMix / RandAugment") == (
        "three-backbones-and-sgid-combined-with-cutmix--randaugment")
    files = sorted({f for pattern in ("README.md", "docs/*.md", "bench/*.md") for f in REPO.glob(pattern)})
    broken = []
    for f in files:
        for target, anchor in LINK.findall(f.read_text()):
            page = (f.parent / target).resolve() if target else f
            headings = re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE) if page.is_file() else []
            if anchor not in {slug(h) for h in headings}:
                broken.append(f"{f.relative_to(REPO)}: {target}#{anchor}")
    assert not broken, f"links to sections that moved or were renamed: {broken}"


def imports_of(path: Path) -> set[str]:
    """The dotted sgid_utils names a file imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    names = set()
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sgid_utils"):
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("sgid_utils")}
    return names


def dotted(module: str) -> str:
    return "sgid_utils." + module.removesuffix(".py").replace("/", ".")


def reaches(test: str, module: str) -> bool:
    """Whether ``test`` (a tests/ file name, or a notebooks/ path) reaches the package module ``module`` (a path
    under sgid_utils/) by one of the rules in this file's docstring."""
    if test.startswith("notebooks/"):
        return re.search(rf"\b{re.escape(dotted(module))}\b", (REPO / test).read_text()) is not None
    path = TESTS / test
    text, imported = path.read_text(), imports_of(path)
    if dotted(module) in imported:
        return True
    if module in ("__main__.py", "cli.py"):
        return '"-m", "sgid_utils"' in text
    stage = next((s for s in STAGES if module == f"stages/{s.name}.py"), None)
    return stage is not None and (
        any(f'"{name}"' in text for name in (stage.name, *stage.writes))
        or bool({"sgid_utils.core.registry.NAMES", "sgid_utils.core.registry.STAGES"} & imported))


ROW = re.compile(r"^\| `([\w/]+\.py)` \| (.+) \|$", re.MULTILINE)
ENTRY = re.compile(r"`([\w/.]+\.(?:py|ipynb))`(?: \(through `([\w/]+\.py)`\))?")


def read_map() -> dict[str, list[tuple[str, str]]]:
    """tests/README.md's table: module -> [(test, through module or "")]."""
    return {module: ENTRY.findall(cell) for module, cell in ROW.findall(MAP.read_text())}


def package_modules() -> list[str]:
    """Every module of the package but the ``__init__.py`` files (docstrings and re-exports)."""
    return [str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py")) if p.name != "__init__.py"]


def test_every_module_of_the_package_is_in_the_read_map():
    mapped = read_map()
    modules = package_modules()
    assert not sorted(set(modules) - set(mapped)), (
        f"add a row to tests/README.md (and a test) for: {sorted(set(modules) - set(mapped))}")
    assert not sorted(set(mapped) - set(modules)), f"tests/README.md maps modules that do not exist: " \
        f"{sorted(set(mapped) - set(modules))}"
    assert all(mapped.values()), f"rows without a test: {[m for m, t in mapped.items() if not t]}"


@pytest.mark.parametrize("module", package_modules())
def test_each_test_the_map_names_reaches_its_module(module):
    for test, through in read_map()[module]:
        assert (REPO / test).is_file() or (TESTS / test).is_file(), f"{module}: no {test}"
        if through:
            assert reaches(test, through), f"{test} does not reach {through}"
            assert dotted(module) in imports_of(PACKAGE / through), f"{through} does not import {module}"
        else:
            assert reaches(test, module), f"tests/README.md says {test} covers {module}: it does not reach it"


def test_a_module_gets_its_same_named_test_first_where_that_test_reaches_it():
    for module, entries in read_map().items():
        same = f"test_{Path(module).stem}.py"
        if (TESTS / same).is_file() and reaches(same, module):
            assert entries[0][0] == same, f"{module}: list {same} first"


def test_reaches_tells_a_test_that_does_not_reach_a_module():
    assert reaches("test_guidance.py", "augment/guidance.py")
    assert not reaches("test_workers.py", "augment/guidance.py")
    assert reaches("test_resume.py", "stages/upscaling.py")  # every registered stage, killed and resumed
    assert not reaches("test_stats.py", "stages/upscaling.py")
