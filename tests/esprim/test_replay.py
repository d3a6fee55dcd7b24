"""Replay detection at the ESPrim Receiver (m2msec, beyond the freshness bound of TS-0003
8.4.1): each ESPrim request Object is accepted at most once per Receiver, across instances
on one store (SQLite, PostgreSQL when available); the record key is SHA-256 over (kid, ori,
rri, JWE IV); objects that do not authenticate never create a record; records expire with
the session's rand objects and are purged; the in-memory table is bounded and never forgets a
live record.  Also the Originator side (C.11a): a response is accepted once."""

from __future__ import annotations

import hashlib
import sqlite3
import string
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from esprim_helpers import KID, ORIGINATOR_ID, FakeClock, as_sealed, inner_request, inner_response, make_originator, seen_count

from m2msec.esprim import (
    ErrorAdvice,
    MemoryReceiverState,
    Originator,
    OriginatorPolicy,
    PairwiseKey,
    ProvisionedKeySource,
    Receiver,
    ReceiverPolicy,
    SessionRef,
    StoreKeySource,
    StoreReceiverState,
    jwe,
)
from m2msec.esprim.errors import (
    DecryptionError,
    ESPrimError,
    ESPrimParseError,
    ImpersonationError,
    ReplayCacheFull,
    ReplayedObject,
    SessionMismatch,
    UnknownKeyID,
    UnknownOrigRandID,
)
from m2msec.esprim.state import NS_SEEN, object_digest, object_record_id
from m2msec.onem2m import ResponseStatusCode
from m2msec.store import KeyEncryptionKey, open_store

RSC = ResponseStatusCode
_B64 = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def tamper(obj: str, part: int) -> str:
    parts = obj.split(".")
    parts[part] = ("A" if parts[part][0] != "A" else "B") + parts[part][1:]
    return ".".join(parts)


def reencoded(obj: str) -> str:
    """The same object with a non-canonical base64url tag: other characters, same octets."""
    parts = obj.split(".")
    last = parts[4][-1]
    parts[4] = parts[4][:-1] + _B64[_B64.index(last) ^ 1]
    assert parts[4] != obj.split(".")[4]
    return ".".join(parts)


# ---------------------------------------------------------------- the record key (pure)


def test_object_record_id_is_sha256_of_length_prefixed_ids_and_iv() -> None:
    ref, iv = SessionRef("k@x.example", "o" + "1" * 24, "s" + "2" * 24), bytes(range(12))
    expected = hashlib.sha256(
        b"m2msec esprim accepted object v1\x00"
        + b"".join(len(p).to_bytes(4, "big") + p for p in (b"k@x.example", b"o" + b"1" * 24, b"s" + b"2" * 24, iv))
    ).hexdigest()
    assert object_record_id(ref, iv) == expected and object_digest(ref, iv).hex() == expected
    assert len(expected) == 64
    others = {object_record_id(SessionRef("k@x.example", ref.ori, ref.rri), bytes(12)),
              object_record_id(SessionRef("k@y.example", ref.ori, ref.rri), iv),
              object_record_id(SessionRef(ref.kid, ref.rri, ref.ori), iv),
              object_record_id(SessionRef("ab", "c", "d"), iv), object_record_id(SessionRef("a", "bc", "d"), iv)}
    assert expected not in others and len(others) == 5  # every member counts, no ambiguous concatenation


# ---------------------------------------------------------------- Receiver, memory and SQLite state


def test_replayed_object_refused_fresh_object_of_the_session_accepted(make_receiver, originator, orig_key) -> None:
    receiver = make_receiver()
    session = originator.start(orig_key, receiver.e2e_sec_info()).session
    req = inner_request(rqi="once")
    obj, pending = originator.protect_request(req, session)
    got, ctx = receiver.open_request(obj)
    assert as_sealed(got) == req and seen_count(receiver) == 1
    with pytest.raises(ReplayedObject) as info:
        receiver.open_request(obj)
    assert int(info.value.rsc) == 4105 and info.value.rsc.http_status == 409
    assert "already accepted" in info.value.args[0]
    outer = receiver.error_response(info.value, "outer-2")
    assert outer.rsc == RSC.CONFLICT and outer.rqi == "outer-2"
    # the first one is still answered normally
    assert originator.open_response(receiver.protect_response(ctx, inner_response(req)), pending).rqi == "once"
    # a legitimate retry of the same inner request is sealed again: new IV, accepted
    again, _ = originator.protect_request(req, session)
    assert jwe.parse(again).iv != jwe.parse(obj).iv
    assert as_sealed(receiver.open_request(again)[0]) == req
    assert seen_count(receiver) == 2


