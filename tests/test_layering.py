"""The tree is the architecture: no stage imports another stage, nothing below the stages imports one, and no module
grows past what a reader takes in at once."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sgid_utils"
MAX_LINES = 330


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def _modules(sub: str | None = None) -> list[Path]:
    return sorted((PACKAGE / sub if sub else PACKAGE).rglob("*.py"))


def test_no_stage_module_imports_another_stage_module():
    for path in _modules("stages"):
        others = {i for i in _imports(path) if i.startswith("sgid_utils.stages.") and path.stem not in i.split(".")}
        assert not others, f"{path.name} imports {sorted(others)}: move the shared code to method/, config/ or core/"


def test_only_the_command_line_imports_the_stages():
    for path in _modules():
        if "stages" in path.relative_to(PACKAGE).parts or path.name == "cli.py":
            continue
        stages = {i for i in _imports(path) if i.startswith("sgid_utils.stages")}
        assert not stages, f"{path.relative_to(PACKAGE)} imports {sorted(stages)}: read stage files via core.catalog"


def test_no_module_is_longer_than_a_reader_takes_in():
    long = {str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules into named parts: {long}"
