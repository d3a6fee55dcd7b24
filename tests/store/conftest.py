"""Fixtures for the store tests: every store test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``tests/pg.py`` (a throwaway cluster started once per session, or
the server in ``M2MSEC_TEST_PG_DSN``).  Without PostgreSQL binaries the PostgreSQL
parameters are skipped, unless ``M2MSEC_REQUIRE_PG=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from m2msec.store import KeyEncryptionKey, Store, open_store


def _load_pg_helper() -> Any:
    name = "m2msec_tests_pg"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "pg.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


pg = _load_pg_helper()

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    server = pg.PgServer.from_environment()
    if server is None:
        if pg.require_pg():
            pytest.fail("M2MSEC_REQUIRE_PG is set but no PostgreSQL binaries (initdb/pg_ctl) were found")
        pytest.skip("no PostgreSQL binaries found (set M2MSEC_TEST_PG_DSN or install postgresql)")
    yield server
    server.stop()


class FakeClock:
    """Injected clock: an aware UTC datetime that tests move by hand."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def kek() -> KeyEncryptionKey:
    return KeyEncryptionKey.generate()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def new_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[], str]:
    """Factory of fresh, empty store URLs for the current backend."""
    counter = iter(range(1000))

    def make() -> str:
        if backend == "sqlite":
            return f"sqlite://{tmp_path}/store{next(counter)}.db"
        return str(request.getfixturevalue("pg_server").create_database())

    return make


@pytest.fixture
def store_url(new_url: Callable[[], str]) -> str:
    return new_url()


@pytest.fixture
def store(store_url: str, kek: KeyEncryptionKey, clock: FakeClock) -> Iterator[Store]:
    s = open_store(store_url, kek, clock=clock)
    yield s
    s.close()
