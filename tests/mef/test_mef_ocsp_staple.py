"""``m2msec mef serve`` with ``[mef] ocsp_staple_url`` (TS-0003 8.1.2.2, RFC 6066 8; profile P22/P23):
the MEF staples the response of a real ``m2msec pki serve-ocsp`` for its own certificate; an enrolee
with ``mef_tls_config(ocsp_staple="require")`` enrols; after ``m2msec pki revoke`` of the MEF
certificate and a SIGHUP the handshake is refused (BAD_CERTIFICATE_STATUS); with the responder
down at start the MEF listens, ``require`` is refused and ``if-present`` connects; configuration
errors exit 2."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _mef_process import MEFProcess  # noqa: E402
from _ocsp_proc import DevPKI, Leaf, OCSPServe, free_port  # noqa: E402

from m2msec.mef import EnrolmentRequest, enrol, mef_tls_config  # noqa: E402
from m2msec.mef.cli import app  # noqa: E402
from m2msec.pki import CertificateFlavour as F  # noqa: E402
from m2msec.tls.aio import open_connection  # noqa: E402
from m2msec.tls.engine import CertCredentials, PSKCredentials, TLSFailureReason, TLSHandshakeError  # noqa: E402

SP = "sp.example.com"
MEF_FQDN = "mef.example.com"
AE = f"//{SP}/id-in/Cstaple"


class Setup:
    def __init__(self, tmp: Path, staple_url: str) -> None:
        self.pki = DevPKI(tmp)
        self.mef_leaf = self.pki.issue(F.FQDN, MEF_FQDN, "mef")
        self.ae: Leaf = self.pki.issue(F.AE_ID, AE, "ae")
        self.mef = MEFProcess(tmp / "mef", MEF_FQDN)
        self.mef.config.write_text(self.mef.config.read_text().replace(
            "[mef]\n", f'[mef]\ncert = "{tmp / "mef.pem"}"\nkey = "{tmp / "mef.key"}"\n'
                       f'enrolee_trust_anchors = "{tmp / "root.pem"}"\nrevocation = "off"\n'
                       f'ocsp_staple_url = "{staple_url}"\n'))
        self.mef.admin("enrolee", "add", "--enrolee-id", AE, "--cert-flavour", "ae-id", "--cert-id", AE)

    def tls(self, staple: str) -> object:
        a = self.ae
        return mef_tls_config(credentials=CertCredentials(a.key, a.cert, a.chain), mef_fqdn=MEF_FQDN,
                              mef_anchors=(self.pki.ca.trust_anchor,), ocsp_staple=staple)

    def handshake(self, staple: str) -> TLSFailureReason | None:
        async def go() -> None:
            _, w = await open_connection("127.0.0.1", self.mef.port, self.tls(staple), timeout=10)  # type: ignore[arg-type]
            w.close()

        try:
            asyncio.run(go())
        except TLSHandshakeError as exc:
            return exc.reason
        return None

    def stderr(self) -> str:
        self.mef._err.seek(0)  # noqa: SLF001
        return self.mef._err.read().decode("utf-8", "replace")  # noqa: SLF001


def _wait(cond: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_mef_staples_and_a_revocation_is_refused_after_sighup(tmp_path: Path) -> None:
    port = free_port()
    s = Setup(tmp_path, f"http://127.0.0.1:{port}/")
    ocsp = OCSPServe(s.pki, port)
    try:
        with s.mef:
            e = asyncio.run(asyncio.wait_for(enrol("127.0.0.1", s.mef.port, s.tls("require"),  # type: ignore[arg-type]
                                                   EnrolmentRequest(), mef_fqdn=MEF_FQDN), 20))
            assert e.enrolee_id == AE  # enrolled over a handshake with a verified GOOD staple
            assert s.handshake("if-present") is None
            s.pki.revoke(s.mef_leaf)
            s.mef.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            assert _wait(lambda: s.handshake("require") is TLSFailureReason.BAD_CERTIFICATE_STATUS)
            assert s.handshake("if-present") is TLSFailureReason.BAD_CERTIFICATE_STATUS
            assert s.handshake("off") is None
            assert "is REVOKED" in s.stderr() and s.mef.proc.poll() is None  # type: ignore[union-attr]
    finally:
        ocsp.stop()


def test_mef_responder_down_at_start(tmp_path: Path) -> None:
    s = Setup(tmp_path, f"http://127.0.0.1:{free_port()}/")
    with s.mef:
        assert "OCSP staple query" in s.stderr() and "no staple" in s.stderr()
        assert s.handshake("require") is TLSFailureReason.BAD_CERTIFICATE_STATUS
        assert s.handshake("if-present") is None


@pytest.mark.parametrize(("extra", "message"), [
    ('ocsp_staple_url = "ftp://127.0.0.1/"\n', "ocsp_staple_url must be an http:// or https:// URL"),
    ('ocsp_staple_url = "http:///x"\n', "ocsp_staple_url must be an http:// or https:// URL"),
    ('ocsp_staple_url = "http://127.0.0.1/"\n', "ocsp_staple_url needs cert and key"),
    ('ocsp_staple_https_ca = "ca.pem"\n', "ocsp_staple_https_ca without ocsp_staple_url"),
    ('ocsp_staple_https_ca = "nope.pem"\nocsp_staple_url = "https://127.0.0.1/"\n', "cannot load the https CA file"),
    ('ocsp_stapel_url = "http://127.0.0.1/"\n', "unknown key 'ocsp_stapel_url' in [mef] (did you mean 'ocsp_staple_url'?)"),
])
def test_configuration_errors(tmp_path: Path, extra: str, message: str) -> None:
    DevPKI(tmp_path)
    (tmp_path / "ca.pem").write_bytes((tmp_path / "root.pem").read_bytes())
    cfg = tmp_path / "mef.toml"
    cfg.write_text(f'[mef]\nfqdn = "{MEF_FQDN}"\nstore = "sqlite:///{tmp_path / "mef.db"}"\n' + extra)
    res = CliRunner().invoke(app, ["enrolee", "list", "--config", str(cfg)])
    assert res.exit_code == 2 and message in res.output, res.output


def test_serve_refuses_a_certificate_file_without_the_issuer(tmp_path: Path) -> None:
    pki = DevPKI(tmp_path)
    leaf = pki.issue(F.FQDN, MEF_FQDN, "mef")
    (tmp_path / "leaf-only.pem").write_bytes(leaf.cert.public_bytes(Encoding.PEM))
    mef = MEFProcess(tmp_path / "mef", MEF_FQDN)
    mef.config.write_text(mef.config.read_text().replace(
        "[mef]\n", f'[mef]\ncert = "{tmp_path / "leaf-only.pem"}"\nkey = "{tmp_path / "mef.key"}"\n'
                   f'enrolee_trust_anchors = "{tmp_path / "root.pem"}"\nocsp_staple_url = "http://127.0.0.1:1/"\n'))
    res = CliRunner().invoke(app, ["serve", "--config", str(mef.config)])
    assert res.exit_code == 2 and "ocsp_staple_url" in res.output and "issuing CA certificate" in res.output


def test_mef_tls_config_option_refusals(tmp_path: Path) -> None:
    pki = DevPKI(tmp_path)
    a = pki.issue(F.AE_ID, AE, "ae")
    with pytest.raises(ValueError, match="certificate mode"):
        mef_tls_config(psk=PSKCredentials(b"kpm", b"\0" * 32), ocsp_staple="require")
    with pytest.raises(ValueError):
        mef_tls_config(credentials=CertCredentials(a.key, a.cert, a.chain), mef_fqdn=MEF_FQDN,
                       mef_anchors=(pki.ca.trust_anchor,), ocsp_staple="always")
    assert mef_tls_config(psk=PSKCredentials(b"kpm", b"\0" * 32)).check_ocsp_staple is None
    tls = mef_tls_config(credentials=CertCredentials(a.key, a.cert, a.chain), mef_fqdn=MEF_FQDN,
                         mef_anchors=(pki.ca.trust_anchor,), ocsp_staple="require")
    assert tls.check_ocsp_staple is not None and tls.check_ocsp_staple.require is True  # type: ignore[attr-defined]
