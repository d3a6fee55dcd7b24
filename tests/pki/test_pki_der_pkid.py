"""Pure functions against known vectors: RELATIVE-OID DER, RFC 6920 ni identifiers (TS-0003 10.1.2)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from m2msec.pki.der import decode_relative_oid, encode_relative_oid
from m2msec.pki.errors import CertificateParseError
from m2msec.pki.pkid import matches_public_key_identifier, ni_uri, parse_ni, public_key_identifier


def test_relative_oid_vector() -> None:
    # 100 -> 64; 3030 = 23*128+86 -> 97 56; 10011 = 78*128+27 -> CE 1B
    der = encode_relative_oid([100, 3030, 10011])
    assert der == bytes.fromhex("0d056497 56ce1b".replace(" ", ""))
    assert decode_relative_oid(der) == (100, 3030, 10011)


def test_relative_oid_zero_and_long() -> None:
    assert encode_relative_oid([0]) == b"\x0d\x01\x00"
    arcs = list(range(1, 200))
    assert decode_relative_oid(encode_relative_oid(arcs)) == tuple(arcs)
    assert encode_relative_oid(arcs)[1] == 0x82  # long-form length


@pytest.mark.parametrize(
    "bad",
    [
        b"\x06\x01\x01",  # OBJECT IDENTIFIER tag, not RELATIVE-OID
        b"\x0d\x02\x80\x01",  # non-minimal arc
        b"\x0d\x01\x81",  # truncated arc
        b"\x0d\x03\x01\x02",  # length mismatch
        b"\x0d\x81\x01\x01",  # non-minimal length
        b"\x0d\x00",
    ],
)
def test_relative_oid_rejects(bad: bytes) -> None:
    with pytest.raises(CertificateParseError):
        decode_relative_oid(bad)


def test_ni_rfc6920_hello_world() -> None:
    # RFC 6920 section 8.1 example: ni:///sha-256;f4OxZX_x_FO5LcGBSKHWXfwtSx-j1ncoSt3SABJtkGk
    assert ni_uri(b"Hello World!") == "ni:///sha-256;f4OxZX_x_FO5LcGBSKHWXfwtSx-j1ncoSt3SABJtkGk"


def test_truncations() -> None:
    full = hashlib.sha256(b"x").digest()
    assert parse_ni(ni_uri(b"x", "sha-256-128")).digest == full[:16]
    assert parse_ni(ni_uri(b"x", "sha-256-120")).digest == full[:15]
    with pytest.raises(ValueError):
        ni_uri(b"x", "sha-256-32")  # not allowed by 10.1.2


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")
def test_public_key_identifier_matches_openssl_spki_hash(tmp_path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "pub.pem").write_bytes(pem)
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", str(tmp_path / "pub.pem"), "-outform", "DER"],
        check=True, capture_output=True,
    ).stdout
    dgst = subprocess.run(["openssl", "dgst", "-sha256", "-binary"], input=der, check=True, capture_output=True).stdout
    import base64

    expected = "ni:///sha-256;" + base64.urlsafe_b64encode(dgst).decode().rstrip("=")
    assert public_key_identifier(key.public_key()) == expected
    assert matches_public_key_identifier(key.public_key(), expected)
    # an authority and query are tolerated when matching
    assert matches_public_key_identifier(key.public_key(), expected.replace("ni:///", "ni://example.com/") + "?ct=x")


def test_public_key_identifier_mismatch_and_malformed() -> None:
    k1, k2 = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    for alg in ("sha-256", "sha-256-128", "sha-256-120"):
        ident = public_key_identifier(k1.public_key(), alg)
        assert matches_public_key_identifier(k1.public_key(), ident)
        assert not matches_public_key_identifier(k2.public_key(), ident)
    for bad in ("sha-256;abc", "ni:///md5;AAAA", "ni:///sha-256;AAAA", "ni:///sha-256;!!!", "ni:sha-256"):
        with pytest.raises(CertificateParseError):
            parse_ni(bad)
