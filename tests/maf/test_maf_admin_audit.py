"""MAF admin audit records name the OS user (docs/threat-model.md 4.11): ``maf add-client`` (Km
and certificate clients) and ``maf revoke`` write ``maf-admin`` records whose details carry
``os_user`` and ``os_uid`` (TS-0003 8.8.2 MAF administration)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding
from typer.testing import CliRunner

from m2msec.maf.cli import app
from m2msec.pki import CertificateFlavour, DevCA
from m2msec.store import KeyEncryptionKey, open_store

MAF = "maf.example.com"


def test_admin_commands_record_the_os_user(tmp_path: Path) -> None:
    KeyEncryptionKey.generate().write_file(tmp_path / "kek.hex")
    cfg = tmp_path / "maf.toml"
    cfg.write_text(f'fqdn = "{MAF}"\nstore = "sqlite:///{tmp_path / "maf.db"}"\nkek_file = "kek.hex"\n'
                   '[[admin]]\nfqdn = "sp.example.com"\n')
    now = datetime.now(UTC)
    ca = DevCA.create("Audit CA", now=now - timedelta(hours=1), permit_uri=["sp.example.com"])
    issued = ca.issue(CertificateFlavour.AE_ID, ["//sp.example.com/Ccert"], now=now - timedelta(minutes=5))
    (tmp_path / "c.pem").write_bytes(issued.certificate.public_bytes(Encoding.PEM))

    r = CliRunner(env={"LOGNAME": "op-bob", "USER": "op-bob"})
    c = str(cfg)
    res = r.invoke(app, ["add-client", "-c", c, "--client-id", "//sp.example.com/C1", "--kmid", f"c1@{MAF}",
                         "--km-hex", "33" * 32])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["add-client", "-c", c, "--client-id", "//sp.example.com/Ccert", "--cert", str(tmp_path / "c.pem")])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["revoke", "-c", c, "00" * 16])
    assert res.exit_code == 1  # no live registration: the attempt is still audited
    res = r.invoke(app, ["add-client", "-c", c, "--kmid", f"c1@{MAF}", "--km-hex", "44" * 32])
    assert res.exit_code == 2  # refused (KmID exists): no record

    with open_store(f"sqlite:///{tmp_path / 'maf.db'}") as store:
        admin = sorted((e for e in store.list_audit(limit=50) if e.actor == "maf-admin"), key=lambda e: e.seq)
    assert [(e.action, e.outcome) for e in admin] == [("add-client", "ok"), ("add-client", "ok"),
                                                      ("revoke-key", "absent")]
    for e in admin:
        assert e.details["os_user"] == "op-bob" and e.details["os_uid"] == os.getuid(), e
    assert admin[0].details["kmid"] == f"c1@{MAF}" and admin[1].details["auth"] == "cert"
    trail = json.dumps([e.details for e in admin])
    assert "33" * 32 not in trail and "44" * 32 not in trail
