"""Stateless unique receiverESPrimRandObjects (TS-0003 8.4.2 B.2e; TS-0004 7.5.1.2.11;
m2msec.esprim.unique_rand): the ID layout and HMACs against an independent HMAC
implementation, nothing recorded when a type-3 request is answered, key rotation, and every
way a unique rand ID can be wrong refused with the RSC of an unknown ID (4114)."""

from __future__ import annotations

import logging
import re
import secrets
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC

from m2msec.esprim import MemoryReceiverState, RandObjectNeeded, Receiver, ReceiverPolicy, jwe, unique_rand
from m2msec.esprim.errors import BadMAC, UnknownRecvRandID
from m2msec.onem2m import RequestPrimitive, ResponsePrimitive, SecurityInfo
from m2msec.onem2m.security import ReceiverESPrimRandObject

from esprim_helpers import ORIGINATOR_ID, RECEIVER_ID, as_sealed, inner_request, make_originator
from test_errors import craft, expect

KEY = bytes(range(32))


def indep_hmac(key: bytes, data: bytes) -> bytes:
    h = HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


# ---------------------------------------------------------------- pure functions


def test_layout_and_hmacs_against_independent_hmac():
    nonce = bytes.fromhex("00112233445566778899aabb")
    rid = unique_rand.make_unique_id(KEY, 0x70DC8F50, 0x9B, nonce)
    body = "u70dc8f509b00112233445566778899aabb"
    tag = indep_hmac(KEY, b"m2msec unique rand id v1\x00" + body.encode())[:8].hex()
    assert rid == body + tag and len(rid) == 51
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9._-]*", rid) and rid == rid.lower()  # NCName, lowercase
    value = indep_hmac(KEY, b"m2msec unique rand v1\x00" + rid.encode())[:16]
    assert unique_rand.rand_value(KEY, rid) == value
    p = unique_rand.parse_unique_id(rid)
    assert p == (0x70DC8F50, 0x9B, body, tag) and unique_rand.check_tag(KEY, p)
    assert not unique_rand.check_tag(bytes(32), p)


@pytest.mark.parametrize(
    "rid",
    [
        "u" + "0" * 49,  # too short
        "u" + "0" * 51,  # too long
        "s" + "0" * 50,  # not the unique prefix
        "u" + "A" * 50,  # upper case
        "u" + "0" * 24,  # the pre-stateless layout
        "u" + "g" * 50,
    ],
)
def test_parse_rejects_other_layouts(rid):
    assert unique_rand.parse_unique_id(rid) is None and not unique_rand.is_unique_layout(rid)


def test_key_schedule():
    period = timedelta(hours=24)
    t = datetime(2030, 1, 1, 12, tzinfo=UTC)
    e = unique_rand.key_epoch(t, period)
    assert e == int(t.timestamp()) // 86400
    assert unique_rand.key_name(period, e) == f"86400:{e}"
    assert unique_rand.key_expiry(period, e, timedelta(hours=1)) == datetime(2030, 1, 2, 1, 5, tzinfo=UTC)
    for d in (-2, -1, 0, 1):
        assert unique_rand.epoch_for_key_id((e + d) & 0xFF, t, period) == e + d
    assert unique_rand.epoch_for_key_id((e + 5) & 0xFF, t, period) == -1


def test_rand_key_repr_hides_key():
    k = unique_rand.RandKey("86400:1", KEY, datetime(2030, 1, 1, tzinfo=UTC))
    assert KEY.hex() not in repr(k) and "hidden" in repr(k) and repr(KEY) not in str(k)


@pytest.mark.parametrize(
    "policy",
    [
        {"unique_key_period": timedelta(minutes=30)},  # shorter than the 1 h lifetime
        {"unique_key_period": timedelta(hours=2, milliseconds=5)},  # not whole seconds
        {"unique_lifetime": timedelta(milliseconds=500)},
    ],
)
def test_policy_validation(policy):
    with pytest.raises(ValueError):
        ReceiverPolicy(**policy)


def test_default_key_period():
    assert ReceiverPolicy().rand_key_period == timedelta(hours=24)
    long = ReceiverPolicy(unique_lifetime=timedelta(hours=30, milliseconds=1))
    assert long.rand_key_period == timedelta(hours=30, seconds=1)


# ---------------------------------------------------------------- Receiver, memory and SQLite


def type3_request() -> RequestPrimitive:
    return RequestPrimitive.notify_security_info(
        to=RECEIVER_ID, fr=ORIGINATOR_ID, seci=SecurityInfo.rand_object_request()
    )


def db_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return sum(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables)


def unique_session(receiver, originator, orig_key):
    step = originator.start(orig_key, receiver.e2e_sec_info())
    assert isinstance(step, RandObjectNeeded)
    return originator.accept_rand_object(step, receiver.rand_object_response(step.request(to=RECEIVER_ID, fr=ORIGINATOR_ID))).session


