"""The import-time version check: below, at and above a bound, a missing library, the message and the escape hatch."""

import json
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from sgid_utils.errors import VersionError
from sgid_utils.params.versions import SKIP, check_versions, requirements, version_problems

from .conftest import REPO


def _installed(versions: dict[str, str]):
    def lookup(name: str) -> str:
        if name not in versions:
            raise metadata.PackageNotFoundError(name)
        return versions[name]
    return lookup


def test_below_at_and_above_the_lower_bound():
    reqs = [Requirement("diffusers>=0.36"), Requirement("transformers>=5,<6"), Requirement("pyyaml>=6")]
    assert version_problems(reqs, _installed({"diffusers": "0.36.0", "transformers": "5.9.0", "pyyaml": "6.0.4"})) == []
    assert version_problems(reqs, _installed({"diffusers": "0.42.1", "transformers": "5.24.0", "pyyaml": "7.0"})) == []
    below = version_problems(reqs, _installed({"diffusers": "0.30.0", "transformers": "6.0.0"}))
    assert below == ["diffusers 0.30.0 is installed; sgid needs diffusers>=0.36",
                     "transformers 6.0.0 is installed; sgid needs transformers<6,>=5",
                     "pyyaml not installed (needs pyyaml>=6)"]


def test_the_message_names_each_library_and_the_fix(monkeypatch):
    monkeypatch.delenv(SKIP, raising=False)
    everything_old = _installed({r.name: "0.0.1" for r in requirements()})
    with pytest.raises(VersionError, match=r"diffusers 0\.0\.1 is installed; sgid needs diffusers>=") as err:
        check_versions(everything_old)
    assert "make install" in str(err.value) and "Restart session" in str(err.value)
    monkeypatch.setenv(SKIP, "1")
    check_versions(everything_old)  # the escape hatch
    monkeypatch.delenv(SKIP)
    check_versions()  # this environment (the pinned one) passes


def test_every_dependency_has_a_lower_bound_and_the_pins_meet_them():
    reqs = [Requirement(text)
            for text in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    assert all(any(s.operator == ">=" for s in r.specifier) for r in reqs), [str(r) for r in reqs if not r.specifier]
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    pins = {Requirement(name).name.lower().replace("_", "-"): v for name, v in pins.items()}
    for r in reqs:
        assert r.specifier.contains(pins[r.name.lower().replace("_", "-")]), (str(r), pins.get(r.name))


def test_the_colab_cell_installs_the_pins_without_torch():
    for notebook in sorted((REPO / "notebooks").glob("0*.ipynb")):
        first = "".join(json.loads(Path(notebook).read_text())["cells"][1]["source"])
        assert "grep -vE '^(torch|torchvision)==' /content/sgid/constraints.txt" in first, notebook
        assert "%pip install -q -c /tmp/sgid-colab-constraints.txt /content/sgid" in first, notebook
