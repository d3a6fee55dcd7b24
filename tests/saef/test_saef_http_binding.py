"""TS-0009 clause 6 mapping (pure functions): primitives <-> HTTP messages."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import cbor2
import pytest

from m2msec.onem2m.enums import Operation, ResourceType, ResultContent
from m2msec.onem2m.primitives import RequestPrimitive, ResponsePrimitive
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.onem2m.timestamps import AbsRelTimestamp
from m2msec.saef.http_binding import (
    CBOR,
    HTTPBindingError,
    OperationNotAllowed,
    UnsupportedMediaType,
    http_status_for,
    http_to_request,
    http_to_response,
    path_to_to,
    request_to_http,
    response_to_http,
    to_to_path,
)

# TS-0009 table 6.2.2.1-1 (spaces in the printed table removed)
TABLE = [
    ("CSEBase/ae12/cont27/contInst696", "/CSEBase/ae12/cont27/contInst696"),
    ("cin00856", "/cin00856"),
    ("/CSE178/CSEBase/ae12/cont27/contInst696", "/~/CSE178/CSEBase/ae12/cont27/contInst696"),
    ("/CSE178/cin00856", "/~/CSE178/cin00856"),
    ("//mym2msp.org/CSE178/CSEBase/ae12/cont27/contInst696", "/_/mym2msp.org/CSE178/CSEBase/ae12/cont27/contInst696"),
    ("//mym2msp.org/CSE178/cin00856", "/_/mym2msp.org/CSE178/cin00856"),
]


@pytest.mark.parametrize(("to", "path"), TABLE)
def test_path_mapping_table(to: str, path: str) -> None:
    assert to_to_path(to) == path
    assert path_to_to(path) == to


def test_create_round_trip_and_headers() -> None:
    ot = datetime(2026, 11, 23, 12, 0, 1, tzinfo=timezone.utc)
    req = RequestPrimitive(op=Operation.CREATE, to="/id-in/cse-in", fr="Cae1", rqi="r-1", rvi="3",
                           ty=ResourceType.CONTAINER, pc={"m2m:cnt": {"rn": "c1"}}, ot=ot,
                           rqet=AbsRelTimestamp.after_ms(5000), rcn=ResultContent.ATTRIBUTES, ec=3, vsi="v",
                           rt={"rtv": 1, "nu": ["http://a", "http://b"]})
    http = request_to_http(req, host="in.example:8443")
    assert http.method == "POST" and http.target == "/~/id-in/cse-in?rcn=1&rt=1"
    h = {k.lower(): v for k, v in http.headers}
    assert h["content-type"] == "application/json; ty=3" and h["x-m2m-origin"] == "Cae1"
    assert h["x-m2m-ri"] == "r-1" and h["x-m2m-rvi"] == "3" and h["x-m2m-ot"] == "20261123T120001"
    assert h["x-m2m-ret"] == "5000" and h["x-m2m-ec"] == "3" and h["x-m2m-rtu"] == "http://a&http://b"
    assert h["host"] == "in.example:8443" and int(h["content-length"]) == len(http.body)
    assert json.loads(http.body) == {"m2m:cnt": {"rn": "c1"}}
    # header names are case-insensitive at the receiver (TS-0009 5.1)
    back = http_to_request(http.method, http.target, [(k.upper(), v) for k, v in http.headers], http.body)
    assert back == req


def test_post_without_ty_is_notify_and_other_methods() -> None:
    notify = RequestPrimitive(op=Operation.NOTIFY, to="Cae1", fr="/id-in", rqi="n1", pc={"m2m:sgn": {"vrq": True}})
    http = request_to_http(notify, host="h")
    assert http.method == "POST" and http.header("Content-Type") == "application/json"
    assert http_to_request(http.method, http.target, http.headers, http.body).op is Operation.NOTIFY
    for op, method in ((Operation.RETRIEVE, "GET"), (Operation.UPDATE, "PUT"), (Operation.DELETE, "DELETE")):
        r = RequestPrimitive(op=op, to="cse-in/c1", fr="Cae1", rqi="x")
        m = request_to_http(r, host="h")
        assert m.method == method
        assert http_to_request(m.method, m.target, m.headers, m.body) == r


def test_query_filter_criteria_and_lists() -> None:
    req = http_to_request("GET", "/~/CSE1234/RCSE78?ty=2+3+4&cr=Sam&fu=1&lbl=a&lbl=b&rcn=4&rids=r1+r2&tqi=true",
                          [("X-M2M-RI", "d1"), ("X-M2M-Origin", "Cx")])
    assert req.to == "/CSE1234/RCSE78" and req.rcn is ResultContent.ATTRIBUTES_AND_CHILD_RESOURCES
    assert req.fc == {"ty": [2, 3, 4], "fu": 1, "lbl": ["a", "b"], "atr": [{"nm": "cr", "val": "Sam"}]}
    assert req.extra == {"rids": ["r1", "r2"], "tqi": True}
    again = request_to_http(req, host="h")
    assert http_to_request(again.method, again.target, again.headers) == req


def test_partial_retrieve_atrl() -> None:
    req = http_to_request("GET", "/_/example.net/myCSE/-/Cont1?atrl=ri+lbl+rr", [("X-M2M-RI", "0002bf63")])
    assert req.to == "//example.net/myCSE/-/Cont1" and req.pc == {"m2m:atrl": ["ri", "lbl", "rr"]}


def test_cbor_body() -> None:
    req = RequestPrimitive(op=Operation.UPDATE, to="cse-in/c1", fr="Cae1", rqi="c", pc={"m2m:cnt": {"lbl": ["x"]}})
    http = request_to_http(req, host="h", serialization=CBOR)
    assert cbor2.loads(http.body) == req.pc and http.header("content-type") == CBOR
    assert http_to_request(http.method, http.target, http.headers, http.body) == req


@pytest.mark.parametrize(("method", "target", "headers", "body", "exc", "rsc"), [
    ("PATCH", "/cse-in", [("X-M2M-RI", "1")], b"", OperationNotAllowed, RSC.OPERATION_NOT_ALLOWED),
    ("GET", "/cse-in", [], b"", HTTPBindingError, RSC.BAD_REQUEST),  # no X-M2M-RI
    ("POST", "/cse-in", [("X-M2M-RI", "1"), ("Content-Type", "application/xml; ty=3")], b"<x/>",
     UnsupportedMediaType, RSC.UNSUPPORTED_MEDIA_TYPE),
    ("POST", "/cse-in", [("X-M2M-RI", "1"), ("Content-Type", "application/json; ty=3")], b"{nope",
     HTTPBindingError, RSC.BAD_REQUEST),
    ("POST", "/cse-in", [("X-M2M-RI", "1"), ("Content-Type", "application/json; ty=999")], b"{}",
     HTTPBindingError, RSC.BAD_REQUEST),
    ("GET", "/", [("X-M2M-RI", "1")], b"", HTTPBindingError, RSC.BAD_REQUEST),
    ("GET", "/cse-in?rcn=abc", [("X-M2M-RI", "1")], b"", HTTPBindingError, RSC.BAD_REQUEST),
    ("GET", "/cse-in", [("X-M2M-RI", "1"), ("X-M2M-RI", "2")], b"", HTTPBindingError, RSC.BAD_REQUEST),
    ("GET", "/cse-in", [("X-M2M-RI", "1"), ("X-M2M-Origin", "")], b"", HTTPBindingError, RSC.BAD_REQUEST),
    ("GET", "/cse-in", [("X-M2M-RI", "1"), ("X-M2M-RVI", "three")], b"", HTTPBindingError, RSC.BAD_REQUEST),
])
def test_request_rejections(method: str, target: str, headers: list[tuple[str, str]], body: bytes,
                            exc: type[Exception], rsc: RSC) -> None:
    with pytest.raises(exc) as ei:
        http_to_request(method, target, headers, body)
    assert ei.value.rsc is rsc  # type: ignore[attr-defined]


@pytest.mark.parametrize(("rsc", "status"), [
    (RSC.OK, 200), (RSC.CREATED, 201), (RSC.DELETED, 200), (RSC.BAD_REQUEST, 400), (RSC.NOT_FOUND, 404),
    (RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 403), (RSC.ORIGINATOR_NOT_AUTHENTICATED, 403), (RSC.ESPRIM_BAD_MAC, 403),
    (RSC.UNSUPPORTED_MEDIA_TYPE, 415), (RSC.ESPRIM_DECRYPTION_ERROR, 500), (RSC.NOT_IMPLEMENTED, 501),
])
def test_response_round_trip(rsc: RSC, status: int) -> None:
    rsp = ResponsePrimitive(rsc=rsc, rqi="r-9", rvi="3", pc={"m2m:dbg": "x"}, fr="/id-in")
    http = response_to_http(rsp)
    assert http.status == status and http.header("X-M2M-RSC") == str(int(rsc))
    assert http_to_response(http.status, http.headers, http.body) == rsp


def test_response_rejections_and_unknown_codes() -> None:
    with pytest.raises(HTTPBindingError, match="X-M2M-RSC"):
        http_to_response(200, [("X-M2M-RI", "1")])
    with pytest.raises(HTTPBindingError, match="contradicts"):
        http_to_response(200, [("X-M2M-RI", "1"), ("X-M2M-RSC", "4106")])
    assert http_to_response(403, [("X-M2M-RSC", "4106")], rqi="fallback").rqi == "fallback"
    assert http_status_for(4999) == 400 and http_status_for(2999) == 200 and http_status_for(6999) == 500
