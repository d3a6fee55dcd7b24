"""``m2msec maf serve`` seals its own audit trail (``audit_seal_interval_s``,
m2msec.store.autoseal; profile S10, threat model 4.11/5.6): real processes, the trail checked
with Store.verify_audit on a store opened by the test, tampering by raw SQL (AT6)."""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _autoseal_support import ANCHOR, audit_rows, verify_audit
from _autoseal_support import until as _until
from _mafhelp import ADMIN, MAF
from _mafserve import MAFServe, provisioned_config
from typer.testing import CliRunner

from m2msec.maf import MAFClient, MAFClientConfig
from m2msec.maf.cli import app
from m2msec.onem2m.enums import SUID
from m2msec.store import KeyEncryptionKey
from m2msec.store.audit_seal import AuditVerification
from m2msec.tls.engine import PSKCredentials

AE1, AE2 = "//sp.example.com/CAE1", "//sp.example.com/CAE2"
KM1, KM2 = bytes([0x31]) * 32, bytes([0x32]) * 32


def now() -> datetime:
    return datetime.now(UTC)


def _config(tmp: Path, interval: object) -> Path:
    line = "" if interval is None else f"audit_seal_interval_s = {interval}\n"
    return provisioned_config(tmp, MAF, ADMIN, line, ((AE1, f"cae1@{MAF}", KM1), (AE2, f"cae2@{MAF}", KM2)))


def _verify(tmp: Path) -> AuditVerification:
    return verify_audit(f"sqlite:///{tmp / 'maf.db'}", tmp / "kek.hex")


def _audit_rows(tmp: Path) -> int:
    return audit_rows(tmp / "maf.db")


def _client(port: int, kmid: str, km: bytes) -> MAFClient:
    return MAFClient(MAFClientConfig(MAF, ADMIN, "127.0.0.1", port, psk=PSKCredentials(kmid.encode(), km),
                                     timeout=10.0))


def _traffic(port: int, register: bool = True) -> None:
    """Client Registrations (first time), a Key Registration and two Key Retrievals: audit rows."""

    async def main() -> None:
        async with _client(port, f"cae1@{MAF}", KM1) as src, _client(port, f"cae2@{MAF}", KM2) as tgt:
            if register:
                await src.register(now() + timedelta(days=1))
                await tgt.register(now() + timedelta(days=1))
            key = await src.register_key(SUID.MAF_ESPRIM, [AE2], now() + timedelta(hours=1))
            for _ in range(2):
                got = await tgt.retrieve_key(key.key_id)
                assert got.key == key.key

    asyncio.run(asyncio.wait_for(main(), 30))


def _term(srv: MAFServe) -> str:
    """SIGTERM, wait for a clean exit, return stderr."""
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(15) == 0
    return srv.stderr()


def test_serve_seals_what_its_procedures_write_and_logs_the_anchor(tmp_path: Path) -> None:
    cfg = _config(tmp_path, 0.5)
    srv = MAFServe(cfg)  # no --verbose: the anchor lines are INFO all the same
    try:
        _until(lambda: _verify(tmp_path).sealed_rows == _audit_rows(tmp_path) > 0)  # the seal at start
        first = _verify(tmp_path)
        _traffic(srv.port)
        _until(lambda: _verify(tmp_path).sealed_rows == _audit_rows(tmp_path) > first.sealed_rows)
        v = _verify(tmp_path)
        assert v.intact and v.checkpoints >= 2 and v.unsealed_rows == 0
        log = _term(srv)
    finally:
        srv.stop()
    found = ANCHOR.findall(log)
    assert len(found) >= 2
    assert sum(int(n) for n, _, _ in found) == v.sealed_rows
    assert found[-1][1] == str(v.head.seal_no) and v.head.anchor == f"{found[-1][1]}:{found[-1][2]}"  # type: ignore[union-attr]
    assert "INFO:m2msec.store.autoseal:audit sealed" in log and "ERROR" not in log


def test_sigterm_seals_the_last_rows(tmp_path: Path) -> None:
    cfg = _config(tmp_path, 3600)  # only the seal at start and the one at stop fall inside this test
    srv = MAFServe(cfg)
    try:
        _until(lambda: _verify(tmp_path).sealed_rows == _audit_rows(tmp_path) > 0)
        at_start = _verify(tmp_path).sealed_rows
        _traffic(srv.port)
        time.sleep(0.3)
        assert _verify(tmp_path).unsealed_rows > 0
        log = _term(srv)
    finally:
        srv.stop()
    v = _verify(tmp_path)
    assert v.intact and v.unsealed_rows == 0 and v.sealed_rows == _audit_rows(tmp_path) > at_start
    assert v.checkpoints == 2 and len(ANCHOR.findall(log)) == 2


