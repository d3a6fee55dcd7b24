"""Deferred disk sync: ``Store.transaction(durable=False)``, ``Store.sync_committed`` and
``AuditBatcher(sync_interval=...)`` (the MAF's ``audit_sync_interval_s``), on SQLite and
PostgreSQL (see conftest.py).

What is promised: a deferred commit is committed (visible to every reader, kept by a crash of
the process that made it) when ``transaction`` returns; only the disk sync waits, for at most
the batcher's interval; the connection goes back to full durability; a failed sync is reported
and turns later commits durable until a sync succeeds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from _sql_spy import SQLSpy

from m2msec.store import AuditBatcher, KeyEncryptionKey, Store, StoreError, open_store
from m2msec.store._backends import SQLiteBackend


def _durability(store: Store) -> str:
    """The durability setting an idle pooled connection commits with."""
    sql = "PRAGMA synchronous" if store.backend_name == "sqlite" else "SHOW synchronous_commit"
    with store._conn(write=False) as conn:  # noqa: SLF001
        return str(store._backend.execute(conn, sql).fetchone()[0])  # noqa: SLF001


def test_deferred_commit_is_committed_and_the_connection_is_durable_again(store: Store, store_url: str,
                                                                           kek: KeyEncryptionKey) -> None:
    full = _durability(store)  # SQLite FULL (2); PostgreSQL: the server's setting (SET LOCAL ends with the tx)
    assert store.backend_name != "sqlite" or full == "2"
    with SQLSpy(store) as spy, store.transaction(durable=False) as tx:
        tx.append_audit("maf", "key_retrieval", "C1", "ok")
    if store.backend_name == "sqlite":
        assert spy.sql == ["PRAGMA synchronous = NORMAL", "BEGIN IMMEDIATE", spy.sql[2], "COMMIT",
                           "PRAGMA synchronous = FULL"]
    else:
        assert spy.sql[0] == "SET LOCAL synchronous_commit = off"
    # committed: another store (another connection pool) reads it at once
    with open_store(store_url, kek) as other:
        assert [a.subject for a in other.list_audit(limit=None)] == ["C1"]
    # the pooled connection commits durably again
    assert _durability(store) == full
    assert store._unsynced  # noqa: SLF001
    store.sync_committed()
    assert not store._unsynced  # noqa: SLF001


def test_durable_transactions_are_unchanged(store: Store) -> None:
    with SQLSpy(store) as spy, store.transaction() as tx:
        tx.append_audit("maf", "x", "C1", "ok")
    assert not any("synchronous" in s for s in spy.sql)
    assert not store._unsynced  # noqa: SLF001


def test_rolled_back_deferred_transaction_writes_nothing_and_restores_durability(store: Store) -> None:
    full = _durability(store)
    with pytest.raises(RuntimeError), store.transaction(durable=False) as tx:
        tx.append_audit("maf", "x", "C1", "ok")
        raise RuntimeError("boom")
    assert store.list_audit(limit=None) == []
    assert _durability(store) == full


def test_sqlite_sync_committed_fsyncs_the_wal(tmp_path, kek: KeyEncryptionKey, monkeypatch) -> None:
    store = open_store(f"sqlite://{tmp_path}/s.db", kek)
    with store.transaction(durable=False) as tx:
        tx.append_audit("maf", "x", "C1", "ok")
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store.sync_committed()
    assert synced == [f"{tmp_path}/s.db-wal"]
    store.close()
    # no WAL file (the last connection checkpointed it away): nothing to sync, no error
    assert not os.path.exists(f"{tmp_path}/s.db-wal")
    synced.clear()
    SQLiteBackend(f"{tmp_path}/s.db").sync_committed(None)
    assert synced == []


def test_close_syncs_deferred_commits(tmp_path, kek: KeyEncryptionKey, monkeypatch) -> None:
    store = open_store(f"sqlite://{tmp_path}/s.db", kek)
    # a second store keeps the database open, so closing the first one checkpoints nothing:
    # only an explicit sync puts its commit on disk
    keeper = open_store(f"sqlite://{tmp_path}/s.db", kek)
    keeper.list_audit(limit=1)
    with store.transaction(durable=False) as tx:
        tx.append_audit("maf", "x", "C1", "ok")
    calls: list[int] = []
    real = store._backend.sync_committed  # noqa: SLF001
    monkeypatch.setattr(store._backend, "sync_committed", lambda conn: (calls.append(1), real(conn)))  # noqa: SLF001
    store.close()
    assert calls == [1]
    assert [a.subject for a in keeper.list_audit(limit=None)] == ["C1"]
    keeper.close()


_KILLED_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from m2msec.store import AuditBatcher, KeyEncryptionKey, open_store
    store = open_store(sys.argv[1], KeyEncryptionKey.from_env())
    b = AuditBatcher(store, sync_interval=60)  # no sync for a minute: only the commit counts
    for i in range(5):
        b.append("maf", "key_retrieval", f"C{i}", "ok")
    assert b.syncs == 0
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint, no sync
    """
)


