"""ESPrim Object codec (TS-0003 8.4.3.2): fast path vs. jwcrypto in both directions,
and every parse/verification rejection with its TS-0004 table 7.6.2-1 status code."""

from __future__ import annotations

import json
import os

import pytest
from jwcrypto import jwe as jw_jwe
from jwcrypto import jwk as jw_jwk
from jwcrypto.common import json_encode

from m2msec.esprim import jwe
from m2msec.esprim.errors import BadMAC, ESPrimParseError, UnsupportedOption
from m2msec.onem2m.rsc import ResponseStatusCode as RSC

INNER = json.dumps({"m2m:rqp": {"op": 2, "to": "/id-in/cse-in", "fr": "CAE1", "rqi": "r1", "rvi": "3"}}).encode()


def header(enc="A128GCM", **kw):
    base = dict(enc=enc, kid="00112233445566778899aabbccddeeff@maf.example", ori="o1", rri="r1", cty="application/json")
    base.update(kw)
    return jwe.ESPrimHeader(**base)


@pytest.mark.parametrize("enc", ["A128GCM", "A192GCM", "A256GCM"])
def test_roundtrip_and_jwcrypto_opens_ours(enc):
    key = os.urandom(jwe.ENC_KEY_LENGTH[enc])
    obj = jwe.seal(header(enc, oro={"esri": "o1"}), key, INNER)
    parts = obj.split(".")
    assert len(parts) == 5 and parts[1] == ""
    parsed = jwe.parse(obj)
    assert parsed.header.enc == enc and parsed.header.oro == {"esri": "o1"}
    assert jwe.open_parsed(parsed, key) == INNER
    # independent library
    token = jw_jwe.JWE()
    token.deserialize(obj, key=jw_jwk.JWK(kty="oct", k=jwe.b64url_encode(key)))
    assert token.payload == INNER
    hdr = json.loads(jwe.b64url_decode(parts[0], "h"))
    assert hdr["alg"] == "dir" and hdr["ori"] == "o1" and hdr["rri"] == "r1" and hdr["kid"].endswith("@maf.example")


@pytest.mark.parametrize("enc", ["A128GCM", "A256GCM"])
def test_we_open_jwcrypto_objects(enc):
    key = os.urandom(jwe.ENC_KEY_LENGTH[enc])
    protected = {"alg": "dir", "enc": enc, "kid": "k@x.example", "ori": "oX", "rri": "rY", "cty": "application/json"}
    token = jw_jwe.JWE(INNER, json_encode(protected))
    token.add_recipient(jw_jwk.JWK(kty="oct", k=jwe.b64url_encode(key)))
    obj = token.serialize(compact=True)
    parsed = jwe.parse(obj)
    assert (parsed.header.ori, parsed.header.rri, parsed.header.kid) == ("oX", "rY", "k@x.example")
    assert jwe.open_parsed(parsed, key) == INNER


def test_fresh_iv_every_time():
    key = os.urandom(16)
    ivs = {jwe.parse(jwe.seal(header(), key, INNER)).iv for _ in range(200)}
    assert len(ivs) == 200


def _tamper(obj: str, index: int) -> str:
    parts = obj.split(".")
    raw = bytearray(jwe.b64url_decode(parts[index], "x"))
    raw[0] ^= 1
    parts[index] = jwe.b64url_encode(bytes(raw))
    return ".".join(parts)


@pytest.mark.parametrize("index", [2, 3, 4])
def test_tampered_parts_are_bad_mac(index):
    key = os.urandom(16)
    obj = _tamper(jwe.seal(header(), key, INNER), index)
    with pytest.raises(BadMAC) as info:
        jwe.open_parsed(jwe.parse(obj), key)
    assert info.value.rsc == RSC.ESPRIM_BAD_MAC


def test_swapped_header_is_bad_mac():
    key = os.urandom(16)
    a = jwe.seal(header(ori="o1"), key, INNER).split(".")
    b = jwe.seal(header(ori="o2"), key, INNER).split(".")
    swapped = ".".join([b[0]] + a[1:])
    with pytest.raises(BadMAC):
        jwe.open_parsed(jwe.parse(swapped), key)