def test_type3_answers_write_nothing(make_receiver, state_kind, tmp_path):
    receiver = make_receiver(publish_shared=False)
    req = type3_request()
    first = receiver.rand_object_response(req)  # creates this period's K_rand
    if state_kind == "sqlite":
        before = db_rows(tmp_path / "recv.db")
    else:
        before = (dict(receiver._state._recv), dict(receiver._state._rand_keys))
    ids = {ResponsePrimitive.from_json_bytes(receiver.rand_object_response(req).to_json_bytes())
           .security_info().esprim_rand_object.rand_id for _ in range(1000)}
    assert len(ids) == 1000 and first.pc is not None
    if state_kind == "sqlite":
        assert db_rows(tmp_path / "recv.db") == before
    else:
        assert (receiver._state._recv, receiver._state._rand_keys) == before and not receiver._state._recv


def test_unique_object_is_recomputed_on_use(make_receiver, originator, orig_key):
    from test_exchange import roundtrip

    receiver = make_receiver(publish_shared=False)
    session = unique_session(receiver, originator, orig_key)
    rro = session.receiver_rand
    assert receiver._state.get_receiver_rand(rro.rand_id) is None  # not recorded
    assert receiver._receiver_rand(rro.rand_id, receiver._now()) == rro  # recomputed, all members
    roundtrip(originator, receiver, session)


def _forged(receiver, key: bytes, *, expiry: datetime, key_id: int | None = None) -> str:
    p = receiver.policy
    if key_id is None:
        key_id = unique_rand.key_epoch(receiver._now(), p.rand_key_period) & 0xFF
    return unique_rand.make_unique_id(key, unique_rand.unix_seconds(expiry), key_id)


def _current_key(receiver) -> unique_rand.RandKey:
    p = receiver.policy
    name = unique_rand.key_name(p.rand_key_period, unique_rand.key_epoch(receiver._now(), p.rand_key_period))
    k = receiver._state.rand_key(name)
    assert k is not None
    return k


def _flip_hex(s: str, i: int) -> str:
    return s[:i] + ("0" if s[i] != "0" else "1") + s[i + 1:]


def test_forged_and_tampered_ids_are_unknown(make_receiver, originator, orig_key, clock):
    receiver = make_receiver(publish_shared=False)
    session = unique_session(receiver, originator, orig_key)
    rri = session.ref.rri
    soon = clock() + timedelta(minutes=30)
    bad = [
        "u" + secrets.token_hex(25),  # random ID in the right layout
        _forged(receiver, secrets.token_bytes(32), expiry=soon),  # well-formed, tagged under another key
        rri[:1] + f"{int(rri[1:9], 16) + 600:08x}" + rri[9:],  # expiry extended by 10 minutes
        _flip_hex(rri, 9),  # key id changed
        _flip_hex(rri, 20),  # nonce changed
        _flip_hex(rri, 45),  # tag changed
        "u" + "0" * 24,  # old layout, never stored
    ]
    for forged in bad:
        assert forged != rri
        expect(receiver, craft(session, rri=forged), UnknownRecvRandID, 4114)
    assert receiver._state.get_receiver_rand(rri) is None
    # the genuine one still works after all that
    obj, _ = originator.protect_request(inner_request(), session)
    assert as_sealed(receiver.open_request(obj)[0]) == inner_request()


def test_tampered_value_is_bad_mac(make_receiver, orig_key, clock):
    """The esrv the Originator got was altered on the way: the Receiver recomputes the real one."""
    receiver = make_receiver(publish_shared=False)
    originator = make_originator(clock)
    step = originator.start(orig_key, receiver.e2e_sec_info())
    resp = receiver.rand_object_response(step.request(to=RECEIVER_ID, fr=ORIGINATOR_ID))
    ero = resp.security_info().esprim_rand_object
    tampered = ReceiverESPrimRandObject(
        rand_id=ero.rand_id, rand_value=bytes(b ^ 1 for b in ero.rand_value), expiry=ero.expiry,
        protocol_and_alg_ids=ero.protocol_and_alg_ids, key_gen_alg_ids=ero.key_gen_alg_ids,
    )
    forged_resp = ResponsePrimitive.with_security_info(step.request(to=RECEIVER_ID, fr=ORIGINATOR_ID),
                                                       SecurityInfo.rand_object_response(tampered))
    session = originator.accept_rand_object(step, forged_resp).session
    obj, _ = originator.protect_request(inner_request(), session)
    expect(receiver, obj, BadMAC, 4115)


def test_expired_unique_object(make_receiver, originator, orig_key, clock):
    receiver = make_receiver(publish_shared=False, unique_lifetime=timedelta(minutes=10))
    session = unique_session(receiver, originator, orig_key)
    assert session.receiver_rand.expiry == clock() + timedelta(minutes=10)
    clock.advance(minutes=10)
    expect(receiver, craft(session), UnknownRecvRandID, 4114)
    # a correctly tagged ID whose expiry has passed (issued, then clock moved on) is as unknown
    past = _forged(receiver, _current_key(receiver).key, expiry=clock() - timedelta(seconds=1))
    expect(receiver, craft(session, rri=past), UnknownRecvRandID, 4114)


