"""Request Expiration Timestamp of the inner request (profile R11; TS-0004 6.4.1, 7.3.2/7.3.3).

The Originator seals an absolute ``rqet`` (now + ``request_lifetime``, default 5 min) into
every inner request that has none; the Receiver refuses an authentic inner request whose
absolute ``rqet`` has passed with REQUEST_TIMEOUT (4008), records nothing and does not return
it.  This bounds how late a Transit CSE that withholds an object can have it executed."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from esprim_helpers import ORIGINATOR_ID, FakeClock, as_sealed, inner_request, make_originator, seen_count

from m2msec.esprim import ErrorAdvice, OriginatorPolicy, Receiver
from m2msec.esprim.errors import ImpersonationError, ReplayedObject, RequestExpired
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.onem2m.timestamps import AbsRelTimestamp


def _session(originator, receiver: Receiver, orig_key):  # type: ignore[no-untyped-def]
    return originator.start(orig_key, receiver.e2e_sec_info()).session


def test_originator_seals_an_absolute_rqet_rounded_up_to_the_second(make_receiver, orig_key, clock: FakeClock) -> None:
    clock.now = datetime(2030, 1, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    receiver = make_receiver()
    originator = make_originator(clock)
    obj, _ = originator.protect_request(inner_request(), _session(originator, receiver, orig_key))
    got, _ = receiver.open_request(obj)
    assert got.rqet == AbsRelTimestamp.at(datetime(2030, 1, 1, 12, 5, 1, tzinfo=UTC))
    assert got.rqet.to_json() == "20300101T120501"  # the plain m2m:timestamp form


def test_withheld_object_is_refused_with_4008_after_rqet_and_nothing_is_recorded(make_receiver, orig_key,
                                                                                 clock: FakeClock) -> None:
    receiver = make_receiver()
    originator = make_originator(clock)
    session = _session(originator, receiver, orig_key)
    withheld, pending = originator.protect_request(inner_request(rqi="late"), session)
    # an object sealed later, opened first, establishes the session at the Receiver
    first, _ = originator.protect_request(inner_request(rqi="first"), session)
    receiver.open_request(first)
    clock.advance(minutes=5, seconds=2)  # past now + 5 min (+ the rounding second)
    with pytest.raises(RequestExpired) as info:
        receiver.open_request(withheld)
    assert info.value.rsc == RSC.REQUEST_TIMEOUT and int(info.value.rsc) == 4008
    assert "expired at 20300101T120501" in info.value.args[0]
    assert seen_count(receiver) == 1  # only "first": the refused object left no record
    outer = receiver.error_response(info.value, "outer-late")
    assert outer.rsc == RSC.REQUEST_TIMEOUT and outer.rqi == "outer-late"
    assert RSC.REQUEST_TIMEOUT.http_status == 504
    # refused again as expired (not as a replay): time only moves on
    with pytest.raises(RequestExpired):
        receiver.open_request(withheld)
    # the Originator does not resend on 4008
    assert originator.handle_error(pending, int(RSC.REQUEST_TIMEOUT)) is ErrorAdvice.ABORT


def test_object_delivered_before_rqet_is_accepted_also_at_the_boundary(make_receiver, orig_key,
                                                                       clock: FakeClock) -> None:
    receiver = make_receiver()
    originator = make_originator(clock, request_lifetime=timedelta(seconds=59))
    session = _session(originator, receiver, orig_key)
    obj, _ = originator.protect_request(inner_request(), session)
    clock.now = datetime(2030, 1, 1, 12, 1, 0, tzinfo=UTC)  # == rqet: not yet expired
    got, _ = receiver.open_request(obj)
    assert got.rqet == AbsRelTimestamp.at(clock.now)
    obj2, _ = originator.protect_request(inner_request(rqi="two"), session)  # rqet 12:02:00
    clock.now = datetime(2030, 1, 1, 12, 2, 0, 1, tzinfo=UTC)  # one microsecond past it
    with pytest.raises(RequestExpired):
        receiver.open_request(obj2)


def test_callers_rqet_is_kept_and_relative_rqet_is_not_checked(make_receiver, orig_key, clock: FakeClock) -> None:
    receiver = make_receiver()
    originator = make_originator(clock)
    session = _session(originator, receiver, orig_key)
    own = AbsRelTimestamp.at(clock() + timedelta(minutes=40))
    obj, _ = originator.protect_request(inner_request(rqi="own", rqet=own), session)
    relative = AbsRelTimestamp.after_ms(1000)
    obj_rel, _ = originator.protect_request(inner_request(rqi="rel", rqet=relative), session)
    short = AbsRelTimestamp.at(clock() + timedelta(minutes=2))  # shorter than the default lifetime
    obj_short, _ = originator.protect_request(inner_request(rqi="short", rqet=short), session)
    clock.advance(minutes=30)  # past the default lifetime, before the caller's own rqet
    got, _ = receiver.open_request(obj)
    assert got.rqet == own
    got_rel, _ = receiver.open_request(obj_rel)  # counts from receipt: cannot bound a delay
    assert got_rel.rqet == relative
    with pytest.raises(RequestExpired):  # a caller's own absolute rqet is enforced as well
        receiver.open_request(obj_short)


def test_request_lifetime_none_seals_no_rqet_and_bytes_are_sealed_as_given(make_receiver, orig_key,
                                                                           clock: FakeClock) -> None:
    receiver = make_receiver()
    originator = make_originator(clock, request_lifetime=None)
    session = _session(originator, receiver, orig_key)
    req = inner_request()
    obj, _ = originator.protect_request(req, session)
    assert receiver.open_request(obj)[0] == req  # no rqet added
    with_default = make_originator(clock)
    s2 = _session(with_default, receiver, orig_key)
    raw = req.to_json_bytes()
    obj2, _ = with_default.protect_request(raw, s2)
    assert receiver.open_request(obj2)[0].rqet is None  # opaque bytes: not rewritten


def test_expiry_is_checked_only_after_authentication_and_impersonation(make_receiver, orig_key,
                                                                       clock: FakeClock) -> None:
    """A forged From is an impersonation error even when the request is also late: the order
    of checks never tells an attacker anything about a request it could not open."""
    receiver = make_receiver()
    originator = make_originator(clock)
    session = _session(originator, receiver, orig_key)
    obj, _ = originator.protect_request(inner_request(fr="CAE-other"), session)
    clock.advance(minutes=10)
    with pytest.raises(ImpersonationError):
        receiver.open_request(obj)


def test_expiry_is_checked_before_the_replay_record(make_receiver, orig_key, clock: FakeClock) -> None:
    receiver = make_receiver()
    originator = make_originator(clock)
    session = _session(originator, receiver, orig_key)
    obj, _ = originator.protect_request(inner_request(), session)
    receiver.open_request(obj)
    with pytest.raises(ReplayedObject):  # in time: the replay record refuses the copy
        receiver.open_request(obj)
    clock.advance(minutes=6)
    with pytest.raises(RequestExpired):  # late: refused as late, whatever was recorded
        receiver.open_request(obj)


@pytest.mark.parametrize("bad", [timedelta(0), timedelta(seconds=-1)])
def test_policy_refuses_a_non_positive_request_lifetime(bad: timedelta) -> None:
    with pytest.raises(ValueError, match="request_lifetime"):
        OriginatorPolicy(request_lifetime=bad)


def test_inner_rqet_is_inside_the_authenticated_plaintext(make_receiver, orig_key, clock: FakeClock) -> None:
    """A CSE cannot extend the deadline: the rqet is in the AES-GCM plaintext, and any change
    of the object fails authentication (BAD_MAC) before the deadline is even read."""
    from m2msec.esprim import jwe
    from m2msec.esprim.errors import BadMAC

    receiver = make_receiver()
    originator = make_originator(clock)
    session = _session(originator, receiver, orig_key)
    obj, _ = originator.protect_request(inner_request(), session)
    parts = obj.split(".")
    ct = bytearray(jwe.b64url_decode(parts[3], "ciphertext"))
    ct[-1] ^= 0x01
    tampered = ".".join([*parts[:3], jwe.b64url_encode(bytes(ct)), parts[4]])
    with pytest.raises(BadMAC):
        receiver.open_request(tampered)
    got, _ = receiver.open_request(obj)
    assert as_sealed(got).fr == ORIGINATOR_ID and b"rqet" in got.to_json_bytes()
    assert replace(got, rqet=None) == inner_request()
