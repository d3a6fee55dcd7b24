"""Helpers of the gateway tests (a uniquely named module: every test folder's conftest is a
module called ``conftest``, so test files import plain helpers from here)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from m2msec.net.acme import AcmeCSE, acme_available


@contextmanager
def running_acme(base_dir: Path) -> Iterator[AcmeCSE]:
    """A started ACME CSE (default CSE-ID ``id-in``) in ``base_dir``, stopped on exit; skips the
    test when acmecse is not installed."""
    if not acme_available():
        import pytest  # only here: the benchmarks load this module without pytest

        pytest.skip("acmecse is not installed")
    cse = AcmeCSE(base_dir)
    cse.start()
    try:
        yield cse
    finally:
        cse.stop()


class GatewayProcess:
    """`python -m m2msec.gateway serve` as a child process; ``url`` once it listens."""

    def __init__(self, config: Path, cse_url: str, trace: Path | None = None, store: str | None = None,
                 saef_listen: str | None = None) -> None:
        """``saef_listen``: start the SAEF listener there (the config needs ``[saef]``); its
        address is then ``saef_address`` (host, port), read from the second start line."""
        cmd = [sys.executable, "-m", "m2msec.gateway", "serve", "--config", str(config), "--cse", cse_url,
               "--listen", "127.0.0.1:0"]
        if saef_listen is not None:
            cmd += ["--saef-listen", saef_listen]
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
            if saef_listen is not None:
                line.append(self.proc.stdout.readline())

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(20)
        want = 2 if saef_listen is not None else 1
        if len(line) < want or not line[0].startswith("listening on ") or \
                (saef_listen is not None and not line[1].startswith("saef listening on ")):
            self.proc.kill()
            self.proc.wait(10)
            self._err.seek(0)
            err = self._err.read().decode("utf-8", "replace")
            self._err.close()
            raise RuntimeError(f"gateway did not start: {line!r} {err[-2000:]}")
        self.url = line[0].split("listening on ", 1)[1].strip()
        self.saef_address: tuple[str, int] | None = None
        if saef_listen is not None:
            host, _, port = line[1].split("saef listening on ", 1)[1].strip().rpartition(":")
            self.saef_address = (host, int(port))

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
