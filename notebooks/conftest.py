"""nbval in the same pytest session as the unit tests (``make test``).

Every notebook cell goes into one xdist group, so the notebooks run in order on one worker (each reads what the
one before it wrote) while the other worker takes unit tests. The unit tests' conftest clears SGID_RUN_DIR for
their own runs, so the notebooks' run directory comes in as SGID_NBVAL_RUN_DIR / SGID_NBVAL_REPORTS_DIR and is set
only while a cell's kernel starts and runs.
"""

from __future__ import annotations

import os

import pytest

ENV = {"SGID_RUN_DIR": "SGID_NBVAL_RUN_DIR", "SGID_REPORTS_DIR": "SGID_NBVAL_REPORTS_DIR"}


def _is_cell(item: pytest.Item) -> bool:
    return item.nodeid.split("::")[0].endswith(".ipynb")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _is_cell(item):
            item.add_marker(pytest.mark.xdist_group("notebooks"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if _is_cell(item):
        os.environ.update({name: os.environ[given] for name, given in ENV.items() if given in os.environ})


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    if _is_cell(item):
        for name in ENV:
            os.environ.pop(name, None)
