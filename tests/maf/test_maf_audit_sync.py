"""``maf.toml`` ``audit_sync_interval_s``: the Key Retrieval audit records are committed before
the key is sent, so a ``kill -9`` of a real ``m2msec maf serve`` process right after the
answers keeps every one of them, even when their disk sync is a minute away (F9, threat model
4.11).  ``0`` (an fsync per audit commit) serves the same traffic."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _mafhelp import ADMIN, MAF
from _mafserve import MAFServe, provisioned_config

from m2msec.maf import MAFClient, MAFClientConfig
from m2msec.onem2m.enums import SUID
from m2msec.store import KeyEncryptionKey, open_store
from m2msec.tls.engine import PSKCredentials

AE1, AE2 = "//sp.example.com/CAE1", "//sp.example.com/CAE2"
KM1, KM2 = bytes([0x41]) * 32, bytes([0x42]) * 32


def now() -> datetime:
    return datetime.now(UTC)


def _config(tmp: Path, interval: float) -> Path:
    return provisioned_config(tmp, MAF, ADMIN, f"audit_sync_interval_s = {interval}\naudit_seal_interval_s = 0\n",
                              ((AE1, f"cae1@{MAF}", KM1), (AE2, f"cae2@{MAF}", KM2)))


def _client(port: int, kmid: str, km: bytes) -> MAFClient:
    return MAFClient(MAFClientConfig(MAF, ADMIN, "127.0.0.1", port, psk=PSKCredentials(kmid.encode(), km),
                                     timeout=10.0))


def _retrievals(port: int, n: int) -> str:
    """Register both clients and one key, retrieve it ``n`` times; the key's relative ID."""

    async def main() -> str:
        async with _client(port, f"cae1@{MAF}", KM1) as src, _client(port, f"cae2@{MAF}", KM2) as tgt:
            await src.register(now() + timedelta(days=1))
            await tgt.register(now() + timedelta(days=1))
            key = await src.register_key(SUID.MAF_ESPRIM, [AE2], now() + timedelta(hours=1))
            for _ in range(n):
                assert (await tgt.retrieve_key(key.key_id)).key == key.key
            return key.key_id.split("@", 1)[0]

    return asyncio.run(asyncio.wait_for(main(), 30))


def _audited(tmp: Path, rel: str) -> int:
    with open_store(f"sqlite:///{tmp / 'maf.db'}", KeyEncryptionKey.from_file(tmp / "kek.hex")) as s:
        return sum(1 for a in s.list_audit(limit=None)
                   if a.action == "key_retrieval" and a.outcome == "ok" and a.details.get("relativeKeyID") == rel)


@pytest.mark.parametrize("interval", [60, 0])
def test_kill_9_after_the_answers_keeps_every_retrieval_record(tmp_path: Path, interval: float) -> None:
    srv = MAFServe(_config(tmp_path, interval))
    try:
        rel = _retrievals(srv.port, 5)
        srv.proc.send_signal(signal.SIGKILL)  # no shutdown, no sync, no checkpoint
        assert srv.proc.wait(10) == -signal.SIGKILL
    finally:
        srv.stop()
    assert _audited(tmp_path, rel) == 5
