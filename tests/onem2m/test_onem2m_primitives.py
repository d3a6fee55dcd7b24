"""Request/response primitives, short names, JSON and CBOR (TS-0004 6.4, 8.2.2, 8.4, 8.5)."""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import cbor2
import pytest

from m2msec.errors import ParseError
from m2msec.onem2m import (
    SUID,
    AbsRelTimestamp,
    DesIdResType,
    E2ESecInfo,
    ESPrimKeyGenAlgID,
    ESPrimProtocolAndAlgID,
    Operation,
    ReceiverESPrimRandObject,
    RequestPrimitive,
    ResourceType,
    ResponsePrimitive,
    ResponseStatusCode,
    ResultContent,
    SecurityInfo,
    SecurityInfoType,
    get_e2e_sec_info,
    resource_content,
    with_e2e_sec_info,
)

UTC = dt.timezone.utc

# TS-0004 clause 8.4.3, EXAMPLE 1 (request primitive serialized using JSON).
SPEC_8_4_3_EXAMPLE_1 = {
    "op": 1,
    "fr": "Clight_ae1",
    "to": "/homegateway/light",
    "rqi": "A1234",
    "pc": {"m2m:sch": {"se": {"sce": ["* 0-5 2,6,10 * * * *"]}}},
    "ty": 18,
}
# TS-0004 clause 8.5.2, EXAMPLES 1-4 (JSON side).
SPEC_8_5_2 = [
    '{"op":1,"to":"//example.net/mncse1234","rqi":"A1000", "rcn":7,"pc":{"m2m:ae":{"rn":"SmartHomeApplication", "api":"Na56", "apn":"app1234"}},"ty":2}',
    '{"rsc":2001,"rqi":"A1000","pc":{"m2m:ae":{"rn":"SmartHomeApplication","ty":2,"ri":"ae1","api":"Na56","apn":"app1234","pi":"cb1","ct":"20160506T153208", "lt":"20160506T153208","acpi":["acp1","acp2"],"et":"20180506T153208", "aei":"S_SAH25"}}}',
    '{"op":1,"to":"//example.net/mncse1234/SmartHomeApplication", "rqi":"A1001","rcn":7,"pc":{"m2m:cnt":{"rn":"SmartHomeContainer","mbs":100000, "mni":500}},"ty":3}',
    '{"rsc":2001,"rqi":"A1001","pc":{"m2m:cnt":{"rn":"SmartHomeContainer", "ty":3,"ri":"cnt1","pi":"ae1","ct":"20160506T154048", "lt":"20160506T154048","acpi":["acp1"],"et":"20180506T154048","cr":" S_SAH25","st":0,"mni":500,"mbs":100000,"cni":0,"cbs":0,"mia":3600}}}',
]
# TS-0004 clause 8.5.2 EXAMPLE 1, CBOR side, as printed in the specification.
SPEC_8_5_2_EXAMPLE_1_CBOR = bytes.fromhex(
    "a6427063a1466d326d3a6165a342726e54536d617274486f6d654170706c69636174696f6e43617069444e6135364361706e4761"
    "7070313233344274790242746f572f2f6578616d706c652e6e65742f6d6e637365313233344372636e07426f700143727169454131303030"
)

RAND = bytes.fromhex("00112233445566778899aabbccddeeff")
ERO = ReceiverESPrimRandObject(
    rand_id="rcv-1",
    rand_value=RAND,
    expiry=dt.datetime(2026, 12, 1, 12, tzinfo=UTC),
    protocol_and_alg_ids=(ESPrimProtocolAndAlgID.JWE_A128GCM,),
    key_gen_alg_ids=(ESPrimKeyGenAlgID.HMAC_SHA256,),
)
GOLDEN_ERO = {"esri": "rcv-1", "esrv": "x00112233445566778899aabbccddeeff", "esrx": "20261201T120000", "esks": [1], "espa": [10]}

