"""Session-wide test settings.

Hypothesis: no per-example deadline (CI machines are small and shared, a slow example is
not a failure), and under CI (`M2MSEC_CI=1`, set by .ci/run) a derandomized run, so that
a CI result can be reproduced exactly.

PostgreSQL: one throwaway cluster per session from ``tests/pg.py`` (or the server in
``M2MSEC_TEST_PG_DSN``), the ``pg_server`` fixture; every test takes its own database
(``pg_server.create_database()``).  Without PostgreSQL binaries the PostgreSQL tests are
skipped, unless ``M2MSEC_REQUIRE_PG=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

settings.register_profile("m2msec", deadline=None)
settings.register_profile("m2msec-ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("m2msec-ci" if os.environ.get("M2MSEC_CI") == "1" else "m2msec")


def load_pg_helper() -> Any:
    """``tests/pg.py`` as module ``m2msec_tests_pg`` (loaded once; test folders are not packages)."""
    name = "m2msec_tests_pg"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / "pg.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    pg = load_pg_helper()
    server = pg.PgServer.from_environment()
    if server is None:
        if pg.require_pg():
            pytest.fail("M2MSEC_REQUIRE_PG is set but no PostgreSQL binaries (initdb/pg_ctl) were found")
        pytest.skip("no PostgreSQL binaries found (set M2MSEC_TEST_PG_DSN or install postgresql)")
    yield server
    server.stop()
