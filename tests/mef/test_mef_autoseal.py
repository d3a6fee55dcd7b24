"""``m2msec mef serve`` seals its own audit trail (``[mef] audit_seal_interval_s``,
m2msec.store.autoseal; profile S10, threat model 4.11/5.6): real processes, the trail checked with
Store.verify_audit, tampering by raw SQL without the KEK (AT6)."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _autoseal_support import ANCHOR, audit_rows, verify_audit
from _autoseal_support import until as _until
from _mef_process import MEFProcess

from m2msec.mef.cli import app
from m2msec.store import KeyEncryptionKey
from m2msec.store.audit_seal import AuditVerification

MEF_FQDN = "mef.m2m.example.com"
runner = CliRunner()


def _mef(tmp: Path, interval: object) -> tuple[MEFProcess, bytes]:
    mef = MEFProcess(tmp / "mef", MEF_FQDN)
    if interval is not None:  # the last table of the file is [mef]
        mef.config.write_text(mef.config.read_text() + f"audit_seal_interval_s = {interval}\n")
    kpm = os.urandom(32)
    mef.admin("enrolee", "add", "--enrolee-id", "Cdev", "--kpm-id", "kpm-dev", "--kpm-hex", kpm.hex(),
              "--target", "/id-in=23")
    mef.admin("target", "add", "--target-id", "/id-in", "--psk-id", "cse-psk", "--psk-hex", "9f" * 32)
    return mef, kpm


def _enrol(mef: MEFProcess, kpm: bytes) -> None:
    r = runner.invoke(app, ["enrol", "--mef", f"127.0.0.1:{mef.port}", "--kpm-id", "kpm-dev", "--kpm-hex", kpm.hex()])
    assert r.exit_code == 0 and "EnroleeID Cdev" in r.output, r.output


def _stderr(mef: MEFProcess) -> str:
    mef._err.seek(0)
    return mef._err.read().decode("utf-8", "replace")


def _term(mef: MEFProcess) -> str:
    assert mef.proc is not None
    mef.proc.send_signal(signal.SIGTERM)
    mef.proc.wait(15)
    return _stderr(mef)


def _db(mef: MEFProcess) -> Path:
    return mef.config.parent / "mef.db"


def _verify(mef: MEFProcess) -> AuditVerification:
    return verify_audit(f"sqlite:///{_db(mef)}", mef.config.parent / "mef.kek")


def _rows(mef: MEFProcess) -> int:
    return audit_rows(_db(mef))


def test_serve_seals_enrolments_logs_anchors_and_reports_tampering(tmp_path: Path) -> None:
    mef, kpm = _mef(tmp_path, 0.5)
    with mef:
        _until(lambda: _verify(mef).sealed_rows == _rows(mef) == 2)  # enrolee-add, target-add: sealed at start
        _enrol(mef, kpm)
        _until(lambda: _verify(mef).sealed_rows == _rows(mef) == 3)
        v = _verify(mef)
        assert v.intact and v.checkpoints == 2
        found = ANCHOR.findall(_stderr(mef))
        assert [n for n, _, _ in found] == ["2", "1"]
        assert f"{found[-1][1]}:{found[-1][2]}" == v.head.anchor  # type: ignore[union-attr]

        with sqlite3.connect(_db(mef)) as conn:  # AT6: trigger dropped, the enrolment row rewritten
            conn.execute("DROP TRIGGER m2msec_audit_no_update")
            conn.execute("UPDATE m2msec_audit SET subject = 'Cother' WHERE seq = 3")
        line = "ERROR:m2msec.store.autoseal:audit trail does not verify: audit row seq 3 was modified"
        _until(lambda: _stderr(mef).count(line) >= 2)
        _enrol(mef, kpm)  # the MEF keeps answering, and sealing
        _until(lambda: _verify(mef).sealed_rows == _rows(mef) == 4)
        assert mef.proc is not None and mef.proc.poll() is None
    v = _verify(mef)
    assert [(f.kind, f.seq) for f in v.findings] == [("modified", 3)]


def test_sigterm_seals_the_last_rows(tmp_path: Path) -> None:
    mef, kpm = _mef(tmp_path, 3600)
    mef.start()
    try:
        _until(lambda: _verify(mef).sealed_rows == 2)
        _enrol(mef, kpm)
        _enrol(mef, kpm)
        time.sleep(0.3)
        assert _verify(mef).unsealed_rows == 2
        log = _term(mef)
        assert mef.proc is not None and mef.proc.returncode == 0
    finally:
        mef.stop()
    v = _verify(mef)
    assert v.intact and v.unsealed_rows == 0 and v.sealed_rows == 4 and v.checkpoints == 2
    assert [n for n, _, _ in ANCHOR.findall(log)] == ["2", "2"]


def test_interval_zero_seals_nothing_and_default_is_on(tmp_path: Path) -> None:
    mef, kpm = _mef(tmp_path / "off", 0)
    mef.start()
    try:
        _enrol(mef, kpm)
        time.sleep(0.7)
        log = _term(mef)
    finally:
        mef.stop()
    v = _verify(mef)
    assert v.checkpoints == 0 and v.unsealed_rows == 3 and "audit sealed" not in log

    on, _ = _mef(tmp_path / "default", None)  # no key: 300 s, and the seal at start
    on.start()
    try:
        _until(lambda: _verify(on).sealed_rows == 2)
    finally:
        on.stop()


@pytest.mark.parametrize(("value", "why"), [
    ('"300"', "must be a number of seconds"),
    ("false", "must be a number of seconds"),
    ("-5", "must be 0 (off) or from 0.5 to 86400 seconds"),
    ("0.2", "must be 0 (off) or from 0.5 to 86400 seconds"),
    ("86401", "must be 0 (off) or from 0.5 to 86400 seconds"),
])
def test_malformed_interval_is_a_configuration_error(tmp_path: Path, value: str, why: str) -> None:
    KeyEncryptionKey.generate().write_file(tmp_path / "mef.kek")
    cfg = tmp_path / "mef.toml"
    cfg.write_text(f'[mef]\nfqdn = "{MEF_FQDN}"\nstore = "sqlite:///{tmp_path / "mef.db"}"\nkek_file = "mef.kek"\n'
                   f"audit_seal_interval_s = {value}\n")
    r = runner.invoke(app, ["serve", "--config", str(cfg), "--port", "0"])
    assert r.exit_code == 2
    assert f"[mef] audit_seal_interval_s {why}" in " ".join(r.output.split())
