"""Store.seal_audit / Store.verify_audit on SQLite and PostgreSQL (profile S10, threat model 4.11).

Every tamper is made the way AT6 would make it: raw SQL on the database after dropping the
append-only trigger, without the KEK."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from m2msec.store import KeyEncryptionKey, Store, StoreError, open_store
from m2msec.store.audit_seal import AuditSealError, AuditSealKekMismatch, AuditTampered


def _raw(url: str, *stmts: str) -> list[Any]:
    """Run statements in one transaction on a connection of our own (no store code); the
    rows of the last statement."""
    rows: list[Any] = []
    if url.startswith("sqlite://"):
        conn = sqlite3.connect(url[len("sqlite://"):])
        try:
            with conn:
                for s in stmts:
                    cur = conn.execute(s)
                    rows = cur.fetchall()
        finally:
            conn.close()
        return rows
    import psycopg

    with psycopg.connect(url) as conn:
        for s in stmts:
            cur = conn.execute(s)  # type: ignore[arg-type]
            rows = cur.fetchall() if cur.description else []
    return rows


def _drop_triggers(url: str) -> list[str]:
    if url.startswith("sqlite://"):
        return ["DROP TRIGGER IF EXISTS m2msec_audit_no_update", "DROP TRIGGER IF EXISTS m2msec_audit_no_delete"]
    return ["DROP TRIGGER IF EXISTS m2msec_audit_append_only ON m2msec_audit"]


def _tamper(url: str, *stmts: str) -> None:
    _raw(url, *_drop_triggers(url), *stmts)


def _insert_at(url: str, seq: int, subject: str) -> str:
    over = "" if url.startswith("sqlite://") else " OVERRIDING SYSTEM VALUE"
    ts = "'2030-01-01T12:00:00.000000Z'" if url.startswith("sqlite://") else "'2030-01-01 12:00:00+00'"
    return (f"INSERT INTO m2msec_audit (seq, ts, actor, action, subject, outcome, details){over} "
            f"VALUES ({seq}, {ts}, 'maf', 'key_retrieval', '{subject}', 'ok', '{{}}')")


def _seed(store: Store, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        store.append_audit("maf", "key_retrieval", f"C-AE{i}", "ok" if i % 3 else "denied",
                           {"relativeKeyID": f"r{i}", "n": i, "f": i / 4, "u": "é", "l": [1, {"z": None}]})


@pytest.fixture
def sealed(store: Store, store_url: str, clock: Any) -> Iterator[tuple[Store, str]]:
    """Rows 1-6 sealed by checkpoint 1, rows 7-9 by checkpoint 2."""
    _seed(store, 6)
    assert store.seal_audit().sealed_rows == 6
    clock.advance(minutes=1)
    _seed(store, 3, 6)
    assert store.seal_audit().sealed_rows == 3
    yield store, store_url


def _kinds(res: Any) -> list[tuple[str, int | None]]:
    return [(f.kind, f.seq if f.seq is not None else f.seal_no) for f in res.findings]


# ---------------------------------------------------------------------------------------
# sealing


def test_seal_and_verify_intact(store: Store, clock: Any) -> None:
    v = store.verify_audit()
    assert v.intact and v.checkpoints == 0 and v.unsealed_rows == 0 and v.head is None
    assert store.seal_audit().sealed_rows == 0  # nothing to seal, no checkpoint
    _seed(store, 5)
    assert store.verify_audit().unsealed_rows == 5
    res = store.seal_audit()
    assert (res.sealed_rows, res.checkpoints) == (5, 1)
    assert res.head is not None and (res.head.seal_no, res.head.last_seq, res.head.row_count) == (1, 5, 5)
    assert res.head.sealed_at == clock.now and res.head.kek_id == store.kek_id.hex()  # type: ignore[union-attr]
    again = store.seal_audit()
    assert again.sealed_rows == 0 and again.head == res.head
    _seed(store, 2, 5)
    v = store.verify_audit()
    assert v.intact and v.sealed_rows == 5 and v.unsealed_rows == 2 and v.head == res.head
    store.seal_audit()
    v = store.verify_audit(anchor=res.head.anchor)
    assert v.intact and v.checkpoints == 2 and v.sealed_rows == 7 and v.unsealed_rows == 0


def test_batches_and_max_rows(store: Store) -> None:
    _seed(store, 25)
    res = store.seal_audit(max_rows=7, batch_rows=3)
    assert (res.sealed_rows, res.checkpoints) == (7, 3) and res.head.last_seq == 7  # type: ignore[union-attr]
    assert store.verify_audit().unsealed_rows == 18
    res = store.seal_audit(batch_rows=10)
    assert (res.sealed_rows, res.checkpoints) == (18, 2) and res.head.row_count == 25  # type: ignore[union-attr]
    v = store.verify_audit()
    assert v.intact and v.checkpoints == 5 and v.sealed_rows == 25


def test_seal_needs_a_kek(store_url: str, store: Store) -> None:
    _seed(store, 1)
    with open_store(store_url) as bare:
        with pytest.raises(StoreError, match="without a key-encryption key"):
            bare.seal_audit()
        with pytest.raises(StoreError, match="without a key-encryption key"):
            bare.verify_audit()


def test_wrong_kek_is_a_clear_error(sealed: tuple[Store, str]) -> None:
    store, _ = sealed
    other = KeyEncryptionKey.generate()
    with pytest.raises(AuditSealKekMismatch, match=f"sealed under KEK id {store.kek_id.hex()}, "  # type: ignore[union-attr]
                       f"but this KEK has id {other.kek_id.hex()}") as ei:
        store.verify_audit(other)
    assert other._key.hex() not in str(ei.value)
    with pytest.raises(AuditSealKekMismatch):
        store.seal_audit(other)
    assert store.verify_audit().intact  # the right KEK still verifies


def test_bad_anchor_is_a_usage_error(sealed: tuple[Store, str]) -> None:
    store, _ = sealed
    for bad in ("x:00", "1:abc", "0:" + "0" * 32, "1:" + "g" * 32):
        with pytest.raises(AuditSealError):
            store.verify_audit(anchor=bad)


# ---------------------------------------------------------------------------------------
# tampering (raw SQL, trigger dropped, no KEK)


def test_modified_details_names_the_row(sealed: tuple[Store, str]) -> None:
    store, url = sealed
    _tamper(url, "UPDATE m2msec_audit SET details = '{\"relativeKeyID\": \"other\"}' WHERE seq = 4")
    v = store.verify_audit()
    assert not v.intact and _kinds(v) == [("modified", 4)] and v.first_modified_seq == 4
    # seal does not re-verify old rows: it extends an intact head; verify keeps reporting
    assert store.seal_audit().sealed_rows == 0
    assert _kinds(store.verify_audit()) == [("modified", 4)]


@pytest.mark.parametrize("column, value", [("actor", "'mef'"), ("outcome", "'denied'"), ("subject", "'C-AE9'")])
def test_modified_column_names_the_row(sealed: tuple[Store, str], column: str, value: str) -> None:
    store, url = sealed
    _tamper(url, f"UPDATE m2msec_audit SET {column} = {value} WHERE seq = 3")
    assert _kinds(store.verify_audit()) == [("modified", 3)]


def test_modified_timestamp(sealed: tuple[Store, str]) -> None:
    store, url = sealed
    if url.startswith("sqlite://"):
        _tamper(url, "UPDATE m2msec_audit SET ts = 'not a time' WHERE seq = 8")
    else:
        _tamper(url, "UPDATE m2msec_audit SET ts = ts + interval '1 microsecond' WHERE seq = 8")
    assert _kinds(store.verify_audit()) == [("modified", 8)]


def test_deleted_row(sealed: tuple[Store, str]) -> None:
    store, url = sealed
    _tamper(url, "DELETE FROM m2msec_audit WHERE seq = 2")
    v = store.verify_audit()
    assert _kinds(v) == [("deleted", 2)] and v.sealed_rows == 9


def test_deleted_row_with_its_seal_entry(sealed: tuple[Store, str]) -> None:
    store, url = sealed
    _tamper(url, "DELETE FROM m2msec_audit WHERE seq = 2", "DELETE FROM m2msec_audit_mac WHERE seq = 2")
    v = store.verify_audit()
    assert _kinds(v) == [("chain-break", 3), ("count-mismatch", 6)]
    assert "after seq 1" in v.findings[0].message and "6 row(s) up to seq 6; 5 seal entries" in v.findings[1].message


def test_deleted_last_sealed_row_with_its_seal_entry(sealed: tuple[Store, str]) -> None:
    store, url = sealed
    _tamper(url, "DELETE FROM m2msec_audit WHERE seq = 9", "DELETE FROM m2msec_audit_mac WHERE seq = 9")
    assert _kinds(store.verify_audit()) == [("count-mismatch", 9)]
    with pytest.raises(AuditTampered):
        store.seal_audit()


def test_inserted_row_inside_the_sealed_range(store: Store, store_url: str) -> None:
    _seed(store, 6)
    # a gap at seq 4 before sealing (a removal the seal cannot know about), then sealed
    _tamper(store_url, "DELETE FROM m2msec_audit WHERE seq = 4")
    store.seal_audit()
    assert store.verify_audit().intact
    _tamper(store_url, _insert_at(store_url, 4, "C-AEx"), _insert_at(store_url, 0, "C-AEy"))
    v = store.verify_audit()
    assert _kinds(v) == [("inserted", 0), ("inserted", 4)]


def test_reordered_rows(sealed: tuple[Store, str]) -> None:
    """Rows 2 and 3 swap places (their contents swap seq numbers)."""
    store, url = sealed
    cols = ("ts", "actor", "action", "subject", "outcome", "details")
    _tamper(url, f"UPDATE m2msec_audit SET {', '.join(f'{c} = o.{c}' for c in cols)} FROM m2msec_audit AS o "
                 "WHERE (m2msec_audit.seq = 2 AND o.seq = 3) OR (m2msec_audit.seq = 3 AND o.seq = 2)")
    got = {e.seq: e.subject for e in store.list_audit(limit=3, after_seq=1, newest_first=False)}
    assert got == {2: "C-AE2", 3: "C-AE1", 4: "C-AE3"}
    assert _kinds(store.verify_audit()) == [("modified", 2), ("modified", 3)]


def test_altered_seal_entry(sealed: tuple[Store, str]) -> None:
    store, url = sealed
    _tamper(url, "UPDATE m2msec_audit_mac SET tag = chain WHERE seq = 5")
    assert _kinds(store.verify_audit()) == [("modified", 5), ("chain-break", 5)]


def test_replaced_checkpoint(sealed: tuple[Store, str]) -> None:
    store, url = sealed
    # "unseal" rows 5-9 by shrinking checkpoint 1: its MAC no longer matches
    _tamper(url, "UPDATE m2msec_audit_seal SET last_seq = 4, row_count = 4 WHERE seal_no = 1")
    v = store.verify_audit()
    assert ("checkpoint-forged", 1) in _kinds(v) and not v.intact


def test_replaced_newest_checkpoint_blocks_sealing(sealed: tuple[Store, str]) -> None:
    store, url = sealed
    _tamper(url, "UPDATE m2msec_audit_seal SET last_seq = 7, row_count = 7 WHERE seal_no = 2")
    v = store.verify_audit()
    assert _kinds(v)[0] == ("checkpoint-forged", 2)
    with pytest.raises(AuditTampered, match="does not authenticate"):
        store.seal_audit()


def test_checkpoint_copied_from_another_position(sealed: tuple[Store, str]) -> None:
    store, url = sealed
    _tamper(url, "UPDATE m2msec_audit_seal SET seal_no = 3 WHERE seal_no = 2")
    assert _kinds(store.verify_audit())[0] == ("checkpoint-missing", 2)


def test_deleted_middle_checkpoint(store: Store, store_url: str) -> None:
    for i in range(3):
        _seed(store, 2, 2 * i)
        store.seal_audit()
    _tamper(store_url, "DELETE FROM m2msec_audit_seal WHERE seal_no = 2")
    assert _kinds(store.verify_audit()) == [("checkpoint-missing", 2)]


def test_rollback_of_the_newest_checkpoint(sealed: tuple[Store, str], clock: Any) -> None:
    """Detected while the seal entries it covered remain; a rollback that also removes those
    entries (and, optionally, the rows) is consistent with the older checkpoint: only an anchor
    kept elsewhere reveals it."""
    store, url = sealed
    anchor = store.verify_audit().head.anchor  # type: ignore[union-attr]
    _tamper(url, "DELETE FROM m2msec_audit_seal WHERE seal_no = 2")
    v = store.verify_audit()
    assert _kinds(v) == [("rolled-back", 6)] and "3 seal entries" in v.findings[0].message
    with pytest.raises(AuditTampered, match="do not end where"):
        store.seal_audit()
    # the complete rollback: entries gone too -> looks like rows 7-9 were never sealed
    _tamper(url, "DELETE FROM m2msec_audit_mac WHERE seq > 6")
    v = store.verify_audit()
    assert v.intact and v.head.seal_no == 1 and v.unsealed_rows == 3  # type: ignore[union-attr]
    v = store.verify_audit(anchor=anchor)
    assert _kinds(v) == [("rolled-back", 2)] and "gone" in v.findings[0].message
    # a different checkpoint 2 (re-sealed later after the rollback) does not match the anchor either
    clock.advance(minutes=5)
    store.seal_audit()
    assert _kinds(store.verify_audit(anchor=anchor)) == [("rolled-back", 2)]
    assert store.verify_audit(anchor=store.verify_audit().head.anchor).intact  # type: ignore[union-attr]


def test_all_checkpoints_deleted(sealed: tuple[Store, str]) -> None:
    store, url = sealed
    _tamper(url, "DELETE FROM m2msec_audit_seal")
    v = store.verify_audit()
    assert _kinds(v) == [("rolled-back", None)] and v.unsealed_rows == 9
    with pytest.raises(AuditTampered):
        store.seal_audit()


def test_findings_are_capped_and_counted(sealed: tuple[Store, str]) -> None:
    store, url = sealed
    _tamper(url, "UPDATE m2msec_audit SET outcome = 'x'")
    v = store.verify_audit(max_findings=4)
    assert len(v.findings) == 4 and v.more_findings == 5 and v.first_modified_seq == 1


# ---------------------------------------------------------------------------------------
# concurrency


def test_concurrent_sealers_never_diverge(store_url: str, kek: KeyEncryptionKey, store: Store) -> None:
    stores = [open_store(store_url, kek) for _ in range(3)]
    stop = threading.Event()
    errors: list[BaseException] = []
    totals = [0, 0, 0]
    races = [0]
    appended = [0]

    def appender() -> None:
        s = stores[0]
        try:
            while not stop.is_set() and appended[0] < 400:
                s.append_audit("maf", "key_retrieval", f"C{appended[0]}", "ok", {"i": appended[0]})
                appended[0] += 1
                time.sleep(0.001)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def sealer(i: int) -> None:
        try:
            for _ in range(6):
                r = stores[i].seal_audit(batch_rows=7)
                totals[i] += r.sealed_rows
                races[0] += r.retries
                time.sleep(0.01)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t_app = threading.Thread(target=appender)
    t_app.start()
    time.sleep(0.05)
    threads = [threading.Thread(target=sealer, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    stop.set()
    t_app.join(10)
    try:
        assert not errors, errors
        final = stores[1].seal_audit().sealed_rows
        v = store.verify_audit()
        assert v.intact and v.unsealed_rows == 0 and v.sealed_rows == appended[0]
        assert totals[1] + totals[2] + final == appended[0]
        nos = [r[0] for r in _raw(store_url, "SELECT seal_no FROM m2msec_audit_seal ORDER BY seal_no")]
        assert nos == list(range(1, len(nos) + 1))
    finally:
        for s in stores:
            s.close()


@pytest.mark.postgres
def test_postgres_row_committing_late_below_the_horizon(pg_server: Any, kek: KeyEncryptionKey) -> None:
    """A row whose seq was drawn before a later row committed, and that commits after it, is
    waited for and sealed, not left as a false "inserted" row."""
    import psycopg

    url = pg_server.create_database()
    with open_store(url, kek) as store:
        _seed(store, 2)
        slow = psycopg.connect(url)
        slow.execute("INSERT INTO m2msec_audit (ts, actor, action, subject, outcome, details) "
                     "VALUES (now(), 'maf', 'key_retrieval', 'slow', 'ok', '{}')")  # seq 3, open
        _seed(store, 1, 10)  # seq 4, committed
        # an open writer that outlives the timeout: nothing is sealed
        with pytest.raises(StoreError, match="still open"):
            store.seal_audit(writer_timeout=0.2)
        result: list[Any] = []
        t = threading.Thread(target=lambda: result.append(store.seal_audit(writer_timeout=20)))
        started = time.monotonic()
        t.start()
        time.sleep(0.4)
        assert t.is_alive()  # waiting for the open writer, not sealing around it
        store.append_audit("maf", "key_retrieval", "meanwhile", "ok")  # appends never wait (seq 5)
        slow.commit()
        slow.close()
        t.join(20)
        assert time.monotonic() - started >= 0.4
        assert result[0].sealed_rows == 4 and result[0].head.last_seq == 4
        v = store.verify_audit()
        assert v.intact and v.sealed_rows == 4 and v.unsealed_rows == 1


def test_sqlite_open_writer_is_not_sealed(tmp_path: Any, kek: KeyEncryptionKey) -> None:
    """SQLite: an uncommitted row always has a higher seq than every committed one; the seal
    stops below it (its checkpoint waits for the write lock) and the next seal takes it."""
    url = f"sqlite://{tmp_path}/w.db"
    with open_store(url, kek) as store:
        _seed(store, 1)
        store.seal_audit()  # the seal tables exist (creating them takes the write lock)
        _seed(store, 2, 1)
        raw = sqlite3.connect(str(tmp_path / "w.db"), isolation_level=None)
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("INSERT INTO m2msec_audit (ts, actor, action, subject, outcome, details) "
                    "VALUES ('2030-01-01T12:00:00.000000Z', 'maf', 'kr', 'open', 'ok', '{}')")
        result: list[Any] = []
        t = threading.Thread(target=lambda: result.append(store.seal_audit()))
        t.start()
        time.sleep(0.3)
        raw.execute("COMMIT")
        raw.close()
        t.join(20)
        assert result[0].sealed_rows == 2 and result[0].head.last_seq == 3
        assert store.verify_audit().unsealed_rows == 1
        assert store.seal_audit().sealed_rows == 1 and store.verify_audit().intact


def test_services_do_not_need_the_seal_tables(store: Store, store_url: str) -> None:
    """Appending creates nothing; the first seal creates the tables."""
    _seed(store, 1)
    exists = ("SELECT name FROM sqlite_master WHERE name = 'm2msec_audit_seal'" if store_url.startswith("sqlite://")
              else "SELECT to_regclass('m2msec_audit_seal')::text")
    assert _raw(store_url, exists) in ([], [(None,)])
    store.seal_audit()
    assert _raw(store_url, exists) not in ([], [(None,)])


# ---------------------------------------------------------------------------------------
# KEK rotation


def test_reseal_after_kek_rotation(sealed: tuple[Store, str], kek: KeyEncryptionKey, clock: Any) -> None:
    store, _ = sealed
    store.put_credential("mef.ke", "k1", b"\x01" * 32)
    _seed(store, 2, 9)  # rows 10-11 not sealed yet
    new = KeyEncryptionKey.generate()
    store.rekey(kek, new)
    with pytest.raises(AuditSealKekMismatch):
        store.verify_audit()
    with pytest.raises(AuditSealError, match="same"):
        store.reseal_audit(new)
    clock.advance(minutes=1)
    res = store.reseal_audit(kek)
    assert res.sealed_rows == 11 and res.head.kek_id == new.kek_id.hex()  # type: ignore[union-attr]
    v = store.verify_audit()
    assert v.intact and v.sealed_rows == 11 and v.unsealed_rows == 0 and v.checkpoints == 2
    with pytest.raises(AuditSealKekMismatch):
        store.verify_audit(kek)


def test_reseal_refuses_a_tampered_trail(sealed: tuple[Store, str], kek: KeyEncryptionKey) -> None:
    store, url = sealed
    _tamper(url, "DELETE FROM m2msec_audit WHERE seq = 5")
    new = KeyEncryptionKey.generate()
    with pytest.raises(AuditTampered, match="does not verify under the old KEK"):
        store.reseal_audit(kek, new)
    v = store.verify_audit(kek)  # nothing changed
    assert _kinds(v) == [("deleted", 5)] and v.head.kek_id == kek.kek_id.hex()  # type: ignore[union-attr]


def test_dropped_seal_tables_look_unsealed_but_not_to_an_anchor(sealed: tuple[Store, str]) -> None:
    store, url = sealed
    anchor = store.verify_audit().head.anchor  # type: ignore[union-attr]
    _tamper(url, "DROP TABLE m2msec_audit_seal", "DROP TABLE m2msec_audit_mac")
    v = store.verify_audit()
    assert v.intact and v.checkpoints == 0 and v.unsealed_rows == 9  # "never sealed"
    assert _kinds(store.verify_audit(anchor=anchor)) == [("rolled-back", 2)]


def test_reseal_refuses_a_row_changed_after_its_verify(sealed: tuple[Store, str], kek: KeyEncryptionKey,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A row changed between reseal's verify under the old KEK and its write transaction is not
    resealed as genuine under the new KEK: the write transaction re-checks every old tag."""
    import m2msec.store.audit_seal as audit_seal

    store, url = sealed
    new = KeyEncryptionKey.generate()
    real_verify = audit_seal.verify

    def verify_then_tamper(*args: Any, **kw: Any) -> Any:
        res = real_verify(*args, **kw)
        _tamper(url, "UPDATE m2msec_audit SET outcome = 'FORGED' WHERE seq = 3")
        return res

    monkeypatch.setattr(audit_seal, "verify", verify_then_tamper)
    with pytest.raises(AuditTampered, match="seq 3 changed while the trail was resealed"):
        store.reseal_audit(kek, new)
    monkeypatch.setattr(audit_seal, "verify", real_verify)
    res = store.verify_audit(kek)  # the seal is left as it was: the change shows under the old KEK
    assert not res.intact and ("modified", 3) in _kinds(res)


