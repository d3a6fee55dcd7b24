"""``m2msec mef est-ca init | enrolee est | serve | est-enrol`` with the MEF as a real process."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from _mefhelp import ENROLEE, KPM, KPM_ID, MEF_FQDN
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from m2msec.mef.cli import app
from m2msec.mef.est import NS_EST_ISSUED, load_dev_ca
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import identifiers_of
from m2msec.store import KeyEncryptionKey, open_store

SP = "m2m.example.com"
AE_ID = f"//{SP}/id-in/Cdevice1"


def test_est_cli_end_to_end(tmp_path: Path) -> None:
    kek = KeyEncryptionKey.generate()
    kek.write_file(tmp_path / "mef.kek")
    # the MEF's own TLS certificate for the certificate RSPF, from a separate CA
    cfg = tmp_path / "mef.toml"
    cfg.write_text(f'[mef]\nfqdn = "{MEF_FQDN}"\nstore = "sqlite:///{tmp_path / "mef.db"}"\nkek_file = "mef.kek"\n'
                   'host = "127.0.0.1"\nport = 0\ncert = "mef.cert.pem"\nkey = "mef.key.pem"\n')
    r = CliRunner()
    res = r.invoke(app, ["est-ca", "--config", str(cfg), "--name", "MEF CA", "--permit-dns", SP, "--permit-uri", SP,
                         "--root-out", str(tmp_path / "mef-root.pem")])
    assert res.exit_code == 0, res.output
    assert "root SHA-256" in res.output
    res = r.invoke(app, ["est-ca", "--config", str(cfg), "--name", "again"])
    assert res.exit_code == 2 and "already holds" in res.output
    # the MEF's TLS certificate from the MEF CA (read back from the store)
    with open_store(f"sqlite:///{tmp_path / 'mef.db'}", kek) as store:
        ca = load_dev_ca(store)
        assert ca is not None
        from datetime import UTC, datetime

        mef_cert = ca.issue(F.FQDN, [MEF_FQDN], now=datetime.now(UTC))
    pem = serialization.Encoding.PEM
    (tmp_path / "mef.cert.pem").write_bytes(b"".join(c.public_bytes(pem) for c in
                                                     [mef_cert.certificate, *mef_cert.chain]))
    (tmp_path / "mef.key.pem").write_bytes(mef_cert.private_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    res = r.invoke(app, ["enrolee", "add", "--config", str(cfg), "--enrolee-id", ENROLEE, "--kpm-id", KPM_ID,
                         "--kpm-hex", KPM.hex()])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["enrolee", "est", "--config", str(cfg), "--enrolee-id", ENROLEE, "--flavour", "ae-id",
                         "--identifier", AE_ID, "--security-type", "SAEF", "--security-type", "ESData-Signature"])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["enrolee", "est", "--config", str(cfg), "--enrolee-id", "/id-in/Cnobody", "--flavour",
                         "ae-id", "--identifier", AE_ID])
    assert res.exit_code == 2 and "not configured" in res.output

    proc = subprocess.Popen([sys.executable, "-m", "m2msec.mef.cli", "serve", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("listening "), line
        port = int(line.rsplit(":", 1)[1])
        out = tmp_path / "device"
        res = r.invoke(app, ["est-enrol", "--mef", f"127.0.0.1:{port}", "--kpm-id", KPM_ID, "--kpm-hex", KPM.hex(),
                             "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert f"EnroleeID {ENROLEE}" in res.output and "security-types SAEF ESData-Signature" in res.output
        assert stat.S_IMODE(os.stat(out / "key.pem").st_mode) == 0o600
        cert = x509.load_pem_x509_certificates((out / "cert.pem").read_bytes())[0]
        assert identifiers_of(cert, F.AE_ID) == [AE_ID]
        assert json.loads((out / "est.json").read_text())["serial"] == format(cert.serial_number, "x")
        assert KPM.hex() not in res.output
        # re-enrol with the installed certificate over the certificate RSPF (serve trusts its CA)
        out2 = tmp_path / "device2"
        res = r.invoke(app, ["est-enrol", "--mef", f"127.0.0.1:{port}", "--cert", str(out / "cert.pem"),
                             "--key", str(out / "key.pem"), "--mef-ca", str(out / "trust-anchors.pem"),
                             "--mef-fqdn", MEF_FQDN, "--reenroll", "--out", str(out2)])
        assert res.exit_code == 0, res.output
        cert2 = x509.load_pem_x509_certificates((out2 / "cert.pem").read_bytes())[0]
        assert cert2.serial_number != cert.serial_number
        # a refusal is reported, not a traceback
        res = r.invoke(app, ["est-enrol", "--mef", f"127.0.0.1:{port}", "--kpm-id", KPM_ID, "--kpm-hex",
                             KPM.hex(), "--reenroll", "--out", str(tmp_path / "x")])
        assert res.exit_code == 2 and "simplereenroll" in res.output
    finally:
        proc.terminate()
        proc.wait(10)
    with open_store(f"sqlite:///{tmp_path / 'mef.db'}", kek) as store:
        docs = [rec.doc for rec in store.list_records(NS_EST_ISSUED)]
    assert len(docs) == 2 and all(d["installed"] for d in docs)
