"""Every row of TS-0004 table 7.6.2-1 provoked at the Receiver, with its RSC in the outer
response, and the Originator's rejections (C.11a, B.2c, B.2g)."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any

import pytest

from m2msec.esprim import (
    ErrorAdvice,
    MemoryReceiverState,
    PairwiseKey,
    ProvisionedKeySource,
    RandObjectNeeded,
    Receiver,
    StoreKeySource,
    StoreReceiverState,
    jwe,
)
from m2msec.esprim.errors import (
    BadMAC,
    DecryptionError,
    EncryptionError,
    ESPrimError,
    ESPrimNotSupported,
    ESPrimParseError,
    ImpersonationError,
    SessionExpired,
    SessionMismatch,
    UnknownKeyID,
    UnknownOrigRandID,
    UnknownRecvRandID,
    UnsupportedOption,
)
from m2msec.onem2m import E2ESecInfo, RequestPrimitive, SecurityInfo
from m2msec.onem2m.enums import SUID
from m2msec.store import open_store

from esprim_helpers import KID, ORIGINATOR_ID, RECEIVER_ID, inner_request, inner_response, make_originator


def expect(receiver, obj, exc_type, rsc):
    """open_request fails with ``exc_type``; the outer error response carries ``rsc``."""
    try:  # the outer Notify, when the object is at least shaped like a compact JWE
        outer = RequestPrimitive.notify_security_info(to=RECEIVER_ID, fr=ORIGINATOR_ID, seci=SecurityInfo.esprim(obj))
    except (ValueError, TypeError):
        outer = None
    with pytest.raises(exc_type) as ei:
        receiver.open_request(obj, outer_from=ORIGINATOR_ID)
    assert int(ei.value.rsc) == rsc
    resp = receiver.error_response(ei.value, outer if outer is not None else "outer-rqi")
    assert int(resp.rsc) == rsc and resp.rqi == (outer.rqi if outer else "outer-rqi")
    assert isinstance(resp.pc["m2m:dbg"], str)
    return ei.value


def craft(session, plaintext: bytes | None = None, **hdr: Any) -> str:
    """An ESPrim Object sealed with the session's key but a header of our choosing."""
    fields = dict(enc=session.enc, kid=session.key.kid, ori=session.ref.ori, rri=session.ref.rri,
                  cty="application/vnd.onem2m-preq+json", oro=session.originator_rand.to_json())
    fields.update(hdr)
    enc = fields["enc"]
    if plaintext is None:
        plaintext = inner_request().to_json_bytes()
    return jwe.seal(jwe.ESPrimHeader(**fields), session.content_key(enc), plaintext)


@pytest.fixture
def session(originator, receiver, orig_key):
    return originator.start(orig_key, receiver.e2e_sec_info()).session


# ---------------------------------------------------------------- 4000 BAD_REQUEST


@pytest.mark.parametrize("obj", ["", "abc", "a.b.c.d.e", "....", "ey.J.x.y.z", "é.b.c.d.e", 42])
def test_garbled_object_is_bad_request(receiver, obj):
    expect(receiver, obj, ESPrimParseError, 4000)


def test_truncated_object_is_bad_request(receiver, originator, session):
    obj, _ = originator.protect_request(inner_request(), session)
    expect(receiver, obj.rsplit(".", 1)[0], ESPrimParseError, 4000)  # tag part missing
    expect(receiver, obj[:-5], ESPrimParseError, 4000)  # tag cut short


def test_malformed_oro_is_bad_request(receiver, session):
    bad = dict(session.originator_rand.to_json(), esrv="not-a-rand-value")
    expect(receiver, craft(session, oro=bad), ESPrimParseError, 4000)


# ---------------------------------------------------------------- 4111 UNSUPPORTED_OPTION


def test_enc_not_in_originator_list(clock, receiver, orig_key):
    originator = make_originator(clock, protocol_and_alg_ids=(10,))
    s = originator.start(orig_key, receiver.e2e_sec_info()).session
    expect(receiver, craft(s, enc="A256GCM"), UnsupportedOption, 4111)


def test_enc_not_supported_at_all(receiver, session):
    obj = craft(session)
    h = json.loads(jwe.b64url_decode(obj.split(".")[0], "h"))
    h["enc"] = "A128CBC-HS256"
    bad = jwe.b64url_encode(json.dumps(h).encode()) + obj[obj.index("."):]
    expect(receiver, bad, UnsupportedOption, 4111)


def test_keygen_alg_2_refused(receiver, session):
    oro = dict(session.originator_rand.to_json(), esk=2)
    expect(receiver, craft(session, oro=oro), UnsupportedOption, 4111)


