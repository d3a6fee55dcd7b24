"""Shared helpers for the m2msec.tls tests: a tiny ECDSA PKI, in-memory pumping, openssl subprocesses."""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from m2msec.tls.engine import CertCredentials, TLSEngine
from m2msec.tls.profiles import Transport

NOW = datetime.datetime.now(datetime.timezone.utc)
OPENSSL = shutil.which("openssl")


@dataclass
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def make_ca(name: str = "m2msec test root") -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    n = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder().subject_name(n).issuer_name(n).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(hours=1)).not_valid_after(NOW + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def issue(ca: Issued, name: str, *, is_ca: bool = False, expired: bool = False) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    if expired:
        nb, na = NOW - datetime.timedelta(days=10), NOW - datetime.timedelta(days=5)
    else:
        nb, na = NOW - datetime.timedelta(hours=1), NOW + datetime.timedelta(days=2)
    san: x509.GeneralName = x509.UniformResourceIdentifier(name) if ":" in name else x509.DNSName(name)
    b = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(nb).not_valid_after(na)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if is_ca:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        b = b.add_extension(x509.SubjectAlternativeName([san]), critical=False)
    return Issued(key, b.sign(ca.key, hashes.SHA256()))


@dataclass
class PKI:
    root: Issued
    inter: Issued

    def leaf(self, name: str, **kw: bool) -> Issued:
        return issue(self.inter, name, **kw)

    def creds(self, leaf: Issued) -> CertCredentials:
        return CertCredentials(leaf.key, leaf.cert, (self.inter.cert,))

    def write(self, directory: Path, stem: str, leaf: Issued) -> tuple[Path, Path, Path]:
        """key.pem, cert.pem (leaf + intermediate), ca.pem (root) for command-line peers.

        Also writes ``chain.pem`` (the intermediate alone) for openssl's ``-cert_chain``.
        """
        (directory / "chain.pem").write_bytes(self.inter.cert.public_bytes(serialization.Encoding.PEM))
        k = directory / f"{stem}.key.pem"
        c = directory / f"{stem}.cert.pem"
        a = directory / "ca.pem"
        k.write_bytes(leaf.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
        c.write_bytes(leaf.cert.public_bytes(serialization.Encoding.PEM)
                      + self.inter.cert.public_bytes(serialization.Encoding.PEM))
        a.write_bytes(self.root.cert.public_bytes(serialization.Encoding.PEM))
        return k, c, a


def make_pki() -> PKI:
    root = make_ca()
    return PKI(root, issue(root, "m2msec test intermediate", is_ca=True))


def pump(client: TLSEngine, server: TLSEngine, *, rounds: int = 30) -> None:
    """Shuttle bytes between two engines in memory until both are established.

    DTLS engines exchange one datagram at a time; a TLSHandshakeError propagates.
    """
    dtls = client.transport is Transport.DTLS
    if not client.established:
        client.do_handshake()
    for _ in range(rounds):
        moved = False
        for a, b in ((client, server), (server, client)):
            if dtls:
                for d in a.datagrams_to_send():
                    moved = True
                    b.receive_data(d)
            else:
                d = a.data_to_send()
                if d:
                    moved = True
                    b.receive_data(d)
        if client.established and server.established and not moved:
            return
        if not moved:
            break
    if not (client.established and server.established):
        raise AssertionError(f"handshake stalled: {client.state} / {server.state}")


def flush_alert(src: TLSEngine, dst: TLSEngine) -> None:
    """Deliver whatever ``src`` still has to send (e.g. a fatal alert) to ``dst``."""
    if src.transport is Transport.DTLS:
        for d in src.datagrams_to_send():
            dst.receive_data(d)
    else:
        d = src.data_to_send()
        if d:
            dst.receive_data(d)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A subprocess whose merged stdout/stderr is drained by a thread into ``text``."""

    def __init__(self, argv: list[str], **kw: object) -> None:
        import threading

        self.popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True, **kw)  # type: ignore[call-overload]
        self.text = ""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._lock:
                self.text += line

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                m = re.search(pattern, self.text)
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"timeout waiting for {pattern!r}; output so far:\n{self.text[-3000:]}")
            if self.popen.poll() is not None and not self._thread.is_alive():
                with self._lock:
                    m = re.search(pattern, self.text)
                if m:
                    return m
                raise AssertionError(f"process exited waiting for {pattern!r}; output:\n{self.text[-3000:]}")
            time.sleep(0.02)

    def wait(self, timeout: float = 10.0) -> int:
        rc = self.popen.wait(timeout)
        self._thread.join(2)
        return rc

    def kill(self) -> None:
        kill(self.popen)
        self._thread.join(2)


@contextlib.contextmanager
def openssl_server(args: list[str], *, hold: float = 15.0, dtls: bool = False) -> Iterator[tuple[Proc, int]]:
    """``sleep N | openssl s_server -accept PORT ...`` (stdin held open); always killed."""
    assert OPENSSL is not None
    port = free_port(socket.SOCK_DGRAM if dtls else socket.SOCK_STREAM)
    cmd = f"sleep {hold} | exec {OPENSSL} s_server -accept 127.0.0.1:{port} " + " ".join(_q(a) for a in args)
    proc = Proc(["/bin/sh", "-c", cmd])
    try:
        proc.wait_for("ACCEPT")
        yield proc, port
    finally:
        proc.kill()


def kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def keying_material(output: str) -> bytes:
    m = re.search(r"Keying material: ([0-9A-Fa-f]+)", output)
    assert m, output
    return bytes.fromhex(m.group(1))


def _q(a: str) -> str:
    import shlex

    return shlex.quote(a)