def test_tampering_is_an_error_every_tick_and_the_maf_keeps_answering(tmp_path: Path) -> None:
    cfg = _config(tmp_path, 0.5)
    srv = MAFServe(cfg)
    try:
        _traffic(srv.port)
        _until(lambda: _verify(tmp_path).sealed_rows == _audit_rows(tmp_path))
        with sqlite3.connect(tmp_path / "maf.db") as conn:  # AT6: no KEK, trigger dropped first
            conn.execute("DROP TRIGGER m2msec_audit_no_update")
            conn.execute("UPDATE m2msec_audit SET outcome = 'denied' WHERE seq = 3")
        line = "audit trail does not verify: audit row seq 3 was modified after it was sealed"
        _until(lambda: srv.stderr().count(line) >= 2)
        assert f"ERROR:m2msec.store.autoseal:{line}" in srv.stderr()
        sealed = _verify(tmp_path).sealed_rows
        _traffic(srv.port, register=False)  # still answering, and sealing the new rows
        _until(lambda: _verify(tmp_path).sealed_rows == _audit_rows(tmp_path) > sealed)

        # a forged newest checkpoint: every seal is refused (ERROR), the MAF still answers
        with sqlite3.connect(tmp_path / "maf.db") as conn:
            conn.execute("UPDATE m2msec_audit_seal SET row_count = row_count + 1 "
                         "WHERE seal_no = (SELECT max(seal_no) FROM m2msec_audit_seal)")
        _until(lambda: srv.stderr().count("audit seal refused, the audit trail does not verify") >= 2)
        _traffic(srv.port, register=False)
        assert srv.proc.poll() is None
        log = _term(srv)
    finally:
        srv.stop()
    v = _verify(tmp_path)
    assert [f.kind for f in v.findings].count("modified") == 1 and v.first("checkpoint-forged") is not None
    assert v.unsealed_rows > 0  # nothing sealed on top of the forged checkpoint, not even at stop
    assert "ERROR:m2msec.store.autoseal:audit seal refused" in log


def test_interval_zero_seals_nothing(tmp_path: Path) -> None:
    cfg = _config(tmp_path, 0)
    srv = MAFServe(cfg)
    try:
        _traffic(srv.port)
        time.sleep(0.7)
        log = _term(srv)
    finally:
        srv.stop()
    v = _verify(tmp_path)
    assert v.checkpoints == 0 and v.sealed_rows == 0 and v.unsealed_rows == _audit_rows(tmp_path) > 0
    assert "audit sealed" not in log


def test_default_is_on(tmp_path: Path) -> None:
    from m2msec.maf.server import load_config

    assert load_config(_config(tmp_path, None)).audit_seal_interval == 300.0


@pytest.mark.parametrize(("value", "why"), [
    ('"300"', "must be a number of seconds"),
    ("true", "must be a number of seconds"),
    ("-1", "must be 0 (off) or from 0.5 to 86400 seconds"),
    ("0.1", "must be 0 (off) or from 0.5 to 86400 seconds"),
    ("100000", "must be 0 (off) or from 0.5 to 86400 seconds"),
    ("nan", "must be 0 (off) or from 0.5 to 86400 seconds"),
])
def test_malformed_interval_is_a_configuration_error(tmp_path: Path, value: str, why: str) -> None:
    KeyEncryptionKey.generate().write_file(tmp_path / "kek.hex")
    cfg = tmp_path / "maf.toml"
    cfg.write_text(f'fqdn = "{MAF}"\nstore = "sqlite:///{tmp_path / "maf.db"}"\nkek_file = "kek.hex"\n'
                   f"audit_seal_interval_s = {value}\n", encoding="utf-8")
    r = CliRunner().invoke(app, ["serve", "-c", str(cfg), "--port", "0"])
    assert r.exit_code == 2
    assert "invalid MAF configuration" in r.output and why in " ".join(r.output.split())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="--workers needs SO_REUSEPORT (Linux)")
def test_workers_only_the_parent_seals_and_last_after_the_workers(tmp_path: Path) -> None:
    cfg = _config(tmp_path, 0.5)
    srv = MAFServe(cfg, "--workers", "2")
    try:
        for _ in range(3):  # connections land on both processes
            _traffic(srv.port, register=_ == 0)
        time.sleep(1.2)
        log = _term(srv)
    finally:
        srv.stop()
    pids = set(re.findall(r"INFO:m2msec\.store\.autoseal:(\d+):audit sealed", log))
    assert pids == {str(srv.proc.pid)}, log
    v = _verify(tmp_path)
    assert v.intact and v.unsealed_rows == 0 and v.sealed_rows == _audit_rows(tmp_path)
