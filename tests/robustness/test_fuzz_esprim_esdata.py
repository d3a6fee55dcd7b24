"""Robustness of ESPrim Object parsing/opening (TS-0003 8.4.3.2; TS-0004 table 7.6.2-1) and of the
ESData Target End-Point (TS-0003 8.5; TS-0004 6.3.4.2.38): garbage, mutated valid objects and
validly sealed garbage give an ESPrimError / ESDataError with a 4xxx RSC (or, for an inner
primitive that does not decode after authentication, ESPRIM_DECRYPTION_ERROR 5210 as table
7.6.2-1 prescribes), never another exception."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import cbor2
import pytest
from _robust_support import FUZZ, FUZZ_SLOW, byte_mutation, clock, deep, json_values, mini_pki, odd_values, refused_or_ok
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from m2msec.esdata import (
    CertificateRecipient,
    CertificateSigner,
    ESDataError,
    InMemoryKeySource,
    Source,
    SymmetricRecipient,
    SymmetricSigner,
    Target,
    x509_verifier,
)
from m2msec.esdata.api import from_content_instance
from m2msec.esdata.credentials import b64url
from m2msec.esdata.errors import MalformedEnvelopeError
from m2msec.esprim import MemoryReceiverState, Originator, PairwiseKey, ProvisionedKeySource, Receiver, jwe
from m2msec.esprim.errors import ESPrimError, ESPrimParseError
from m2msec.onem2m import Operation, RequestPrimitive, ResponsePrimitive, ResponseStatusCode

ORIG, RECV = "CAE-orig", "/id-recv/cse-recv"
KID = "00112233445566778899aabbccddeeff@prov.example.com"
ESPRIM_DECRYPTION_ERROR = 5210  # TS-0004 table 7.6.2-1: the inner primitive does not decode


class _Clock:
    now = datetime(2030, 1, 1, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _esprim_world() -> tuple[Receiver, Originator, Any, Any, str, RequestPrimitive]:
    c = _Clock()
    kb = os.urandom(32)
    receiver = Receiver(keys=ProvisionedKeySource([PairwiseKey(kid=KID, key=kb, peer_id=ORIG)], clock=c),
                        state=MemoryReceiverState(clock=c), clock=c)
    originator = Originator(clock=c)
    session = originator.start(PairwiseKey(kid=KID, key=kb, peer_id=RECV), receiver.e2e_sec_info()).session
    req = RequestPrimitive(op=Operation.RETRIEVE, to=RECV + "/ae/cnt", fr=ORIG, rqi="i1", rvi="3")
    obj, pending = originator.protect_request(req, session)
    got, ctx = receiver.open_request(obj)
    assert got.rqet is not None and replace(got, rqet=None) == req  # the Originator adds rqet (R11)
    rsp = ResponsePrimitive(rsc=ResponseStatusCode.OK, rqi="i1", rvi="3", pc={"m2m:cin": {"con": "1"}})
    assert originator.open_response(receiver.protect_response(ctx, rsp), pending) == rsp
    return receiver, originator, session, pending, obj, req


RECEIVER, ORIGINATOR, SESSION, PENDING, OBJ, REQ = _esprim_world()
HEADER0 = json.loads(jwe.b64url_decode(OBJ.split(".")[0], "h"))


def _esprim_ok(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except ESPrimError as exc:  # table 7.6.2-1 codes only
        assert 4000 <= int(exc.rsc) < 5000 or int(exc.rsc) == ESPRIM_DECRYPTION_ERROR, str(exc)
        return exc


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_esprim_parse_garbage(data: Any) -> None:
    refused_or_ok(jwe.parse, data, allowed=ESPrimError)
    refused_or_ok(Receiver.peek, data, allowed=ESPrimError)


@FUZZ
@given(st.data())
def test_esprim_mutated_objects_refused(data: st.DataObject) -> None:
    mutated = data.draw(byte_mutation(OBJ.encode()))
    out = refused_or_ok(RECEIVER.open_request, mutated, allowed=ESPrimError)
    if not isinstance(out, ESPrimError):  # only a mutation that left the object as it was (accepted once; again: 4105 replay, R10)
        assert out[0] == REQ
    refused_or_ok(ORIGINATOR.open_response, mutated, PENDING, allowed=ESPrimError)


PLAIN = st.one_of(
    st.binary(max_size=80),
    json_values().map(lambda v: json.dumps(v).encode()),
    json_values().map(cbor2.dumps),
    st.dictionaries(st.sampled_from(["op", "to", "fr", "rqi", "rvi", "pc", "ty", "rsc", "ot"]), odd_values(),
                    max_size=4).map(lambda d: json.dumps({**json.loads(REQ.to_json_bytes()), **d}).encode()),
    st.integers(500, 20_000).map(lambda n: b"[" * n),
)


@FUZZ_SLOW
@given(PLAIN, st.sampled_from([None, "application/vnd.onem2m-preq+json", "application/vnd.onem2m-preq+cbor",
                               "application/vnd.onem2m-prsp+json", "text/plain", ""]),
       st.sampled_from(["A128GCM", "A192GCM", "A256GCM"]),
       st.dictionaries(st.sampled_from(["oro", "rro", "x", "ori", "rri", "kid"]), json_values(), max_size=2))
def test_esprim_validly_sealed_garbage(plaintext: bytes, cty: str | None, enc: str, extra: dict[str, Any]) -> None:
    """A peer holding the key can seal anything: the inner decoding must still fail cleanly."""
    header = {**HEADER0, "enc": enc, **extra}
    if cty is None:
        header.pop("cty", None)
    else:
        header["cty"] = cty
    obj = jwe.seal_protected(jwe.b64url_encode(json.dumps(header).encode()), SESSION.cipher(enc), plaintext)
    _esprim_ok(RECEIVER.open_request, obj)
    _esprim_ok(ORIGINATOR.open_response, obj, PENDING)


def _object_with_header(header: bytes) -> str:
    return jwe.b64url_encode(header) + ".." + jwe.b64url_encode(bytes(12)) + ".AA." + jwe.b64url_encode(bytes(16))


def test_regression_esprim_deeply_nested_header() -> None:
    """Found by fuzzing: a protected header nested deeper than the JSON decoder's recursion
    limit raised RecursionError instead of ESPrimParseError (BAD_REQUEST)."""
    for text in (deep(100_000), deep(100_000, "{")):
        with pytest.raises(ESPrimParseError) as ei:
            jwe.parse(_object_with_header(text.encode()))
        assert ei.value.rsc == 4000
        with pytest.raises(ESPrimParseError):
            RECEIVER.open_request(_object_with_header(text.encode()))


def test_esprim_header_duplicates_and_nan_refused() -> None:
    """The protected header is strict JSON like every other m2msec input (profile)."""
    good = b'{"alg":"dir","enc":"A128GCM","kid":"k","ori":"o","rri":"r"}'
    assert jwe.parse(_object_with_header(good)).header.kid == "k"
    for bad in (b'{"alg":"dir","kid":"k2",' + good[1:], good[:-1] + b',"x":NaN}', good[:-1] + b',"x":"\xff"}'):
        with pytest.raises(ESPrimParseError):
            jwe.parse(_object_with_header(bad))


# --------------------------------------------------------------------------- ESData

PKI = mini_pki()
K16, M32 = os.urandom(16), os.urandom(32)
KS = InMemoryKeySource()
KS.add_symmetric("enc16@x.example", K16, suid=14)
KS.add_symmetric("mic32@x.example", M32, suid=15)
KS.add_certificate_key(PKI.leaf_key, PKI.leaf, suid=44)
TARGET = Target(KS, certificate_verifier=x509_verifier([PKI.root], clock=clock))
_CERT_SIGNER = CertificateSigner(PKI.leaf_key, (PKI.leaf,))


def _envelopes() -> list[Any]:
    out = []
    src = Source()
    for cs in (1, 2, 3, 4, 5):
        out.append(src.seal(b"payload", serialization=cs, content_type="text/plain",
                            recipients=[SymmetricRecipient("enc16@x.example", K16, "A128KW")]))
        out.append(src.seal(b"payload", serialization=cs, signers=[SymmetricSigner("mic32@x.example", M32)]))
        out.append(src.seal(b"payload", serialization=cs, signers=[_CERT_SIGNER]))
        out.append(src.seal(b"payload", serialization=cs, recipients=[CertificateRecipient(PKI.leaf)],
                            signers=[_CERT_SIGNER]))
    return out


ENVELOPES = _envelopes()


def _open(data: bytes, cs: int) -> Any:
    return refused_or_ok(TARGET.open, data, cs, expected_source_id=PKI.ident, allowed=ESDataError)


def test_esdata_valid_envelopes_open() -> None:
    for env in ENVELOPES:
        assert TARGET.open(env, expected_source_id=PKI.ident).payload == b"payload"


@FUZZ
@given(st.sampled_from(ENVELOPES), st.data())
def test_esdata_byte_mutations(env: Any, data: st.DataObject) -> None:
    out = _open(data.draw(byte_mutation(env.data)), int(env.content_security))
    if not isinstance(out, ESDataError):
        assert out.payload == b"payload"  # a mutation JOSE/XML ignores (e.g. whitespace) changes nothing


def _walk(data: st.DataObject, node: Any) -> None:
    if isinstance(node, dict) and node:
        key = data.draw(st.sampled_from(sorted(node)))
        act = data.draw(st.integers(0, 2))
        if act == 0:
            del node[key]
        elif act == 1:
            node[key] = data.draw(odd_values())
        else:
            _walk(data, node[key])
    elif isinstance(node, list) and node:
        i = data.draw(st.integers(0, 2**16)) % len(node)
        act = data.draw(st.integers(0, 2))
        if act == 0:
            del node[i]
        elif act == 1:
            node[i] = data.draw(odd_values())
        else:
            _walk(data, node[i])


@FUZZ
@given(st.sampled_from([e for e in ENVELOPES if int(e.content_security) in (1, 2)]), st.data())
def test_esdata_json_and_header_mutations(env: Any, data: st.DataObject) -> None:
    if int(env.content_security) == 2:
        doc = json.loads(env.data)
        if data.draw(st.booleans()):
            _walk(data, doc)
        sigs = doc.get("signatures") if isinstance(doc, dict) else None
        holder = doc if isinstance(doc, dict) and "protected" in doc else (
            sigs[0] if isinstance(sigs, list) and sigs else None)
    else:
        parts = env.data.decode().split(".")
        doc, holder = None, {"protected": parts[0]}
    p = holder.get("protected") if isinstance(holder, dict) else None
    if isinstance(p, str) and isinstance(holder, dict):
        try:
            header = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
        except ValueError:  # already replaced by a non-header value
            header = None
        if header is not None:
            _walk(data, header)
            holder["protected"] = b64url(json.dumps(header).encode())
    if doc is None:
        parts[0] = holder["protected"]
        _open(".".join(parts).encode(), 1)
    else:
        _open(json.dumps(doc).encode(), 2)


@FUZZ
@given(st.one_of(st.binary(max_size=120), json_values().map(lambda v: json.dumps(v).encode())), st.integers(0, 6))
def test_esdata_garbage(data: bytes, cs: int) -> None:
    refused_or_ok(TARGET.open, data, cs, allowed=ESDataError)


@FUZZ
@given(st.one_of(json_values(), st.dictionaries(st.sampled_from(["con", "cnf"]), odd_values())))
def test_esdata_content_instance_garbage(resource: Any) -> None:
    refused_or_ok(from_content_instance, resource if isinstance(resource, dict) else {"con": resource, "cnf": "a/b:0:1"},
                  allowed=ESDataError)


def _x5c_with_bad_point() -> bytes:
    """The leaf certificate with the last octet of its EC point flipped (off the curve)."""
    der = bytearray(PKI.leaf.public_bytes(serialization.Encoding.DER))
    spki = PKI.leaf.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    i = bytes(der).find(spki) + len(spki) - 1
    der[i] ^= 1
    return bytes(der)


def test_regression_esdata_x5c_with_unloadable_public_key_jose() -> None:
    """Found by fuzzing: an x5c leaf whose EC point is not on the curve raised a bare
    ValueError("Invalid key") from cryptography instead of MalformedEnvelopeError (4000)."""
    env = Source().seal(b"payload", serialization=1, signers=[_CERT_SIGNER])
    parts = env.data.decode().split(".")
    header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    header["x5c"][0] = base64.b64encode(_x5c_with_bad_point()).decode()
    parts[0] = b64url(json.dumps(header).encode())
    with pytest.raises(MalformedEnvelopeError) as ei:
        TARGET.open(".".join(parts).encode(), 1, expected_source_id=PKI.ident)
    assert ei.value.rsc == 4000


def test_regression_esdata_x5c_with_unloadable_public_key_xml() -> None:
    """The same certificate inside ds:X509Certificate of an XML signature."""
    env = Source().seal(b"payload", serialization=4, signers=[_CERT_SIGNER])
    good = base64.b64encode(PKI.leaf.public_bytes(serialization.Encoding.DER))
    text = env.data
    start = text.index(b"<ds:X509Certificate>") + len(b"<ds:X509Certificate>")
    end = text.index(b"</ds:X509Certificate>")
    assert b"".join(text[start:end].split()) == good
    bad = text[:start] + base64.b64encode(_x5c_with_bad_point()) + text[end:]
    with pytest.raises(MalformedEnvelopeError) as ei:
        TARGET.open(bad, 4, expected_source_id=PKI.ident)
    assert ei.value.rsc == 4000
    assert TARGET.open(env, expected_source_id=PKI.ident).payload == b"payload"


def test_esdata_deep_json_envelope_refused() -> None:
    for text in (deep(100_000), deep(100_000, "{")):
        with pytest.raises(MalformedEnvelopeError):
            TARGET.open(text.encode(), 2)
        with pytest.raises(MalformedEnvelopeError):
            TARGET.open(base64.b64encode(text.encode()), 3)


