"""ESPrim Object codec fast paths: strict base64url via the strict base64 decoder, the
per-session ContentCipher, and the memo caches of protected headers (encoded and parsed)."""

from __future__ import annotations

import base64
import json
import os

import pytest
from jwcrypto import jwe as jw_jwe
from jwcrypto import jwk as jw_jwk

from m2msec.esprim import jwe
from m2msec.esprim.errors import BadMAC, ESPrimParseError, UnsupportedOption
from m2msec.onem2m.rsc import ResponseStatusCode as RSC

KID = "00112233445566778899aabbccddeeff@maf.example"


def header(enc: str = "A256GCM", **kw: object) -> jwe.ESPrimHeader:
    base: dict[str, object] = dict(enc=enc, kid=KID, ori="o1", rri="s1", cty="application/vnd.onem2m-preq+json")
    base.update(kw)
    return jwe.ESPrimHeader(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", range(0, 40))
def test_b64url_decode_matches_the_standard_library(n: int) -> None:
    raw = os.urandom(n)
    text = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    assert jwe.b64url_decode(text, "x") == raw
    assert jwe.b64url_encode(raw) == text


@pytest.mark.parametrize("text", ["ab+c", "ab/c", "abc=", "AB==", "ab c", "ab\ncd", "abcd\n", "ab.c", "ab!c", "abcde", "abé", "ab\x00c"])
def test_b64url_decode_refuses_outside_the_alphabet(text: str) -> None:
    with pytest.raises(ESPrimParseError, match="not base64url") as info:
        jwe.b64url_decode(text, "x")
    assert info.value.rsc == RSC.BAD_REQUEST


def test_content_cipher_seals_what_jwcrypto_opens_and_hides_its_key() -> None:
    key = os.urandom(32)
    cipher = jwe.ContentCipher("A256GCM", key)
    assert "hidden" in repr(cipher) and key.hex() not in repr(cipher)
    obj = jwe.seal(header(), cipher, b'{"op":5}')
    assert jwe.open_parsed(jwe.parse(obj), cipher) == b'{"op":5}' == jwe.open_parsed(jwe.parse(obj), key)
    token = jw_jwe.JWE()
    token.deserialize(obj, key=jw_jwk.JWK(kty="oct", k=jwe.b64url_encode(key)))
    assert token.payload == b'{"op":5}'
    with pytest.raises(BadMAC):
        jwe.open_parsed(jwe.parse(obj), jwe.ContentCipher("A256GCM", os.urandom(32)))


def test_content_cipher_refuses_wrong_enc_and_key_length() -> None:
    with pytest.raises(UnsupportedOption):
        jwe.ContentCipher("A256GCM", os.urandom(16))
    with pytest.raises(UnsupportedOption):
        jwe.ContentCipher("A256CBC-HS512", os.urandom(32))
    with pytest.raises(UnsupportedOption, match="used with enc"):
        jwe.seal(header("A128GCM"), jwe.ContentCipher("A256GCM", os.urandom(32)), b"x")


def test_cached_protected_header_equals_a_fresh_serialization() -> None:
    h = header()
    assert h.protected_b64() == jwe.b64url_encode(h.to_json_bytes()) == header().protected_b64()
    with_oro = header(oro={"esri": "o1"})
    assert json.loads(jwe.b64url_decode(with_oro.protected_b64(), "h"))["oro"] == {"esri": "o1"}


def test_parsed_header_cache_returns_the_same_header_and_never_caches_failures() -> None:
    key = os.urandom(32)
    obj = jwe.seal(header(ori="ocache1"), key, b"x")
    first, second = jwe.parse(obj), jwe.parse(obj)
    assert first.header == second.header and first.header.ori == "ocache1"
    # A header carrying oro is parsed afresh each time (its dict is not shared).
    obj2 = jwe.seal(header(oro={"esri": "o1"}), key, b"x")
    a, b = jwe.parse(obj2), jwe.parse(obj2)
    assert a.header.oro == b.header.oro and a.header.oro is not b.header.oro
    # An unsupported header is refused every time, with the same code.
    bad = jwe.b64url_encode(json.dumps({"alg": "dir", "enc": "A256GCM", "kid": KID, "ori": "o", "rri": "r", "zip": "DEF"}).encode())
    rest = obj.split(".", 1)[1]
    for _ in range(2):
        with pytest.raises(UnsupportedOption):
            jwe.parse(bad + "." + rest)
    # A cached header does not excuse the other parts.
    parts = obj.split(".")
    with pytest.raises(ESPrimParseError, match="Encrypted Key must be empty"):
        jwe.parse(".".join([parts[0], "AAAA", *parts[2:]]))
    with pytest.raises(ESPrimParseError, match="initialization vector"):
        jwe.parse(".".join([parts[0], "", "AAAA", *parts[3:]]))


def test_parsed_header_cache_is_bounded() -> None:
    key = os.urandom(16)
    for i in range(jwe._HEADER_CACHE_MAX + 10):
        jwe.parse(jwe.seal(header("A128GCM", ori=f"obound{i}"), key, b"x"))
    assert len(jwe._HEADER_CACHE) <= jwe._HEADER_CACHE_MAX