def test_aead_list_not_subset(clock, make_receiver, orig_key):
    receiver = make_receiver(protocol_and_alg_ids=(12, 10))
    originator = make_originator(clock)
    s = originator.start(orig_key, receiver.e2e_sec_info()).session
    assert list(s.originator_rand.protocol_and_alg_ids) == [12, 10]
    expect(receiver, craft(s, oro=dict(s.originator_rand.to_json(), espa=[12, 11])), UnsupportedOption, 4111)
    expect(receiver, craft(s, oro=dict(s.originator_rand.to_json(), espa=[12, 13])), UnsupportedOption, 4111)


# ---------------------------------------------------------------- 4112 UNKNOWN_KEY_ID


def test_unknown_kid(receiver, session):
    expect(receiver, craft(session, kid="ffeeddccbbaa99887766554433221100@prov.example.com"), UnknownKeyID, 4112)
    expect(receiver, craft(session, kid="nul\x00kid"), UnknownKeyID, 4112)


def test_expired_key(clock, recv_key, orig_key, originator):
    # The key is provisioned with a lifetime ending in 10 minutes.
    short = PairwiseKey(kid=KID, key=recv_key.key, peer_id=ORIGINATOR_ID, expires_at=clock() + timedelta(minutes=10))
    receiver = Receiver(keys=ProvisionedKeySource([short], clock=clock), state=MemoryReceiverState(clock=clock), clock=clock)
    s = originator.start(orig_key, receiver.e2e_sec_info()).session
    obj, _ = originator.protect_request(inner_request(), s)
    receiver.open_request(obj)
    clock.advance(minutes=11)
    obj2, _ = originator.protect_request(inner_request(rqi="x"), s)
    expect(receiver, obj2, UnknownKeyID, 4112)


def test_expired_key_in_store(clock, tmp_path, kek, recv_key, orig_key, originator):
    with open_store(f"sqlite://{tmp_path}/k.db", kek, clock=clock) as store:
        src = StoreKeySource(store)
        src.provision(KID, recv_key.key, peer_id=ORIGINATOR_ID, suid=SUID.RSPF_ESPRIM, expires_at=clock() + timedelta(minutes=1))
        assert src.resolve(KID).suid == SUID.RSPF_ESPRIM
        receiver = Receiver(keys=src, state=StoreReceiverState(store), clock=clock)
        s = originator.start(orig_key, receiver.e2e_sec_info()).session
        obj, _ = originator.protect_request(inner_request(), s)
        clock.advance(minutes=2)
        expect(receiver, obj, UnknownKeyID, 4112)


# ---------------------------------------------------------------- 4113 UNKNOWN_ORIG_RAND_ID


def test_unknown_ori_without_oro(receiver, session):
    expect(receiver, craft(session, oro=None), UnknownOrigRandID, 4113)
    expect(receiver, craft(session, oro=None, ori="not an id"), UnknownOrigRandID, 4113)


def test_expired_oro(clock, receiver, orig_key, originator):
    rro = receiver.current_shared()
    s = originator.establish(orig_key, rro, expiry=clock() + timedelta(minutes=5))
    obj, _ = originator.protect_request(inner_request(), s)
    receiver.open_request(obj)  # cached now
    clock.advance(minutes=6)
    expect(receiver, craft(s, oro=None), UnknownOrigRandID, 4113)  # cached one expired
    expect(receiver, obj, UnknownOrigRandID, 4113)  # full oro, expired


def test_oro_expiring_after_rro(receiver, session):
    rro_exp = session.receiver_rand.expiry
    later = dict(session.originator_rand.to_json(), esrx=(rro_exp + timedelta(seconds=1)).strftime("%Y%m%dT%H%M%S"))
    expect(receiver, craft(session, oro=later), UnknownOrigRandID, 4113)


def test_oro_id_reused_with_other_value(receiver, originator, session):
    obj, _ = originator.protect_request(inner_request(), session)
    receiver.open_request(obj)
    other = dict(session.originator_rand.to_json(), esrv="x" + os.urandom(16).hex())
    expect(receiver, craft(session, oro=other), UnknownOrigRandID, 4113)


def test_originator_refuses_oro_expiry_after_receivers(clock, receiver, orig_key, originator):
    rro = receiver.current_shared()
    with pytest.raises(UnknownOrigRandID) as ei:
        originator.establish(orig_key, rro, expiry=rro.expiry + timedelta(seconds=1))
    assert int(ei.value.rsc) == 4113
    with pytest.raises(UnknownOrigRandID):
        originator.establish(orig_key, rro, expiry=clock())
    s = originator.establish(orig_key, rro, expiry=rro.expiry)
    assert s.originator_rand.expiry == rro.expiry


# ---------------------------------------------------------------- 4114 UNKNOWN_RECV_RAND_ID


