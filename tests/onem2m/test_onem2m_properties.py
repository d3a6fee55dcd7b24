"""Property tests: random valid oneM2M objects round-trip through JSON text and CBOR."""

from __future__ import annotations

import base64
import datetime as dt
import string
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from m2msec.onem2m import (
    SUID,
    AbsRelTimestamp,
    ContentInfo,
    ContentSecurity,
    DesIdResType,
    E2ESecInfo,
    EncodingType,
    ESPrimKeyGenAlgID,
    ESPrimProtocolAndAlgID,
    Operation,
    OriginatorESPrimRandObject,
    ReceiverESPrimRandObject,
    RequestPrimitive,
    ResourceType,
    ResponsePrimitive,
    ResponseStatusCode,
    ResultContent,
    SecurityInfo,
    SecurityInfoType,
    format_timestamp,
    parse_timestamp,
)

UTC = dt.timezone.utc
SETTINGS = settings(max_examples=150, deadline=None)

datetimes = st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(9999, 12, 30), timezones=st.just(UTC))
ncnames = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9._-]{0,40}\Z")
unique_enums = lambda e: st.lists(st.sampled_from(list(e)), min_size=1, unique=True)  # noqa: E731
b64url = st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="))
b64url_nonempty = st.binary(min_size=1, max_size=40).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="))
jwe = st.tuples(b64url_nonempty, b64url, b64url, b64url_nonempty, b64url).map(".".join)

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=15,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=4)
non_empty = st.text(min_size=1, max_size=30)


@st.composite
def receivers(draw: Any) -> ReceiverESPrimRandObject:
    return ReceiverESPrimRandObject(
        rand_id=draw(ncnames),
        rand_value=draw(st.binary(min_size=16, max_size=16)),
        expiry=draw(datetimes),
        protocol_and_alg_ids=tuple(draw(unique_enums(ESPrimProtocolAndAlgID))),
        key_gen_alg_ids=tuple(draw(unique_enums(ESPrimKeyGenAlgID))),
    )


@st.composite
def originators(draw: Any) -> OriginatorESPrimRandObject:
    return OriginatorESPrimRandObject(
        rand_id=draw(ncnames),
        rand_value=draw(st.binary(min_size=16, max_size=16)),
        expiry=draw(datetimes),
        protocol_and_alg_ids=tuple(draw(unique_enums(ESPrimProtocolAndAlgID))),
        key_gen_alg_id=draw(st.sampled_from(list(ESPrimKeyGenAlgID))),
    )


@st.composite
def security_infos(draw: Any) -> SecurityInfo:
    sit = draw(st.sampled_from(list(SecurityInfoType)))
    kw: dict[str, Any] = {}
    if sit == 1:
        kw["das_request"] = draw(json_objects)
    elif sit == 2:
        kw["das_response"] = draw(json_objects)
    elif sit == 4:
        kw["esprim_rand_object"] = draw(receivers())
    elif sit == 5:
        kw["esprim_object"] = draw(jwe)
    elif sit == 6:
        kw["escertke_message"] = draw(st.binary(min_size=1, max_size=200))
    elif sit == 7:
        kw["dyn_auth_rel_map_request"] = draw(json_objects)
    elif sit == 8:
        kw["dyn_auth_rel_map_response"] = draw(json_objects)
    return SecurityInfo(sit, **kw)


@st.composite
def e2e_sec_infos(draw: Any) -> E2ESecInfo:
    certs = draw(st.none() | st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=3, unique=True).map(tuple))
    return E2ESecInfo(tuple(draw(unique_enums(SUID))), certs, draw(st.none() | receivers()))


abs_rel = st.builds(AbsRelTimestamp, absolute=datetimes) | st.builds(AbsRelTimestamp, relative_ms=st.integers(0, 2**63 - 1))
event_cats = st.sampled_from([2, 3, 4]) | st.integers(100, 999)
rvis = st.sampled_from(["1", "2", "2a", "3", "4", "5"])


@st.composite
def requests(draw: Any) -> RequestPrimitive:
    opt = lambda s: draw(st.none() | s)  # noqa: E731
    pc = opt(json_values.filter(lambda v: v is not None) | security_infos().map(lambda s: s.to_content()))
    return RequestPrimitive(
        op=draw(st.sampled_from(list(Operation))),
        to=draw(non_empty),
        rqi=draw(non_empty),
        fr=opt(non_empty),
        rvi=opt(rvis),
        ty=opt(st.sampled_from(list(ResourceType))),
        pc=pc,
        ot=opt(datetimes),
        rqet=opt(abs_rel),
        rset=opt(abs_rel),
        rt=opt(json_objects),
        rcn=opt(st.sampled_from(list(ResultContent))),
        ec=opt(event_cats),
        fc=opt(json_objects),
        drt=opt(st.sampled_from(list(DesIdResType))),
        vsi=opt(st.text(max_size=10)),
        extra=draw(st.dictionaries(st.sampled_from(["rids", "oet", "tkns", "sqi"]), json_values, max_size=2)),
    )


@st.composite
def responses(draw: Any) -> ResponsePrimitive:
    opt = lambda s: draw(st.none() | s)  # noqa: E731
    rsc = draw(st.sampled_from(list(ResponseStatusCode)) | st.integers(4000, 6999))
    return ResponsePrimitive(
        rsc=rsc,
        rqi=draw(non_empty),
        pc=opt(json_values.filter(lambda v: v is not None)),
        to=opt(non_empty),
        fr=opt(non_empty),
        ot=opt(datetimes),
        rset=opt(abs_rel),
        ec=opt(event_cats),
        rvi=opt(rvis),
        vsi=opt(st.text(max_size=10)),
        extra=draw(st.dictionaries(st.sampled_from(["cnst", "cnot"]), json_values, max_size=2)),
    )


def _round_trip(obj: Any) -> None:
    cls = type(obj)
    assert cls.from_json(obj.to_json()) == obj
    assert cls.from_json_bytes(obj.to_json_bytes()) == obj
    assert cls.from_cbor(obj.to_cbor()) == obj
    assert cls.from_json(obj.to_json()).to_json() == obj.to_json()


@SETTINGS
@given(st.one_of(receivers(), originators(), security_infos(), e2e_sec_infos()))
def test_security_objects_round_trip(obj: Any) -> None:
    _round_trip(obj)


@SETTINGS
@given(requests())
def test_requests_round_trip(req: RequestPrimitive) -> None:
    _round_trip(req)
    if isinstance(req.pc, dict) and list(req.pc) == ["m2m:seci"]:
        assert req.security_info() is not None


@SETTINGS
@given(responses())
def test_responses_round_trip(rsp: ResponsePrimitive) -> None:
    _round_trip(rsp)


@SETTINGS
@given(datetimes)
def test_timestamps_round_trip(d: dt.datetime) -> None:
    text = format_timestamp(d)
    assert parse_timestamp(text) == d
    assert format_timestamp(parse_timestamp(text)) == text


restricted = st.builds(
    lambda a, b: a + b,
    st.sampled_from(string.ascii_letters + string.digits),
    st.text(alphabet=string.ascii_letters + string.digits + "!#$&-^_.+", max_size=20),
)


@SETTINGS
@given(restricted, restricted, st.sampled_from(list(EncodingType)), st.sampled_from(list(ContentSecurity)))
def test_content_info_round_trip(t: str, s: str, enc: EncodingType, sec: ContentSecurity) -> None:
    ci = ContentInfo(f"{t}/{s}", enc, sec)
    assert ContentInfo.parse(ci.format()) == ci
