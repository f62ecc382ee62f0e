"""Are the installed libraries versions this package runs on? Checked when ``sgid_utils`` is imported.

Colab images ship their own diffusers and transformers; ``pip install`` keeps any version inside
pyproject.toml's ranges, and a combination below a lower bound fails deep inside a library
(``cannot import name 'FLAX_WEIGHTS_NAME' from 'transformers.utils'``). The lower bounds are
versions the smoke chain and the unit tests passed with (``make check-lower-bounds``), so a
version below one is reported up front, with the one command that fixes it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import metadata

from packaging.requirements import Requirement

from sgid_utils.errors import VersionError

DISTRIBUTION = "sgid"
SKIP = "SGID_SKIP_VERSION_CHECK"  # set to 1 to run on untested versions anyway


def requirements() -> list[Requirement]:
    """The runtime requirements of the installed ``sgid`` distribution (none when it is not installed)."""
    try:
        declared = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return []
    reqs = [Requirement(text) for text in declared]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def version_problems(reqs: list[Requirement], installed: Callable[[str], str] = metadata.version) -> list[str]:
    """One line per requirement the environment does not meet: missing, or a version outside the range."""
    problems = []
    for req in reqs:
        try:
            version = installed(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{req.name} not installed (needs {req.name}{req.specifier})")
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name} {version} is installed; sgid needs {req.name}{req.specifier}")
    return problems


def check_versions(installed: Callable[[str], str] = metadata.version) -> None:
    """Raise VersionError naming every library outside its tested range and how to fix it."""
    if os.environ.get(SKIP) == "1":
        return
    problems = version_problems(requirements(), installed)
    if problems:
        raise VersionError(
            "sgid needs other versions of some libraries:\n  - " + "\n  - ".join(problems) + "\n"
            "Fix: in a checkout, `make install` (or `pip install -c constraints.txt -e .`); on Colab, run the "
            "notebook's first cell (it installs the tested versions), then Runtime > Restart session and run again. "
            f"To run anyway, set {SKIP}=1."
        )
