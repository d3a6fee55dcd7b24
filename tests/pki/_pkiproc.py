"""Shared by the tests that run ``m2msec pki`` sub-commands as real processes (serve-crl, serve-ocsp)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading


def pki_env(passphrase: str) -> dict[str, str]:
    """The environment of a ``pki`` process: the CA passphrase, unbuffered output."""
    return {**os.environ, "M2MSEC_CA_PASSPHRASE": passphrase, "PYTHONUNBUFFERED": "1"}


def run_pki(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from m2msec.pki.cli import app; app()", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_line(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    """The next stdout line of ``proc``, or "" after ``timeout`` seconds."""
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    t.start()
    t.join(timeout)
    return out[0] if out else ""
