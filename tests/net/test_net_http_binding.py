"""Pure tests of the TS-0009 HTTP binding (m2msec.net.http_binding): vectors from the spec, every header, rejections."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from m2msec.net.http_binding import (
    BindingError,
    UnsupportedMediaTypeError,
    header_value,
    http_status_for,
    http_to_request,
    http_to_response,
    parse_content_type,
    path_to_to,
    request_to_http,
    response_to_http,
    to_to_path,
)
from m2msec.onem2m import (
    AbsRelTimestamp,
    DesIdResType,
    Operation,
    RequestPrimitive,
    ResourceType,
    ResponsePrimitive,
    ResponseStatusCode,
    ResultContent,
)
from m2msec.onem2m._wire import dumps_cbor

OT = datetime(2026, 11, 26, 10, 0, 0, 123000, tzinfo=timezone.utc)
RSC = ResponseStatusCode


def req(**kw: Any) -> RequestPrimitive:
    base: dict[str, Any] = {"op": Operation.RETRIEVE, "to": "/id-in/cse-in", "rqi": "rq-1", "fr": "Cae1", "rvi": "3"}
    base.update(kw)
    return RequestPrimitive(**base)


# ---------------------------------------------------------------- method (6.2.1)


@pytest.mark.parametrize(
    ("op", "method", "ty"),
    [
        (Operation.CREATE, "POST", ResourceType.CONTAINER),
        (Operation.RETRIEVE, "GET", None),
        (Operation.UPDATE, "PUT", None),
        (Operation.DELETE, "DELETE", None),
        (Operation.NOTIFY, "POST", None),
    ],
)
def test_method_mapping_round_trips(op: Operation, method: str, ty: ResourceType | None) -> None:
    pc = {"m2m:cnt": {"rn": "c"}} if op in (Operation.CREATE, Operation.UPDATE) else None
    if op is Operation.NOTIFY:
        pc = {"m2m:sgn": {"vrq": True}}
    r = req(op=op, ty=ty, pc=pc)
    m, target, headers, body = request_to_http(r)
    assert m == method
    ctype = header_value(headers, "content-type")
    if op is Operation.CREATE:
        assert ctype == "application/json;ty=3"
    elif pc is not None:
        assert ctype == "application/json"
    else:
        assert ctype is None and body == b""
    assert http_to_request(m, target, headers, body) == r


def test_post_without_ty_is_notify_and_with_ty_is_create() -> None:
    h = [("X-M2M-RI", "1"), ("Content-Type", "application/vnd.onem2m-res+json; ty=4")]
    assert http_to_request("POST", "/cse-in/cnt", h, b'{"m2m:cin":{}}').op is Operation.CREATE
    h = [("X-M2M-RI", "1"), ("Content-Type", "application/vnd.onem2m-ntfy+json")]
    assert http_to_request("POST", "/cse-in/ae", h, b'{"m2m:sgn":{}}').op is Operation.NOTIFY


# ---------------------------------------------------------------- path (6.2.2.1, table 6.2.2.1-1)


@pytest.mark.parametrize(
    ("to", "path"),
    [
        ("CSEBase/ae12/cont27/contInst696", "/CSEBase/ae12/cont27/contInst696"),
        ("cin00856", "/cin00856"),
        ("/CSE178/CSEBase/ae12/cont27/contInst696", "/~/CSE178/CSEBase/ae12/cont27/contInst696"),
        ("/CSE178/cin00856", "/~/CSE178/cin00856"),
        ("//mym2msp.org/CSE178/CSEBase/ae12/cont27/contInst696", "/_/mym2msp.org/CSE178/CSEBase/ae12/cont27/contInst696"),
        ("//mym2msp.org/CSE178/cin00856", "/_/mym2msp.org/CSE178/cin00856"),
    ],
)
def test_table_6_2_2_1_1(to: str, path: str) -> None:
    assert to_to_path(to) == path
    assert path_to_to(path) == to


def test_path_percent_encoding_round_trips() -> None:
    to = "/id-in/cse-in/a b+c%d?e#f\u00e9"
    path = to_to_path(to)
    assert " " not in path and "?" not in path and "#" not in path and "+" not in path
    assert path_to_to(path) == to


def test_absolute_form_target_is_accepted() -> None:
    r = http_to_request("GET", "http://127.0.0.1:8080/~/id-in/cse-in?rcn=1", [("X-M2M-RI", "1")], b"")
    assert r.to == "/id-in/cse-in" and r.rcn is ResultContent.ATTRIBUTES


@pytest.mark.parametrize("path", ["/", "/~", "/_", "/~/", "/_/", "relative", "/%ff"])
def test_paths_naming_no_resource_are_refused(path: str) -> None:
    with pytest.raises(BindingError):
        http_to_request("GET", path, [("X-M2M-RI", "1")], b"")


# ---------------------------------------------------------------- query (6.2.2.2)


def test_example_1_nonblocking_request_synch() -> None:
    r = req(to="/CSE1234/RCSE78/container234", rt={"rtv": 1}, extra={"rp": "P1Y2M3DT10H1M0S"})
    _, target, _, _ = request_to_http(r)
    assert target == "/~/CSE1234/RCSE78/container234?rt=1&rp=P1Y2M3DT10H1M0S"


def test_example_2_discovery() -> None:
    r = req(to="/CSE1234/RCSE78", fc={"ty": [3], "atr": [{"nm": "cr", "val": "Sam"}], "fu": 1})
    _, target, headers, body = request_to_http(r)
    assert target == "/~/CSE1234/RCSE78?ty=3&cr=Sam&fu=1"
    assert http_to_request("GET", target, headers, body) == r


def test_example_3_semantics_filter_is_percent_encoded() -> None:
    smf = "PREFIX rdf: <http://www.w3.org/1999/02/22-rdf-syntax-ns#> SELECT ?car WHERE { ?car rdf:type myOnt:Car }"
    r = req(fc={"smf": [smf]})
    _, target, headers, body = request_to_http(r)
    query = target.split("?", 1)[1]
    assert query.startswith("smf=PREFIX%20rdf%3A%20%3Chttp%3A%2F%2Fwww.w3.org")
    assert " " not in query and "#" not in query
    assert http_to_request("GET", target, headers, body).fc == {"smf": [smf]}


def test_every_query_parameter_round_trips() -> None:
    r = req(
        rcn=ResultContent.CHILD_RESOURCE_REFERENCES,
        drt=DesIdResType.UNSTRUCTURED,
        rt={"rtv": 2, "nu": ["http://127.0.0.1:1/n", "/id-in/Cae9"]},
        fc={
            "crb": "20261126T100000",
            "cra": "20261125T100000",
            "ms": "20261125T100000",
            "us": "20261127T100000",
            "sts": 1,
            "stb": 2,
            "exb": "20271126T100000",
            "exa": "20261126T100000",
            "lbl": ["key 1", "a+b", "c&d=e"],
            "ty": [2, 3, 4],
            "sza": 10,
            "szb": 1000,
            "cty": ["application/json", "text/plain"],
            "lim": 5,
            "fu": 1,
            "smf": ["one", "two"],
            "fo": 2,
            "cfs": 1,
            "cfq": "a=b & c",
            "lvl": 3,
            "ofst": 1,
            "atr": [{"nm": "rn", "val": "x y"}, {"nm": "cr", "val": "Sam"}],
            "catr": [{"nm": "rn", "val": "child"}],
            "patr": [{"nm": "ty", "val": "2"}],
        },
        extra={
            "rp": "PT1H",
            "da": True,
            "rids": ["role1", "role 2"],
            "tids": ["t1"],
            "ltids": ["l1", "l2"],
            "tqi": False,
            "asi": True,
            "auri": False,
            "sqi": True,
        },
    )
    m, target, headers, body = request_to_http(r)
    assert "rt=2" in target and "lbl=key%201+a%2Bb+c%26d%3De" in target
    assert "c.rn=child" in target and "p.ty=2" in target and "smf=one&smf=two" in target
    assert header_value(headers, "X-M2M-RTU") == "http://127.0.0.1:1/n&/id-in/Cae9"
    assert http_to_request(m, target, headers, body) == r


def test_repeated_list_fields_accumulate_and_booleans_accept_digits() -> None:
    r = http_to_request("GET", "/cse-in?lbl=a&lbl=b+c&ty=2&ty=3&da=1&tqi=0", [("X-M2M-RI", "1")], b"")
    assert r.fc == {"lbl": ["a", "b", "c"], "ty": [2, 3]}
    assert r.extra == {"da": True, "tqi": False}


def test_partial_retrieve_fragment_and_attribute_list() -> None:
    _, target, _, body = request_to_http(req(to="/id-in/cse-in/ae1#rr"))
    assert target == "/~/id-in/cse-in/ae1?atrl=rr" and body == b""
    r = req(pc={"m2m:atrl": ["ri", "lbl", "rr"]})
    m, target, headers, body = request_to_http(r)
    assert target.endswith("?atrl=ri+lbl+rr") and body == b""
    assert http_to_request(m, target, headers, body) == r


@pytest.mark.parametrize(
    "query",
    [
        "rcn=x",
        "rcn=99",
        "rcn=1&rcn=2",
        "drt=7",
        "rt=one",
        "da=yes",
        "lim=-",
        "ty=a",
        "atr=rn",
        "novalue",
        "=v",
        "bad%20name=1",
        "x=%ff",
        "atrl=",
    ],
)
def test_bad_query_is_4000(query: str) -> None:
    with pytest.raises(BindingError) as ei:
        http_to_request("GET", f"/cse-in?{query}", [("X-M2M-RI", "1")], b"")
    assert ei.value.rsc == RSC.BAD_REQUEST


def test_atrl_on_a_non_retrieve_is_4000() -> None:
    h = [("X-M2M-RI", "1"), ("Content-Type", "application/json")]
    with pytest.raises(BindingError):
        http_to_request("PUT", "/cse-in?atrl=rn", h, b'{"m2m:ae":{}}')


# ---------------------------------------------------------------- headers (6.4)


def test_every_request_header() -> None:
    r = RequestPrimitive(
        op=Operation.CREATE,
        to="/id-in/cse-in",
        fr="Cae1",
        rqi="rq-42",
        rvi="3",
        ty=ResourceType.AE,
        pc={"m2m:ae": {"rn": "ae1", "api": "Nx", "rr": False, "srv": ["3"]}},
        ot=OT,
        rqet=AbsRelTimestamp.after_ms(5000),
        rset=AbsRelTimestamp.at(OT),
        ec=3,
        vsi="vendor info",
        extra={"oet": 1000, "gid": "group-7", "tkns": ["tok.a.b", "tok.c.d"], "aus": ["c2ln", "c2lnMg=="]},
    )
    m, target, headers, body = request_to_http(r)
    h = {k.lower(): v for k, v in headers}
    assert h == {
        "x-m2m-origin": "Cae1",
        "x-m2m-ri": "rq-42",
        "x-m2m-rvi": "3",
        "x-m2m-ot": "20261126T100000,123",
        "x-m2m-ret": "5000",
        "x-m2m-rst": "20261126T100000,123",
        "x-m2m-oet": "1000",
        "x-m2m-ec": "3",
        "x-m2m-vsi": "vendor info",
        "x-m2m-gid": "group-7",
        "authorization": "tok.a.b+tok.c.d",
        "x-m2m-as": "c2ln+c2lnMg==",
        "accept": "application/json",
        "content-type": "application/json;ty=2",
    }
    assert body == b'{"m2m:ae":{"rn":"ae1","api":"Nx","rr":false,"srv":["3"]}}'
    # header names are case-insensitive at the receiver (5.1)
    mixed = [(k.upper() if i % 2 else k.lower(), v) for i, (k, v) in enumerate(headers)]
    assert http_to_request(m, target, mixed, body) == r


def test_every_response_header_and_status() -> None:
    rsp = ResponsePrimitive(
        rsc=RSC.CREATED,
        rqi="rq-42",
        pc={"m2m:cnt": {"rn": "c"}},
        fr="/id-in",
        ot=OT,
        rset=AbsRelTimestamp.at(OT),
        ec=2,
        rvi="3",
        vsi="v",
        extra={"cnst": 1, "cnot": 10, "ati": [{"lti": "l1", "tkid": "t1"}, {"lti": "l2", "tkid": "t2"}]},
    )
    status, headers, body = response_to_http(rsp, content_location="/id-in/cse-in/c")
    assert status == 201
    h = {k.lower(): v for k, v in headers}
    assert h == {
        "x-m2m-rsc": "2001",
        "x-m2m-ri": "rq-42",
        "x-m2m-origin": "/id-in",
        "x-m2m-rvi": "3",
        "x-m2m-ot": "20261126T100000,123",
        "x-m2m-rst": "20261126T100000,123",
        "x-m2m-ec": "2",
        "x-m2m-vsi": "v",
        "x-m2m-cts": "1",
        "x-m2m-cto": "10",
        "x-m2m-ati": "l1:t1+l2:t2",
        "content-location": "/id-in/cse-in/c",
        "content-type": "application/json",
    }
    assert http_to_response(status, headers, body) == rsp


def test_response_to_parameter_is_not_carried() -> None:
    rsp = ResponsePrimitive(rsc=RSC.OK, rqi="1", to="Cae1")
    status, headers, body = response_to_http(rsp)
    assert http_to_response(status, headers, body).to is None


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ([], "X-M2M-RI header is missing"),
        ([("X-M2M-RI", "")], "empty"),
        ([("X-M2M-RI", "1"), ("x-m2m-ri", "2")], "more than once"),
        ([("X-M2M-RI", "1"), ("X-M2M-RVI", "three")], "release version"),
        ([("X-M2M-RI", "1"), ("X-M2M-OT", "2026-11-26T10:00:00Z")], "X-M2M-OT"),
        ([("X-M2M-RI", "1"), ("X-M2M-RET", "soon")], "X-M2M-RET"),
        ([("X-M2M-RI", "1"), ("X-M2M-EC", "1")], "eventCat"),
        ([("X-M2M-RI", "1"), ("X-M2M-EC", "x")], "X-M2M-EC"),
        ([("X-M2M-RI", "1"), ("X-M2M-Origin", "")], "empty"),
    ],
)
def test_bad_request_headers_are_4000(headers: list[tuple[str, str]], problem: str) -> None:
    with pytest.raises(BindingError) as ei:
        http_to_request("GET", "/cse-in", headers, b"")
    assert ei.value.rsc == RSC.BAD_REQUEST
    assert problem in str(ei.value)


def test_unknown_headers_are_ignored() -> None:
    r = http_to_request("GET", "/cse-in", [("X-M2M-RI", "1"), ("X-Other", "1"), ("Host", "h")], b"")
    assert r.rqi == "1"


# ---------------------------------------------------------------- content type and body (6.4.3, 6.5)


@pytest.mark.parametrize(
    ("value", "media", "ty", "ser"),
    [
        ("application/json", "application/json", None, "json"),
        ("application/json;ty=2", "application/json", ResourceType.AE, "json"),
        ("Application/JSON; ty=3; charset=utf-8", "application/json", ResourceType.CONTAINER, "json"),
        ("application/vnd.onem2m-res+json; ty=4", "application/vnd.onem2m-res+json", ResourceType.CONTENT_INSTANCE, "json"),
        ("application/vnd.onem2m-ntfy+json", "application/vnd.onem2m-ntfy+json", None, "json"),
        ("application/cbor;ty=1", "application/cbor", ResourceType.ACCESS_CONTROL_POLICY, "cbor"),
        ("application/vnd.onem2m-res+cbor", "application/vnd.onem2m-res+cbor", None, "cbor"),
    ],
)
def test_content_types(value: str, media: str, ty: ResourceType | None, ser: str) -> None:
    assert parse_content_type(value) == (media, ty, ser)


@pytest.mark.parametrize("value", ["application/xml", "application/vnd.onem2m-res+xml; ty=2", "text/plain"])
def test_unsupported_media_types_are_4015(value: str) -> None:
    with pytest.raises(UnsupportedMediaTypeError) as ei:
        parse_content_type(value)
    assert ei.value.rsc == RSC.UNSUPPORTED_MEDIA_TYPE


@pytest.mark.parametrize(
    "value", ["", "json", "application/json;ty=x", "application/json;ty=9999", "application/json; charset=latin-1"]
)
def test_malformed_content_types_are_4000(value: str) -> None:
    with pytest.raises(BindingError) as ei:
        parse_content_type(value)
    assert ei.value.rsc == RSC.BAD_REQUEST


@pytest.mark.parametrize(
    ("method", "headers", "body"),
    [
        ("POST", [], b'{"m2m:sgn":{}}'),  # body without Content-Type
        ("PUT", [("Content-Type", "application/json;ty=3")], b'{"m2m:cnt":{}}'),  # ty on Update
        ("GET", [("Content-Type", "application/json;ty=3")], b""),
        ("PATCH", [("Content-Type", "application/json")], b"{}"),
        ("OPTIONS", [], b""),
        ("POST", [("Content-Type", "application/json")], b'{"a":1,"a":2}'),  # duplicate member (TS-0004 8.4.2)
        ("POST", [("Content-Type", "application/json")], b"{"),
        ("POST", [("Content-Type", "application/json")], b"null"),
        ("POST", [("Content-Type", "application/json")], b'{"x":NaN}'),
        ("POST", [("Content-Type", "application/json")], b"\xff\xfe"),
        ("POST", [("Content-Type", "application/cbor")], b"\xa1\x61"),  # truncated CBOR
        ("POST", [("Content-Type", "application/cbor")], dumps_cbor({"a": b"bytes"})),  # outside the JSON model
    ],
)
def test_bad_requests_are_4000(method: str, headers: list[tuple[str, str]], body: bytes) -> None:
    with pytest.raises(BindingError) as ei:
        http_to_request(method, "/cse-in", [("X-M2M-RI", "1"), *headers], body)
    assert ei.value.rsc == RSC.BAD_REQUEST


def test_cbor_serialization_round_trips() -> None:
    r = req(op=Operation.NOTIFY, pc={"m2m:seci": {"sit": 5, "epo": "a.b.c.d.e"}})
    m, target, headers, body = request_to_http(r, serialization="cbor")
    assert header_value(headers, "content-type") == "application/cbor"
    assert header_value(headers, "accept") == "application/cbor"
    assert http_to_request(m, target, headers, body) == r
    rsp = ResponsePrimitive(rsc=RSC.OK, rqi="rq-1", pc={"m2m:dbg": "x"})
    assert http_to_response(*response_to_http(rsp, serialization="cbor")) == rsp


def test_bytes_headers_and_target_as_from_h11() -> None:
    r = http_to_request(
        b"POST",
        b"/~/id-in/cse-in/ae2",
        [(b"x-m2m-ri", b"r1"), (b"content-type", b"application/json"), (b"x-m2m-origin", b"/id-in/Cae1")],
        b'{"m2m:sgn":{}}',
    )
    assert (r.op, r.to, r.fr, r.pc) == (Operation.NOTIFY, "/id-in/cse-in/ae2", "/id-in/Cae1", {"m2m:sgn": {}})


# ---------------------------------------------------------------- emitting what has no mapping


@pytest.mark.parametrize(
    "r",
    [
        req(op=Operation.CREATE, pc={"m2m:cnt": {}}),  # Create without ty
        req(extra={"grtm": ["/id-in/x"]}),
        req(rt={"rtv": 1, "other": 1}),
        req(fc={"unknownElement": 1}),
        req(fc={"atr": [{"nm": "rn"}]}),
        req(fc={"atr": [{"nm": "rn", "val": {"nested": 1}}]}),
        req(to="/id-in/x#"),
        req(to="/id-in/x#rn", pc={"m2m:atrl": ["ty"]}),
    ],
)
def test_unmappable_requests_are_refused(r: RequestPrimitive) -> None:
    with pytest.raises(BindingError):
        request_to_http(r)


def test_asri_response_is_refused() -> None:
    with pytest.raises(BindingError):
        response_to_http(ResponsePrimitive(rsc=RSC.OK, rqi="1", extra={"asri": {"x": 1}}))


# ---------------------------------------------------------------- status (6.3.2)


@pytest.mark.parametrize(
    ("rsc", "status"),
    [
        (RSC.ACCEPTED, 202),
        (RSC.OK, 200),
        (RSC.CREATED, 201),
        (RSC.DELETED, 200),
        (RSC.UPDATED, 200),
        (RSC.BAD_REQUEST, 400),
        (RSC.CONTENTS_UNACCEPTABLE, 400),
        (RSC.RELEASE_VERSION_NOT_SUPPORTED, 501),
        (RSC.NOT_FOUND, 404),
        (RSC.OPERATION_NOT_ALLOWED, 405),
        (RSC.REQUEST_TIMEOUT, 504),
        (RSC.UNSUPPORTED_MEDIA_TYPE, 415),
        (RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 403),
        (RSC.CONFLICT, 409),
        (RSC.ESPRIM_UNKNOWN_KEY_ID, 403),
        (RSC.ESPRIM_BAD_MAC, 403),
        (RSC.INTERNAL_SERVER_ERROR, 500),
        (RSC.NOT_IMPLEMENTED, 501),
        (RSC.TARGET_NOT_REACHABLE, 404),
        (RSC.ALREADY_EXISTS, 409),
        (RSC.NOT_ACCEPTABLE, 406),
        (RSC.ESPRIM_DECRYPTION_ERROR, 500),
        (RSC.EXTERNAL_OBJECT_NOT_REACHABLE_BEFORE_OET_TIMEOUT, 504),
        (1999, 202),
        (2999, 200),
        (4999, 400),
        (5999, 500),
        (6999, 500),
    ],
)
def test_status_mapping(rsc: Any, status: int) -> None:
    assert http_status_for(rsc) == status
    got_status, headers, _ = response_to_http(ResponsePrimitive(rsc=rsc, rqi="1"))
    assert got_status == status and header_value(headers, "X-M2M-RSC") == str(int(rsc))


def test_rsc_comes_from_header_not_status() -> None:
    rsp = http_to_response(200, [("X-M2M-RSC", "4004"), ("X-M2M-RI", "1")], b"")
    assert rsp.rsc == RSC.NOT_FOUND


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [
        (200, [("X-M2M-RI", "1")], b""),  # no RSC
        (200, [("X-M2M-RSC", "2000")], b""),  # no RI
        (200, [("X-M2M-RSC", "ok"), ("X-M2M-RI", "1")], b""),
        (200, [("X-M2M-RSC", "3000"), ("X-M2M-RI", "1")], b""),
        (200, [("X-M2M-RSC", "2000"), ("X-M2M-RSC", "2000"), ("X-M2M-RI", "1")], b""),
        (200, [("X-M2M-RSC", "2000"), ("X-M2M-RI", "1"), ("Content-Type", "application/json;ty=2")], b"{}"),
        (200, [("X-M2M-RSC", "2000"), ("X-M2M-RI", "1")], b"{}"),  # body without Content-Type
        (200, [("X-M2M-RSC", "2000"), ("X-M2M-RI", "1"), ("X-M2M-ATI", "no-colon")], b""),
        (99, [("X-M2M-RSC", "2000"), ("X-M2M-RI", "1")], b""),
    ],
)
def test_bad_responses_are_refused(status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    with pytest.raises(BindingError) as ei:
        http_to_response(status, headers, body)
    assert ei.value.rsc == RSC.BAD_REQUEST


def test_unsupported_response_media_type_is_4015() -> None:
    with pytest.raises(UnsupportedMediaTypeError):
        http_to_response(200, [("X-M2M-RSC", "2000"), ("X-M2M-RI", "1"), ("Content-Type", "text/html")], b"<p>")
