"""The tree is the architecture: the subpackages stand on floors and import only downwards, no module import cycle,
no stage imports another stage, nothing below the stages imports one, and no module grows past what a reader takes
in at once."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sgid_utils"
MAX_LINES = 330
# The floors, bottom up: a module imports its own subpackage and the floors below, never a floor above or a sibling
# on its own floor. Errors are the ground (every floor raises them); the params come next, then the model loaders,
# the shared infrastructure (registry, runner, catalog), the method's pieces (augment), what reports and checks a
# run, the stages, what runs a data set's commands in order (reproduce), and the command line with the package's
# root modules.
FLOORS = (("errors",), ("params",), ("models",), ("core",), ("augment",), ("reporting", "preflight"), ("stages",),
          ("reproduce",), ("cli", "__init__"), ("__main__",))


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


def _floor_name(path: Path) -> str:
    """The subpackage of a module, or the module's own name for one at the package's root (cli, errors, ...)."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_floors_name_every_subpackage_once():
    named = [name for floor in FLOORS for name in floor]
    assert len(named) == len(set(named))
    assert set(named) == {_floor_name(p) for p in _modules()}, "put the new subpackage on a floor in FLOORS"


def test_each_subpackage_imports_only_the_floors_below_it():
    level = {name: i for i, floor in enumerate(FLOORS) for name in floor}
    upward = []
    for path in _modules():
        mine = _floor_name(path)
        for name in sorted(_imports(path)):
            theirs = name.split(".")[1] if name.startswith("sgid_utils.") else None
            if theirs in level and theirs != mine and level[theirs] >= level[mine]:
                upward.append(f"{path.relative_to(PACKAGE)} imports {name}")
    floors = " < ".join("/".join(floor) for floor in FLOORS)
    assert not upward, (f"imports that do not go down the floors ({floors}): {sorted(set(upward))}. Move the code "
                        "to the lowest floor that needs it, or let the higher floor pass it down (a path, a hook).")


def test_no_module_import_cycle():
    """Function-level imports count too: a cycle hidden in a function is still a knot a reader must untie."""
    modules = {_module_name(p): p for p in _modules()}
    graph = {name: {i if i in modules else i.rpartition(".")[0] for i in _imports(path)} & set(modules) - {name}
             for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> list[str] | None:
        state[name] = 1
        for nxt in sorted(graph[name]):
            if state.get(nxt) == 1:
                return trail + [name, nxt]
            if nxt not in state and (cycle := visit(nxt, trail + [name])):
                return cycle
        state[name] = 2
        return None

    for name in sorted(modules):
        cycle = visit(name, []) if name not in state else None
        assert cycle is None, f"import cycle: {' -> '.join(cycle[cycle.index(cycle[-1]):])}"


def test_no_stage_module_imports_another_stage_module():
    for path in _modules("stages"):
        others = {i for i in _imports(path) if i.startswith("sgid_utils.stages.") and path.stem not in i.split(".")}
        assert not others, f"{path.name} imports {sorted(others)}: move the shared code to augment/, params/ or core/"


def test_only_the_command_line_imports_the_stages():
    for path in _modules():
        if "stages" in path.relative_to(PACKAGE).parts or path.name == "cli.py":
            continue
        stages = {i for i in _imports(path) if i.startswith("sgid_utils.stages")}
        assert not stages, f"{path.relative_to(PACKAGE)} imports {sorted(stages)}: read stage files via core.catalog"


def test_no_module_is_longer_than_a_reader_takes_in():
    long = {str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules into named parts: {long}"
