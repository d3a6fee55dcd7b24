"""``m2msec maf serve`` with ``[tls] ocsp_staple_url`` (TS-0003 8.1.2.2, RFC 6066 8; profile P22/P23):
the MAF staples the response of a real ``m2msec pki serve-ocsp`` for its own certificate; MAF
Clients with ``ocsp_staple = "require"`` / ``"if-present"`` check it; after ``m2msec pki revoke`` of
the MAF certificate and a SIGHUP they refuse the handshake (BAD_CERTIFICATE_STATUS); with the
responder down at start the MAF still listens, ``require`` is refused and ``if-present`` connects;
``openssl s_client -status`` sees the staple; configuration errors are refused."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from _mafserve import MAFServe

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _ocsp_proc import DevPKI, Leaf, OCSPServe, free_port, now  # noqa: E402

from m2msec.errors import ParseError  # noqa: E402
from m2msec.maf import MAFClient, MAFClientConfig  # noqa: E402
from m2msec.maf.server import load_config, open_config_store  # noqa: E402
from m2msec.maf.service import MAFService  # noqa: E402
from m2msec.pki import CertificateFlavour as F  # noqa: E402
from m2msec.pki import PeerCertInfo  # noqa: E402
from m2msec.store import KeyEncryptionKey  # noqa: E402
from m2msec.tls.engine import CertCredentials, PSKCredentials, TLSFailureReason, TLSHandshakeError  # noqa: E402

MAF = "maf.example.com"
ADMIN = "sp.example.com"
AE1 = "//sp.example.com/CAE1"
OPENSSL = shutil.which("openssl")


class Setup:
    def __init__(self, tmp: Path, staple_url: str, extra: str = "") -> None:
        self.tmp = tmp
        self.pki = DevPKI(tmp)
        self.maf = self.pki.issue(F.FQDN, MAF, "maf")
        self.ae1 = self.pki.issue(F.AE_ID, AE1, "ae1")
        KeyEncryptionKey.generate().write_file(tmp / "kek.hex")
        self.config = tmp / "maf.toml"
        self.config.write_text(
            f'fqdn = "{MAF}"\nstore = "sqlite:///{tmp / "maf.db"}"\nkek_file = "kek.hex"\n'
            f'[tls]\ncert = "maf.pem"\nkey = "maf.key"\nclient_trust_anchors = "root.pem"\nrevocation = "off"\n'
            f'ocsp_staple_url = "{staple_url}"\n{extra}'
            f'[[admin]]\nfqdn = "{ADMIN}"\n', encoding="utf-8")
        cfg = load_config(self.config)
        store = open_config_store(cfg, clock=now)
        try:
            MAFService(store, MAF, admins=cfg.admins, clock=now).add_cert_client(AE1, PeerCertInfo(F.AE_ID, AE1))
        finally:
            store.close()

    def client(self, port: int, staple: str) -> MAFClientConfig:
        a = self.ae1
        return MAFClientConfig(maf_fqdn=MAF, admin_fqdn=ADMIN, host="127.0.0.1", port=port, timeout=10.0,
                               credentials=CertCredentials(a.key, a.cert, a.chain),
                               maf_trust_anchors=(self.pki.ca.trust_anchor,), clock=now, ocsp_staple=staple)

    def handshake(self, port: int, staple: str, *, register: bool = False) -> TLSFailureReason | None:
        """None when the MAF Handshake (and, with ``register``, a Client Registration) succeeded,
        else the handshake's failure reason."""
        async def go() -> None:
            async with MAFClient(self.client(port, staple)) as c:
                if register:
                    rsp = await c.register(now() + timedelta(days=1))
                    assert rsp.maf_client_id == AE1

        try:
            asyncio.run(go())
        except TLSHandshakeError as exc:
            return exc.reason
        return None


