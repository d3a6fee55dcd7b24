"""Scale-out (DESIGN.md 3; TS-0003 8.4.2 B/C state): two Receiver instances on one store
(SQLite file, and PostgreSQL when available) each open objects of sessions started with the
other; recorded rand IDs are never issued twice; unique rand objects are not recorded (type-3
answers leave the database unchanged) yet open on every instance; one K_rand per period even
when instances race; secrets are encrypted at rest."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from m2msec.esprim import Receiver, ReceiverPolicy, StoreKeySource, StoreReceiverState, jwe
from m2msec.esprim.errors import UnknownRecvRandID
from m2msec.onem2m import RequestPrimitive, SecurityInfo, new_receiver_rand_object
from m2msec.store import KeyEncryptionKey, open_store

from esprim_helpers import KID, ORIGINATOR_ID, RECEIVER_ID, as_sealed, inner_request, inner_response, make_originator

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/shared.db"
    return str(request.getfixturevalue("pg_server").create_database())


@pytest.fixture
def instances(store_url: str, kek: KeyEncryptionKey, clock: Any, recv_key: Any) -> Iterator[Callable[..., Receiver]]:
    """Factory of Receiver instances, each with its own store connection to the same database."""
    stores: list[Any] = []

    def make(**policy: Any) -> Receiver:
        store = open_store(store_url, kek, clock=clock)
        stores.append(store)
        keys = StoreKeySource(store)
        if len(stores) == 1:
            keys.provision(KID, recv_key.key, peer_id=ORIGINATOR_ID)
        return Receiver(keys=keys, state=StoreReceiverState(store), clock=clock, policy=ReceiverPolicy(**policy))

    yield make
    for s in stores:
        s.close()


def exchange(originator, receiver, session, rqi):
    req = inner_request(rqi=rqi)
    obj, pending = originator.protect_request(req, session)
    got, ctx = receiver.open_request(obj)
    assert as_sealed(got) == req
    assert originator.open_response(receiver.protect_response(ctx, inner_response(req)), pending).rqi == rqi
    return obj


def test_shared_session_alternates_between_instances(instances, originator, orig_key):
    a, b = instances(), instances()
    esi = a.e2e_sec_info()
    assert b.e2e_sec_info().shared_rand_object == esi.shared_rand_object  # one published object
    session = originator.start(orig_key, esi).session
    first = exchange(originator, b, session, "r1")  # started with A's rand object, opened by B
    assert "oro" in jwe.parse(first).header.to_json_bytes().decode()
    second = exchange(originator, a, session, "r2")  # A only gets IDs: oro + session from the store
    assert jwe.parse(second).header.oro is None
    exchange(originator, b, session, "r3")


def test_unique_rand_object_from_other_instance(instances, originator, orig_key):
    a, b = instances(publish_shared=False), instances(publish_shared=False)
    step = originator.start(orig_key, a.e2e_sec_info())
    resp = a.rand_object_response(step.request(to=RECEIVER_ID, fr=ORIGINATOR_ID))
    session = originator.accept_rand_object(step, resp).session
    assert b._state._rand_keys == {}  # B never saw the K_rand: it reads it from the store
    assert b._state.get_receiver_rand(session.ref.rri) is None  # the object itself is nowhere stored
    exchange(originator, b, session, "r1")
    exchange(originator, a, session, "r2")  # oro cached by B, session key by B


def test_unique_rand_object_from_other_instance_fresh_session(instances, clock, orig_key):
    """A issues, B is the first to see an ESPrim Object naming it; a B issue uses A's K_rand."""
    from m2msec.esprim.state import NS_RAND_KEY

    a, b = instances(publish_shared=False), instances(publish_shared=False)
    for issuer, opener in ((a, b), (b, a)):
        o = make_originator(clock)
        step = o.start(orig_key, issuer.e2e_sec_info())
        session = o.accept_rand_object(step, issuer.rand_object_response(step.request(to=RECEIVER_ID, fr=ORIGINATOR_ID))).session
        exchange(o, opener, session, "r1")
    assert len(a._state._store.list_credentials(NS_RAND_KEY)) == 1  # one K_rand for both instances
    assert a._state._rand_keys.keys() == b._state._rand_keys.keys()


def _row_count(store_url: str) -> int:
    """Rows in every table of the database, read over a connection of its own."""
    if store_url.startswith("sqlite://"):
        with sqlite3.connect(store_url[len("sqlite://"):]) as conn:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return sum(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables)
    import psycopg

    with psycopg.connect(store_url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").fetchall()]
        return sum(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables)


def test_type3_answers_leave_row_count_unchanged(instances, store_url):
    a, b = instances(publish_shared=False), instances(publish_shared=False)
    req = RequestPrimitive.notify_security_info(to=RECEIVER_ID, fr=ORIGINATOR_ID, seci=SecurityInfo.rand_object_request())
    empty = _row_count(store_url)
    a.rand_object_response(req)
    assert _row_count(store_url) == empty + 1  # the K_rand of this key period, once
    before = _row_count(store_url)
    ids = set()
    for i in range(1000):
        resp = (a if i % 2 else b).rand_object_response(req)
        ids.add(resp.security_info().esprim_rand_object.rand_id)
    assert len(ids) == 1000
    assert _row_count(store_url) == before


def test_k_rand_created_once_by_racing_instances(store_url, kek, clock):
    """Several instances (own connections) create the period's K_rand at the same moment."""
    from m2msec.esprim.state import NS_RAND_KEY

    stores = [open_store(store_url, kek, clock=clock) for _ in range(4)]
    try:
        states = [StoreReceiverState(s) for s in stores]
        barrier = threading.Barrier(len(states))
        got: list[bytes] = []
        errors: list[BaseException] = []

        def worker(st: StoreReceiverState) -> None:
            try:
                barrier.wait()
                k = st.rand_key("86400:7", create_expires_at=clock() + timedelta(days=2))
                assert k is not None
                got.append(k.key)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(st,)) for st in states]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(got) == len(states) and len(set(got)) == 1
        assert [c.cred_id for c in stores[0].list_credentials(NS_RAND_KEY)] == ["86400:7"]
    finally:
        for s in stores:
            s.close()


