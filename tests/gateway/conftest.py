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

from m2msec.net.acme import AcmeCSE, acme_available
from m2msec.store import KeyEncryptionKey

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "acme: needs the ACME CSE (PyPI acmecse) started as a subprocess")


class GatewayProcess:
    """`python -m m2msec.gateway serve` as a child process; ``url`` once it listens."""

    def __init__(self, config: Path, cse_url: str, trace: Path | None = None, store: str | None = None) -> None:
        cmd = [sys.executable, "-m", "m2msec.gateway", "serve", "--config", str(config), "--cse", cse_url,
               "--listen", "127.0.0.1:0"]
        if trace is not None:
            cmd += ["--trace", str(trace)]
        if store is not None:
            cmd += ["--store", store]
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - read on failure, closed in stop()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._err, stdin=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        line: list[str] = []

        def read() -> None:
            assert self.proc.stdout is not None
            line.append(self.proc.stdout.readline())

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(20)
        if not line or not line[0].startswith("listening on "):
            self.proc.kill()
            self.proc.wait(10)
            self._err.seek(0)
            err = self._err.read().decode("utf-8", "replace")
            self._err.close()
            raise RuntimeError(f"gateway did not start: {line!r} {err[-2000:]}")
        self.url = line[0].split("listening on ", 1)[1].strip()

    def stop(self) -> int | None:
        self._err.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeCSE]:
    if not acme_available():
        pytest.skip("acmecse is not installed")
    cse = AcmeCSE(tmp_path_factory.mktemp("acme-in"))
    cse.start()
    try:
        yield cse
    finally:
        cse.stop()


@pytest.fixture(scope="module")
def tag() -> str:
    return secrets.token_hex(3)


@pytest.fixture(scope="module")
def gwdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("gateway")
    KeyEncryptionKey.generate().write_file(d / "gateway.kek")
    return d


def write_config(path: Path, *, cse_id: str, cse_name: str, keys: list[dict[str, str | int]],
                 routes: dict[str, str] | None = None, extra: str = "") -> Path:
    lines = [
        "[cse]", f'id = "{cse_id}"', f'name = "{cse_name}"', 'admin = "CAdmin"', "",
        "[store]", 'kek_file = "gateway.kek"', f'url = "sqlite://{path.parent}/gateway.db"', "",
        "[gateway]", "poa_ttl = 30", "",
    ]
    for k in keys:
        lines += ["[[keys]]"] + [f"{n} = {v!r}".replace("'", '"') if isinstance(v, str) else f"{n} = {v}" for n, v in k.items()] + [""]
    for csi, url in (routes or {}).items():
        lines += ["[[routes]]", f'csi = "{csi}"', f'url = "{url}"', ""]
    path.write_text("\n".join(lines) + extra, encoding="utf-8")
    return path


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
