"""Strict JOSE parsing that the Target does itself before jwcrypto sees anything (the
octets it decodes are the ones handed to jwcrypto), and the per-credential JWK cache."""

from __future__ import annotations

import base64
import json

import pytest

from m2msec.esdata import (
    CertificateRecipient,
    CertificateSigner,
    ESDataError,
    Reason,
    Source,
    SymmetricRecipient,
    SymmetricSigner,
    Target,
    certificate_kid,
)
from m2msec.esdata.credentials import b64url
from m2msec.esdata.errors import MalformedEnvelopeError
from m2msec.esdata.jose import b64url_decode

K16 = "enc16@mef.example.com"
M32 = "mic32@mef.example.com"


def reject(fn, reason: Reason) -> ESDataError:
    with pytest.raises(ESDataError) as ei:
        fn()
    assert ei.value.reason is reason, str(ei.value)
    return ei.value


# --- base64url (RFC 7515 section 2: unpadded, URL-safe alphabet) ------------------------------


def test_b64url_decode_round_trip() -> None:
    for n in range(70):  # every tail length, several times
        data = bytes((i * 37 + n) % 256 for i in range(n))
        assert b64url_decode(b64url(data), "x") == data


@pytest.mark.parametrize("bad", [
    "AB",  # "B" leaves a non-zero bit after the last full octet: not canonical
    "AAB",  # ditto for a 2-octet tail
    "AR", "ABD",
    "A",  # 4n+1 characters cannot be base64
    "AAAAA",
    "AA==", "AAA=",  # padding is not part of base64url in JOSE
    "AA+A", "AA/A",  # standard alphabet
    "AA A", "AAA\n", " AAA", "AA.A", "AA\x00A",
    "\u00e9AAA",  # not ASCII
    5, None, b"AAAA",
])
def test_b64url_decode_refuses(bad: object) -> None:
    with pytest.raises(MalformedEnvelopeError):
        b64url_decode(bad, "x")


def test_canonical_tails_accepted() -> None:
    assert b64url_decode("AA", "x") == b"\x00"
    assert b64url_decode("AQ", "x") == b"\x01"
    assert b64url_decode("AAA", "x") == b"\x00\x00"
    assert b64url_decode("AAE", "x") == b"\x00\x01"
    assert b64url_decode("_-8", "x") == base64.urlsafe_b64decode("_-8=")


