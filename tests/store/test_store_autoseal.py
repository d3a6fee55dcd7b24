"""m2msec.store.autoseal: the interval setting, the slice check and the AuditSealer task, in
process on SQLite and PostgreSQL (the services' processes: tests/maf/test_maf_autoseal.py,
tests/mef/test_mef_autoseal.py).  Tampering is raw SQL without the KEK, the trigger dropped
first (threat model AT6)."""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import threading
from typing import Any

import pytest

from m2msec.store import KeyEncryptionKey, Store
from m2msec.store.audit_seal import _MIN_SEQ
from m2msec.store.autoseal import AuditSealer, check_slice, parse_interval


def _raw(url: str, *stmts: str) -> None:
    if url.startswith("sqlite://"):
        conn = sqlite3.connect(url[len("sqlite://"):])
        try:
            with conn:
                for s in stmts:
                    conn.execute(s)
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(url) as conn:
        for s in stmts:
            conn.execute(s)  # type: ignore[arg-type]


def _tamper(url: str, *stmts: str) -> None:
    drop = (["DROP TRIGGER IF EXISTS m2msec_audit_no_update", "DROP TRIGGER IF EXISTS m2msec_audit_no_delete"]
            if url.startswith("sqlite://") else ["DROP TRIGGER IF EXISTS m2msec_audit_append_only ON m2msec_audit"])
    _raw(url, *drop, *stmts)


def _seed(store: Store, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        store.append_audit("maf", "key_retrieval", f"C-AE{i}", "ok", {"relativeKeyID": f"r{i}", "n": i})


# ------------------------------------------------------------------ audit_seal_interval_s


@pytest.mark.parametrize(("value", "want"), [(0, 0.0), (0.0, 0.0), (0.5, 0.5), (300, 300.0), (86400, 86400.0)])
def test_interval_accepted(value: Any, want: float) -> None:
    assert parse_interval(value) == want


@pytest.mark.parametrize("value", [-1, 0.1, 0.49, 86401, math.inf, math.nan, -0.5])
def test_interval_out_of_range(value: Any) -> None:
    with pytest.raises(ValueError, match="audit_seal_interval_s must be 0 \\(off\\) or from 0.5 to 86400"):
        parse_interval(value)


@pytest.mark.parametrize("value", ["300", True, None, [300]])
def test_interval_not_a_number(value: Any) -> None:
    with pytest.raises(TypeError, match="must be a number of seconds"):
        parse_interval(value)


# ------------------------------------------------------------------ check_slice


def test_slice_check_of_an_intact_trail_walks_and_wraps(store: Store, kek: KeyEncryptionKey) -> None:
    assert check_slice(store, kek) == check_slice(store, kek)  # nothing sealed: nothing checked
    assert check_slice(store, kek).checked == 0
    _seed(store, 10)
    assert store.seal_audit().sealed_rows == 10
    after, seen = _MIN_SEQ, []
    for _ in range(4):  # 4 + 4 + 2, then wrap
        chk = check_slice(store, kek, after, limit=4)
        assert chk.findings == ()
        seen.append(chk.checked)
        after = chk.next_after
    assert seen == [4, 4, 2, 4]
    with pytest.raises(ValueError):
        check_slice(store, kek, limit=0)


def test_slice_check_names_modified_deleted_and_inserted_rows(store: Store, store_url: str,
                                                              kek: KeyEncryptionKey) -> None:
    _seed(store, 10)
    store.seal_audit()
    _tamper(store_url, "UPDATE m2msec_audit SET outcome = 'FORGED' WHERE seq = 3",
            "DELETE FROM m2msec_audit WHERE seq = 5")
    kinds = [(f.kind, f.seq) for f in check_slice(store, kek).findings]
    assert kinds == [("modified", 3), ("deleted", 5)]
    # a row removed with its seal entry breaks the chain at the next one
    _tamper(store_url, "DELETE FROM m2msec_audit WHERE seq = 7", "DELETE FROM m2msec_audit_mac WHERE seq = 7")
    kinds = [(f.kind, f.seq) for f in check_slice(store, kek).findings]
    assert kinds == [("modified", 3), ("deleted", 5), ("chain-break", 8)]
    # a slice that starts after the damage sees none of it; one that starts before sees it
    assert check_slice(store, kek, 8).findings == ()
    assert [(f.kind, f.seq) for f in check_slice(store, kek, 6).findings] == [("chain-break", 8)]


def test_slice_check_finds_a_row_put_back_into_the_sealed_range(store: Store, store_url: str,
                                                                kek: KeyEncryptionKey) -> None:
    _seed(store, 6)
    store.seal_audit()
    _tamper(store_url, "DELETE FROM m2msec_audit WHERE seq = 4", "DELETE FROM m2msec_audit_mac WHERE seq = 4")
    over = "" if store_url.startswith("sqlite://") else " OVERRIDING SYSTEM VALUE"
    ts = "'2030-01-01T12:00:00.000000Z'" if store_url.startswith("sqlite://") else "'2030-01-01 12:00:00+00'"
    _raw(store_url, f"INSERT INTO m2msec_audit (seq, ts, actor, action, subject, outcome, details){over} "
         f"VALUES (4, {ts}, 'maf', 'key_retrieval', 'forged', 'ok', '{{}}')")
    kinds = [(f.kind, f.seq) for f in check_slice(store, kek).findings]
    assert ("inserted", 4) in kinds and ("chain-break", 5) in kinds


# ------------------------------------------------------------------ AuditSealer


def test_sealer_seals_at_start_every_interval_and_on_close_in_its_own_thread(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="m2msec.store.autoseal")
    threads: list[str] = []
    orig = store.seal_audit

    def recording(*a: Any, **kw: Any) -> Any:
        threads.append(threading.current_thread().name)
        return orig(*a, **kw)

    store.seal_audit = recording  # type: ignore[method-assign]
    _seed(store, 3)

    async def main() -> None:
        sealer = AuditSealer(store, 0.5)
        sealer.start()
        await asyncio.sleep(0.3)  # the seal at start
        assert store.verify_audit().sealed_rows == 3
        _seed(store, 2, 3)
        await asyncio.sleep(0.6)  # one interval
        assert store.verify_audit().sealed_rows == 5
        _seed(store, 4, 5)
        await sealer.close()  # the last seal
        assert sealer.ticks >= 3

    asyncio.run(asyncio.wait_for(main(), 10))
    v = store.verify_audit()
    assert v.intact and v.sealed_rows == 9 and v.unsealed_rows == 0
    assert threads and all(t.startswith("audit-sealer") for t in threads)
    lines = [r.getMessage() for r in caplog.records if r.name == "m2msec.store.autoseal"]
    assert lines[0] == f"audit sealed 3 row(s); anchor 1:{_anchor_hex(store, 1)}"
    assert lines[-1].startswith("audit sealed 4 row(s); anchor ") and lines[-1].endswith(v.head.anchor)  # type: ignore[union-attr]
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)