FULL_REQUEST = {
    "op": 2,
    "to": "/id-in/cse-in/ae1",
    "fr": "CAE1",
    "rqi": "req-1",
    "ty": 4,
    "pc": {"m2m:cin": {"cnf": "text/plain:0:1", "con": "eyJh.b.c", "acme:vendorAttr": {"x": [1, 2.5, None]}}},
    "ot": "20261126T101010,123",
    "rqet": "20261126T101110",
    "rset": 60000,
    "rt": {"rtv": 2, "nu": ["http://127.0.0.1:1/n"]},
    "rcn": 1,
    "ec": 100,
    "fc": {"lvl": 1, "ty": [4]},
    "drt": 2,
    "rvi": "3",
    "vsi": "m2msec",
    "rids": ["r@issuer.example"],
    "oet": 1000,
}
FULL_RESPONSE = {
    "rsc": 2000,
    "rqi": "req-1",
    "pc": {"m2m:cin": {"con": "x"}},
    "to": "CAE1",
    "fr": "/id-in",
    "ot": "20261126T101010",
    "rset": "20261126T111010",
    "ec": 3,
    "rvi": "2a",
    "vsi": "",
    "cnst": 1,
    "cnot": 2,
}


# ------------------------------------------------------------------ spec examples


def test_spec_8_4_3_example_1() -> None:
    req = RequestPrimitive.from_json(SPEC_8_4_3_EXAMPLE_1)
    assert req.op is Operation.CREATE and req.ty is ResourceType.SCHEDULE
    assert (req.fr, req.to, req.rqi) == ("Clight_ae1", "/homegateway/light", "A1234")
    assert req.to_json() == SPEC_8_4_3_EXAMPLE_1


@pytest.mark.parametrize("text", SPEC_8_5_2)
def test_spec_8_5_2_examples_round_trip_in_json_and_cbor(text: str) -> None:
    obj = json.loads(text)
    cls = RequestPrimitive if "op" in obj else ResponsePrimitive
    prim = cls.from_json_bytes(text)
    assert prim.to_json() == obj
    assert cbor2.loads(prim.to_cbor()) == obj
    assert cls.from_cbor(prim.to_cbor()) == prim


def test_spec_8_5_2_cbor_example_uses_byte_strings_and_is_rejected() -> None:
    # The hex printed in clause 8.5.2 encodes names and strings as byte strings
    # (major type 2, 0x42 'op'), contrary to the clause's own rule (text strings,
    # major type 3).  m2msec follows the rule.
    assert SPEC_8_5_2_EXAMPLE_1_CBOR[1] == 0x42
    with pytest.raises(ParseError, match="member name must be a string, got bytes"):
        RequestPrimitive.from_cbor(SPEC_8_5_2_EXAMPLE_1_CBOR)
    decoded = cbor2.loads(SPEC_8_5_2_EXAMPLE_1_CBOR)

    def text(v: Any) -> Any:
        if isinstance(v, bytes):
            return v.decode()
        if isinstance(v, dict):
            return {text(k): text(x) for k, x in v.items()}
        return v

    fixed = cbor2.dumps(text(decoded))
    assert RequestPrimitive.from_cbor(fixed).to_json() == json.loads(SPEC_8_5_2[0])


# ------------------------------------------------------------------ full round trips


def test_full_request_round_trip() -> None:
    req = RequestPrimitive.from_json(copy.deepcopy(FULL_REQUEST))
    assert req.op is Operation.RETRIEVE and req.ty is ResourceType.CONTENT_INSTANCE
    assert req.ot == dt.datetime(2026, 11, 26, 10, 10, 10, 123000, tzinfo=UTC)
    assert req.rqet == AbsRelTimestamp(absolute=dt.datetime(2026, 11, 26, 10, 11, 10, tzinfo=UTC))
    assert req.rset == AbsRelTimestamp(relative_ms=60000)
    assert req.rcn is ResultContent.ATTRIBUTES and req.drt is DesIdResType.UNSTRUCTURED
    assert req.extra == {"rids": ["r@issuer.example"], "oet": 1000}
    assert req.to_json() == FULL_REQUEST
    assert RequestPrimitive.from_json_bytes(req.to_json_bytes()) == req
    assert RequestPrimitive.from_cbor(req.to_cbor()) == req


