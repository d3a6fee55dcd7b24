"""Shared by the OCSP stapling process tests (tests/maf, tests/mef, tests/tls): a development CA
saved to a directory, ``m2msec pki serve-ocsp`` and ``m2msec pki revoke`` as real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from m2msec.pki import CertificateFlavour, DevCA

PASS = "ocsp-staple-test"
ENV = {**os.environ, "M2MSEC_CA_PASSPHRASE": PASS, "PYTHONUNBUFFERED": "1"}
PEM = serialization.Encoding.PEM


def now() -> datetime:
    return datetime.now(UTC)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pki(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from m2msec.pki.cli import app; app()", *args],
                          capture_output=True, text=True, timeout=60, env=ENV)


def read_line(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    t.start()
    t.join(timeout)
    return out[0] if out else ""


@dataclass
class Leaf:
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key: Any
    cert_file: Path  # leaf + chain (PEM)
    key_file: Path


class DevPKI:
    """A DevCA with an intermediate, saved in ``tmp/ca`` for the ``m2msec pki`` commands."""

    def __init__(self, tmp: Path, name: str = "Staple SP") -> None:
        self.tmp = tmp
        self.dir = tmp / "ca"
        self.ca = DevCA.create(name, now=now() - timedelta(days=1), permit_dns=["example.com"],
                               permit_uri=["sp.example.com"], intermediate=True)
        self.ca.save(self.dir, PASS.encode())
        self.anchor_file = tmp / "root.pem"
        self.anchor_file.write_bytes(self.ca.trust_anchor.public_bytes(PEM))

    def issue(self, flavour: CertificateFlavour, ident: str, name: str) -> Leaf:
        issued = self.ca.issue(flavour, [ident], now=now() - timedelta(hours=1))
        cert_file, key_file = self.tmp / f"{name}.pem", self.tmp / f"{name}.key"
        cert_file.write_bytes(b"".join(c.public_bytes(PEM) for c in [issued.certificate, *issued.chain]))
        key_file.write_bytes(issued.private_key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()))
        return Leaf(issued.certificate, tuple(issued.chain), issued.private_key, cert_file, key_file)

    def revoke(self, leaf: Leaf) -> None:
        """``m2msec pki revoke`` from another process (the responder re-reads per request)."""
        leaf_only = self.tmp / f"revoke-{leaf.cert.serial_number:x}.pem"
        leaf_only.write_bytes(leaf.cert.public_bytes(PEM))
        r = pki("revoke", str(self.dir), "--cert", str(leaf_only), "--reason", "keyCompromise")
        assert r.returncode == 0, r.stderr


class OCSPServe:
    """``m2msec pki serve-ocsp`` on an ephemeral port: ``url``, ``stop()``."""

    def __init__(self, pki_: DevPKI, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc = subprocess.Popen([sys.executable, "-c", "from m2msec.pki.cli import app; app()", "serve-ocsp",
                                      str(pki_.dir), "--port", str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        line = read_line(self.proc)
        if line != f"ocsp listening 127.0.0.1:{self.port}\n":
            self.stop()
            raise RuntimeError(f"serve-ocsp did not start: {line!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