def test_unknown_rri(receiver, session):
    expect(receiver, craft(session, rri="s000000000000000000000000"), UnknownRecvRandID, 4114)
    expect(receiver, craft(session, rri="1-not-ncname"), UnknownRecvRandID, 4114)


def test_expired_rri(clock, make_receiver, orig_key, originator):
    receiver = make_receiver(publish_shared=False, unique_lifetime=timedelta(minutes=10))
    step = originator.start(orig_key, receiver.e2e_sec_info())
    s = originator.accept_rand_object(step, receiver.rand_object_response(step.request(to=RECEIVER_ID, fr=ORIGINATOR_ID))).session
    obj, _ = originator.protect_request(inner_request(), s)
    clock.advance(minutes=10)
    expect(receiver, obj, UnknownRecvRandID, 4114)


# ---------------------------------------------------------------- 4115 BAD_MAC


def _flip(obj: str, part: int) -> str:
    parts = obj.split(".")
    raw = bytearray(jwe.b64url_decode(parts[part], "p"))
    raw[len(raw) // 2] ^= 1
    parts[part] = jwe.b64url_encode(bytes(raw))
    return ".".join(parts)


@pytest.mark.parametrize("part", [2, 3, 4])
def test_tampered_object_is_bad_mac(receiver, originator, session, part):
    obj, _ = originator.protect_request(inner_request(), session)
    expect(receiver, _flip(obj, part), BadMAC, 4115)


def test_wrong_key_is_bad_mac(clock, receiver, originator):
    wrong = PairwiseKey(kid=KID, key=os.urandom(32), peer_id=RECEIVER_ID)
    s = originator.start(wrong, receiver.e2e_sec_info()).session
    obj, _ = originator.protect_request(inner_request(), s)
    expect(receiver, obj, BadMAC, 4115)


def test_swapped_header_is_bad_mac(receiver, originator, session):
    a, _ = originator.protect_request(inner_request(rqi="a"), session)
    b, _ = originator.protect_request(inner_request(rqi="b", pc={"x": 1}), session)
    assert a.split(".")[0] == b.split(".")[0]  # same session, same header: swapping them is a no-op
    receiver.open_request(a)
    body = b[b.index("."):]
    # a header of the same session without the oro, over b's body
    expect(receiver, craft(session, oro=None).split(".")[0] + body, BadMAC, 4115)
    # the header of another session (whose oro the Receiver accepts) over b's body
    other = originator.refresh(session)
    c, _ = originator.protect_request(inner_request(rqi="c"), other)
    expect(receiver, c.split(".")[0] + body, BadMAC, 4115)
    receiver.open_request(c)


# ---------------------------------------------------------------- 4116 IMPERSONATION


@pytest.mark.parametrize("fr", ["CAE-other", "/id-recv/CAE-orig", None])
def test_inner_from_not_key_identity(receiver, originator, session, fr):
    obj, _ = originator.protect_request(inner_request(fr=fr), session)
    expect(receiver, obj, ImpersonationError, 4116)


# ---------------------------------------------------------------- 5210 DECRYPTION_ERROR


@pytest.mark.parametrize(
    "plaintext,cty",
    [
        (b"not json at all", None),
        (b'{"op": 2}', None),  # JSON, but not a request primitive
        (b"\xff\x00", "application/vnd.onem2m-preq+cbor"),
        (inner_request().to_json_bytes(), "application/vnd.onem2m-preq+xml"),
    ],
)
def test_inner_primitive_unparsable(receiver, originator, session, plaintext, cty):
    obj, _ = originator.protect_request(plaintext, session, cty=cty)
    expect(receiver, obj, DecryptionError, 5210)


# ---------------------------------------------------------------- 5211 ENCRYPTION_ERROR


def test_session_expired_between_request_and_response(clock, receiver, orig_key, originator):
    rro = receiver.current_shared()
    s = originator.establish(orig_key, rro, expiry=clock() + timedelta(minutes=2))
    obj, _ = originator.protect_request(inner_request(), s)
    _, ctx = receiver.open_request(obj)
    clock.advance(minutes=2)
    with pytest.raises(EncryptionError) as ei:
        receiver.protect_response(ctx, inner_response(inner_request()))
    assert int(receiver.error_response(ei.value, "rq").rsc) == 5211


def test_response_to_another_request_is_encryption_error(receiver, originator, session):
    obj, _ = originator.protect_request(inner_request(), session)
    _, ctx = receiver.open_request(obj)
    with pytest.raises(EncryptionError):
        receiver.protect_response(ctx, inner_response(inner_request(rqi="other")))


# ---------------------------------------------------------------- Originator side (C.11a, B.2c)


def test_replayed_response_from_another_session(clock, receiver, orig_key, originator):
    s1 = originator.start(orig_key, receiver.e2e_sec_info()).session
    obj1, p1 = originator.protect_request(inner_request(), s1)
    _, ctx1 = receiver.open_request(obj1)
    old_resp = receiver.protect_response(ctx1, inner_response(inner_request()))
    assert originator.open_response(old_resp, p1).rqi == "inner-1"
    s2 = originator.refresh(s1)
    obj2, p2 = originator.protect_request(inner_request(), s2)
    with pytest.raises(SessionMismatch) as ei:
        originator.open_response(old_resp, p2)
    assert int(ei.value.rsc) == 4113
    with pytest.raises(SessionMismatch):  # and the same response twice
        originator.open_response(old_resp, p1)


def test_response_answering_another_request_in_same_session(receiver, originator, session):
    obj_a, pa = originator.protect_request(inner_request(rqi="a"), session)
    obj_b, pb = originator.protect_request(inner_request(rqi="b"), session)
    _, ctx_a = receiver.open_request(obj_a)
    resp_a = receiver.protect_response(ctx_a, inner_response(inner_request(rqi="a")))
    with pytest.raises(SessionMismatch):
        originator.open_response(resp_a, pb)
    assert originator.open_response(resp_a, pa).rqi == "a"


def test_tampered_response_is_bad_mac_and_pending_survives(receiver, originator, session):
    obj, p = originator.protect_request(inner_request(), session)
    _, ctx = receiver.open_request(obj)
    resp = receiver.protect_response(ctx, inner_response(inner_request()))
    with pytest.raises(BadMAC):
        originator.open_response(_flip(resp, 3), p)
    with pytest.raises(ESPrimParseError):
        originator.open_response(resp[:-3], p)
    assert originator.open_response(resp, p).rqi == "inner-1"


def test_response_after_session_expiry_is_discarded(clock, receiver, orig_key, originator):
    rro = receiver.current_shared()
    s = originator.establish(orig_key, rro, expiry=clock() + timedelta(minutes=3))
    obj, p = originator.protect_request(inner_request(), s)
    _, ctx = receiver.open_request(obj)
    resp = receiver.protect_response(ctx, inner_response(inner_request()))
    clock.advance(minutes=3)
    with pytest.raises(SessionExpired):
        originator.open_response(resp, p)
    with pytest.raises(SessionExpired):
        originator.protect_request(inner_request(), s)


def test_esi_without_esprim_support(originator, orig_key, receiver):
    with pytest.raises(ESPrimNotSupported) as ei:
        originator.start(orig_key, E2ESecInfo((SUID.PRE_PROVISIONED_ESDATA_ENCRYPT,)))
    assert int(ei.value.rsc) == 4111
    with pytest.raises(ESPrimNotSupported):  # ESPrim listed, but not for this kind of key
        originator.start(orig_key, E2ESecInfo((SUID.MAF_ESPRIM,)))
    shared = receiver.current_shared()
    assert originator.supports_esprim(E2ESecInfo((SUID.MAF_ESPRIM,), shared_rand_object=shared))


def test_no_common_algorithms(clock, make_receiver, orig_key):
    receiver = make_receiver(protocol_and_alg_ids=(11,))
    with pytest.raises(UnsupportedOption):
        make_originator(clock, protocol_and_alg_ids=(12, 10)).start(orig_key, receiver.e2e_sec_info())


def test_rand_object_request_errors(receiver, originator, orig_key):
    notify = RequestPrimitive.notify_security_info(to=RECEIVER_ID, fr=ORIGINATOR_ID, seci=SecurityInfo.esprim("aaaa..bbbb.cccc.dddd"))
    with pytest.raises(ESPrimParseError):
        receiver.rand_object_response(notify)
    step = RandObjectNeeded(orig_key, "test")
    err = receiver.error_response(UnknownRecvRandID("x"), notify)
    with pytest.raises(ESPrimError) as ei:
        originator.accept_rand_object(step, err)
    assert int(ei.value.rsc) == 4114


def test_handle_error_advice(receiver, originator, session):
    obj, p = originator.protect_request(inner_request(), session)
    receiver.open_request(obj)
    session.acknowledged = True
    obj2, p2 = originator.protect_request(inner_request(rqi="2"), session)
    assert originator.handle_error(p2, 4113) is ErrorAdvice.RESEND and not session.acknowledged
    obj3, p3 = originator.protect_request(inner_request(rqi="3"), session)
    assert "oro" in json.loads(jwe.b64url_decode(obj3.split(".")[0], "h"))
    assert originator.handle_error(p3, 4115) is ErrorAdvice.ABORT
    assert originator.handle_error(p, 4114) is ErrorAdvice.NEW_SESSION and session.retired
