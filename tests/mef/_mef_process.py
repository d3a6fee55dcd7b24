"""`python -m m2msec.mef.cli serve` (and its admin commands) as child processes, for tests that
run the MEF as a separate process (imported by path from other test folders)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from m2msec.store import KeyEncryptionKey


class MEFProcess:
    def __init__(self, workdir: Path, fqdn: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        KeyEncryptionKey.generate().write_file(workdir / "mef.kek")
        self.config = workdir / "mef.toml"
        self.config.write_text(f'[mef]\nfqdn = "{fqdn}"\nstore = "sqlite:///{workdir / "mef.db"}"\n'
                               'kek_file = "mef.kek"\nhost = "127.0.0.1"\nport = 0\n')
        self.fqdn = fqdn
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def admin(self, *args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "m2msec.mef.cli", *args[:2], "--config", str(self.config), *args[2:]],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def start(self) -> MEFProcess:
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "m2msec.mef.cli", "serve", "--config", str(self.config)],
                                     stdout=subprocess.PIPE, stderr=self._err, stdin=subprocess.DEVNULL, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line: list[str] = []
        t = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        t.start()
        t.join(20)
        if not line or not line[0].startswith("listening "):
            self.stop()
            raise RuntimeError(f"MEF did not start: {line!r}")
        self.port = int(line[0].rsplit(":", 1)[1])
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if hasattr(self, "_err"):
            self._err.close()

    def __enter__(self) -> MEFProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