def test_foreign_values_never_encode_like_genuine_ones() -> None:
    """A value written by hand that is not text (NULL) or starts with NUL is encoded as NUL + its
    repr; genuine values never start with NUL, so no swap keeps the encoding."""
    from m2msec.store._backends import SQLiteBackend
    from m2msec.store.audit_seal import _canonical_row

    b = SQLiteBackend(":memory:")
    base = [1, "2030-01-01T12:00:00.000000Z", "maf", "key_retrieval", "!None", "ok", "{}"]
    genuine = _canonical_row(b, base)
    assert _canonical_row(b, [*base[:4], None, *base[5:]]) != genuine
    assert _canonical_row(b, [*base[:4], "\x00'!None'", *base[5:]]) != genuine
    assert _canonical_row(b, [*base[:4], None, *base[5:]]) != _canonical_row(b, [*base[:4], "None", *base[5:]])


def test_an_edited_kek_id_on_the_newest_checkpoint_is_a_forgery_not_a_wrong_kek(sealed: tuple[Store, str]) -> None:
    store, url = sealed
    _tamper(url, "UPDATE m2msec_audit_seal SET kek_id = '00112233445566778899aabbccddeeff' WHERE seal_no = 2")
    res = store.verify_audit()
    assert not res.intact and ("checkpoint-forged", 2) in _kinds(res)
