"""Per-session caches (AES-GCM content cipher, parsed headers, SessionRef) change no outcome:
an expired or unknown session is still refused with its table 7.6.2-1 code after the
cipher was cached, and nothing secret shows in a repr."""

from __future__ import annotations

import pytest

from m2msec.esprim import jwe
from m2msec.esprim.errors import BadMAC, ESPrimError
from m2msec.esprim.state import CachedSession

from esprim_helpers import as_sealed, inner_request, inner_response


def roundtrip(originator, receiver, session, req):  # type: ignore[no-untyped-def]
    obj, pending = originator.protect_request(req, session)
    inner, ctx = receiver.open_request(obj)
    assert as_sealed(inner) == req
    return originator.open_response(receiver.protect_response(ctx, inner_response(req)), pending)


def test_cached_session_cipher_is_built_once_and_hidden(key_bytes: bytes) -> None:
    from datetime import UTC, datetime

    s = CachedSession(key_bytes, datetime(2030, 1, 1, tzinfo=UTC), (10, 12))
    assert s.cipher(12) is s.cipher(12) and s.cipher(12).enc == "A256GCM" and s.cipher(10).enc == "A128GCM"
    assert s == CachedSession(key_bytes, s.expires_at, (10, 12))  # the cache takes no part in equality
    for text in (repr(s), repr(s.cipher(12))):
        assert key_bytes.hex() not in text and "hidden" in text


def test_originator_session_cipher_and_ref_are_stable(receiver, orig_key, originator) -> None:  # type: ignore[no-untyped-def]
    session = originator.start(orig_key, receiver.e2e_sec_info()).session
    assert session.cipher(session.enc) is session.cipher(session.enc)
    assert session.ref is session.ref and session.ref.ori == session.originator_rand.rand_id
    assert jwe.ContentCipher(session.enc, session.content_key(session.enc)).enc == session.cipher(session.enc).enc


def test_expired_session_refused_after_many_cached_rounds(clock, receiver, orig_key, originator) -> None:  # type: ignore[no-untyped-def]
    session = originator.start(orig_key, receiver.e2e_sec_info()).session
    for i in range(3):
        rsp = roundtrip(originator, receiver, session, inner_request(rqi=f"r{i}"))
        assert rsp.rqi == f"r{i}"
    obj, _ = originator.protect_request(inner_request(rqi="late"), session)
    clock.now = session.expires_at  # the session ends: the cached cipher must not be used
    with pytest.raises(ESPrimError) as info:
        receiver.open_request(obj)
    assert int(info.value.rsc) == 4113


def test_impersonation_and_tampering_still_refused_on_a_cached_session(receiver, orig_key, originator) -> None:  # type: ignore[no-untyped-def]
    session = originator.start(orig_key, receiver.e2e_sec_info()).session
    roundtrip(originator, receiver, session, inner_request(rqi="warm"))
    obj, _ = originator.protect_request(inner_request(fr="CAE-someone-else", rqi="imp"), session)
    with pytest.raises(ESPrimError) as info:
        receiver.open_request(obj)
    assert int(info.value.rsc) == 4116
    obj, _ = originator.protect_request(inner_request(rqi="tamper"), session)
    parts = obj.split(".")
    parts[3] = ("B" if parts[3][0] == "A" else "A") + parts[3][1:]
    with pytest.raises(BadMAC):
        receiver.open_request(".".join(parts))


def test_response_to_another_request_refused_on_a_cached_session(receiver, orig_key, originator) -> None:  # type: ignore[no-untyped-def]
    session = originator.start(orig_key, receiver.e2e_sec_info()).session
    roundtrip(originator, receiver, session, inner_request(rqi="warm"))
    obj, pending = originator.protect_request(inner_request(rqi="one"), session)
    _, ctx = receiver.open_request(obj)
    with pytest.raises(ESPrimError) as info:
        receiver.protect_response(ctx, inner_response(inner_request(rqi="two")))
    assert int(info.value.rsc) == 5211
    sealed = receiver.protect_response(ctx, inner_response(inner_request(rqi="one")))
    assert originator.open_response(sealed, pending).rqi == "one"
    with pytest.raises(ESPrimError):  # replay of the same response
        originator.open_response(sealed, pending)