def test_replay_on_a_cached_session_and_of_the_first_object(make_receiver, originator, orig_key) -> None:
    """The first object carries the full oro (no session lookup), later ones only IDs: both refused."""
    receiver = make_receiver()
    session = originator.start(orig_key, receiver.e2e_sec_info()).session
    first, p1 = originator.protect_request(inner_request(rqi="a"), session)
    assert jwe.parse(first).header.oro is not None
    _, ctx = receiver.open_request(first)
    originator.open_response(receiver.protect_response(ctx, inner_response(inner_request(rqi="a"))), p1)
    second, _ = originator.protect_request(inner_request(rqi="b"), session)
    assert jwe.parse(second).header.oro is None
    receiver.open_request(second)
    for obj in (first, second, first):
        with pytest.raises(ReplayedObject):
            receiver.open_request(obj)


def test_reencoded_copy_is_the_same_object(make_receiver, originator, orig_key) -> None:
    """A non-canonical base64url tag decodes to the same octets and authenticates: keyed on
    the decoded IV, the copy is a replay although its bytes differ."""
    receiver = make_receiver()
    session = originator.start(orig_key, receiver.e2e_sec_info()).session
    obj, _ = originator.protect_request(inner_request(), session)
    receiver.open_request(obj)
    with pytest.raises(ReplayedObject):
        receiver.open_request(reencoded(obj))


def test_unauthenticated_or_refused_objects_create_no_record(make_receiver, originator, orig_key, clock) -> None:
    """Tampered (4115), garbled (4000), unknown key (4112), impersonation (4116), inner media
    type not a request (5210): nothing recorded; the genuine object captured before a
    tampered copy of it (same IV) was tried is still accepted."""
    receiver = make_receiver()
    session = originator.start(orig_key, receiver.e2e_sec_info()).session
    genuine, _ = originator.protect_request(inner_request(rqi="genuine"), session)
    refusals: list[tuple[Callable[[], Any], type[ESPrimError], int]] = []
    for part in (0, 3, 4):  # header (AAD), ciphertext, tag: same IV, other bytes
        refusals.append((lambda p=part: receiver.open_request(tamper(genuine, p)), ESPrimError, 0))
    refusals.append((lambda: receiver.open_request(genuine[:-3]), ESPrimError, 0))
    refusals.append((lambda: receiver.open_request("not.an.esprim.object"), ESPrimParseError, 4000))
    imp, _ = originator.protect_request(inner_request(fr="CAE-someone-else", rqi="imp"), session)
    refusals.append((lambda: receiver.open_request(imp), ImpersonationError, 4116))
    other = Originator(clock=clock)
    s2 = other.start(PairwiseKey(kid="ffffffffffffffffffffffffffffffff@prov.example.com", key=bytes(32),
                                 peer_id="/id-recv/cse-recv"), receiver.e2e_sec_info()).session
    unknown, _ = other.protect_request(inner_request(rqi="u"), s2)
    refusals.append((lambda: receiver.open_request(unknown), UnknownKeyID, 4112))
    h = jwe.parse(genuine).header
    odd = jwe.seal(jwe.ESPrimHeader(enc=h.enc, kid=h.kid, ori=h.ori, rri=h.rri, cty="application/vnd.onem2m-prsp+json",
                                    oro=h.oro), session.cipher(h.enc), inner_request(rqi="odd").to_json_bytes())
    refusals.append((lambda: receiver.open_request(odd), DecryptionError, 5210))
    for call, exc_type, rsc in refusals:
        with pytest.raises(exc_type) as info:
            call()
        assert not isinstance(info.value, ReplayedObject)
        if rsc:
            assert int(info.value.rsc) == rsc
        assert seen_count(receiver) == 0
    with pytest.raises(ImpersonationError):  # refused again as what it is, not as a replay
        receiver.open_request(imp)
    assert receiver.open_request(genuine)[0].rqi == "genuine"
    assert seen_count(receiver) == 1


