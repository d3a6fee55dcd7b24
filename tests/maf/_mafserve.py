"""``m2msec maf serve -c CONFIG --port 0 [ARGS]`` as a child process, for the process tests
(SIGHUP reloads, CRL fetching, worker processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path


class MAFServe:
    """The running MAF: ``port``, ``first`` (its first stdout line), ``line()``, ``stderr()``, ``stop()``."""

    def __init__(self, config: Path, *args: str, start_timeout: float = 30.0) -> None:
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from m2msec.maf.cli import app; app()", "serve", "-c", str(config), "--port", "0",
             *args],
            stdout=subprocess.PIPE, stderr=self.err, stdin=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.first = self.line(start_timeout)
        if "listening on" not in self.first:
            self.stop()
            raise RuntimeError(f"MAF did not start: {self.first!r}")
        self.port = int(self.first.rsplit(":", 1)[1])

    def line(self, timeout: float) -> str:
        out: list[str] = []
        t = threading.Thread(target=lambda: out.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        t.start()
        t.join(timeout)
        return out[0] if out else ""

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.err.close()


def provisioned_config(tmp: Path, fqdn: str, admin: str, extra: str,
                       clients: Sequence[tuple[str, str, bytes]]) -> Path:
    """``tmp/maf.toml`` (SQLite store and KEK file in ``tmp``, ``extra`` top-level lines) with
    each (client ID, KmID, Km) of ``clients`` provisioned through ``m2msec maf add-client``."""
    from typer.testing import CliRunner

    from m2msec.maf.cli import app
    from m2msec.store import KeyEncryptionKey

    KeyEncryptionKey.generate().write_file(tmp / "kek.hex")
    cfg = tmp / "maf.toml"
    cfg.write_text(f'fqdn = "{fqdn}"\nstore = "sqlite:///{tmp / "maf.db"}"\nkek_file = "kek.hex"\n{extra}'
                   f'[[admin]]\nfqdn = "{admin}"\n', encoding="utf-8")
    for cid, kmid, km in clients:
        r = CliRunner().invoke(app, ["add-client", "-c", str(cfg), "--client-id", cid, "--kmid", kmid,
                                     "--km-hex", km.hex()])
        assert r.exit_code == 0, r.output
    return cfg
