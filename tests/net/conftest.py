"""Fixtures for the oneM2M transport tests: a real ACME CSE per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from _net_support import require_acme

from m2msec.net.acme import AcmeCSE


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "acme: needs the ACME CSE (PyPI acmecse) started as a subprocess")


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeCSE]:
    """One IN-CSE (id-in / cse-in) on an ephemeral port for the whole module."""
    require_acme()
    base: Path = tmp_path_factory.mktemp("acme-in")
    cse = AcmeCSE(base)
    cse.start()
    try:
        yield cse
    finally:
        cse.stop()
