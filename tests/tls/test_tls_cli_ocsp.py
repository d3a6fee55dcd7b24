"""``m2msec tls server --ocsp-staple FILE|URL`` and ``m2msec tls client --status [--require-status]``
as real processes (RFC 6066 8; profile P21/P24), with ``m2msec pki serve-ocsp`` as the responder and
``m2msec pki revoke`` from another process; every refusal of the options."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _tlshelp import Proc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _ocsp_proc import DevPKI, Leaf, OCSPServe, free_port  # noqa: E402

from m2msec.pki import CertificateFlavour as F  # noqa: E402
from m2msec.pki.ocsp_http import OCSPClient  # noqa: E402

TLS = [sys.executable, "-m", "m2msec.tls.cli"]
SERVER_ID = "server.example.com"
CLIENT_ID = "//sp.example.com/Cclient"


def fields(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ": " in line:
            k, v = line.split(": ", 1)
            out.setdefault(k, []).append(v)
    return out


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pki = DevPKI(tmp)
        self.server: Leaf = self.pki.issue(F.FQDN, SERVER_ID, "server")
        self.client: Leaf = self.pki.issue(F.AE_ID, CLIENT_ID, "client")

    def server_args(self) -> list[str]:
        return ["--key", str(self.server.key_file), "--cert", str(self.server.cert_file), "--ca", str(self.pki.anchor_file)]

    def client_run(self, port: str, *extra: str) -> tuple[dict[str, list[str]], int]:
        p = subprocess.run([*TLS, "client", "--port", port, "--key", str(self.client.key_file), "--cert",
                            str(self.client.cert_file), "--ca", str(self.pki.anchor_file), *extra],
                           capture_output=True, text=True, timeout=30)
        return fields(p.stdout), p.returncode


def _serve(w: World, staple: str | None) -> tuple[Proc, str]:
    args = [*TLS, "server", *w.server_args(), "--timeout", "60"]
    if staple is not None:
        args += ["--ocsp-staple", staple]
    srv = Proc(args)
    return srv, srv.wait_for(r"listening: 127\.0\.0\.1:(\d+)", 30).group(1)


def test_url_staple_good_then_revoked_after_sighup(tmp_path: Path) -> None:
    w = World(tmp_path)
    ocsp = OCSPServe(w.pki)
    srv, port = _serve(w, ocsp.url)
    try:
        assert fields(srv.text)["ocsp_staple"] == ["good"]
        cli, rc = w.client_run(port, "--status", "--require-status")
        assert rc == 0 and cli["ocsp_status"] == ["good"] and cli["ocsp_next_update"][0], cli
        cli, rc = w.client_run(port)  # without --status: no status line
        assert rc == 0 and "ocsp_status" not in cli
        w.pki.revoke(w.server)
        srv.popen.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            cli, rc = w.client_run(port, "--status")
            if rc:
                break
            time.sleep(0.2)
        assert rc == 1 and cli["error"] == ["BAD_CERTIFICATE_STATUS"] and cli["reason"] == ["REVOKED"], cli
        cli, rc = w.client_run(port)  # a client that does not ask still connects
        assert rc == 0
    finally:
        srv.popen.terminate()
        srv.wait(10)
        ocsp.stop()


def test_file_staple_and_require_status(tmp_path: Path) -> None:
    w = World(tmp_path)
    ocsp = OCSPServe(w.pki)
    try:
        _, der = OCSPClient(ocsp.url).fetch_sync(w.server.cert, w.pki.ca.issuing_cert)
        other = w.pki.issue(F.FQDN, "other.example.com", "other")
        _, other_der = OCSPClient(ocsp.url).fetch_sync(other.cert, w.pki.ca.issuing_cert)
    finally:
        ocsp.stop()
    (tmp_path / "good.der").write_bytes(der)
    (tmp_path / "other.der").write_bytes(other_der)
    srv, port = _serve(w, str(tmp_path / "good.der"))
    try:
        cli, rc = w.client_run(port, "--status")
        assert rc == 0 and cli["ocsp_status"] == ["good"], cli
    finally:
        srv.popen.terminate()
        srv.wait(10)
    # a response for another certificate is not sent by OpenSSL: "none", refused with --require-status
    srv, port = _serve(w, str(tmp_path / "other.der"))
    try:
        cli, rc = w.client_run(port, "--status")
        assert rc == 0 and cli["ocsp_status"] == ["none"], cli
        cli, rc = w.client_run(port, "--require-status")
        assert rc == 1 and cli["error"] == ["BAD_CERTIFICATE_STATUS"] and cli["reason"] == ["REVOCATION_UNKNOWN"], cli
    finally:
        srv.popen.terminate()
        srv.wait(10)


def test_dtls_file_staple(tmp_path: Path) -> None:
    """The same over DTLS 1.2 (``--dtls`` on both sides): the staple is sent and checked."""
    w = World(tmp_path)
    ocsp = OCSPServe(w.pki)
    try:
        _, der = OCSPClient(ocsp.url).fetch_sync(w.server.cert, w.pki.ca.issuing_cert)
    finally:
        ocsp.stop()
    (tmp_path / "good.der").write_bytes(der)
    srv = Proc([*TLS, "server", *w.server_args(), "--timeout", "60", "--dtls", "--ocsp-staple",
                str(tmp_path / "good.der")])
    port = srv.wait_for(r"listening: 127\.0\.0\.1:(\d+)", 30).group(1)
    try:
        cli, rc = w.client_run(port, "--dtls", "--status", "--require-status")
        assert rc == 0 and cli["protocol"] == ["DTLSv1.2"] and cli["ocsp_status"] == ["good"], cli
    finally:
        srv.popen.terminate()
        srv.wait(10)
    srv = Proc([*TLS, "server", *w.server_args(), "--timeout", "60", "--dtls"])  # no staple
    port = srv.wait_for(r"listening: 127\.0\.0\.1:(\d+)", 30).group(1)
    try:
        cli, rc = w.client_run(port, "--dtls", "--require-status")
        assert rc == 1 and cli["error"] == ["BAD_CERTIFICATE_STATUS"], cli
    finally:
        srv.popen.terminate()
        srv.wait(10)


def test_responder_down_server_still_listens(tmp_path: Path) -> None:
    w = World(tmp_path)
    srv, port = _serve(w, f"http://127.0.0.1:{free_port()}/")
    try:
        f = fields(srv.text)
        assert f["ocsp_staple"] == ["none"] and "failed" in f["ocsp_staple_error"][0]
        cli, rc = w.client_run(port, "--status")
        assert rc == 0 and cli["ocsp_status"] == ["none"]
        cli, rc = w.client_run(port, "--status", "--require-status")
        assert rc == 1 and cli["error"] == ["BAD_CERTIFICATE_STATUS"]
    finally:
        srv.popen.terminate()
        srv.wait(10)


@pytest.mark.parametrize(("args", "message"), [
    (["server", "--psk-identity", "x", "--psk-hex", "00", "--ocsp-staple", "http://127.0.0.1:1/"], "certificate mode"),
    (["server", "--psk-identity", "x", "--psk-hex", "00", "--ocsp-staple", "{tmp}/good.der"], "certificate mode"),
    (["server", "{certs}", "--ocsp-staple", "{tmp}/missing.der"], "cannot read"),
    (["server", "{certs}", "--ocsp-staple", "{tmp}/empty.der"], "is empty"),
    (["server", "--key", "{tmp}/server.key", "--cert", "{tmp}/leaf.pem", "--ca", "{tmp}/root.pem",
      "--ocsp-staple", "http://127.0.0.1:1/"], "issuing CA certificate"),
    (["server", "{certs}", "--ocsp-staple", "ftp://127.0.0.1/"], "cannot read"),
    (["client", "--port", "1", "--psk-identity", "x", "--psk-hex", "00", "--status"], "certificate mode"),
])
def test_option_refusals(tmp_path: Path, args: list[str], message: str) -> None:
    w = World(tmp_path)
    (tmp_path / "good.der").write_bytes(b"\x30\x03\x0a\x01\x00")
    (tmp_path / "empty.der").write_bytes(b"")
    (tmp_path / "leaf.pem").write_bytes(w.server.cert_file.read_bytes().split(b"-----END CERTIFICATE-----")[0]
                                        + b"-----END CERTIFICATE-----\n")
    argv: list[str] = []
    for a in args:
        if a == "{certs}":
            argv += w.server_args()
        else:
            argv.append(a.replace("{tmp}", str(tmp_path)))
    p = subprocess.run([*TLS, *argv], capture_output=True, text=True, timeout=30)
    text = " ".join((p.stdout + p.stderr).replace("\u2502", " ").split())  # rich's error box, rewrapped
    assert p.returncode == 2 and message in text, p.stdout + p.stderr
