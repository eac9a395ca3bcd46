"""Fixtures for namespace-topology tests: one lab per session, reset after every test.

Tests take ``lab`` (function scope). Set FTPD_REQUIRE_NET=1 (CI does) to turn a missing
prerequisite into a failure instead of a skip, so the suite cannot silently test nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .lab import Lab, unavailable_reason

HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "net: needs root and network namespaces")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test here is a `net` test, so `-m "not net"` deselects the directory.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.net)


@pytest.fixture(scope="session")
def net_lab() -> Iterator[Lab]:
    """The topology, built once per session (~0.1 s) and torn down at its end."""
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("FTPD_REQUIRE_NET") == "1":
            pytest.fail(f"FTPD_REQUIRE_NET=1 but {reason}")
        pytest.skip(reason)
    with Lab.create() as built:
        yield built


@pytest.fixture
def lab(net_lab: Lab) -> Iterator[Lab]:
    """The session's lab, reset afterwards (rules, helpers, hosts files, processes)."""
    yield net_lab
    net_lab.reset()
