"""``m2msec mef est-enrol --ocsp-staple off|if-present|require`` (TS-0003 8.1.2.2, RFC 6066 8) against a
stapling ``m2msec mef serve`` (``ocsp_staple_url`` = a real ``m2msec pki serve-ocsp``): the certificate
RSPF enrols and prints ``ocsp_status good``; after ``pki revoke`` of the MEF certificate and a SIGHUP
``require`` and ``if-present`` are refused (exit 2, BAD_CERTIFICATE_STATUS) while ``off`` still enrols;
with a PSK or a wrong word the option is a usage error (exit 2)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _mef_process import MEFProcess  # noqa: E402
from _ocsp_proc import DevPKI, OCSPServe, free_port  # noqa: E402

from m2msec.mef.cli import app  # noqa: E402
from m2msec.pki import CertificateFlavour as F  # noqa: E402

SP = "sp.example.com"
MEF_FQDN = "mef.example.com"
AE = f"//{SP}/id-in/Cestaple"


def test_est_enrol_requires_and_shows_the_mef_staple(tmp_path: Path) -> None:
    pki = DevPKI(tmp_path, "EST Staple SP")
    mef_leaf = pki.issue(F.FQDN, MEF_FQDN, "mef")
    ae = pki.issue(F.AE_ID, AE, "ae")
    port = free_port()
    mef = MEFProcess(tmp_path / "mef", MEF_FQDN)
    mef.config.write_text(mef.config.read_text().replace(
        "[mef]\n", f'[mef]\ncert = "{tmp_path / "mef.pem"}"\nkey = "{tmp_path / "mef.key"}"\n'
                   f'enrolee_trust_anchors = "{tmp_path / "root.pem"}"\nrevocation = "off"\n'
                   f'ocsp_staple_url = "http://127.0.0.1:{port}/"\n'))
    r = CliRunner()
    res = r.invoke(app, ["est-ca", "--config", str(mef.config), "--name", "MEF CA", "--permit-uri", SP])
    assert res.exit_code == 0, res.output
    mef.admin("enrolee", "add", "--enrolee-id", AE, "--cert-flavour", "ae-id", "--cert-id", AE)
    res = r.invoke(app, ["enrolee", "est", "--config", str(mef.config), "--enrolee-id", AE, "--flavour", "ae-id",
                         "--identifier", AE])
    assert res.exit_code == 0, res.output
    ocsp = OCSPServe(pki, port)

    def est_enrol(staple: str | None, out: str) -> tuple[int, str]:
        args = ["est-enrol", "--mef", f"127.0.0.1:{mef.port}", "--cert", str(ae.cert_file), "--key",
                str(ae.key_file), "--mef-ca", str(pki.anchor_file), "--mef-fqdn", MEF_FQDN, "--out", str(tmp_path / out)]
        res = r.invoke(app, args + (["--ocsp-staple", staple] if staple else []))
        return res.exit_code, res.output

    try:
        with mef:
            code, out = est_enrol("require", "d1")
            assert code == 0, out
            assert "ocsp_status good" in out and "ocsp_next_update " in out and f"EnroleeID {AE}" in out
            code, out = est_enrol(None, "d2")
            assert code == 0 and "ocsp_status" not in out  # off: no status_request, nothing shown
            pki.revoke(mef_leaf)
            assert mef.proc is not None
            mef.proc.send_signal(signal.SIGHUP)  # the MEF queries its responder again
            deadline = time.monotonic() + 20
            while True:
                code, out = est_enrol("require", "d3")
                if code != 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert code == 2 and "BAD_CERTIFICATE_STATUS" in out, out
            code, out = est_enrol("if-present", "d4")
            assert code == 2 and "BAD_CERTIFICATE_STATUS" in out  # a REVOKED staple is refused
            code, out = est_enrol("off", "d5")
            assert code == 0, out  # the client that does not ask does not see it
    finally:
        ocsp.stop()


def test_ocsp_staple_option_usage_errors(tmp_path: Path) -> None:
    r = CliRunner()
    res = r.invoke(app, ["est-enrol", "--mef", "127.0.0.1:1", "--kpm-id", "k@mef", "--kpm-hex", "00" * 32,
                         "--out", str(tmp_path / "x"), "--ocsp-staple", "require"])
    assert res.exit_code == 2 and "needs the certificate RSPF" in res.output
    res = r.invoke(app, ["est-enrol", "--mef", "127.0.0.1:1", "--kpm-id", "k@mef", "--kpm-hex", "00" * 32,
                         "--out", str(tmp_path / "x"), "--ocsp-staple", "always"])
    assert res.exit_code == 2 and "off, if-present or require" in res.output
    assert not (tmp_path / "x").exists()