def test_wrong_key_is_bad_mac():
    obj = jwe.seal(header(), os.urandom(16), INNER)
    with pytest.raises(BadMAC):
        jwe.open_parsed(jwe.parse(obj), os.urandom(16))


def _with_header(member: dict) -> str:
    key = os.urandom(16)
    good = jwe.seal(header(), key, INNER).split(".")
    good[0] = jwe.b64url_encode(json.dumps(member).encode())
    return ".".join(good)


BASE = {"alg": "dir", "enc": "A128GCM", "kid": "k@x.example", "ori": "o", "rri": "r"}


@pytest.mark.parametrize(
    "member,exc,rsc",
    [
        ({**BASE, "alg": "A128KW"}, UnsupportedOption, RSC.ESPRIM_UNSUPPORTED_OPTION),
        ({**BASE, "enc": "A128CBC-HS256"}, UnsupportedOption, RSC.ESPRIM_UNSUPPORTED_OPTION),
        ({**BASE, "zip": "DEF"}, UnsupportedOption, RSC.ESPRIM_UNSUPPORTED_OPTION),
        ({**BASE, "crit": ["exp"]}, UnsupportedOption, RSC.ESPRIM_UNSUPPORTED_OPTION),
        ({k: v for k, v in BASE.items() if k != "kid"}, ESPrimParseError, RSC.BAD_REQUEST),
        ({k: v for k, v in BASE.items() if k != "ori"}, ESPrimParseError, RSC.BAD_REQUEST),
        ({k: v for k, v in BASE.items() if k != "rri"}, ESPrimParseError, RSC.BAD_REQUEST),
        ({**BASE, "kid": 5}, ESPrimParseError, RSC.BAD_REQUEST),
        ({**BASE, "oro": "not-an-object"}, ESPrimParseError, RSC.BAD_REQUEST),
    ],
)
def test_header_rejections(member, exc, rsc):
    with pytest.raises(exc) as info:
        jwe.parse(_with_header(member))
    assert info.value.rsc == rsc


@pytest.mark.parametrize(
    "obj",
    [
        "",
        "a.b.c.d",
        "a.b.c.d.e.f",
        "!!!.." + "AAAAAAAAAAAAAAAA.AA.AAAAAAAAAAAAAAAAAAAAAA",
        jwe.b64url_encode(b"not json") + "..AAAAAAAAAAAAAAAA.AA.AAAAAAAAAAAAAAAAAAAAAA",
        jwe.b64url_encode(b"[1,2]") + "..AAAAAAAAAAAAAAAA.AA.AAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_garbled_objects_are_bad_request(obj):
    with pytest.raises(ESPrimParseError) as info:
        jwe.parse(obj)
    assert info.value.rsc == RSC.BAD_REQUEST


def test_truncated_object_is_bad_request():
    obj = jwe.seal(header(), os.urandom(16), INNER)
    for cut in (10, len(obj) // 2, len(obj) - 5):
        with pytest.raises((ESPrimParseError, BadMAC)):
            jwe.open_parsed(jwe.parse(obj[:cut]), os.urandom(16))
    # cutting inside the tag leaves a short tag: a parse error, not a MAC check
    with pytest.raises(ESPrimParseError, match="authentication tag"):
        jwe.parse(obj[:-3])


def test_encrypted_key_must_be_empty_and_iv_length():
    parts = jwe.seal(header(), os.urandom(16), INNER).split(".")
    with pytest.raises(ESPrimParseError, match="Encrypted Key"):
        jwe.parse(".".join([parts[0], "AAAA"] + parts[2:]))
    with pytest.raises(ESPrimParseError, match="initialization vector"):
        jwe.parse(".".join(parts[:2] + [jwe.b64url_encode(b"\x00" * 8)] + parts[3:]))


def test_oversized_and_non_ascii_refused():
    with pytest.raises(ESPrimParseError, match="larger than"):
        jwe.parse("A" * 101, max_size=100)
    with pytest.raises(ESPrimParseError, match="ASCII"):
        jwe.parse("é".encode())


def test_seal_refuses_bad_options():
    with pytest.raises(UnsupportedOption):
        jwe.seal(header("A128CBC-HS256"), os.urandom(32), INNER)
    with pytest.raises(UnsupportedOption, match="key length"):
        jwe.seal(header("A256GCM"), os.urandom(16), INNER)
