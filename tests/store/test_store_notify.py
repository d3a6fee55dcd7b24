"""Store change notifications (m2msec.store.notify): notify inside a transaction, PostgreSQL
LISTEN sessions (delivery on commit only, loss and reconnect), SQLite change sequence."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from m2msec.store import InvalidValue, KeyEncryptionKey, Store, StoreError, open_store

CH = "m2msec_test_channel"


class Recorder:
    """Collects what a listener reports, with an event per arrival."""

    def __init__(self) -> None:
        self.payloads: list[str] = []
        self.states: list[bool] = []
        self.cond = threading.Condition()

    def payload(self, p: str) -> None:
        with self.cond:
            self.payloads.append(p)
            self.cond.notify_all()

    def state(self, up: bool) -> None:
        with self.cond:
            self.states.append(up)
            self.cond.notify_all()

    def wait(self, pred: Any, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(pred, timeout)


def test_notify_checks_channel_and_payload(store: Store) -> None:
    for bad in ("", "Upper", "9lives", "has-dash", "x" * 64, "sp ace", 'q"uote'):
        with pytest.raises(InvalidValue):
            store.notify(bad, "p")
    with pytest.raises(InvalidValue):
        store.notify(CH, "nul\x00")
    with pytest.raises(InvalidValue):
        store.notify(CH, "x" * 8000)
    store.notify(CH, "x" * 7999)  # the largest payload PostgreSQL takes


def test_sqlite_sequence_counts_committed_notifications_only(tmp_path: Any, kek: KeyEncryptionKey,
                                                           clock: Any) -> None:
    url = f"sqlite://{tmp_path}/n.db"
    a, b = open_store(url, kek, clock=clock), open_store(url, kek, clock=clock)  # two instances, one file
    try:
        assert not a.can_listen
        assert b.notify_seq(CH) == 0
        a.notify(CH, "one")
        assert b.notify_seq(CH) == 1
        with pytest.raises(RuntimeError):
            with a.transaction() as tx:
                tx.put_record("ns", "r", {"v": 1})
                tx.notify(CH, "rolled back")
                raise RuntimeError("abort")
        assert b.notify_seq(CH) == 1 and a.find_record("ns", "r") is None
        with a.transaction() as tx:
            tx.notify(CH, "two")
            tx.notify("m2msec_other", "")
        assert b.notify_seq(CH) == 2 and b.notify_seq("m2msec_other") == 1
        with pytest.raises(StoreError):
            a.listen(CH, lambda _p: None)
        with a.transaction():  # the sequence is not readable through the store inside a transaction
            with pytest.raises(StoreError):
                a.notify_seq(CH)
    finally:
        a.close()
        b.close()


@pytest.mark.postgres
def test_postgres_listen_gets_committed_notifications(pg_server: Any, kek: KeyEncryptionKey, clock: Any) -> None:
    url = pg_server.create_database()
    a, b = open_store(url, kek, clock=clock), open_store(url, kek, clock=clock)
    rec = Recorder()
    try:
        assert b.can_listen
        with pytest.raises(StoreError):
            b.notify_seq(CH)
        listener = b.listen(CH, rec.payload, rec.state)
        assert listener.wait_connected(10) and rec.wait(lambda: rec.states == [True])
        with pytest.raises(RuntimeError):
            with a.transaction() as tx:
                tx.notify(CH, "rolled back")
                raise RuntimeError("abort")
        with a.transaction() as tx:
            tx.put_record("ns", "r", {"v": 1})
            tx.notify(CH, "inside")
            time.sleep(0.2)
            assert rec.payloads == []  # not before the commit
        t0 = time.monotonic()
        assert rec.wait(lambda: rec.payloads == ["inside"])
        latency = time.monotonic() - t0
        a.notify(CH, "lone")
        a.notify("m2msec_other", "not ours")
        a.notify(CH, "é ünïcode")
        assert rec.wait(lambda: len(rec.payloads) == 3)
        assert rec.payloads == ["inside", "lone", "é ünïcode"]
        assert latency < 1.0
        listener.close()
        listener.close()  # idempotent
        assert not listener.connected and rec.states == [True, False]
        a.notify(CH, "after close")
        time.sleep(0.2)
        assert rec.payloads[-1] == "é ünïcode"
    finally:
        a.close()
        b.close()


def _terminate_listeners(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = 'm2msec-listen' AND datname = current_database()").fetchall()
    return len(rows)


@pytest.mark.postgres
def test_postgres_listener_reports_loss_and_reconnects(pg_server: Any, kek: KeyEncryptionKey, clock: Any) -> None:
    url = pg_server.create_database()
    a, b = open_store(url, kek, clock=clock), open_store(url, kek, clock=clock)
    rec = Recorder()
    try:
        listener = b.listen(CH, rec.payload, rec.state, min_backoff=0.05, max_backoff=0.2)
        assert listener.wait_connected(10)
        assert _terminate_listeners(url) == 1
        assert rec.wait(lambda: rec.states[:2] == [True, False])
        assert rec.wait(lambda: rec.states == [True, False, True])  # back, after a backoff
        assert listener.connected and listener.connects == 2
        a.notify(CH, "after reconnect")
        assert rec.wait(lambda: rec.payloads == ["after reconnect"])
    finally:
        b.close()  # closing the store stops its listeners
        a.close()
    assert not listener.connected and rec.states[-1] is False
    with pytest.raises(StoreError):
        b.listen(CH, rec.payload)


@pytest.mark.postgres
def test_postgres_listener_unreachable_server_stays_down(kek: KeyEncryptionKey, clock: Any) -> None:
    """A listener whose server cannot be reached never reports up, retries, and closes promptly."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from m2msec.store._backends import PostgresBackend

    store = Store(PostgresBackend(f"postgresql://u@127.0.0.1:{port}/db", connect_timeout=2), kek, clock=clock)
    rec = Recorder()
    listener = store.listen(CH, rec.payload, rec.state, min_backoff=0.01, max_backoff=0.05)
    assert not listener.wait_connected(0.5)
    t0 = time.monotonic()
    store.close()
    assert time.monotonic() - t0 < 3 and rec.states == []
