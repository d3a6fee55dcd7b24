"""mef.toml ``enrolee_crl_files`` / ``revocation`` (TS-0003 8.1.2.2 in the certificate RSPF, 8.3.2.2):
the configuration loader, and a ``m2msec mef serve`` process refusing a revoked enrolee certificate
over a real MEF connection, with a SIGHUP reload of the CRL files."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from cryptography.hazmat.primitives.serialization import Encoding

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mef_process import MEFProcess  # noqa: E402

from m2msec.mef import EnrolmentRequest, enrol, mef_tls_config  # noqa: E402
from m2msec.mef.cli import _load, _state  # noqa: E402
from m2msec.pki import CertificateFlavour as F  # noqa: E402
from m2msec.pki import CRLError, CRLStore, DevCA, RevocationPolicy  # noqa: E402
from m2msec.pki.ca import private_key_pem  # noqa: E402
from m2msec.store import KeyEncryptionKey  # noqa: E402
from m2msec.tls.engine import CertCredentials  # noqa: E402

SP = "m2m.example.com"
MEF_FQDN = f"mef.{SP}"
GOOD_AE = f"//{SP}/id-in/Ccrl-good"
BAD_AE = f"//{SP}/id-in/Ccrl-bad"
PAST = datetime.now(UTC) - timedelta(hours=1)


@pytest.fixture(scope="module")
def ca() -> DevCA:
    return DevCA.create("MEF CRL SP", now=PAST, permit_dns=[SP], permit_uri=[SP], intermediate=False)


def write_config(d: Path, extra: str) -> Path:
    if not (d / "mef.kek").exists():
        KeyEncryptionKey.generate().write_file(d / "mef.kek")
    cfg = d / "mef.toml"
    cfg.write_text(f'[mef]\nfqdn = "{MEF_FQDN}"\nstore = "sqlite:///{d / "mef.db"}"\nkek_file = "mef.kek"\n{extra}')
    return cfg


# ------------------------------------------------------------------ configuration loading


def test_crl_files_string_or_list_relative_to_the_config(ca: DevCA, tmp_path: Path) -> None:
    pem = ca.issue_crl(now=PAST).public_bytes(Encoding.PEM)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.crl").write_bytes(pem)
    other = tmp_path / "abs.crl"
    other.write_bytes(ca.issue_crl(now=PAST + timedelta(minutes=1)).public_bytes(Encoding.DER))

    mef = _load(write_config(tmp_path, 'enrolee_crl_files = "sub/a.crl"\n'))
    assert mef["enrolee_crl_files"] == [str((tmp_path / "sub" / "a.crl").resolve())]
    assert mef["revocation"] is RevocationPolicy.IF_AVAILABLE  # the default

    mef = _load(write_config(tmp_path, f'enrolee_crl_files = ["sub/a.crl", "{other}"]\nrevocation = "require"\n'))
    assert mef["enrolee_crl_files"] == [str((tmp_path / "sub" / "a.crl").resolve()), str(other)]
    assert mef["revocation"] is RevocationPolicy.REQUIRE
    state = _state(mef, load_crls=True)
    try:
        assert isinstance(state.enrolee_crls, CRLStore) and state.revocation is RevocationPolicy.REQUIRE
        assert len(state.enrolee_crls) == 1  # same issuer and key: the later CRL (cRLNumber 2) is kept
        (held,) = state.enrolee_crls
        assert held.public_bytes(Encoding.DER) == other.read_bytes()
    finally:
        state.store.close()
    admin = _state(mef)  # admin commands do not read the CRLs
    try:
        assert admin.enrolee_crls is None
    finally:
        admin.store.close()

    mef = _load(write_config(tmp_path, ""))  # without the option: no store, the default policy
    state = _state(mef, load_crls=True)
    try:
        assert state.enrolee_crls is None and state.revocation is RevocationPolicy.IF_AVAILABLE
    finally:
        state.store.close()


@pytest.mark.parametrize("extra", ['revocation = "sometimes"\n', "enrolee_crl_files = 3\n",
                                   'enrolee_crl_files = ["a.crl", 4]\n', 'enrolee_crl_files = [""]\n'])
def test_bad_options_are_refused(tmp_path: Path, extra: str) -> None:
    with pytest.raises(typer.Exit):
        _load(write_config(tmp_path, extra))


def test_unreadable_or_malformed_crl_file(tmp_path: Path) -> None:
    mef = _load(write_config(tmp_path, 'enrolee_crl_files = "missing.crl"\n'))
    with pytest.raises(CRLError, match="cannot read CRL file"):
        _state(mef, load_crls=True)
    (tmp_path / "junk.crl").write_bytes(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    mef = _load(write_config(tmp_path, 'enrolee_crl_files = "junk.crl"\n'))
    with pytest.raises(CRLError, match="malformed CRL"):
        _state(mef, load_crls=True)


# ------------------------------------------------------------------ a real MEF process


def _creds(issued: Any) -> CertCredentials:
    return CertCredentials(issued.private_key, issued.certificate, tuple(issued.chain))


def _enrol(port: int, creds: CertCredentials, anchor: Any) -> Any:
    tls = mef_tls_config(credentials=creds, mef_fqdn=MEF_FQDN, mef_anchors=(anchor,))
    return asyncio.run(asyncio.wait_for(enrol("127.0.0.1", port, tls, EnrolmentRequest(), mef_fqdn=MEF_FQDN), 20))


def _readline(mef: MEFProcess, timeout: float = 15.0) -> str:
    line: list[str] = []
    t = threading.Thread(target=lambda: line.append(mef.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    t.start()
    t.join(timeout)
    return line[0] if line else ""


def test_serve_refuses_a_revoked_enrolee_and_reloads_on_sighup(ca: DevCA, tmp_path: Path) -> None:
    mef_cert = ca.issue(F.FQDN, [MEF_FQDN], now=PAST)
    good, bad = ca.issue(F.AE_ID, [GOOD_AE], now=PAST), ca.issue(F.AE_ID, [BAD_AE], now=PAST)
    ca.revoke(bad.certificate, now=PAST + timedelta(minutes=1))
    (tmp_path / "mef.cert.pem").write_bytes(mef_cert.certificate.public_bytes(Encoding.PEM))
    (tmp_path / "mef.key.pem").write_bytes(private_key_pem(mef_cert.private_key))  # type: ignore[arg-type]
    (tmp_path / "enrolee-ca.pem").write_bytes(ca.trust_anchor.public_bytes(Encoding.PEM))
    crl_dir = tmp_path / "crls"
    crl_dir.mkdir()
    (crl_dir / "enrolee-ca.crl").write_bytes(ca.issue_crl(now=PAST + timedelta(minutes=2)).public_bytes(Encoding.PEM))

    mef = MEFProcess(tmp_path, MEF_FQDN)
    mef.config.write_text(mef.config.read_text().replace(
        "[mef]\n", '[mef]\ncert = "mef.cert.pem"\nkey = "mef.key.pem"\nenrolee_trust_anchors = "enrolee-ca.pem"\n'
                   'enrolee_crl_files = ["crls/enrolee-ca.crl"]\nrevocation = "require"\n'))
    for ae in (GOOD_AE, BAD_AE):
        mef.admin("enrolee", "add", "--enrolee-id", ae, "--cert-flavour", "ae-id", "--cert-id", ae)
    with mef:
        e = _enrol(mef.port, _creds(good), ca.trust_anchor)
        assert e.enrolee_id == GOOD_AE and len(e.ke) == 32
        with pytest.raises(Exception) as ei:
            _enrol(mef.port, _creds(bad), ca.trust_anchor)
        assert "certificate revoked" in str(ei.value)  # the MEF's certificate_revoked alert

        # the CA revokes the good certificate too; the MEF picks the new CRL up on SIGHUP
        ca.revoke(good.certificate, now=PAST + timedelta(minutes=3))
        (crl_dir / "enrolee-ca.crl").write_bytes(ca.issue_crl(now=PAST + timedelta(minutes=4))
                                                 .public_bytes(Encoding.DER))
        os.kill(mef.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
        assert _readline(mef) == "crls reloaded 1\n"
        with pytest.raises(Exception) as ei:
            _enrol(mef.port, _creds(good), ca.trust_anchor)
        assert "certificate revoked" in str(ei.value)

        # a broken CRL file on reload: the previous CRLs stay in force
        (crl_dir / "enrolee-ca.crl").write_bytes(b"not a CRL")
        os.kill(mef.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
        fresh = ca.issue(F.AE_ID, [GOOD_AE], now=PAST)  # not revoked: the held CRL still says good
        assert _enrol(mef.port, _creds(fresh), ca.trust_anchor).enrolee_id == GOOD_AE
        with pytest.raises(Exception) as ei:
            _enrol(mef.port, _creds(good), ca.trust_anchor)
        assert "certificate revoked" in str(ei.value)
        assert mef.proc.poll() is None  # type: ignore[union-attr]
