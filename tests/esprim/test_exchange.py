"""ESPrim phases B and C end to end, in process (TS-0003 8.4.2; TS-0004 7.5.1.2.11/13, 7.6.2):
shared and on-request receiverESPrimRandObjects, every enc, JSON and CBOR inner primitives,
outer Notify primitives through their wire form, in-band refresh, rotation and nonce bounds."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from jwcrypto import jwe as jw_jwe
from jwcrypto import jwk as jw_jwk

from m2msec import keys as m2mkeys
from m2msec.esprim import RandObjectNeeded, SessionReady, jwe
from m2msec.esprim.errors import EncryptionError, SessionRetired
from m2msec.onem2m import (
    E2ESecInfo,
    ESPrimProtocolAndAlgID,
    RequestPrimitive,
    ResponsePrimitive,
    SecurityInfo,
    SecurityInfoType,
)
from m2msec.onem2m.enums import SUID

from esprim_helpers import ORIGINATOR_ID, RECEIVER_ID, as_sealed, inner_request, inner_response, make_originator

ENCS = {"A128GCM": 10, "A192GCM": 11, "A256GCM": 12}


def header_of(obj: str) -> dict:
    return json.loads(jwe.b64url_decode(obj.split(".")[0], "h"))


def roundtrip(originator, receiver, session, req=None, **resp_kw):
    """One protected exchange through the outer Notify primitives in their JSON wire form."""
    req = req or inner_request()
    obj, pending = originator.protect_request(req, session)
    outer = RequestPrimitive.notify_security_info(to=RECEIVER_ID, fr=ORIGINATOR_ID, seci=SecurityInfo.esprim(obj))
    outer = RequestPrimitive.from_json_bytes(outer.to_json_bytes())
    seci = outer.security_info()
    assert seci is not None and seci.sit == SecurityInfoType.ESPRIM_OBJECT
    got, ctx = receiver.open_request(seci.esprim_object, outer_from=outer.fr)
    assert as_sealed(got) == req
    resp_obj = receiver.protect_response(ctx, inner_response(req), **resp_kw)
    outer_resp = ResponsePrimitive.from_json_bytes(receiver.esprim_response(outer, resp_obj).to_json_bytes())
    assert outer_resp.rqi == outer.rqi
    resp = originator.open_response(outer_resp.security_info().esprim_object, pending)
    assert resp == inner_response(req)
    return obj, resp_obj, ctx


@pytest.mark.parametrize("enc", sorted(ENCS))
def test_shared_rand_object_exchange_every_enc(clock, make_receiver, orig_key, enc):
    receiver = make_receiver()
    esi = E2ESecInfo.from_json(receiver.e2e_sec_info().to_json(), clock=clock)  # as retrieved from a CSE
    assert esi.shared_rand_object is not None and esi.shared_rand_object.rand_id.startswith("s")
    assert set(esi.supported_features) == {SUID.PRE_PROVISIONED_ESPRIM, SUID.RSPF_ESPRIM}
    originator = make_originator(clock, protocol_and_alg_ids=(ENCS[enc],))
    step = originator.start(orig_key, esi)
    assert isinstance(step, SessionReady)
    session = step.session
    assert session.receiver_rand.rand_id == esi.shared_rand_object.rand_id
    assert session.originator_rand.rand_id.startswith("o")
    assert session.originator_rand.expiry <= esi.shared_rand_object.expiry
    assert list(session.originator_rand.protocol_and_alg_ids) == [ENCS[enc]]
    obj1, resp1, _ = roundtrip(originator, receiver, session)
    h1, r1 = header_of(obj1), header_of(resp1)
    assert h1["enc"] == enc and h1["alg"] == "dir" and h1["kid"] == orig_key.kid
    assert h1["oro"]["esri"] == h1["ori"] and h1["cty"] == "application/vnd.onem2m-preq+json"
    assert r1["enc"] == enc and "oro" not in r1 and r1["cty"] == "application/vnd.onem2m-prsp+json"
    assert (r1["ori"], r1["rri"], r1["kid"]) == (h1["ori"], h1["rri"], h1["kid"])
    # after the first response the Receiver is known to hold the oro: IDs only
    obj2, _, _ = roundtrip(originator, receiver, session, inner_request(rqi="inner-2"))
    assert "oro" not in header_of(obj2) and header_of(obj2)["ori"] == h1["ori"]
    # start() reuses the cached session
    again = originator.start(orig_key, esi)
    assert isinstance(again, SessionReady) and again.session is session


@pytest.mark.parametrize("enc", sorted(ENCS))
def test_on_request_rand_object_exchange(clock, make_receiver, orig_key, enc):
    receiver = make_receiver(publish_shared=False)
    esi = receiver.e2e_sec_info()
    assert esi.shared_rand_object is None
    originator = make_originator(clock, protocol_and_alg_ids=(ENCS[enc],))
    step = originator.start(orig_key, esi)
    assert isinstance(step, RandObjectNeeded)
    req3 = step.request(to=RECEIVER_ID, fr=ORIGINATOR_ID)
    req3 = RequestPrimitive.from_json_bytes(req3.to_json_bytes())
    assert req3.security_info().sit == SecurityInfoType.RECEIVER_ESPRIM_RAND_OBJECT_REQUEST
    resp4 = ResponsePrimitive.from_json_bytes(receiver.rand_object_response(req3).to_json_bytes())
    seci = resp4.security_info()
    assert seci.sit == SecurityInfoType.RECEIVER_ESPRIM_RAND_OBJECT_RESPONSE and resp4.rqi == req3.rqi
    assert seci.esprim_rand_object.rand_id.startswith("u")
    ready = originator.accept_rand_object(step, resp4)
    assert ready.session.receiver_rand.rand_id == seci.esprim_rand_object.rand_id
    roundtrip(originator, receiver, ready.session)


def test_unique_rand_objects_are_unique(receiver, clock):
    objs = [receiver.issue_unique() for _ in range(50)]
    assert len({o.rand_id for o in objs}) == 50 and len({o.rand_value for o in objs}) == 50
    for o in objs:  # stateless layout (profile R1): u, expiry, key id, 96-bit nonce, tag
        assert re.fullmatch(r"u[0-9a-f]{50}", o.rand_id)
        assert int(o.rand_id[1:9], 16) == int((clock() + timedelta(hours=1)).timestamp()) == int(o.expiry.timestamp())
        assert int(o.rand_id[9:11], 16) == (int(clock().timestamp()) // 86400) & 0xFF


def test_cbor_inner_primitives(clock, receiver, orig_key):
    originator = make_originator(clock, media="cbor")
    session = originator.start(orig_key, receiver.e2e_sec_info()).session
    obj, _, ctx = roundtrip(originator, receiver, session)
    assert header_of(obj)["cty"] == "application/vnd.onem2m-preq+cbor" and ctx.media == "cbor"


def test_expired_shared_rand_object_goes_to_request_path(clock, make_receiver, orig_key, originator):
    receiver = make_receiver(shared_lifetime=timedelta(hours=2), shared_renew_before=timedelta(minutes=10))
    esi = receiver.e2e_sec_info()
    clock.advance(hours=2)
    step = originator.start(orig_key, esi)
    assert isinstance(step, RandObjectNeeded) and "expired" in step.reason
    ready = originator.accept_rand_object(step, receiver.rand_object_response(step.request(to=RECEIVER_ID, fr=ORIGINATOR_ID)))
    roundtrip(originator, receiver, ready.session)


def test_shared_rotation_keeps_old_one_valid(clock, make_receiver, orig_key, originator):
    receiver = make_receiver(shared_lifetime=timedelta(hours=2), shared_renew_before=timedelta(minutes=30))
    first = receiver.current_shared()
    clock.advance(minutes=60)
    assert receiver.current_shared() == first
    session = originator.start(orig_key, receiver.e2e_sec_info()).session  # still the first one
    clock.advance(minutes=31)  # 29 minutes left: rotate
    second = receiver.current_shared()
    assert second.rand_id != first.rand_id and second.rand_id.startswith("s")
    assert receiver.current_shared() == second
    roundtrip(originator, receiver, session)  # sessions on the previous shared object still work


def test_jwcrypto_opens_objects_we_emit(clock, receiver, orig_key, key_bytes, originator):
    session = originator.start(orig_key, receiver.e2e_sec_info()).session
    obj, resp_obj, _ = roundtrip(originator, receiver, session)
    skey = m2mkeys.derive_session_esprim_key(
        key_bytes, session.receiver_rand.rand_value, session.originator_rand.rand_value, 1
    )
    cek = m2mkeys.esprim_content_key(skey, ESPrimProtocolAndAlgID.from_jwe_enc(session.enc))
    for o, cls in ((obj, RequestPrimitive), (resp_obj, ResponsePrimitive)):
        token = jw_jwe.JWE()
        token.deserialize(o, key=jw_jwk.JWK(kty="oct", k=jwe.b64url_encode(cek)))
        assert cls.from_json_bytes(token.payload).rqi == "inner-1"


def test_in_band_originator_refresh(clock, receiver, orig_key, originator):
    s1 = originator.start(orig_key, receiver.e2e_sec_info()).session
    roundtrip(originator, receiver, s1)  # s1 acknowledged
    s2 = originator.refresh(s1)
    assert s2.ref.ori != s1.ref.ori and originator.session_for(orig_key.kid) is s2
    obj, _, _ = roundtrip(originator, receiver, s1, inner_request(rqi="inner-2"))
    h = header_of(obj)
    assert h["ori"] == s1.ref.ori and h["oro"]["esri"] == s2.ref.ori  # announced in the old session
    assert s2.acknowledged and s1.announce is None
    obj3, _, _ = roundtrip(originator, receiver, s2, inner_request(rqi="inner-3"))
    assert "oro" not in header_of(obj3) and header_of(obj3)["ori"] == s2.ref.ori


def test_in_band_receiver_refresh(clock, receiver, orig_key, originator):
    s1 = originator.start(orig_key, receiver.e2e_sec_info()).session
    _, resp_obj, _ = roundtrip(originator, receiver, s1, refresh=True)
    rro = header_of(resp_obj)["rro"]
    assert rro["esri"] != s1.ref.rri
    step = originator.start(orig_key)  # no e2eSecInfo needed: the rro is at hand
    assert isinstance(step, SessionReady) and step.session.ref.rri == rro["esri"]
    roundtrip(originator, receiver, step.session, inner_request(rqi="inner-2"))


def test_receiver_refreshes_automatically_near_expiry(clock, make_receiver, orig_key, originator):
    receiver = make_receiver(publish_shared=False, unique_lifetime=timedelta(minutes=20), refresh_window=timedelta(minutes=5))
    step = originator.start(orig_key, receiver.e2e_sec_info())
    session = originator.accept_rand_object(step, receiver.rand_object_response(step.request(to=RECEIVER_ID, fr=ORIGINATOR_ID))).session
    _, r1, _ = roundtrip(originator, receiver, session)
    assert "rro" not in header_of(r1)
    clock.advance(minutes=16)
    _, r2, _ = roundtrip(originator, receiver, session, inner_request(rqi="inner-2"))
    assert header_of(r2)["rro"]["esri"].startswith("u")
    nxt = originator.start(orig_key)
    assert isinstance(nxt, SessionReady) and nxt.session is not session


def test_originator_nonce_bound_retires_session(clock, receiver, orig_key):
    originator = make_originator(clock, max_seals=3)
    s1 = originator.start(orig_key, receiver.e2e_sec_info()).session
    for i in range(3):
        roundtrip(originator, receiver, s1, inner_request(rqi=f"r{i}"))
    with pytest.raises(SessionRetired) as ei:
        originator.protect_request(inner_request(rqi="r3"), s1)
    assert int(ei.value.rsc) == 5211 and s1.retired
    assert originator.session_for(orig_key.kid) is None
    s2 = originator.start(orig_key, receiver.e2e_sec_info()).session  # new originator rand object
    assert s2.ref.ori != s1.ref.ori
    roundtrip(originator, receiver, s2, inner_request(rqi="r4"))


def test_receiver_nonce_bound_is_encryption_error(clock, make_receiver, orig_key, originator):
    receiver = make_receiver(max_seals=2)
    session = originator.start(orig_key, receiver.e2e_sec_info()).session
    roundtrip(originator, receiver, session, inner_request(rqi="a"))
    roundtrip(originator, receiver, session, inner_request(rqi="b"))
    obj, _ = originator.protect_request(inner_request(rqi="c"), session)
    _, ctx = receiver.open_request(obj)
    with pytest.raises(EncryptionError) as ei:
        receiver.protect_response(ctx, inner_response(inner_request(rqi="c")))
    assert int(ei.value.rsc) == 5211


def test_reprs_hide_keys(clock, receiver, orig_key, originator, key_bytes):
    session = originator.start(orig_key, receiver.e2e_sec_info()).session
    obj, pending = originator.protect_request(inner_request(), session)
    _, ctx = receiver.open_request(obj)
    for thing in (orig_key, session, ctx, pending, originator, receiver):
        text = repr(thing)
        assert key_bytes.hex() not in text and "hidden" in text or thing in (pending, originator, receiver)
        assert key_bytes.hex() not in text
