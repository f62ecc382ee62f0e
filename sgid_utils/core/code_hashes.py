"""Has a stage's method code changed since its code version was last set? A change nobody may forget.

A stage's fingerprint holds its params and ``CODE_VERSIONS`` (its registry entry's ``code_version``); a change to
the guidance mapping, the prompt builder or the selection gives other images for the same params, and unless someone
bumps the code version by hand, old and new outputs mix in one run directory without a word. So ``code_hashes.json``
(beside this module, checked in) records, per stage with a fingerprint, a hash of each module of its method code and
the code versions its keys had then; ``tests/test_code_hashes.py`` fails when a hash no longer matches, until the
developer either bumps the stage's code version or says the change gives the same outputs, and records it with one
command::

    python -m sgid_utils code-hashes --accept "REASON"

A stage's method code is ``stages/<name>.py`` and every module it imports, directly or not, from ``augment/`` (and
``core/seeding.py``, ``core/images.py``: seeds and image decoding decide outputs too). A hash is of the module's
syntax tree without docstrings (comments are not in it), so rewording a docstring or a comment needs nothing.
Users' finished runs are invalidated only by a bump: the hashes are never part of a fingerprint.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path
from typing import Any

from sgid_utils.core.files import write_atomic
from sgid_utils.core.registry import CODE_VERSION_KEY, CODE_VERSIONS, RENAMED_STAGES, STAGES, get

PACKAGE = Path(__file__).resolve().parent.parent
HASHES_FILE = Path(__file__).with_name("code_hashes.json")
FOLLOWED = ("sgid_utils.stages.", "sgid_utils.augment.", "sgid_utils.core.seeding", "sgid_utils.core.images")
COMMAND = 'python -m sgid_utils code-hashes --accept "REASON"'
BUMPED, SAME_OUTPUTS, NEW, REMOVED = "code version bumped", "same outputs", "new stage", "removed"


def module_file(module: str) -> Path | None:
    """The source file of ``sgid_utils.<...>`` (None if there is none), found without importing it."""
    base = PACKAGE.joinpath(*module.split(".")[1:])
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def normalised_hash(path: Path) -> str:
    """A hash of the module's syntax tree without docstrings: what runs, not how it is explained."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()[:16]


def _imports(module: str) -> set[str]:
    """The ``sgid_utils`` modules ``module`` imports, anywhere in it (function-level imports too)."""
    path = module_file(module)
    package = module if path is not None and path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())) if path else ():
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = (".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if node.level
                    else "")
            name = ".".join(p for p in (base, node.module) if p)
            found |= {name} | {f"{name}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("sgid_utils.") and module_file(m) is not None}


def method_modules(stage: str) -> list[str]:
    """``stages/<stage>.py`` and the method modules it reaches through imports, sorted."""
    wanted, todo = set(), [f"sgid_utils.stages.{stage}"]
    while todo:
        current = todo.pop()
        if current not in wanted:
            wanted.add(current)
            todo += [m for m in _imports(current) if m.startswith(FOLLOWED)]
    return sorted(wanted)


def stage_versions(stage: str) -> dict[str, int]:
    """The code versions of the stage's own params keys (a key without one is at version 1 and not listed)."""
    return {k: CODE_VERSIONS[k] for k in get(stage).keys if k in CODE_VERSIONS}


def current() -> dict[str, dict[str, Any]]:
    """Per stage with a fingerprint, its code versions and its method modules' hashes, as the tree has them now."""
    return {s.name: {"code_versions": stage_versions(s.name),
                     "modules": {m: normalised_hash(module_file(m)) for m in method_modules(s.name)}}
            for s in STAGES if s.keys}


def recorded(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The record, per stage under today's name (a record written before a stage's rename: ``RENAMED_STAGES``)."""
    path = path or HASHES_FILE
    stages = json.loads(path.read_text())["stages"] if path.exists() else {}
    return {RENAMED_STAGES.get(name, name): entry for name, entry in stages.items()}


def changed(path: Path | None = None) -> dict[str, list[str]]:
    """Per stage whose code or code versions differ from the record, what differs (modules, or versions)."""
    now, then = current(), recorded(path)
    out = {}
    for stage in sorted(set(now) | set(then)):
        a, b = then.get(stage), now.get(stage)
        if a is None or b is None:
            out[stage] = ["not recorded yet" if a is None else "no longer a stage with a fingerprint"]
            continue
        modules = sorted(m for m in set(a["modules"]) | set(b["modules"]) if a["modules"].get(m) != b["modules"].get(m))
        versions = ([f"CODE_VERSIONS {a['code_versions']} -> {b['code_versions']}"]
                    if a["code_versions"] != b["code_versions"] else [])
        if modules or versions:
            out[stage] = [m.removeprefix("sgid_utils.").replace(".", "/") + ".py" for m in modules] + versions
    return out


def stale_message(differences: dict[str, list[str]]) -> str:
    """What changed and exactly what to do about it, for the test and the command."""
    lines = [f"  {stage}: {', '.join(what)} (its code version: CODE_VERSIONS['{CODE_VERSION_KEY.get(stage, '?')}'])"
             for stage, what in differences.items()]
    return ("The method code of these stages changed since sgid_utils/core/code_hashes.json was written:\n"
            + "\n".join(lines) + "\n"
            "1. If the change can give other outputs for the same params, bump that stage's code version in "
            "CODE_VERSIONS: its ``code_version`` on its registry entry (sgid_utils/core/registry.py: add 1, with a "
            "comment saying why), "
            "so that finished runs refuse to mix old and new files.\n"
            f'2. In either case, record the code as it is now with one command:\n    {COMMAND}\n'
            "   (REASON: what changed and, without a bump, why the outputs stay the same), and commit the rewritten "
            "sgid_utils/core/code_hashes.json.")


def accept(reason: str, path: Path | None = None) -> dict[str, str]:
    """Record the tree's hashes and code versions; per changed stage, whether a bump or the reason vouches for it."""
    if not reason.strip():
        raise ValueError(f"code-hashes --accept needs a reason: {COMMAND}")
    now, then, differences = current(), recorded(path), changed(path)
    lowered = [s for s in differences if s in then and s in now and any(
        now[s]["code_versions"].get(k, 1) < then[s]["code_versions"].get(k, 1) for k in then[s]["code_versions"])]
    if lowered:
        raise ValueError(f"CODE_VERSIONS went down for {', '.join(lowered)}: a code version only goes up (a lower "
                          "one would let old outputs pass as new)")
    kinds = {s: REMOVED if s not in now else NEW if s not in then
             else BUMPED if then[s]["code_versions"] != now[s]["code_versions"] else SAME_OUTPUTS for s in differences}
    stages = {s: {**entry, "last_change": {"kind": kinds[s], "reason": reason.strip()} if s in kinds
                  else then[s].get("last_change")} for s, entry in now.items()}
    text = json.dumps({"about": f"Written by `{COMMAND}` (sgid_utils/core/code_hashes.py); do not edit by hand.",
                       "stages": stages}, indent=2, sort_keys=True) + "\n"
    write_atomic(path or HASHES_FILE, lambda tmp: tmp.write_text(text))
    return kinds