def _non_canonical(s: str) -> str:
    """Same octets, different text: set unused trailing bits of the last character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spare = {2: 0x0F, 3: 0x03}[len(s) % 4]
    return s[:-1] + alphabet[alphabet.index(s[-1]) | spare]


@pytest.mark.parametrize("member", ["ciphertext", "tag", "iv", "aad", "encrypted_key"])
def test_non_canonical_jwe_member_refused(member, keys, key_source):
    # 1 KB payload: ciphertext length 1024 -> 1366 characters (4n+2); tag/iv 16/12 octets
    env = Source().seal(b"p" * 1024, serialization="json", aad=b"aad!",
                        recipients=[SymmetricRecipient(K16, keys["enc16"], "A128KW")])
    d = json.loads(env.data)
    holder = d["recipients"][0] if member == "encrypted_key" else d
    if len(holder[member]) % 4 == 0:  # no spare bits: 12-octet iv; use a '=' instead
        holder[member] += "="
    else:
        holder[member] = _non_canonical(holder[member])
    assert Target(key_source).open(env).payload == b"p" * 1024  # the untouched envelope opens
    reject(lambda: Target(key_source).open(json.dumps(d), 2), Reason.MALFORMED)


def test_non_canonical_jws_payload_refused(keys, key_source):
    env = Source().seal(b"pay", serialization="compact", signers=[SymmetricSigner(M32, keys["mic32"])])
    h, p, s = env.data.decode().split(".")
    assert len(p) % 4 == 0  # "pay" = 3 octets: no spare bits, add a tail variant
    env2 = Source().seal(b"payl", serialization="compact", signers=[SymmetricSigner(M32, keys["mic32"])])
    h2, p2, s2 = env2.data.decode().split(".")
    reject(lambda: Target(key_source).open(f"{h2}.{_non_canonical(p2)}.{s2}", 1), Reason.MALFORMED)
    reject(lambda: Target(key_source).open(f"{h}.{p}=.{s}", 1), Reason.MALFORMED)


def test_non_utf8_protected_header_refused(keys, key_source):
    # UTF-16 JSON is valid input for json.loads(bytes) but not a JOSE header (RFC 7515 4: UTF-8)
    prot = json.dumps({"alg": "dir", "enc": "A128GCM", "kid": K16}).encode("utf-16")
    env = Source().seal(b"x", serialization="compact", recipients=[SymmetricRecipient(K16, keys["enc16"], "dir")])
    parts = env.data.decode().split(".")
    parts[0] = b64url(prot)
    reject(lambda: Target(key_source).open(".".join(parts), 1), Reason.MALFORMED)
    s = Source().seal(b"x", serialization="compact", signers=[SymmetricSigner(M32, keys["mic32"])])
    h, p, sig = s.data.decode().split(".")
    bad_header = b'{"alg":"HS256","kid":"' + b"\xff" + b'"}'  # a lone 0xFF octet is never UTF-8
    reject(lambda: Target(key_source).open(f"{b64url(bad_header)}.{p}.{sig}", 1), Reason.MALFORMED)


# --- emitted serializations ---------------------------------------------------------------------


def test_json_outputs_are_general_serializations(keys, source_ep, target_ec_ep):
    jwe = json.loads(Source().seal(b"x", serialization="json",
                                   recipients=[SymmetricRecipient(K16, keys["enc16"], "A128KW")]).data)
    assert set(jwe) == {"protected", "iv", "ciphertext", "tag", "recipients"}
    assert jwe["recipients"][0]["header"] == {"alg": "A128KW", "kid": K16}
    jws = json.loads(Source().seal(b"x", serialization="json", signers=[SymmetricSigner(M32, keys["mic32"])]).data)
    assert set(jws) == {"payload", "signatures"} and len(jws["signatures"]) == 1
    assert set(jws["signatures"][0]) == {"protected", "signature"}
    nested = Source().seal(b"x", serialization="json", signers=[CertificateSigner(source_ep.key, source_ep.chain)],
                           recipients=[CertificateRecipient(target_ec_ep.cert)])
    d = json.loads(nested.data)
    assert d["recipients"][0]["header"]["alg"] == "ECDH-ES+A128KW"
    assert d["recipients"][0]["header"]["kid"] == certificate_kid(target_ec_ep.cert)
    assert "epk" in d["recipients"][0]["header"]


# --- JWK cache ----------------------------------------------------------------------------------


def test_credentials_build_their_jwk_once(keys, key_source, source_ep, target_ec_ep):
    r = SymmetricRecipient(K16, keys["enc16"], "A128KW")
    s = CertificateSigner(source_ep.key, source_ep.chain)
    c = CertificateRecipient(target_ec_ep.cert)
    assert r.jwk is r.jwk and s.jwk is s.jwk and c.jwk is c.jwk
    assert c.jwk.has_private is False  # a recipient certificate yields a public JWK only
    resolved = key_source.resolve(K16)
    assert resolved.jwk is key_source.resolve(K16).jwk
    for _ in range(2):
        env = Source().seal(b"x", serialization="json", recipients=[r, c])
        assert Target(key_source).open(env).payload == b"x"
    # the cache is not part of identity, equality or repr
    assert r == SymmetricRecipient(K16, keys["enc16"], "A128KW")
    for obj in (r, s, resolved):
        assert keys["enc16"].hex() not in repr(obj) and b64url(keys["enc16"]) not in repr(obj)
        assert "jwk" not in repr(obj).lower()
