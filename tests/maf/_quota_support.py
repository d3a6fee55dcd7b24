"""Shared set-up for the MAF Key Registration quota tests (TS-0003 8.8.2.7 step 5 authorization,
8.8.2.9, 8.8.2.10; ``max_keys_per_client`` and ``max_keys_total``, profile F13/F14).

Used by ``test_maf_quota.py``, ``test_maf_quota_total.py`` and ``test_maf_quota_races.py``:
the procedures run on a service as a Km client, the two-instances-on-one-database set-up
(SQLite file or PostgreSQL database), a transaction held at its audit INSERT, the PostgreSQL
lock-waiter count and a minimal ``maf.toml``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Self

import pytest
from _mafhelp import (
    ADMIN,
    AE1,
    AE2,
    AE3,
    AE4,
    KEK,
    MAF,
    FakeClock,
    make_service,
    make_store,
)

from m2msec.maf.protocol import (
    ClientRegistrationRequest,
    KeyDeregistrationRequest,
    KeyRegistrationRequest,
    Procedure,
)
from m2msec.maf.service import NS, MAFPeer, MAFService, _Expiries
from m2msec.onem2m.enums import SUID
from m2msec.store import Store, open_store

HOUR = timedelta(hours=1)
CLIENTS = (AE1, AE2, AE3, AE4)
# the two back ends of the two-instances fixtures (test ids "sqlite" and "postgresql")
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def peer(cid: str) -> MAFPeer:
    return MAFPeer("km", cid, f"11-{cid}", kmid=None)


def no_exporter() -> tuple[bytes, bytes]:
    raise AssertionError("no exporter")


def register_clients(svc: MAFService, clock: FakeClock, *cids: str) -> None:
    """Client Registration of ``cids`` (all of :data:`CLIENTS` when none is named)."""
    for cid in cids or CLIENTS:
        svc.run(Procedure.CLIENT_REGISTRATION, peer(cid),
                ClientRegistrationRequest(MAF, clock.now + timedelta(days=1), ADMIN), no_exporter)


def register_key(svc: MAFService, clock: FakeClock, cid: str = AE1, life: timedelta = HOUR) -> str:
    rsp = svc.run(Procedure.KEY_REGISTRATION, peer(cid),
                  KeyRegistrationRequest(MAF, clock.now + life, ADMIN, SUID.MAF_ESPRIM, target_ids=(AE2,),
                                         key_value=os.urandom(32)), no_exporter)
    return str(rsp.relative_key_id)


def deregister_key(svc: MAFService, rel: str, cid: str = AE1) -> Any:
    return svc.run(Procedure.KEY_DEREGISTRATION, peer(cid), KeyDeregistrationRequest(MAF, rel), no_exporter)


def counted(store: Store) -> int:
    """The entries of the MAF-wide quota shards."""
    return sum(len(_Expiries.of(r.doc)) for r in store.list_records(NS.QUOTA_TOTAL))


def forget_total(store: Store) -> None:
    """What an m2msec without the MAF-wide quota left behind: no shards, no marker, no quotaShard."""
    with store.transaction() as tx:
        for r in tx.list_records(NS.QUOTA_TOTAL):
            tx.delete_record(NS.QUOTA_TOTAL, r.rec_id)
        tx.delete_record(NS.QUOTA_META, "tracked-total")
        for r in tx.list_records(NS.KEY_REG):
            doc = {k: v for k, v in r.doc.items() if k != "quotaShard"}
            tx.update_record(NS.KEY_REG, r.rec_id, doc, expected_version=r.version)


def maf_toml(tmp_path: Path, line: str) -> Path:
    """A minimal ``maf.toml`` in ``tmp_path`` with ``line`` added."""
    p = tmp_path / "maf.toml"
    p.write_text(f'fqdn = "{MAF}"\nstore = "sqlite:///{tmp_path / "maf.db"}"\n{line}\n'
                 f'[[admin]]\nfqdn = "{ADMIN}"\n', encoding="utf-8")
    return p


def assert_service_refuses(tmp_path: Path, **option: Any) -> None:
    """The service refuses the one setting ``option`` with a ValueError naming it."""
    ((name, _bad),) = option.items()
    clock = FakeClock()
    store = make_store(tmp_path / "maf.db", clock)
    try:
        with pytest.raises(ValueError, match=name):
            make_service(store, clock, provision=False, **option)
    finally:
        store.close()


@contextmanager
def two_instances(request: pytest.FixtureRequest, tmp_path: Path, *, clients: tuple[str, ...] = CLIENTS,
                  **limits: Any) -> Iterator[SimpleNamespace]:
    """Two service instances (A provisions, B does not) on one database - a SQLite file when
    ``request.param == "sqlite"``, else a PostgreSQL database of ``pg_server`` - with ``limits``
    (``max_keys_per_client`` / ``max_keys_total``), no key cache, and ``clients`` registered
    through A. Yields ``a``, ``b``, their stores ``sa``, ``sb``, ``clock``, ``url``
    and ``pg`` (the URL on PostgreSQL, else None)."""
    clock = FakeClock()
    if request.param == "sqlite":
        url, pg = f"sqlite:///{tmp_path / 'maf.db'}", None
    else:
        url = pg = request.getfixturevalue("pg_server").create_database()
    sa, sb = open_store(url, KEK, clock=clock), open_store(url, KEK, clock=clock)
    a = make_service(sa, clock, key_cache_ttl=timedelta(0), **limits)
    b = make_service(sb, clock, provision=False, key_cache_ttl=timedelta(0), **limits)
    register_clients(a, clock, *clients)
    try:
        yield SimpleNamespace(a=a, b=b, sa=sa, sb=sb, clock=clock, url=url, pg=pg)
    finally:
        sb.close()
        sa.close()


class PauseAtAudit:
    """Holds the first transaction on ``store`` that writes an audit record at that INSERT
    (after its other writes - quota compare-and-set, shard writes -, before its commit) until
    :attr:`release` is set."""

    def __init__(self, store: Store) -> None:
        self.backend = store._backend
        self.orig = self.backend.execute
        self.reached = threading.Event()
        self.release = threading.Event()

    def __enter__(self) -> Self:
        def spy(conn: Any, sql: str, params: Any = ()) -> Any:
            if sql.startswith("INSERT INTO m2msec_audit") and not self.reached.is_set():
                self.reached.set()
                assert self.release.wait(20)
            return self.orig(conn, sql, params)

        self.backend.execute = spy  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.backend.execute = self.orig  # type: ignore[method-assign]
        self.release.set()


def lock_waiters(url: str | None) -> int:
    """PostgreSQL: sessions of this database waiting for a lock (0 for ``None``, SQLite)."""
    if url is None:
        return 0
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND wait_event_type = 'Lock'").fetchone()
    return int(row[0]) if row else 0