def test_in_band_oro_cached_by_one_instance_used_by_other(instances, originator, orig_key):
    a, b = instances(), instances()
    s1 = originator.start(orig_key, a.e2e_sec_info()).session
    exchange(originator, a, s1, "r1")
    s2 = originator.refresh(s1)
    exchange(originator, a, s1, "r2")  # announces s2's oro to A
    assert s2.acknowledged
    exchange(originator, b, s2, "r3")  # B knows it from the store


def test_in_band_rro_issued_by_one_instance_used_by_other(instances, originator, orig_key):
    a, b = instances(), instances()
    s1 = originator.start(orig_key, a.e2e_sec_info()).session
    req = inner_request(rqi="r1")
    obj, pending = originator.protect_request(req, s1)
    _, ctx = a.open_request(obj)
    originator.open_response(a.protect_response(ctx, inner_response(req), refresh=True), pending)
    s2 = originator.start(orig_key).session
    assert s2.ref.rri != s1.ref.rri
    exchange(originator, b, s2, "r2")


def test_rand_ids_never_issued_twice(instances, clock):
    """Recorded (shared) rand objects: an ID is taken once while valid, on every instance.
    (Unique objects are no longer recorded; see test_unique_rand.py and the tests above.)"""
    a, b = instances(), instances()
    sa, sb = a._state, b._state
    obj = new_receiver_rand_object(expiry=clock() + timedelta(minutes=5), rand_id="s0123456789abcdef01234567")
    assert sa.add_receiver_rand(obj) is True
    assert sb.add_receiver_rand(obj) is False
    assert sb.get_receiver_rand(obj.rand_id) == obj
    clock.advance(minutes=5)  # expired: the ID may be issued again
    assert sb.get_receiver_rand(obj.rand_id) is None
    assert sb.add_receiver_rand(obj) is True


def test_concurrent_shared_rotation_has_one_winner(instances, clock):
    a = instances(shared_lifetime=timedelta(hours=2), shared_renew_before=timedelta(minutes=30))
    b = instances(shared_lifetime=timedelta(hours=2), shared_renew_before=timedelta(minutes=30))
    first = a.current_shared()
    assert b.current_shared() == first
    clock.advance(minutes=91)
    # B decided to rotate from `first` but A rotated first: B's candidate is withdrawn.
    winner = a.current_shared()
    loser_candidate = new_receiver_rand_object(expiry=clock() + timedelta(hours=2), rand_id="s00000000000000000000beef")
    got = b._state.publish_shared(loser_candidate, replacing=first.rand_id)
    assert got == winner != first
    assert b._state.get_receiver_rand(loser_candidate.rand_id) is None
    assert b.current_shared() == winner


def test_secrets_encrypted_at_rest(instances, originator, orig_key, store_url, recv_key):
    if not store_url.startswith("sqlite://"):
        pytest.skip("file inspection only for SQLite")
    a = instances()
    session = originator.start(orig_key, a.e2e_sec_info()).session
    exchange(originator, a, session, "r1")
    db = Path(store_url[len("sqlite://"):])
    unique = a.issue_unique()
    k_rand = next(iter(a._state._rand_keys.values())).key
    raw = b"".join(f.read_bytes() for f in db.parent.glob(db.name + "*"))  # database, -wal, -shm
    for secret in (session.receiver_rand.rand_value, session.originator_rand.rand_value, recv_key.key,
                   k_rand, unique.rand_value):
        assert secret not in raw and secret.hex().encode() not in raw
    assert session.receiver_rand.rand_id.encode() in raw  # the IDs themselves are not secret


def test_unknown_rri_on_every_instance(instances, originator, orig_key):
    a, b = instances(), instances()
    session = originator.start(orig_key, a.e2e_sec_info()).session
    for rri in ("u999999999999999999999999", "u" + "9" * 50):  # old layout; stateless layout, bad tag
        obj = jwe.seal(
            jwe.ESPrimHeader(enc=session.enc, kid=KID, ori=session.ref.ori, rri=rri,
                             oro=session.originator_rand.to_json()),
            session.content_key(session.enc), inner_request().to_json_bytes(),
        )
        for r in (a, b):
            with pytest.raises(UnknownRecvRandID):
                r.open_request(obj)