def test_full_response_round_trip() -> None:
    rsp = ResponsePrimitive.from_json(copy.deepcopy(FULL_RESPONSE))
    assert rsp.rsc is ResponseStatusCode.OK and rsp.is_success
    assert rsp.extra == {"cnst": 1, "cnot": 2}
    assert rsp.to_json() == FULL_RESPONSE
    assert ResponsePrimitive.from_cbor(rsp.to_cbor()) == rsp
    assert ResponsePrimitive.from_json_bytes(rsp.to_json_bytes()) == rsp


def test_vendor_attribute_inside_pc_survives_untouched() -> None:
    pc = {
        "m2m:ae": {
            "rn": "ae1",
            "api": "Nm2msec",
            "rr": True,
            "esi": {"esf": [13]},
            "vnd:weird": {"nested": [{"deep": [1, -2, 3.25, None, False, "ü"]}], "": "empty-key"},
        }
    }
    wire = {"op": 1, "to": "/cse", "rqi": "1", "ty": 2, "pc": copy.deepcopy(pc), "rvi": "3"}
    text = json.dumps(wire).encode()
    req = RequestPrimitive.from_json_bytes(text)
    assert req.pc == pc
    assert json.loads(req.to_json_bytes())["pc"] == pc
    assert cbor2.loads(req.to_cbor())["pc"] == pc
    assert RequestPrimitive.from_cbor(req.to_cbor()).pc == pc
    # to_json returns a copy: mutating it does not change the primitive
    out = req.to_json()
    out["pc"]["m2m:ae"]["rn"] = "changed"
    assert req.pc["m2m:ae"]["rn"] == "ae1"


def test_unknown_member_inside_pc_is_not_an_error_but_at_top_level_is() -> None:
    RequestPrimitive.from_json({"op": 5, "to": "/x", "rqi": "1", "pc": {"m2m:sgn": {"vendor": 1}}})
    with pytest.raises(ParseError, match=r"^\[4000 BAD_REQUEST\] vendor: unknown member"):
        RequestPrimitive.from_json({"op": 5, "to": "/x", "rqi": "1", "vendor": 1})
    with pytest.raises(ParseError, match=r"rids: unknown member"):
        ResponsePrimitive.from_json({"rsc": 2000, "rqi": "1", "rids": []})  # request-only parameter
    with pytest.raises(ParseError, match=r"op: unknown member"):
        ResponsePrimitive.from_json({"rsc": 2000, "rqi": "1", "op": 1})


