"""A stage's method code cannot change unnoticed: its hashes are checked in, and a change needs a code-version bump
or a recorded reason (``core.code_hashes``)."""

from __future__ import annotations

import json
import shutil

import pytest

from sgid_utils.cli import main
from sgid_utils.core import code_hashes
from sgid_utils.core.fingerprints import fingerprint
from sgid_utils.core.registry import CODE_VERSION_KEY, CODE_VERSIONS, STAGES


def test_the_recorded_hashes_match_the_method_code():
    differences = code_hashes.changed()
    assert not differences, code_hashes.stale_message(differences)


def test_the_hash_ignores_docstrings_and_comments_but_not_code(tmp_path):
    def hashed(text: str) -> str:
        (tmp_path / "m.py").write_text(text)
        return code_hashes.normalised_hash(tmp_path / "m.py")

    base = hashed('"""Module."""\n\ndef f(x):\n    """Why."""\n    return x * 2\n')
    assert hashed('"""Other words."""\n\ndef f(x):\n    # a comment\n    return x * 2  # another\n') == base
    assert hashed('"""Module."""\n\ndef f(x):\n    """Why."""\n    return x * 3\n') != base
    assert hashed('"""Module."""\n\ndef f(x):\n    """Why."""\n    return "x * 2"\n') != base


def test_a_stage_s_method_code_follows_its_imports_into_method():
    generate = code_hashes.method_modules("generation")
    assert {"sgid_utils.stages.generation", "sgid_utils.augment.generation", "sgid_utils.augment.guidance",
            "sgid_utils.augment.prompts", "sgid_utils.augment.batched"} <= set(generate)
    assert not [m for m in generate if m.startswith(("sgid_utils.params", "sgid_utils.models"))]
    assert "sgid_utils.augment.selection" in code_hashes.method_modules("curation")
    assert "sgid_utils.augment.guidance" not in code_hashes.method_modules("curation")


def test_every_stage_with_a_fingerprint_names_the_key_of_its_code_version():
    with_keys = {s.name: s.keys for s in STAGES if s.keys}
    assert set(CODE_VERSION_KEY) == set(with_keys)
    assert all(CODE_VERSION_KEY[name] in keys for name, keys in with_keys.items())
    assert set(code_hashes.recorded()) == set(with_keys)


@pytest.fixture
def record(tmp_path):
    """A copy of the checked-in record in which guidance.py's hash is an older one."""
    path = tmp_path / "code_hashes.json"
    shutil.copy(code_hashes.HASHES_FILE, path)
    data = json.loads(path.read_text())
    for entry in data["stages"].values():
        if "sgid_utils.augment.guidance" in entry["modules"]:
            entry["modules"]["sgid_utils.augment.guidance"] = "0" * 16
    path.write_text(json.dumps(data))
    return path


def _guidance_users() -> list[str]:
    """The stages whose method code imports the guidance mapping (both SGID passes, and the compared methods that
    generate through augment/generation.py)."""
    return [s.name for s in STAGES if s.keys and "sgid_utils.augment.guidance" in code_hashes.method_modules(s.name)]


def test_a_changed_module_names_the_stages_and_the_way_out(record):
    differences = code_hashes.changed(record)
    assert {"generation", "upscaling"} <= set(_guidance_users())
    assert differences == {stage: ["augment/guidance.py"] for stage in _guidance_users()}
    message = code_hashes.stale_message(differences)
    assert "CODE_VERSIONS['generation']" in message and "CODE_VERSIONS['curation.upscale_to']" in message
    assert 'python -m sgid_utils code-hashes --accept "REASON"' in message


def test_accepting_without_a_bump_records_the_reason_and_keeps_finished_runs(record, make_params):
    params = make_params()
    before = fingerprint(params, "generation")
    assert code_hashes.accept("renamed a local variable", record) == {
        stage: code_hashes.SAME_OUTPUTS for stage in _guidance_users()}
    assert code_hashes.changed(record) == {}
    assert code_hashes.recorded(record)["generation"]["last_change"] == {
        "kind": code_hashes.SAME_OUTPUTS, "reason": "renamed a local variable"}
    assert fingerprint(params, "generation") == before  # the hashes never reach a fingerprint


def test_a_bump_is_recorded_as_one_and_changes_the_fingerprint(record, make_params, monkeypatch):
    params = make_params()
    before = fingerprint(params, "generation")
    monkeypatch.setitem(CODE_VERSIONS, "generation", 2)
    assert code_hashes.changed(record)["generation"] == [
        "augment/guidance.py", "CODE_VERSIONS {} -> {'generation': 2}"]
    assert code_hashes.accept("guidance: f clipped at 20", record)["generation"] == code_hashes.BUMPED
    assert fingerprint(params, "generation") == {**before, "generation.code_version": 2}
    monkeypatch.delitem(CODE_VERSIONS, "generation")
    with pytest.raises(ValueError, match="went down for generation, upscaling"):
        code_hashes.accept("undo", record)


def test_the_command_checks_and_needs_a_reason(record, monkeypatch, capsys):
    monkeypatch.setattr(code_hashes, "HASHES_FILE", record)
    assert main(["code-hashes"]) == 1
    assert "generation: augment/guidance.py" in capsys.readouterr().out
    assert main(["code-hashes", "--accept", "  "]) == 2
    assert "needs a reason" in capsys.readouterr().err
    assert main(["code-hashes", "--accept", "docstring-only refactor"]) == 0
    assert main(["code-hashes"]) == 0
