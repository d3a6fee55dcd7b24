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


def _first_line(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    line: list[str] = []
    t = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    t.start()
    t.join(timeout)
    return line[0] if line else ""


def _terminate(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class MAFWithMEFProcess:
    """`m2msec maf serve` whose ``[mef]`` table points at an MEF on 127.0.0.1: the MAF fetches Km for
    unknown KeIDs from it (SUID 21), authenticated as an Enrolment Target with a PSK."""

    def __init__(self, workdir: Path, *, maf_fqdn: str, admin_fqdn: str, mef_fqdn: str, mef_port: int,
                 psk_identity: str, psk_hex: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        KeyEncryptionKey.generate().write_file(workdir / "maf.kek")
        cfg = workdir / "maf.toml"
        cfg.write_text(f'fqdn = "{maf_fqdn}"\nstore = "sqlite:///{workdir / "maf.db"}"\nkek_file = "maf.kek"\nport = 0\n'
                       f'[mef]\nfqdn = "{mef_fqdn}"\nhost = "127.0.0.1"\nport = {mef_port}\n'
                       f'psk_identity = "{psk_identity}"\npsk_hex = "{psk_hex}"\n'
                       f'[[admin]]\nfqdn = "{admin_fqdn}"\n')
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-c", "from m2msec.maf.cli import app; app()", "serve", "-c",
                                      str(cfg), "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=self._err, stdin=subprocess.DEVNULL, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = _first_line(self.proc)
        if "listening on" not in line:
            self.stop()
            raise RuntimeError(f"MAF did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])

    def stop(self) -> None:
        _terminate(self.proc)
        self._err.close()


class BSFSimProcess:
    """`m2msec mef bsf-sim` (GBA Ub + Zn on 127.0.0.1); ``url`` once it listens."""

    def __init__(self, subscribers: dict[str, str], nafs: dict[str, str]) -> None:
        args = [f"--subscriber={impi}={k}" for impi, k in subscribers.items()]
        args += [f"--naf={fqdn}={tok}" for fqdn, tok in nafs.items()]
        self.proc = subprocess.Popen([sys.executable, "-m", "m2msec.mef.cli", "bsf-sim", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = _first_line(self.proc)
        if not line.startswith("listening http://127.0.0.1:"):
            self.stop()
            raise RuntimeError(f"BSF simulator did not start: {line!r}")
        self.url = line.split()[1]

    def stop(self) -> None:
        _terminate(self.proc)

    def __enter__(self) -> BSFSimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