def _wait(cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_maf_staples_and_a_revocation_is_refused_after_sighup(tmp_path: Path) -> None:
    s = Setup(tmp_path, "http://127.0.0.1:1/")  # replaced below once the responder runs
    ocsp = OCSPServe(s.pki)
    s.config.write_text(s.config.read_text().replace("http://127.0.0.1:1/", ocsp.url))
    srv = MAFServe(s.config, "--verbose")
    try:
        assert s.handshake(srv.port, "require", register=True) is None  # a GOOD staple was present
        assert s.handshake(srv.port, "if-present") is None
        assert "OCSP staple for serial" in srv.stderr()
        s.pki.revoke(s.maf)
        assert s.handshake(srv.port, "require") is None  # the held GOOD response is still current
        srv.proc.send_signal(signal.SIGHUP)  # query again now
        assert _wait(lambda: s.handshake(srv.port, "require") is TLSFailureReason.BAD_CERTIFICATE_STATUS)
        assert s.handshake(srv.port, "if-present") is TLSFailureReason.BAD_CERTIFICATE_STATUS  # REVOKED
        assert s.handshake(srv.port, "off") is None  # a client that does not ask sees nothing
        assert "is REVOKED" in srv.stderr()
        assert srv.proc.poll() is None
    finally:
        srv.stop()
        ocsp.stop()


def test_responder_down_at_start(tmp_path: Path) -> None:
    port = free_port()
    s = Setup(tmp_path, f"http://127.0.0.1:{port}/")
    srv = MAFServe(s.config)  # starts although the responder does not answer
    ocsp = None
    try:
        assert "OCSP staple query" in srv.stderr() and "no staple" in srv.stderr()
        assert s.handshake(srv.port, "require") is TLSFailureReason.BAD_CERTIFICATE_STATUS
        assert s.handshake(srv.port, "if-present") is None
        ocsp = OCSPServe(s.pki, port)  # the responder comes back; SIGHUP queries at once
        srv.proc.send_signal(signal.SIGHUP)
        assert _wait(lambda: s.handshake(srv.port, "require") is None)
    finally:
        srv.stop()
        if ocsp is not None:
            ocsp.stop()


@pytest.mark.skipif(OPENSSL is None, reason="openssl binary not installed")
def test_openssl_s_client_status_against_maf_serve(tmp_path: Path) -> None:
    s = Setup(tmp_path, "http://127.0.0.1:1/")
    ocsp = OCSPServe(s.pki)
    s.config.write_text(s.config.read_text().replace("http://127.0.0.1:1/", ocsp.url))
    srv = MAFServe(s.config)
    try:
        p = subprocess.run([str(OPENSSL), "s_client", "-connect", f"127.0.0.1:{srv.port}", "-status", "-tls1_2",
                            "-CAfile", "root.pem", "-cert", "ae1.pem", "-key", "ae1.key", "-verify_return_error"],
                           cwd=tmp_path, input="", capture_output=True, text=True, timeout=30)
        text = p.stdout + p.stderr
        assert "OCSP Response Status: successful" in text, text
        assert "Cert Status: good" in text, text
        serial = f"{s.maf.cert.serial_number:X}"
        assert f"Serial Number: {serial.zfill(len(serial) + len(serial) % 2)}" in text, text  # the MAF's certificate
    finally:
        srv.stop()
        ocsp.stop()


@pytest.mark.parametrize(("tls_extra", "message"), [
    ('ocsp_staple_url = "ftp://127.0.0.1/ocsp"\n', "not an http(s) OCSP URL"),
    ('ocsp_staple_url = "http:///ocsp"\n', "not an http(s) OCSP URL"),
    ('ocsp_staple_url = 5\n', "ocsp_staple_url must be an http(s) URL"),
    ('ocsp_staple_urls = "http://127.0.0.1/"\n', "unknown key 'ocsp_staple_urls' in [tls] (did you mean 'ocsp_staple_url'?)"),
    ('ocsp_staple_https_ca = "root.pem"\n', "ocsp_staple_https_ca without ocsp_staple_url"),
    ('ocsp_staple_url = "https://127.0.0.1/"\nocsp_staple_https_ca = "maf.key"\n', "cannot load the https CA file"),
    ('ocsp_staple_url = "https://127.0.0.1/"\nocsp_staple_https_ca = "leaf-only.pem"\n', "holds no CA certificate"),
    ('ocsp_staple_url = "http://127.0.0.1/"\ncert = "leaf-only.pem"\n', "issuing CA certificate"),
])
def test_configuration_errors(tmp_path: Path, tls_extra: str, message: str) -> None:
    pki = DevPKI(tmp_path)
    leaf: Leaf = pki.issue(F.FQDN, MAF, "maf")
    (tmp_path / "leaf-only.pem").write_bytes(leaf.cert_file.read_bytes().split(b"-----END CERTIFICATE-----")[0]
                                             + b"-----END CERTIFICATE-----\n")
    cert_line = '' if 'cert = ' in tls_extra else 'cert = "maf.pem"\n'
    cfg = tmp_path / "maf.toml"
    cfg.write_text(f'fqdn = "{MAF}"\nstore = "sqlite:///{tmp_path / "maf.db"}"\n[tls]\n{cert_line}key = "maf.key"\n'
                   f'client_trust_anchors = "root.pem"\n{tls_extra}')
    with pytest.raises(ParseError) as ei:
        load_config(cfg)
    assert message in str(ei.value)


def test_maf_serve_exits_2_on_a_bad_staple_url(tmp_path: Path) -> None:
    pki = DevPKI(tmp_path)
    pki.issue(F.FQDN, MAF, "maf")
    KeyEncryptionKey.generate().write_file(tmp_path / "kek.hex")
    cfg = tmp_path / "maf.toml"
    cfg.write_text(f'fqdn = "{MAF}"\nstore = "sqlite:///{tmp_path / "maf.db"}"\nkek_file = "kek.hex"\n[tls]\n'
                   f'cert = "maf.pem"\nkey = "maf.key"\nclient_trust_anchors = "root.pem"\n'
                   f'ocsp_staple_url = "gopher://127.0.0.1/"\n')
    p = subprocess.run([sys.executable, "-c", "from m2msec.maf.cli import app; app()", "serve", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "not an http(s) OCSP URL" in p.stderr


def test_client_option_refusals(tmp_path: Path) -> None:
    pki = DevPKI(tmp_path)
    a = pki.issue(F.AE_ID, AE1, "ae1")
    base = {"maf_fqdn": MAF, "admin_fqdn": ADMIN, "host": "127.0.0.1", "port": 1}
    with pytest.raises(ValueError, match="certificate MAF Handshake"):
        MAFClientConfig(**base, psk=PSKCredentials(b"k@" + MAF.encode(), b"\0" * 32), ocsp_staple="require")
    with pytest.raises(ValueError):
        MAFClientConfig(**base, credentials=CertCredentials(a.key, a.cert, a.chain),
                        maf_trust_anchors=(pki.ca.trust_anchor,), clock=now, ocsp_staple="sometimes")
    cfg = MAFClientConfig(**base, credentials=CertCredentials(a.key, a.cert, a.chain),
                          maf_trust_anchors=(pki.ca.trust_anchor,), clock=now, ocsp_staple="if-present")
    check = cfg.tls_config(None).check_ocsp_staple
    assert check is not None and check.require is False  # type: ignore[attr-defined]
    off = MAFClientConfig(**base, credentials=CertCredentials(a.key, a.cert, a.chain),
                          maf_trust_anchors=(pki.ca.trust_anchor,), clock=now)
    assert off.tls_config(None).check_ocsp_staple is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="--workers needs SO_REUSEPORT")
def test_every_worker_staples(tmp_path: Path) -> None:
    """``--workers 2``: each process queries the responder itself, so every connection gets a staple."""
    s = Setup(tmp_path, "http://127.0.0.1:1/")
    ocsp = OCSPServe(s.pki)
    s.config.write_text(s.config.read_text().replace("http://127.0.0.1:1/", ocsp.url))
    srv = MAFServe(s.config, "--workers", "2", "--verbose")
    try:
        for _ in range(8):
            assert s.handshake(srv.port, "require") is None
        assert srv.stderr().count("OCSP staple for serial") == 2  # one query per process
    finally:
        srv.stop()
        ocsp.stop()