def test_record_lives_until_the_session_ends_then_the_object_is_refused_as_expired(make_receiver, originator, orig_key,
                                                                                  clock) -> None:
    receiver = make_receiver()
    # a request without a Request Expiration Timestamp (R11 does not apply): only the record
    # refuses the late copy
    originator = make_originator(clock, request_lifetime=None)
    session = originator.start(orig_key, receiver.e2e_sec_info()).session
    obj, _ = originator.protect_request(inner_request(), session)
    _, ctx = receiver.open_request(obj)
    clock.advance(minutes=50)
    with pytest.raises(ReplayedObject):  # the residual risk of the threat model, closed
        receiver.open_request(obj)
    clock.now = ctx.expires_at
    with pytest.raises(UnknownOrigRandID):  # past the session: expired, whatever was recorded
        receiver.open_request(obj)
    assert receiver._state.purge_expired() >= 1
    assert seen_count(receiver) == 0


def test_record_outlives_a_key_renewed_under_the_same_kid(tmp_path: Path, kek: KeyEncryptionKey, clock: FakeClock,
                                                          recv_key: PairwiseKey, orig_key: PairwiseKey) -> None:
    """The session ends with the key (10 min); the key is renewed under the same kid: a new
    session from the cached rand objects would open the old object again, but its record
    lives until the rand objects expire (profile: record expiry = min(oro, rro expiry))."""
    with open_store(f"sqlite://{tmp_path}/k.db", kek, clock=clock) as store:
        keys = StoreKeySource(store)
        keys.provision(KID, recv_key.key, peer_id=ORIGINATOR_ID, expires_at=clock() + timedelta(minutes=10))
        receiver = Receiver(keys=keys, state=StoreReceiverState(store), clock=clock)
        originator = Originator(clock=clock, policy=OriginatorPolicy(request_lifetime=None))  # no rqet
        session = originator.start(orig_key, receiver.e2e_sec_info()).session
        obj, _ = originator.protect_request(inner_request(), session)
        _, ctx = receiver.open_request(obj)
        assert ctx.expires_at == clock() + timedelta(minutes=10)
        (rec,) = store.list_records(NS_SEEN)
        assert rec.expires_at is not None and rec.expires_at > ctx.expires_at + timedelta(minutes=30)
        clock.advance(minutes=11)
        with pytest.raises(UnknownKeyID):
            receiver.open_request(obj)
        keys.provision(KID, recv_key.key, peer_id=ORIGINATOR_ID, expires_at=clock() + timedelta(hours=5))
        with pytest.raises(ReplayedObject):
            receiver.open_request(obj)


def test_originator_aborts_on_the_replay_refusal(make_receiver, originator, orig_key) -> None:
    """4105 is not a reason to resend: the object was accepted once already."""
    receiver = make_receiver()
    session = originator.start(orig_key, receiver.e2e_sec_info()).session
    obj, _ = originator.protect_request(inner_request(rqi="x"), session)
    receiver.open_request(obj)
    _, pending2 = originator.protect_request(inner_request(rqi="y"), session)
    with pytest.raises(ReplayedObject) as info:
        receiver.open_request(obj)
    assert originator.handle_error(pending2, int(info.value.rsc)) is ErrorAdvice.ABORT


# ---------------------------------------------------------------- memory state: the bound


def test_memory_state_bound_refuses_rather_than_forgets(clock: FakeClock) -> None:
    st = MemoryReceiverState(clock=clock, max_objects=2)
    ref = SessionRef(KID, "o" + "1" * 24, "s" + "2" * 24)
    t0 = clock()
    assert st.record_object(ref, b"\x01" * 12, t0 + timedelta(minutes=10))
    assert st.record_object(ref, b"\x02" * 12, t0 + timedelta(minutes=20))
    with pytest.raises(ReplayCacheFull) as info:
        st.record_object(ref, b"\x03" * 12, t0 + timedelta(minutes=30))
    assert int(info.value.rsc) == 5000
    assert not st.record_object(ref, b"\x01" * 12, t0 + timedelta(minutes=10))  # at the bound a replay is still a replay
    assert not st.record_object(ref, b"\x02" * 12, t0 + timedelta(minutes=20))
    clock.advance(minutes=15)  # the first record expired: room for one
    assert st.record_object(ref, b"\x03" * 12, t0 + timedelta(minutes=30))
    assert not st.record_object(ref, b"\x02" * 12, t0 + timedelta(minutes=20))
    with pytest.raises(ReplayCacheFull):
        st.record_object(ref, b"\x04" * 12, t0 + timedelta(minutes=30))
    assert "seen=2/2" in repr(st)
    clock.advance(hours=1)
    assert st.purge_expired() == 2 and len(st._seen) == 0
    with pytest.raises(ValueError):
        MemoryReceiverState(clock=clock, max_objects=0)