def test_deferred_commits_survive_kill_9_of_their_process(store_url: str, kek: KeyEncryptionKey) -> None:
    env = dict(os.environ)
    env.pop("M2MSEC_KEK_FILE", None)
    env["M2MSEC_KEK"] = kek._key.hex()  # noqa: SLF001
    proc = subprocess.run([sys.executable, "-c", _KILLED_CHILD, store_url], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    with open_store(store_url, kek) as s:
        assert [a.subject for a in s.list_audit(limit=None, newest_first=False)] == [f"C{i}" for i in range(5)]


def test_batcher_syncs_within_its_interval(store: Store) -> None:
    b = AuditBatcher(store, sync_interval=0.2)
    t0 = time.monotonic()
    b.append("maf", "key_retrieval", "C1", "ok")
    b.append("maf", "key_retrieval", "C2", "ok")
    assert b.syncs == 0  # the commits returned without waiting for the disk
    while b.syncs == 0 and time.monotonic() - t0 < 5:
        time.sleep(0.01)
    took = time.monotonic() - t0
    assert b.syncs == 1 and 0.15 <= took < 2.0  # one sync for both, about an interval later
    assert not store._unsynced  # noqa: SLF001
    b.close()
    assert b.syncs == 1  # nothing left to sync at close


def test_batcher_close_syncs_at_once(store: Store) -> None:
    b = AuditBatcher(store, sync_interval=60)
    b.append("maf", "key_retrieval", "C1", "ok")
    t0 = time.monotonic()
    b.close()
    assert b.syncs == 1 and time.monotonic() - t0 < 5


def test_batcher_without_interval_commits_durably(store: Store) -> None:
    b = AuditBatcher(store)
    with SQLSpy(store) as spy:
        b.append("maf", "key_retrieval", "C1", "ok")
    assert not any("synchronous" in s for s in spy.sql)
    b.close()
    assert b.syncs == 0


@pytest.mark.parametrize("bad", [-1, 61])
def test_batcher_interval_range(store: Store, bad: float) -> None:
    with pytest.raises(ValueError, match="sync_interval"):
        AuditBatcher(store, sync_interval=bad)


def test_failed_sync_is_reported_and_turns_commits_durable_until_one_succeeds(store: Store, monkeypatch,
                                                                              caplog) -> None:
    b = AuditBatcher(store, sync_interval=60)
    b.append("maf", "key_retrieval", "C1", "ok")

    def broken() -> None:
        raise StoreError("sqlite: cannot sync the WAL of x: Input/output error")

    monkeypatch.setattr(store, "sync_committed", broken)
    assert b.sync() is False
    assert b.sync_failures == 1
    assert "sync failed" in caplog.text and "Input/output error" in caplog.text
    with SQLSpy(store) as spy:
        b.append("maf", "key_retrieval", "C2", "ok")
    assert not any("synchronous" in s for s in spy.sql)  # durable while syncs fail
    monkeypatch.undo()
    assert b.sync() is True  # the C1 commit is still owed a sync: retried
    with SQLSpy(store) as spy:
        b.append("maf", "key_retrieval", "C3", "ok")
    assert any("synchronous" in s for s in spy.sql)  # deferred again
    b.close()
    assert [a.subject for a in store.list_audit(limit=None, newest_first=False)] == ["C1", "C2", "C3"]
