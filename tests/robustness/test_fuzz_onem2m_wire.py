"""Robustness of the oneM2M wire parsers (TS-0004 6.3.3, 6.3.5.48-52, 6.4, 8.2, 8.4/8.5; TS-0009 6),
key identifiers (TS-0003 10.3.x), the EST DER helpers (RFC 7030 4.5.2), ESCertKE record
splitting (TS-0003 8.7.2.2) and ni public key identifiers (TS-0003 10.1.2): garbage and
mutated valid encodings give the documented ParseError subclass (4000) or a value."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import cbor2
import pytest
from _robust_support import FUZZ, byte_mutation, deep, json_values, mutated_object, refused_or_ok
from hypothesis import given
from hypothesis import strategies as st

from m2msec.errors import ParseError
from m2msec.escertke import messages as em
from m2msec.keys import parse_key_id
from m2msec.mef import est, estder
from m2msec.net import http_binding as hb
from m2msec.onem2m import (
    E2ESecInfo,
    Operation,
    RequestPrimitive,
    ResourceType,
    ResponsePrimitive,
    ResponseStatusCode,
    SecurityInfo,
)
from m2msec.onem2m.contentinfo import ContentInfo
from m2msec.onem2m.primitives import get_e2e_sec_info
from m2msec.onem2m.security import OriginatorESPrimRandObject, ReceiverESPrimRandObject
from m2msec.onem2m.timestamps import AbsRelTimestamp, parse_timestamp
from m2msec.pki.errors import CertificateParseError
from m2msec.pki.pkid import parse_ni

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)
REQ = RequestPrimitive(op=Operation.CREATE, to="/id-in/cse-in/ae", fr="Cae", rqi="r1", rvi="3",
                       ty=ResourceType.CONTENT_INSTANCE, pc={"m2m:cin": {"con": "x", "cnf": "text/plain:0:1"}})
RSP = ResponsePrimitive(rsc=ResponseStatusCode.OK, rqi="r1", rvi="3", pc={"m2m:cin": {"con": "42"}})
RRO = {"esri": "s0123", "esrv": "x" + "0" * 32, "esrx": "20300101T130000", "esks": [1], "espa": [10, 11, 12]}
ORO = {"esri": "o0123", "esrv": "x" + "1" * 32, "esrx": "20300101T130000", "esk": 1, "espa": [10]}
SECI = {"sit": 4, "ero": RRO}
ESI = {"esf": [13, 23], "esro": RRO}
WIRE_NAMES = ["op", "to", "fr", "rqi", "rvi", "pc", "ty", "rsc", "ot", "rqet", "rset", "rcn", "fc", "drt", "sit",
              "ero", "epo", "eckm", "esri", "esrv", "esrx", "esk", "esks", "espa", "esf", "escert", "esro"]
DECODERS: list[Any] = [
    RequestPrimitive.from_json, ResponsePrimitive.from_json,
    lambda v: SecurityInfo.from_json(v, clock=NOW), lambda v: E2ESecInfo.from_json(v, clock=NOW),
    lambda v: ReceiverESPrimRandObject.from_json(v, clock=NOW), lambda v: OriginatorESPrimRandObject.from_json(v, clock=NOW),
    lambda v: SecurityInfo.from_content(v, clock=NOW), get_e2e_sec_info, ContentInfo.parse, parse_timestamp,
    AbsRelTimestamp.from_json,
]


def test_valid_encodings_round_trip() -> None:
    for p in (REQ, RSP):
        assert type(p).from_json_bytes(p.to_json_bytes()) == p
        assert type(p).from_cbor(p.to_cbor()) == p
    for cls, doc in ((SecurityInfo, SECI), (E2ESecInfo, ESI), (ReceiverESPrimRandObject, RRO),
                     (OriginatorESPrimRandObject, ORO)):
        obj = cls.from_json(doc, clock=NOW)
        assert cls.from_json(obj.to_json(), clock=NOW) == obj
        assert cls.from_cbor(obj.to_cbor(), clock=NOW) == obj


@FUZZ
@given(json_values())
def test_arbitrary_json_values(value: Any) -> None:
    for fn in DECODERS:
        refused_or_ok(fn, value, allowed=ParseError, max_rsc=4000)


@FUZZ
@given(st.binary(max_size=150))
def test_arbitrary_bytes_json_and_cbor(data: bytes) -> None:
    for cls in (RequestPrimitive, ResponsePrimitive):
        refused_or_ok(cls.from_json_bytes, data, allowed=ParseError, max_rsc=4000)
        refused_or_ok(cls.from_cbor, data, allowed=ParseError, max_rsc=4000)
    for cls in (SecurityInfo, E2ESecInfo, ReceiverESPrimRandObject):
        refused_or_ok(cls.from_cbor, data, allowed=ParseError, max_rsc=4000)


@FUZZ
@given(st.data(), st.sampled_from(["req", "rsp"]), st.booleans())
def test_mutated_primitives(data: st.DataObject, which: str, cbor: bool) -> None:
    p = REQ if which == "req" else RSP
    if data.draw(st.booleans()):
        raw = data.draw(byte_mutation(p.to_cbor() if cbor else p.to_json_bytes()))
    else:
        doc = data.draw(mutated_object(json.loads(p.to_json_bytes()), WIRE_NAMES))
        try:
            raw = cbor2.dumps(doc) if cbor else json.dumps(doc).encode()
        except UnicodeEncodeError:  # a lone surrogate has no CBOR text string form
            raw = json.dumps(doc).encode()
            cbor = False
    out = refused_or_ok(type(p).from_cbor if cbor else type(p).from_json_bytes, raw, allowed=ParseError, max_rsc=4000)
    if not isinstance(out, ParseError):
        assert type(p).from_json_bytes(out.to_json_bytes()) == out


@FUZZ
@given(st.data(), st.sampled_from(["seci", "esi", "rro", "oro"]))
def test_mutated_security_objects(data: st.DataObject, which: str) -> None:
    cls, base = {"seci": (SecurityInfo, SECI), "esi": (E2ESecInfo, ESI), "rro": (ReceiverESPrimRandObject, RRO),
                 "oro": (OriginatorESPrimRandObject, ORO)}[which]
    doc = data.draw(mutated_object(base, WIRE_NAMES))
    refused_or_ok(cls.from_json, doc, clock=NOW, allowed=ParseError, max_rsc=4000)
    refused_or_ok(cls.from_json, doc, clock=NOW, long_names=True, allowed=ParseError, max_rsc=4000)


def test_deep_nesting_and_huge_numbers_refused() -> None:
    for text in (deep(100_000), deep(100_000, "{"), '{"rsc":2000,"rqi":"r","pc":' + deep(5000) + "}"):
        with pytest.raises(ParseError):
            ResponsePrimitive.from_json_bytes(text.encode())
    nested: Any = 1
    for _ in range(5000):
        nested = [nested]
    with pytest.raises(ParseError):
        ResponsePrimitive.from_cbor(cbor2.dumps({"rsc": 2000, "rqi": "r", "pc": {"x": nested}}))
    with pytest.raises(ParseError):
        ResponsePrimitive.from_json_bytes(b'{"rsc":' + b"9" * 5000 + b',"rqi":"r"}')
    with pytest.raises(ParseError):
        RequestPrimitive.from_json_bytes(b'{"op":1,"op":2,"to":"x","fr":"C","rqi":"r","rvi":"3"}')


@FUZZ
@given(st.text(max_size=80))
def test_text_parsers(text: str) -> None:
    refused_or_ok(parse_key_id, text, allowed=ParseError, max_rsc=4000)
    refused_or_ok(parse_key_id, text, hex_length=16, allowed=ParseError, max_rsc=4000)
    refused_or_ok(ContentInfo.parse, text, allowed=ParseError, max_rsc=4000)
    refused_or_ok(parse_timestamp, text, allowed=ParseError, max_rsc=4000)
    refused_or_ok(parse_timestamp, text, allow_offset=True, allowed=ParseError, max_rsc=4000)
    refused_or_ok(hb.parse_content_type, text, allowed=ParseError, max_rsc=4015)
    refused_or_ok(hb.path_to_to, text, allowed=ParseError, max_rsc=4000)
    refused_or_ok(parse_ni, "ni:///sha-256;" + text, allowed=CertificateParseError, max_rsc=4000)


def test_regression_ni_digest_length_one_mod_four() -> None:
    """Found by fuzzing: a digest of 4k+1 base64url characters raised binascii.Error."""
    for digest in ("A", "AAAAA", "A" * 41):
        with pytest.raises(CertificateParseError) as ei:
            parse_ni("ni:///sha-256;" + digest)
        assert ei.value.rsc == 4000
    assert parse_ni("ni:///sha-256;" + "A" * 43).digest == bytes(32)


@FUZZ
@given(st.binary(max_size=120))
def test_binary_parsers(data: bytes) -> None:
    refused_or_ok(estder.decode_csrattrs, data, allowed=ParseError, max_rsc=4000)
    refused_or_ok(estder.read_tlv, data, allowed=ParseError, max_rsc=4000)
    refused_or_ok(estder.decode_oid, data, allowed=ParseError, max_rsc=4000)
    refused_or_ok(est.load_certs_only, data, allowed=ParseError, max_rsc=4000)
    for fn in (em.split_records, em.classify, em.first_kind, em.client_hello_random):
        fn(data)  # pure look-ups: None for anything that is not the expected flight


@FUZZ
@given(st.data())
def test_mutated_csrattrs(data: st.DataObject) -> None:
    valid = estder.encode_csrattrs(["1.2.840.113549.1.9.7"])
    assert estder.decode_csrattrs(valid) is not None
    refused_or_ok(estder.decode_csrattrs, data.draw(byte_mutation(valid)), allowed=ParseError, max_rsc=4000)


# --------------------------------------------------------------------------- HTTP binding

HTTP_REQS = [hb.request_to_http(REQ), hb.request_to_http(REQ, serialization="cbor"),
             hb.request_to_http(RequestPrimitive(op=Operation.RETRIEVE, to="//sp.example/id-in/cse-in", fr="C",
                                                 rqi="r2", rvi="3", rcn=1, fc={"lbl": ["a"], "lim": 3}))]
HNAMES = ["X-M2M-Origin", "X-M2M-RI", "X-M2M-RVI", "X-M2M-OT", "X-M2M-RET", "X-M2M-RST", "X-M2M-OET", "X-M2M-EC",
          "X-M2M-VSI", "X-M2M-GID", "X-M2M-RTU", "X-M2M-RSC", "Content-Type", "Accept", "Content-Location"]
HVALS = st.one_of(st.text(max_size=24), st.sampled_from(
    ["application/json;ty=4", "application/json;ty=4;ty=5", "application/cbor;ty=x", "application/xml", "", "-1",
     "9" * 40, "20261126T120000", "a+b+", "\x00", "Ω"]))
TARGETS = st.one_of(st.text(max_size=40), st.sampled_from(
    ["/", "/~", "/_", "/~/", "http://x/y", "/cse-in?rcn=99", "/cse-in?lim=-1&lim=2", "/cse-in?ty=a", "/cse-in?%zz=1",
     "/cse-in?crb=bad", "/cse-in?drt=" + "9" * 30, "/cse-in?atrl=a+b", "/cse-in?c.=1&p.x"]))


@FUZZ
@given(st.sampled_from(HTTP_REQS), st.dictionaries(st.sampled_from(HNAMES), HVALS, max_size=4),
       st.lists(st.sampled_from(HNAMES), max_size=2), st.one_of(st.none(), TARGETS),
       st.sampled_from([None, "GET", "POST", "PUT", "DELETE", "PATCH", "get", ""]), st.data())
def test_http_to_request_garbage_headers(req: Any, repl: dict[str, str], drop: list[str], target: str | None,
                                         method: str | None, data: st.DataObject) -> None:
    m, tg, hdrs, body = req
    headers = [(k, v) for k, v in hdrs if k not in drop and k not in repl] + list(repl.items())
    if data.draw(st.booleans()):
        body = data.draw(byte_mutation(body))
    out = refused_or_ok(hb.http_to_request, method if method is not None else m, target if target is not None else tg,
                        headers, body, allowed=hb.BindingError, max_rsc=4015)
    if not isinstance(out, hb.BindingError):
        assert isinstance(out, RequestPrimitive)
    raw_headers = [(k.encode(), v.encode("utf-8")) for k, v in headers]
    refused_or_ok(hb.http_to_request, (method or m).encode(), (target or tg).encode("utf-8"), raw_headers, body,
                  allowed=hb.BindingError, max_rsc=4015)


@FUZZ
@given(st.integers(-1, 999), st.dictionaries(st.sampled_from(HNAMES), HVALS, max_size=5), st.data())
def test_http_to_response_garbage(status: int, repl: dict[str, str], data: st.DataObject) -> None:
    s0, hdrs, b0 = hb.response_to_http(RSP)
    headers = [(k, v) for k, v in hdrs if k not in repl] + list(repl.items())
    body = data.draw(byte_mutation(b0)) if data.draw(st.booleans()) else b0
    refused_or_ok(hb.http_to_response, s0 if data.draw(st.booleans()) else status, headers, body,
                  allowed=hb.BindingError, max_rsc=4015)