# ------------------------------------------------------------------ rejections


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        ({"op": True}, r"^\[4000 BAD_REQUEST\] op: expected an integer, got boolean"),
        ({"op": "1"}, r"op: expected an integer, got string"),
        ({"op": 6}, r"op: unknown Operation value 6"),
        ({"op": 0}, r"op: unknown Operation value 0"),
        ({"op": None}, r"op: expected an integer, got null"),
        ({"rqi": ""}, r"rqi: must not be empty"),
        ({"rqi": 12}, r"rqi: expected a string, got integer"),
        ({"to": ["/x"]}, r"to: expected a string, got array"),
        ({"fr": ""}, r"fr: must not be empty"),
        ({"ty": 33}, r"ty: unknown ResourceType value 33"),
        ({"ty": "2"}, r"ty: expected an integer, got string"),
        ({"ty": False}, r"ty: expected an integer, got boolean"),
        ({"pc": None}, r"pc: null is not allowed"),
        ({"ot": "2026-11-26T10:10:10Z"}, r"ot: not an m2m:timestamp"),
        ({"ot": 3600}, r"ot: expected an m2m:timestamp string"),
        ({"rqet": "tomorrow"}, r"rqet: not an m2m:timestamp"),
        ({"rset": True}, r"rset: expected an m2m:absRelTimestamp, got bool"),
        ({"rset": -1}, r"rset: relative m2m:absRelTimestamp out of range"),
        ({"rt": 3}, r"rt: expected an object, got integer"),
        ({"rcn": 11}, r"rcn: unknown ResultContent value 11"),
        ({"ec": 5}, r"ec: not an m2m:eventCat"),
        ({"ec": 1000}, r"ec: not an m2m:eventCat"),
        ({"ec": True}, r"ec: expected an integer, got boolean"),
        ({"fc": []}, r"fc: expected an object, got array"),
        ({"drt": 3}, r"drt: unknown DesIdResType value 3"),
        ({"rvi": 3}, r"rvi: expected a string, got integer"),
        ({"rvi": "3.0"}, r"rvi: not an m2m:releaseVersion"),
        ({"vsi": 1}, r"vsi: expected a string, got integer"),
    ],
)
def test_request_rejections(patch: dict[str, Any], match: str) -> None:
    obj = {"op": 5, "to": "/cse", "rqi": "1", "fr": "CAE1", **patch}
    with pytest.raises(ParseError, match=match):
        RequestPrimitive.from_json(obj)


@pytest.mark.parametrize("missing", ["op", "to", "rqi"])
def test_request_missing_mandatory(missing: str) -> None:
    obj = {"op": 5, "to": "/cse", "rqi": "1"}
    del obj[missing]
    with pytest.raises(ParseError, match=rf"^\[4000 BAD_REQUEST\] {missing}: missing mandatory member"):
        RequestPrimitive.from_json(obj)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"rqi": "1"}, r"rsc: missing mandatory member"),
        ({"rsc": 2000}, r"rqi: missing mandatory member"),
        ({"rsc": "2000", "rqi": "1"}, r"rsc: expected an integer, got string"),
        ({"rsc": True, "rqi": "1"}, r"rsc: expected an integer, got boolean"),
        ({"rsc": 3000, "rqi": "1"}, r"rsc: not a ResponseStatusCode: 3000"),
        ({"rsc": 999, "rqi": "1"}, r"rsc: not a ResponseStatusCode: 999"),
        ({"rsc": 7000, "rqi": "1"}, r"rsc: not a ResponseStatusCode: 7000"),
        ({"rsc": 2000, "rqi": "1", "ot": "20261126T101010+01"}, r"ot: m2m:timestamp must not carry"),
        ({"rsc": 2000, "rqi": "1", "pc": None}, r"pc: null is not allowed"),
        ([], r"expected an object, got array"),
    ],
)
def test_response_rejections(obj: object, match: str) -> None:
    with pytest.raises(ParseError, match=match):
        ResponsePrimitive.from_json(obj)