def test_full_memory_state_refuses_authentic_object_and_records_nothing(clock: FakeClock, recv_key: PairwiseKey,
                                                                        orig_key: PairwiseKey) -> None:
    state = MemoryReceiverState(clock=clock, max_objects=2)
    receiver = Receiver(keys=ProvisionedKeySource([recv_key], clock=clock), state=state, clock=clock)
    originator = Originator(clock=clock)
    session = originator.start(orig_key, receiver.e2e_sec_info()).session
    objs = [originator.protect_request(inner_request(rqi=f"r{i}"), session)[0] for i in range(3)]
    receiver.open_request(objs[0])
    receiver.open_request(objs[1])
    sessions_before = dict(state._sessions)
    with pytest.raises(ReplayCacheFull) as info:
        receiver.open_request(objs[2])
    assert receiver.error_response(info.value, "o").rsc == RSC.INTERNAL_SERVER_ERROR
    assert len(state._seen) == 2 and state._sessions == sessions_before
    with pytest.raises(ReplayedObject):
        receiver.open_request(objs[0])


def test_default_bound_and_memory_state_repr() -> None:
    st = MemoryReceiverState(clock=FakeClock())
    assert st.max_objects == 1 << 18 and "seen=0/262144" in repr(st)


# ---------------------------------------------------------------- instances on one store

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/shared.db"
    return str(request.getfixturevalue("pg_server").create_database())


@pytest.fixture
def instances(store_url: str, kek: KeyEncryptionKey, clock: FakeClock,
              recv_key: PairwiseKey) -> Iterator[Callable[..., Receiver]]:
    stores: list[Any] = []

    def make(**state_kw: Any) -> Receiver:
        store = open_store(store_url, kek, clock=clock)
        stores.append(store)
        keys = StoreKeySource(store)
        if len(stores) == 1:
            keys.provision(KID, recv_key.key, peer_id=ORIGINATOR_ID)
        return Receiver(keys=keys, state=StoreReceiverState(store, **state_kw), clock=clock, policy=ReceiverPolicy())

    yield make
    for s in stores:
        s.close()


def test_replay_detected_across_instances(instances, originator, orig_key) -> None:
    a, b = instances(), instances()
    session = originator.start(orig_key, a.e2e_sec_info()).session
    first, p1 = originator.protect_request(inner_request(rqi="1"), session)
    _, ctx = a.open_request(first)
    originator.open_response(a.protect_response(ctx, inner_response(inner_request(rqi="1"))), p1)
    with pytest.raises(ReplayedObject):
        b.open_request(first)
    second, _ = originator.protect_request(inner_request(rqi="2"), session)
    assert b.open_request(second)[0].rqi == "2"  # session known to B from the store
    for r in (a, b):
        with pytest.raises(ReplayedObject):
            r.open_request(second)


def test_racing_instances_accept_an_object_once(instances, originator, orig_key) -> None:
    receivers = [instances() for _ in range(4)]
    session = originator.start(orig_key, receivers[0].e2e_sec_info()).session
    obj, _ = originator.protect_request(inner_request(rqi="race"), session)
    barrier = threading.Barrier(len(receivers))
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(r: Receiver) -> None:
        barrier.wait()
        try:
            r.open_request(obj)
            result = "accepted"
        except ReplayedObject:
            result = "replay"
        except Exception as exc:  # noqa: BLE001 - reported by the assertion
            result = repr(exc)
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker, args=(r,)) for r in receivers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["accepted"] + ["replay"] * 3