def _anchor_hex(store: Store, seal_no: int) -> str:
    with store._conn(write=False) as conn:
        mac = store._backend.execute(conn, "SELECT mac FROM m2msec_audit_seal WHERE seal_no = ?", (seal_no,)).fetchone()[0]
    return store._backend.blob_out(mac).hex()[:32]


def test_sealer_logs_tampering_every_tick_and_keeps_sealing(store: Store, store_url: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    _seed(store, 4)
    store.seal_audit()
    _tamper(store_url, "UPDATE m2msec_audit SET subject = 'someone else' WHERE seq = 2")
    sealer = AuditSealer(store, 0.5)
    with caplog.at_level(logging.INFO, logger="m2msec.store.autoseal"):
        sealer.seal_once()
        _seed(store, 1, 4)
        sealer.seal_once()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    line = ("audit trail does not verify: audit row seq 2 was modified after it was sealed "
            "(m2msec store audit verify)")
    assert errors == [line] * 2
    assert store.verify_audit().sealed_rows == 5  # the new row was sealed all the same

    # a forged newest checkpoint: every seal is refused, with an ERROR each time
    caplog.clear()
    _raw(store_url, "UPDATE m2msec_audit_seal SET row_count = row_count + 1 WHERE seal_no = 2")
    _seed(store, 1, 5)
    with caplog.at_level(logging.INFO, logger="m2msec.store.autoseal"):
        assert sealer.seal_once() is None
        assert sealer.seal_once() is None
    refused = [r.getMessage() for r in caplog.records
               if r.levelno == logging.ERROR and r.getMessage().startswith("audit seal refused")]
    assert len(refused) == 2 and "does not authenticate" in refused[0]
    assert not any(r.getMessage().startswith("audit sealed") for r in caplog.records)


def test_sealer_under_another_kek_logs_the_mismatch_only(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    _seed(store, 2)
    store.seal_audit()
    _seed(store, 1, 2)
    other = AuditSealer(store, 1, kek=KeyEncryptionKey.generate())
    with caplog.at_level(logging.INFO, logger="m2msec.store.autoseal"):
        assert other.seal_once() is None
    msgs = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(msgs) == 1 and msgs[0][0] == logging.ERROR and "sealed under KEK id" in msgs[0][1]
    assert store.verify_audit().unsealed_rows == 1


def test_sealer_survives_a_closed_store(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    sealer = AuditSealer(store, 1)
    store.close()
    with caplog.at_level(logging.INFO, logger="m2msec.store.autoseal"):
        assert sealer.seal_once() is None
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.ERROR]
    assert caplog.records[0].getMessage().startswith("audit seal failed: ")


@pytest.mark.parametrize("interval", [0, -1])
def test_sealer_needs_a_positive_interval(store: Store, interval: float) -> None:
    with pytest.raises(ValueError):
        AuditSealer(store, interval)


@pytest.mark.parametrize(("interval", "rows"), [(0.5, 100), (1, 100), (60, 2040), (300, 10000), (86400, 10000)])
def test_rows_rechecked_per_tick_follow_the_interval(store: Store, interval: float, rows: int) -> None:
    assert AuditSealer(store, interval)._check_rows == rows
    assert AuditSealer(store, interval, check_rows=0)._check_rows == 0


def test_a_trail_longer_than_a_slice_is_rechecked_over_several_ticks(store: Store, store_url: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    _seed(store, 9)
    store.seal_audit()
    _tamper(store_url, "UPDATE m2msec_audit SET outcome = 'x' WHERE seq = 8")
    sealer = AuditSealer(store, 1, check_rows=4)
    with caplog.at_level(logging.INFO, logger="m2msec.store.autoseal"):
        per_tick = []
        for _ in range(4):  # rows 1-4, 5-8, 9, then 1-4 again
            caplog.clear()
            sealer.seal_once()
            per_tick.append(sum(r.levelno == logging.ERROR for r in caplog.records))
    assert per_tick == [0, 1, 0, 0]
