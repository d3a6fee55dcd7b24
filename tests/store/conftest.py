"""Fixtures for the store tests: every store test runs on SQLite and on PostgreSQL.

PostgreSQL comes from the ``pg_server`` fixture of ``tests/conftest.py`` (a throwaway cluster started once per session, or
the server in ``M2MSEC_TEST_PG_DSN``).  Without PostgreSQL binaries the PostgreSQL
parameters are skipped, unless ``M2MSEC_REQUIRE_PG=1`` (CI) makes that a failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from m2msec.store import KeyEncryptionKey, Store, open_store


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


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
