"""Fixtures for the gateway tests: one real ACME CSE and one `m2msec gateway` process per
module, AE endpoints on 127.0.0.1 (ESPrim Receivers in this process), keys shared by the
AEs and the gateway's configuration."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _gateway_support import GatewayProcess, running_acme, write_config  # noqa: F401 - re-exported for fixtures

from m2msec.net.acme import AcmeCSE
from m2msec.store import KeyEncryptionKey



def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "acme: needs the ACME CSE (PyPI acmecse) started as a subprocess")


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeCSE]:
    with running_acme(tmp_path_factory.mktemp("acme-in")) as cse:
        yield cse


@pytest.fixture(scope="module")
def tag() -> str:
    return secrets.token_hex(3)


@pytest.fixture(scope="module")
def gwdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("gateway")
    KeyEncryptionKey.generate().write_file(d / "gateway.kek")
    return d


@pytest.fixture(scope="module")
def pg_url(pg_server: Any) -> str:
    """A fresh PostgreSQL database on the session's server (tests/conftest.py), or skip."""
    return str(pg_server.create_database("m2msec_gateway"))
