"""Robustness of the MAF and MEF message parsers (TS-0003 8.8.2 tables; 8.3.2.1, 10.3.7):
arbitrary bytes/JSON and mutations of valid bodies give ParseError (4000-class) or a value,
never another exception; valid bodies round-trip."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from _robust_support import FUZZ, deep, json_values, mutated_object, odd_values, refused_or_ok, with_duplicate
from hypothesis import given
from hypothesis import strategies as st

from m2msec.errors import ParseError
from m2msec.maf import protocol as mp
from m2msec.mef import protocol as mefp
from m2msec.onem2m.enums import SUID

T = datetime(2030, 1, 1, 12, tzinfo=UTC)
REL = "0123456789abcdef0123456789abcdef"
VALID: list[mp._Message] = [
    mp.ClientRegistrationRequest("maf.example.com", T, "sp.example.com", ("a", "b")),
    mp.ClientRegistrationResponse(REL, T, "//sp/CAE1", "sp.example.com", ("a",), "x@maf.example.com"),
    mp.ConfigurationRetrievalRequest("maf.example.com", REL),
    mp.ConfigurationRetrievalResponse({"k": [1, 2]}),
    mp.RegistrationUpdateRequest("maf.example.com", REL, T),
    mp.RegistrationUpdateResponse(T, ("l",)),
    mp.DeregistrationRequest("maf.example.com", REL),
    mp.DeregistrationResponse(),
    mp.KeyRegistrationRequest("maf.example.com", T, "sp.example.com", SUID.MAF_ESDATA_ENCRYPT, None,
                              ("//sp/CAE2",), bytes(range(32))),
    mp.KeyRegistrationResponse(REL, T, "//sp/CAE1", "sp.example.com", SUID.MAF_SAEF, ("//sp/CAE2",)),
    mp.KeyRetrievalRequest(REL),
    mp.KeyRetrievalResponse(T, "//sp/CAE1", "sp.example.com", SUID.MAF_ESPRIM, bytes(32)),
    mp.KeyRegistrationUpdateRequest("maf.example.com", REL, target_ids=("//sp/CAE3",)),
    mp.KeyRegistrationUpdateResponse(labels=("x",)),
    mp.KeyDeregistrationRequest("maf.example.com", REL),
    mp.KeyDeregistrationResponse(),
    mp.ErrorBody(4000, "bad"),
]
CLASSES = [type(m) for m in VALID]
NAMES = sorted({n for c in CLASSES for n in c._names.values()})


def _decode(cls: type[Any], body: bytes) -> Any:
    return refused_or_ok(mp.decode_body, cls, body, allowed=ParseError, max_rsc=4000)


@pytest.mark.parametrize("msg", VALID, ids=lambda m: type(m).__name__)
def test_maf_valid_bodies_round_trip(msg: mp._Message) -> None:
    assert mp.decode_body(type(msg), mp.encode_body(msg)) == msg


@FUZZ
@given(st.sampled_from(CLASSES), st.binary(max_size=200))
def test_maf_arbitrary_bytes(cls: type[Any], body: bytes) -> None:
    _decode(cls, body)


@FUZZ
@given(st.sampled_from(CLASSES), json_values())
def test_maf_arbitrary_json(cls: type[Any], doc: Any) -> None:
    _decode(cls, json.dumps(doc).encode())


@FUZZ
@given(st.data(), st.sampled_from(VALID))
def test_maf_mutated_valid_bodies(data: st.DataObject, msg: mp._Message) -> None:
    doc = data.draw(mutated_object(msg.to_json(), NAMES))
    out = _decode(type(msg), json.dumps(doc).encode())
    if not isinstance(out, ParseError):  # accepted: it must encode back to what was parsed
        assert mp.decode_body(type(msg), mp.encode_body(out)) == out


@pytest.mark.parametrize("msg", [m for m in VALID if m.to_json()], ids=lambda m: type(m).__name__)
def test_maf_duplicate_members_nan_and_depth_refused(msg: mp._Message) -> None:
    text = mp.encode_body(msg).decode()
    member = next(iter(msg.to_json()))
    for body in (with_duplicate(text, member), text[:-1] + ',"x":NaN}', deep(50_000), deep(50_000, "{"),
                 text.encode("utf-16").decode("latin-1"), "\ufeff" + text):
        with pytest.raises(ParseError) as ei:
            mp.decode_body(type(msg), body.encode("utf-8", "surrogatepass"))
        assert ei.value.rsc == 4000
    with pytest.raises(ParseError):
        mp.decode_body(type(msg), text.encode()[:-1] + b"\xff}")


# ------------------------------------------------------------------------------- MEF

ENROL_REQ = mefp.EnrolmentRequest(True, False, True, "tok")
ENROL_RSP = mefp.EnrolmentResponse(
    "00112233445566778899aabbccddeeff@mef.example.com", "ffeeddccbbaa99887766554433221100@mef.example.com",
    "/id-in/Cdev", T, (mefp.Instruction(mefp.InstructionType.MAF_ENROLMENT, {"MAFFQDN": "maf.example.com"}),),
    (mefp.DirectKey("//sp/CB", 22),))
MEF_NAMES = ["CertificateEnrolmentIndication", "MAFEnrolmentIndication", "RemoteManagementIndication",
             "EnrolmentToken", "Status", "KeID", "KreID", "EnroleeID", "EnrolmentExpiry", "Instructions",
             "DirectKeys", "EndOfEnrolment", "Credential", "Lifetime", "ErrorString"]
FETCH_OK = {"Status": True, "Credential": "A" * 43 + "=", "EnroleeID": "/id-in/Cdev", "Lifetime": "20300101T120000"}


def test_mef_valid_round_trip() -> None:
    assert mefp.EnrolmentRequest.from_json(ENROL_REQ.to_json()) == ENROL_REQ
    assert mefp.EnrolmentResponse.from_json(ENROL_RSP.to_json()) == ENROL_RSP
    ok = mefp.parse_fetch_response(json.dumps(FETCH_OK).encode())
    assert isinstance(ok, mefp.FetchSuccess) and ok.credential == bytes(32)
    assert mefp.parse_fetch_response(ok.to_json()) == ok
    ke = ENROL_RSP.ke_id
    assert mefp.parse_fetch_target(mefp.fetch_target(ke, 23), "mef.example.com") == (ke, 23)


@FUZZ
@given(st.one_of(st.binary(max_size=120), json_values().map(lambda d: json.dumps(d).encode())))
def test_mef_parsers_arbitrary_input(body: bytes) -> None:
    for fn in (mefp.EnrolmentRequest.from_json, mefp.EnrolmentResponse.from_json, mefp.parse_fetch_response):
        refused_or_ok(fn, body, allowed=ParseError, max_rsc=4000)


@FUZZ
@given(st.data(), st.sampled_from(["req", "rsp", "fetch"]))
def test_mef_parsers_mutated_valid(data: st.DataObject, which: str) -> None:
    base, fn = {"req": (json.loads(ENROL_REQ.to_json()), mefp.EnrolmentRequest.from_json),
                "rsp": (json.loads(ENROL_RSP.to_json()), mefp.EnrolmentResponse.from_json),
                "fetch": (FETCH_OK, mefp.parse_fetch_response)}[which]
    doc = data.draw(mutated_object(base, MEF_NAMES))
    refused_or_ok(fn, json.dumps(doc).encode(), allowed=ParseError, max_rsc=4000)


@FUZZ
@given(st.one_of(st.text(max_size=80), st.from_regex(r"/fetchCredentials/[0-9a-fA-F%@.\-]{0,40}/[0-9a-z]{0,4}(\?.*)?",
                                                       fullmatch=True)), st.sampled_from([None, "mef.example.com"]))
def test_mef_fetch_target_arbitrary(target: str, fqdn: str | None) -> None:
    refused_or_ok(mefp.parse_fetch_target, target, fqdn, allowed=ParseError, max_rsc=4000)


def test_regression_fetch_response_non_ascii_credential() -> None:
    """Found by fuzzing: a non-ASCII Credential raised a bare ValueError from base64."""
    body = json.dumps({**FETCH_OK, "Credential": "é" * 44}).encode()
    with pytest.raises(ParseError) as ei:
        mefp.parse_fetch_response(body)
    assert ei.value.rsc == 4000


@FUZZ
@given(odd_values())
def test_mef_enrolment_token_types(value: Any) -> None:
    body = json.dumps({**json.loads(ENROL_REQ.to_json()), "EnrolmentToken": value}).encode()
    refused_or_ok(mefp.EnrolmentRequest.from_json, body, allowed=ParseError, max_rsc=4000)