def test_store_records_expire_and_are_purged(instances, originator, orig_key, clock, store_url) -> None:
    """Records carry the rand objects' expiry; the first accepted object after each
    purge_interval deletes the store's expired rows (seen records, sessions, rand objects)."""
    a = instances(purge_interval=timedelta(minutes=5))
    b = instances(purge_interval=None)
    store = a._state._store
    session = originator.start(orig_key, a.e2e_sec_info()).session
    obj, _ = originator.protect_request(inner_request(rqi="1"), session)
    _, ctx = b.open_request(obj)
    (rec,) = store.list_records(NS_SEEN)
    assert rec.rec_id == object_record_id(ctx.ref, jwe.parse(obj).iv) and rec.doc == {}
    assert rec.expires_at == session.originator_rand.expiry == ctx.expires_at  # oro is the earlier (R7)
    raw = store.purge_expired  # the store's own method, counted below

    calls: list[int] = []

    def counting() -> int:
        n = raw()
        calls.append(n)
        return n

    store.purge_expired = counting  # type: ignore[method-assign]
    clock.advance(minutes=30)
    originator2 = Originator(clock=clock)
    s2 = originator2.start(orig_key, a.e2e_sec_info()).session
    a.open_request(originator2.protect_request(inner_request(rqi="2"), s2)[0])  # first record: purge now
    a.open_request(originator2.protect_request(inner_request(rqi="3"), s2)[0])  # within the interval: none
    assert len(calls) == 1 and calls[0] == 0
    clock.now = ctx.expires_at + timedelta(minutes=1)  # session 1 and its record are over; s2 started later
    o3 = Originator(clock=clock)
    s3 = o3.start(orig_key, a.e2e_sec_info()).session
    a.open_request(o3.protect_request(inner_request(rqi="4"), s3)[0])
    assert len(calls) == 2 and calls[1] >= 3  # session 1's record, its session key, its oro, ...
    ids = {r.rec_id for r in store.list_records(NS_SEEN)}
    assert object_record_id(ctx.ref, jwe.parse(obj).iv) not in ids and len(ids) == 3
    if store_url.startswith("sqlite://"):
        conn = sqlite3.connect(store_url[len("sqlite://"):])
        try:
            n = conn.execute("SELECT count(*) FROM m2msec_records WHERE namespace = ?", (NS_SEEN,)).fetchone()[0]
        finally:
            conn.close()
        assert n == 3  # deleted from the file, not only hidden
    with pytest.raises(ValueError):
        StoreReceiverState(store, purge_interval=timedelta(0))


def test_session_stored_by_an_older_version_falls_back_to_its_expiry(instances, originator, orig_key) -> None:
    """A stored session without ``rx`` (older m2msec): records expire with the session."""
    a = instances()
    session = originator.start(orig_key, a.e2e_sec_info()).session
    _, ctx = a.open_request(originator.protect_request(inner_request(rqi="1"), session)[0])
    store = a._state._store
    cred = store.get_credential("esprim.session", ctx.ref.storage_id())
    assert cred.metadata["rx"] == session.originator_rand.expiry.isoformat()
    store.put_credential("esprim.session", ctx.ref.storage_id(), cred.secret, metadata={"espa": cred.metadata["espa"]},
                         expires_at=cred.expires_at)
    cached = a._state.get_session(ctx.ref)
    assert cached is not None and cached.objects_expire_at is None and cached.replay_window_end == cached.expires_at
    obj, _ = originator.protect_request(inner_request(rqi="2"), session)
    a.open_request(obj)
    with pytest.raises(ReplayedObject):
        a.open_request(obj)


# ---------------------------------------------------------------- Originator: a response is accepted once (C.11a, R9)


def test_originator_accepts_a_response_once(make_receiver, originator, orig_key) -> None:
    receiver = make_receiver()
    session = originator.start(orig_key, receiver.e2e_sec_info()).session
    obj_a, pa = originator.protect_request(inner_request(rqi="a"), session)
    obj_b, pb = originator.protect_request(inner_request(rqi="b"), session)
    _, ctx_a = receiver.open_request(obj_a)
    resp_a = receiver.protect_response(ctx_a, inner_response(inner_request(rqi="a")))
    assert originator.open_response(resp_a, pa).rqi == "a"
    with pytest.raises(SessionMismatch) as info:  # the same bytes again: its request was already answered
        originator.open_response(resp_a, pa)
    assert "already answered" in info.value.args[0]
    with pytest.raises(SessionMismatch):  # replayed as the answer to another pending request
        originator.open_response(resp_a, pb)
    _, ctx_b = receiver.open_request(obj_b)  # b is still pending and gets its own answer
    assert originator.open_response(receiver.protect_response(ctx_b, inner_response(inner_request(rqi="b"))), pb).rqi == "b"