def test_unknown_key_id(make_receiver, originator, orig_key, clock):
    receiver = make_receiver(publish_shared=False)
    session = unique_session(receiver, originator, orig_key)
    e = unique_rand.key_epoch(clock(), receiver.policy.rand_key_period)
    key = _current_key(receiver).key
    soon = clock() + timedelta(minutes=30)
    for kid in ((e + 1) & 0xFF, (e - 1) & 0xFF, (e + 7) & 0xFF):  # no key for the next/previous epoch; outside window
        expect(receiver, craft(session, rri=_forged(receiver, key, expiry=soon, key_id=kid)), UnknownRecvRandID, 4114)
    # the current key id with the current key is accepted (the forgeries above failed for the key id only)
    good = _forged(receiver, key, expiry=soon)
    assert receiver._receiver_rand(good, clock()) is not None


def test_rotation_keeps_previous_key_until_its_objects_expired(make_receiver, orig_key, clock):
    period = timedelta(hours=2)
    receiver = make_receiver(publish_shared=False, unique_key_period=period)
    clock.now = datetime(2030, 1, 1, 13, 59, 0, tzinfo=UTC)  # one minute before the end of an epoch
    o1 = make_originator(clock)
    s1 = unique_session(receiver, o1, orig_key)
    k1 = _current_key(receiver)
    assert s1.receiver_rand.expiry == datetime(2030, 1, 1, 14, 59, tzinfo=UTC)
    clock.advance(minutes=2)  # next epoch: a new K_rand, new key id
    o2 = make_originator(clock)
    s2 = unique_session(receiver, o2, orig_key)
    k2 = _current_key(receiver)
    assert k2.name != k1.name and k2.key != k1.key
    assert s2.ref.rri[9:11] != s1.ref.rri[9:11]
    for o, s in ((o1, s1), (o2, s2)):  # both accepted (the first from the previous key)
        obj, _ = o.protect_request(inner_request(), s)
        assert as_sealed(receiver.open_request(obj)[0]) == inner_request()
    assert k1.expires_at == datetime(2030, 1, 1, 14, 0, tzinfo=UTC) + timedelta(hours=1) + unique_rand.KEY_GRACE
    # rotated out: after k1 expired, even a correctly tagged k1 ID with a later expiry is unknown
    clock.now = k1.expires_at
    late = _forged(receiver, k1.key, expiry=clock() + timedelta(minutes=30),
                   key_id=int(s1.ref.rri[9:11], 16))
    expect(receiver, craft(s2, rri=late), UnknownRecvRandID, 4114)
    assert receiver._state.rand_key(k1.name) is None


def test_k_rand_never_in_repr_or_log(make_receiver, originator, orig_key, caplog, state_kind):
    caplog.set_level(logging.DEBUG)
    receiver = make_receiver(publish_shared=False)
    session = unique_session(receiver, originator, orig_key)
    key = _current_key(receiver)
    with pytest.raises(UnknownRecvRandID) as ei:
        receiver.open_request(craft(session, rri="u" + secrets.token_hex(25)))
    err = str(ei.value) + repr(ei.value)
    texts = [repr(receiver), repr(receiver._state), repr(key), str(key), err, caplog.text,
             repr(receiver._state._rand_keys)]
    for t in texts:
        assert key.key.hex() not in t and repr(key.key) not in t


def test_shared_objects_still_recorded(make_receiver, clock):
    receiver = make_receiver()
    shared = receiver.current_shared()
    assert shared.rand_id.startswith("s") and len(shared.rand_id) == 25
    assert receiver._state.get_receiver_rand(shared.rand_id) == shared


def test_memory_state_key_created_once_under_threads(clock):
    import threading

    state = MemoryReceiverState(clock=clock)
    got: list[bytes] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        k = state.rand_key("86400:1", create_expires_at=clock() + timedelta(days=2))
        assert k is not None
        got.append(k.key)

    ts = [threading.Thread(target=worker) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(set(got)) == 1 and len(got) == 8


def test_receiver_on_restart_loses_memory_keys(clock, recv_key, orig_key, originator):
    """Memory state: a restarted Receiver (new state) does not know earlier unique objects."""
    from m2msec.esprim import ProvisionedKeySource

    keys = ProvisionedKeySource([recv_key], clock=clock)
    a = Receiver(keys=keys, state=MemoryReceiverState(clock=clock), clock=clock, policy=ReceiverPolicy(publish_shared=False))
    session = unique_session(a, originator, orig_key)
    b = Receiver(keys=keys, state=MemoryReceiverState(clock=clock), clock=clock, policy=ReceiverPolicy(publish_shared=False))
    b.issue_unique()  # b has its own K_rand for the same period
    obj, _ = originator.protect_request(inner_request(), session)
    with pytest.raises(UnknownRecvRandID):
        b.open_request(obj)
    assert jwe.parse(obj).header.rri == session.ref.rri
