"""The MEF as a real process: CLI administration, kill -9 during 200 concurrent enrolments, restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from _mefhelp import B_PSK, B_PSK_ID, ENROLEE_B, MEF_FQDN
from typer.testing import CliRunner

from m2msec.keys import derive_kpsa
from m2msec.mef import EnroleeConfig, EnrolmentRequest, MEFKeyFetcher, MEFState, TargetGrant, enrol, mef_tls_config
from m2msec.mef.cli import app
from m2msec.mef.state import NS_KE, NS_KRE, NS_TOKEN, hash_token
from m2msec.store import KeyEncryptionKey, open_store
from m2msec.tls.engine import PSKCredentials

N = 200  # concurrent enrolments (issue: "kill -9 the MEF during 200 concurrent enrolments")
KILL_AFTER = 40  # SIGKILL the MEF once this many enrolments were acknowledged


def _setup(tmp: Path) -> tuple[Path, KeyEncryptionKey]:
    kek = KeyEncryptionKey.generate()
    kek.write_file(tmp / "mef.kek")
    cfg = tmp / "mef.toml"
    cfg.write_text(f'[mef]\nfqdn = "{MEF_FQDN}"\nstore = "sqlite:///{tmp / "mef.db"}"\nkek_file = "mef.kek"\n'
                   'host = "127.0.0.1"\nport = 0\n')
    return cfg, kek


def _start(cfg: Path) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen([sys.executable, "-m", "m2msec.mef.cli", "serve", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert line.startswith("listening "), (line, proc.stderr.read().decode() if proc.poll() is not None else "")
    return proc, int(line.rsplit(":", 1)[1])


def test_cli_administration(tmp_path: Path) -> None:
    cfg, _ = _setup(tmp_path)
    r = CliRunner()
    res = r.invoke(app, ["enrolee", "add", "--config", str(cfg), "--enrolee-id", "/id-in/Ccli", "--kpm-id", "kpm-cli",
                         "--kpm-hex", "11" * 32, "--target", f"{ENROLEE_B}=22,23", "--expiry", "600", "--token"])
    assert res.exit_code == 0, res.output
    token = res.output.split("enrolment-token ")[1].strip()
    assert "11" * 32 not in res.output
    res = r.invoke(app, ["target", "add", "--config", str(cfg), "--target-id", ENROLEE_B, "--psk-id", B_PSK_ID,
                         "--psk-hex", B_PSK.hex()])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["enrolee", "list", "--config", str(cfg)])
    assert "/id-in/Ccli\tkpm:kpm-cli" in res.output and f"{ENROLEE_B}=22,23" in res.output
    res = r.invoke(app, ["enrolee", "add", "--config", str(cfg), "--enrolee-id", "/id-in/Cbad", "--target", "x=21"])
    assert res.exit_code != 0
    proc, port = _start(cfg)
    try:
        res = r.invoke(app, ["enrol", "--mef", f"127.0.0.1:{port}", "--kpm-id", "kpm-cli", "--kpm-hex", "11" * 32])
        assert res.exit_code == 2 and "Enrolment-Token" in res.output  # token required
        res = r.invoke(app, ["enrol", "--mef", f"127.0.0.1:{port}", "--kpm-id", "kpm-cli", "--kpm-hex", "11" * 32,
                             "--token", token])
        assert res.exit_code == 0, res.output
        assert f"@{MEF_FQDN}" in res.output and f"direct-key {ENROLEE_B} SUID 22" in res.output
        res = r.invoke(app, ["enrolee", "revoke", "--config", str(cfg), "--enrolee-id", "/id-in/Ccli"])
        assert res.exit_code == 0 and "1 keys removed" not in res.output and "revoked (2 keys removed, 0 certificates revoked)" in res.output
    finally:
        proc.terminate()
        proc.wait(10)


def test_kill_9_during_concurrent_enrolments(tmp_path: Path) -> None:
    cfg, kek = _setup(tmp_path)
    url = f"sqlite:///{tmp_path / 'mef.db'}"
    store = open_store(url, kek)
    from datetime import UTC, datetime

    admin = MEFState(store, MEF_FQDN, lambda: datetime.now(UTC))
    from m2msec.mef import TargetConfig

    admin.add_target(TargetConfig(ENROLEE_B, psk_id=B_PSK_ID), psk=B_PSK)
    tokens: dict[str, str] = {}
    for i in range(N):
        eid = f"/id-in/Cdev{i:02d}"
        admin.add_enrolee(EnroleeConfig(eid, kpm_id=f"kpm-{i:02d}", targets=(TargetGrant(ENROLEE_B, (22,)),),
                                        token_required=True), kpm=bytes([i]) * 32)
        tokens[eid] = admin.issue_token(eid)

    proc, port = _start(cfg)
    acknowledged: dict[str, Any] = {}

    async def one(i: int) -> None:
        eid = f"/id-in/Cdev{i:02d}"
        tls = mef_tls_config(psk=PSKCredentials(f"kpm-{i:02d}".encode(), bytes([i]) * 32))
        e = await enrol("127.0.0.1", port, tls, EnrolmentRequest(token=tokens[eid]), timeout=10)
        acknowledged[eid] = e
        if len(acknowledged) == KILL_AFTER:
            os.kill(proc.pid, signal.SIGKILL)

    async def crash() -> list[Any]:
        return await asyncio.gather(*(one(i) for i in range(N)), return_exceptions=True)

    results = asyncio.run(crash())
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    failures = [r for r in results if isinstance(r, BaseException)]
    assert KILL_AFTER <= len(acknowledged) < N and len(failures) == N - len(acknowledged)

    # nothing half-written: per enrolee, Ke <=> Kre <=> token consumed <=> audit entry
    audited = {a.subject for a in store.list_audit(limit=None) if a.action == "enrol"}
    for i in range(N):
        eid = f"/id-in/Cdev{i:02d}"
        kes = store.list_credentials(NS_KE, where={"enrolee_id": eid})
        kres = store.list_credentials(NS_KRE, where={"enrolee_id": eid})
        consumed = store.find_record(NS_TOKEN, hash_token(tokens[eid])) is None
        assert len(kes) == len(kres) == int(consumed) == int(eid in audited), eid
        if eid in acknowledged:
            assert kes[0].cred_id == acknowledged[eid].ke_id and kes[0].secret == acknowledged[eid].ke
            assert kres[0].secret == acknowledged[eid].kre

    proc2, port2 = _start(cfg)
    try:
        async def usable() -> None:
            f = MEFKeyFetcher("127.0.0.1", port2, mef_tls_config(psk=PSKCredentials(B_PSK_ID.encode(), B_PSK)),
                              target_id=ENROLEE_B, mef_fqdn=MEF_FQDN)
            for e in acknowledged.values():
                assert (await f.fetch(e.ke_id, 22)).key == derive_kpsa(e.ke, ENROLEE_B)

        asyncio.run(asyncio.wait_for(usable(), 30))
    finally:
        proc2.terminate()
        proc2.wait(10)
        store.close()
