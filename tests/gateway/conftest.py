"""Fixtures for the gateway tests: one real ACME CSE and one `m2msec gateway` process per
module, AE endpoints on 127.0.0.1 (ESPrim Receivers in this process), keys shared by the
AEs and the gateway's configuration."""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _gateway_support import GatewayProcess, running_acme, write_config  # noqa: F401 - re-exported for fixtures

from m2msec.net.acme import AcmeCSE
from m2msec.store import KeyEncryptionKey

HERE = Path(__file__).resolve().parent


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


def _load_pg_helper() -> Any:
    name = "m2msec_tests_pg"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE.parent / "pg.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database (private server), or skip (fail under M2MSEC_REQUIRE_PG)."""
    pg = _load_pg_helper()
    server = pg.PgServer.from_environment()
    if server is None:
        if pg.require_pg():
            pytest.fail("M2MSEC_REQUIRE_PG is set but no PostgreSQL binaries were found")
        pytest.skip("no PostgreSQL binaries found")
    try:
        yield str(server.create_database("m2msec_gateway"))
    finally:
        server.stop()
