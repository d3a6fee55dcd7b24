"""``m2msec pki serve-ocsp``: the development CA's OCSP responder as a real process, named in the
leaves' authorityInfoAccess, with revocations by ``m2msec pki revoke`` from another process; checked by
:class:`m2msec.pki.ocsp_http.OCSPClient` and ``openssl ocsp``."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

from _pkiproc import free_port, pki_env, read_line, run_pki

from m2msec.pki import DevCA
from m2msec.pki.ocsp import OCSPStatus
from m2msec.pki.ocsp_http import OCSPClient


PASS = "serve-ocsp-test"
ENV = pki_env(PASS)


def _pki(*args: str) -> subprocess.CompletedProcess[str]:
    return run_pki(ENV, *args)


_free_port = free_port
_line = read_line


def _ocsp_urls(cert: x509.Certificate) -> list[str]:
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    return [d.access_location.value for d in aia if d.access_method == AuthorityInformationAccessOID.OCSP]


def test_serve_ocsp_process(tmp_path: Path) -> None:
    port = _free_port()
    ca_dir = tmp_path / "ca"
    url = f"http://127.0.0.1:{port}/"
    r = _pki("init-ca", str(ca_dir), "--name", "Serve OCSP", "--permit-uri", "m2m.example.com", "--intermediate",
             "--ocsp-url", url)
    assert r.returncode == 0, r.stderr
    r = _pki("issue", str(ca_dir), "--flavour", "ae-id", "--id", "//m2m.example.com/id-in/Cocsp",
             "--out", str(tmp_path / "leaf"))
    assert r.returncode == 0, r.stderr + r.stdout
    leaf_pem = tmp_path / "leaf.crt.pem"
    leaf = x509.load_pem_x509_certificates(leaf_pem.read_bytes())[0]
    assert _ocsp_urls(leaf) == [url]
    ca = DevCA.load(ca_dir, PASS.encode())
    assert ca.ocsp_url == url and ca.intermediate_cert is not None
    proc = subprocess.Popen([sys.executable, "-c", "from m2msec.pki.cli import app; app()", "serve-ocsp", str(ca_dir),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert _line(proc) == f"ocsp listening 127.0.0.1:{port}\n"
        client = OCSPClient(url)
        assert client.query_sync(leaf, ca.intermediate_cert).status is OCSPStatus.GOOD
        assert client.query_sync(ca.intermediate_cert, ca.root_cert).status is OCSPStatus.GOOD
        r = _pki("revoke", str(ca_dir), "--cert", str(leaf_pem), "--reason", "keyCompromise")
        assert r.returncode == 0, r.stderr
        res = client.query_sync(leaf, ca.intermediate_cert)
        assert res.status is OCSPStatus.REVOKED and res.revocation_reason is x509.ReasonFlags.key_compromise
        if shutil.which("openssl"):
            (tmp_path / "chain.pem").write_bytes((ca_dir / "intermediate.crt.pem").read_bytes()
                                                 + (ca_dir / "root.crt.pem").read_bytes())
            o = subprocess.run(["openssl", "ocsp", "-issuer", str(ca_dir / "intermediate.crt.pem"), "-cert",
                                str(leaf_pem), "-url", url, "-CAfile", str(tmp_path / "chain.pem"), "-timeout", "10"],
                               capture_output=True, text=True, timeout=30)
            assert "Response verify OK" in o.stdout + o.stderr and ": revoked" in o.stdout, o.stdout + o.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(10)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
    assert rc == 0


def test_serve_ocsp_port_in_use(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    assert _pki("init-ca", str(ca_dir), "--name", "Busy OCSP", "--permit-uri", "m2m.example.com").returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = _pki("serve-ocsp", str(ca_dir), "--port", str(s.getsockname()[1]))
    assert r.returncode == 1 and "cannot listen" in r.stderr
    r = _pki("serve-ocsp", str(ca_dir), "--path", "nope")
    assert r.returncode == 1 and "--path" in r.stderr
    r = _pki("serve-ocsp", str(tmp_path / "missing"))
    assert r.returncode == 1