def test_unknown_rsc_in_a_valid_class_is_kept_as_int() -> None:
    rsp = ResponsePrimitive.from_json({"rsc": 4199, "rqi": "1"})
    assert rsp.rsc == 4199 and type(rsp.rsc) is int
    assert not rsp.is_success
    assert rsp.to_json() == {"rsc": 4199, "rqi": "1"}
    assert ResponsePrimitive.from_json({"rsc": 4115, "rqi": "1"}).rsc is ResponseStatusCode.ESPRIM_BAD_MAC


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        RequestPrimitive(op=Operation.NOTIFY, to="", rqi="1")
    with pytest.raises(ValueError):
        RequestPrimitive(op=9, to="/x", rqi="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RequestPrimitive(op=Operation.NOTIFY, to="/x", rqi="1", pc={"a": b"bytes"})
    with pytest.raises(ValueError):
        RequestPrimitive(op=Operation.NOTIFY, to="/x", rqi="1", extra={"vendor": 1})
    with pytest.raises(ValueError):
        RequestPrimitive(op=Operation.NOTIFY, to="/x", rqi="1", ot=dt.datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        ResponsePrimitive(rsc=42, rqi="1")
    with pytest.raises(ValueError):
        ResponsePrimitive(rsc=2000, rqi="1", extra={"rids": []})


def test_cbor_strictness() -> None:
    ok = cbor2.dumps({"op": 5, "to": "/x", "rqi": "1"})
    assert RequestPrimitive.from_cbor(ok).op is Operation.NOTIFY
    with pytest.raises(ParseError, match="trailing bytes"):
        RequestPrimitive.from_cbor(ok + ok)
    with pytest.raises(ParseError, match=r"pc\.a: bytes is not a JSON value"):
        RequestPrimitive.from_cbor(cbor2.dumps({"op": 5, "to": "/x", "rqi": "1", "pc": {"a": b"\x00"}}))
    with pytest.raises(ParseError, match=r"pc\.a: non-finite number"):
        RequestPrimitive.from_cbor(cbor2.dumps({"op": 5, "to": "/x", "rqi": "1", "pc": {"a": float("nan")}}))
    with pytest.raises(ParseError, match="duplicate JSON member name 'op'"):
        RequestPrimitive.from_json_bytes(b'{"op":5,"op":5,"to":"/x","rqi":"1"}')


# ------------------------------------------------------------------ securityInfo in Notify


def test_notify_security_info_golden() -> None:
    seci = SecurityInfo.rand_object_response(ERO)
    req = RequestPrimitive.notify_security_info(to="/id-in/cse-in/ae2", fr="CAE1", seci=seci, rqi="n-1")
    assert req.to_json() == {
        "op": 5,
        "to": "/id-in/cse-in/ae2",
        "fr": "CAE1",
        "rqi": "n-1",
        "pc": {"m2m:seci": {"sit": 4, "ero": GOLDEN_ERO}},
        "rvi": "3",
    }
    assert req.security_info() == seci
    again = RequestPrimitive.from_cbor(req.to_cbor())
    assert again.security_info() == seci
    auto = RequestPrimitive.notify_security_info(to="/x", fr="CAE1", seci=SecurityInfo.rand_object_request())
    assert auto.rqi.startswith("m2msec-") and auto.rqi != req.rqi


def test_response_with_security_info() -> None:
    req = RequestPrimitive.notify_security_info(to="/x", fr="CAE1", seci=SecurityInfo.rand_object_request(), rqi="q9")
    seci = SecurityInfo.rand_object_response(ERO)
    rsp = ResponsePrimitive.with_security_info(req, seci)
    assert rsp.to_json() == {"rsc": 2000, "rqi": "q9", "pc": {"m2m:seci": {"sit": 4, "ero": GOLDEN_ERO}}, "rvi": "3"}
    assert ResponsePrimitive.from_json_bytes(rsp.to_json_bytes()).security_info() == seci


def test_security_info_extraction_edge_cases() -> None:
    base = {"op": 5, "to": "/x", "rqi": "1"}
    assert RequestPrimitive.from_json(base).security_info() is None
    assert RequestPrimitive.from_json({**base, "pc": {"m2m:sgn": {}}}).security_info() is None
    assert RequestPrimitive.from_json({**base, "pc": "text"}).security_info() is None
    both = RequestPrimitive.from_json({**base, "pc": {"m2m:seci": {"sit": 3}, "m2m:sgn": {}}})
    with pytest.raises(ParseError, match=r"pc\.m2m:sgn: not allowed next to m2m:seci"):
        both.security_info()
    bad = RequestPrimitive.from_json({**base, "pc": {"m2m:seci": {"sit": 4, "ero": {**GOLDEN_ERO, "esks": [1, 2]}}}})
    with pytest.raises(ParseError, match=r"seci\.ero\.esks\[1\]: unknown ESPrimKeyGenAlgID value 2"):
        bad.security_info()
    rel = RequestPrimitive.from_json({**base, "pc": {"m2m:seci": {"sit": 4, "ero": {**GOLDEN_ERO, "esrx": 1000}}}})
    now = dt.datetime(2026, 1, 1, tzinfo=UTC)
    seci = rel.security_info(clock=lambda: now)
    assert seci is not None and seci.sit is SecurityInfoType.RECEIVER_ESPRIM_RAND_OBJECT_RESPONSE
    assert seci.esprim_rand_object is not None
    assert seci.esprim_rand_object.expiry == now + dt.timedelta(seconds=1)


# ------------------------------------------------------------------ e2eSecInfo attribute


@pytest.mark.parametrize(("rtype", "root"), [(ResourceType.AE, "m2m:ae"), (ResourceType.REMOTE_CSE, "m2m:csr"), (ResourceType.CSE_BASE, "m2m:cb")])
def test_e2e_sec_info_attribute_helpers(rtype: ResourceType, root: str) -> None:
    info = E2ESecInfo((SUID.PRE_PROVISIONED_ESPRIM, SUID.CERTIFICATE_ESPRIM), (b"\x30\x00",), ERO)
    pc = resource_content(rtype, {"rn": "x", "vnd:attr": [1]})
    assert pc == {root: {"rn": "x", "vnd:attr": [1]}}
    assert get_e2e_sec_info(pc) is None
    pc2 = with_e2e_sec_info(pc, info)
    assert pc2 == {root: {"rn": "x", "vnd:attr": [1], "esi": {"esf": [13, 43], "escert": ["MAA="], "esro": GOLDEN_ERO}}}
    assert "esi" not in pc[root]  # input not modified
    assert get_e2e_sec_info(pc2) == info
    rsp = ResponsePrimitive(rsc=ResponseStatusCode.OK, rqi="1", pc=pc2)
    assert ResponsePrimitive.from_cbor(rsp.to_cbor()).e2e_sec_info() == info
    req = RequestPrimitive(op=Operation.UPDATE, to="/x", rqi="1", pc=pc2)
    assert req.e2e_sec_info() == info
    assert with_e2e_sec_info(pc2, None) == pc


def test_e2e_sec_info_attribute_errors() -> None:
    assert get_e2e_sec_info({"m2m:cnt": {"esi": {"esf": [13]}}}) is None  # not a resource that has esi
    with pytest.raises(ParseError, match=r"pc\.m2m:ae\.esi\.esf\[0\]: unknown SUID value 16"):
        get_e2e_sec_info({"m2m:ae": {"esi": {"esf": [16]}}})
    with pytest.raises(ParseError, match=r"pc\.m2m:csr: expected an object, got array"):
        get_e2e_sec_info({"m2m:csr": []})
    with pytest.raises(ValueError):
        with_e2e_sec_info({"m2m:cnt": {}}, E2ESecInfo((SUID.MAF_ESPRIM,)))
    with pytest.raises(ValueError):
        resource_content(ResourceType.CONTAINER, {})


def test_deep_nesting_is_a_parse_error_not_a_crash() -> None:
    def doc(depth: int) -> bytes:
        return b'{"op":5,"to":"/x","rqi":"1","pc":' + b"[" * depth + b"]" * depth + b"}"

    assert RequestPrimitive.from_json_bytes(doc(100)).to_cbor()
    with pytest.raises(ParseError, match="nested deeper than 100 levels"):
        RequestPrimitive.from_json_bytes(doc(101))
    with pytest.raises(ParseError, match="nested too deeply"):
        RequestPrimitive.from_json_bytes(doc(100_000))
    with pytest.raises(ParseError, match="malformed CBOR"):
        RequestPrimitive.from_cbor(b"\xa4bop\x05bto" + b"b/x" + b"crqi" + b"a1" + b"bpc" + b"\x81" * 5000 + b"\x80")
