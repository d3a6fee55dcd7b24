"""Tests for m2msec.keys (TS-0003 10.3): every derivation against an independent
computation with the standard library, RFC 5869 vectors for the HKDF part, and the
rejection paths."""

from __future__ import annotations

import hashlib
import hmac
import unicodedata

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from m2msec import keys
from m2msec.errors import IdentifierError, ParseError

KE = bytes(range(32))


def H(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


# --- 10.3.1 -------------------------------------------------------------------------------


def test_split_exported_msb_is_id_lsb_is_key():
    material = bytes(range(48))
    key, key_id = keys.split_exported(material)
    assert key_id == bytes(range(16))  # 16 most significant octets
    assert key == bytes(range(16, 48))  # 32 least significant octets
    assert int.from_bytes(material, "big") & ((1 << 256) - 1) == int.from_bytes(key, "big")


@pytest.mark.parametrize("n", [0, 32, 47, 49, 64])
def test_split_exported_rejects_wrong_length(n):
    with pytest.raises(ParseError, match="48 octets"):
        keys.split_exported(b"\x00" * n)


def test_split_exported_rejects_text():
    with pytest.raises(ParseError):
        keys.split_exported("a" * 48)  # type: ignore[arg-type]


def test_labels_exact():
    assert keys.LABEL_BOOTSTRAP == "EXPORTER-oneM2M-Bootstrap"
    assert keys.LABEL_CONNECTION == "EXPORTER-oneM2M-Connection"
    assert keys.LABEL_ESCERTKE == "EXPORTER-oneM2M-ESCertKE"
    assert keys.EXPORT_LENGTH == 48


# --- 10.3.2 / 10.3.3 / 10.3.7 ---------------------------------------------------------------


def test_derive_km_independent():
    expected = H(KE, b"oneM2M Enrolment Key to Master Credential derivation" + b"maf.example.com")
    assert keys.derive_km(KE, "maf.example.com") == expected


def test_derive_kpsa_independent():
    expected = H(
        KE, b"oneM2M Enrolment Key to Provisioned Secure Connection Key derivation" + b"/id-in/Cae-1"
    )
    assert keys.derive_kpsa(KE, "/id-in/Cae-1") == expected


def test_derive_usage_key_independent_one_octet_suid():
    expected = H(
        KE,
        b"oneM2M Enrolment Key to Usage-Constrained Symmetric Key derivation"
        + bytes([24])
        + b"cse1.example.com",
    )
    assert keys.derive_usage_key(KE, 24, "cse1.example.com") == expected


def test_usage_key_differs_per_suid_and_target():
    a = keys.derive_usage_key(KE, 23, "t.example")
    assert a != keys.derive_usage_key(KE, 24, "t.example")
    assert a != keys.derive_usage_key(KE, 23, "u.example")


@pytest.mark.parametrize("suid", [0, 9, 16, 20, 26, 31, 36, 39, 46, 255, 1024, -1])
def test_usage_key_rejects_unknown_suid(suid):
    with pytest.raises(ParseError, match="unknown SUID"):
        keys.derive_usage_key(KE, suid, "t.example")


@pytest.mark.parametrize("suid", [True, "24", 24.0])
def test_usage_key_rejects_ill_typed_suid(suid):
    with pytest.raises(ParseError):
        keys.derive_usage_key(KE, suid, "t.example")  # type: ignore[arg-type]


def test_nfkc_non_ascii_identifier():
    # Full-width letters and a decomposed "e + combining acute" normalise under NFKC.
    odd = "ｍａｆ-e\u0301.example"
    canonical = "maf-\u00e9.example"
    assert unicodedata.normalize("NFKC", odd) == canonical
    expected = H(KE, b"oneM2M Enrolment Key to Master Credential derivation" + canonical.encode("utf-8"))
    assert keys.derive_km(KE, odd) == expected
    assert keys.derive_km(KE, canonical) == expected
    # and the octets really are UTF-8 (two octets for U+00E9)
    assert keys.nfkc_octets(odd) == b"maf-\xc3\xa9.example"


@pytest.mark.parametrize("bad_ke", [b"", b"\x00" * 31, b"\x00" * 33, "00" * 32])
def test_ke_must_be_32_octets(bad_ke):
    for fn in (lambda: keys.derive_km(bad_ke, "m"), lambda: keys.derive_kpsa(bad_ke, "b"),
               lambda: keys.derive_usage_key(bad_ke, 24, "t")):
        with pytest.raises(ParseError):
            fn()


@pytest.mark.parametrize("ident", ["", "a\x00b", "line\nbreak"])
def test_bad_identifiers_rejected(ident):
    with pytest.raises(ParseError):
        keys.derive_kpsa(KE, ident)


def test_identifier_must_be_str():
    with pytest.raises(ParseError):
        keys.derive_km(KE, b"maf")  # type: ignore[arg-type]


# --- 10.3.4 / 10.3.5 identifiers --------------------------------------------------------------


def test_ke_id_and_maf_key_id():
    rel = bytes.fromhex("00112233445566778899aabbccddeeff")
    assert keys.ke_id(rel, "mef.example.com") == "00112233445566778899aabbccddeeff@mef.example.com"
    assert keys.maf_key_id(rel, "maf.example.com") == "00112233445566778899aabbccddeeff@maf.example.com"


@pytest.mark.parametrize("n", [0, 15, 17, 32])
def test_ke_id_rejects_wrong_relative_length(n):
    with pytest.raises(ParseError):
        keys.ke_id(b"\x01" * n, "mef.example.com")


def test_parse_key_id_roundtrip_and_bytes():
    rel = bytes(range(16))
    kid = keys.parse_key_id(keys.ke_id(rel, "mef.example.com"), hex_length=16)
    assert kid.fqdn == "mef.example.com"
    assert kid.relative_bytes == rel
    assert str(kid) == rel.hex() + "@mef.example.com"


def test_parse_ts0013_identity():
    kid = keys.parse_key_id("test@onem2m.com")
    assert (kid.relative, kid.fqdn) == ("test", "onem2m.com")
    with pytest.raises(IdentifierError, match="hexBinary"):
        kid.relative_bytes


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "nofqdn",
        "@mef.example.com",
        "abcd@",
        "a@b@c.example",
        "ab cd@mef.example.com",
        "ab/cd@mef.example.com",
        "abcd@-bad.example",
        "abcd@bad-.example",
        "abcd@bad..example",
        "abcd@exa_mple.com",
        "abcd@" + "a" * 64 + ".com",
        "abcd@" + ".".join(["a" * 60] * 5),
        "abcd@bücher.example",
    ],
)
def test_parse_key_id_rejects_malformed(bad):
    with pytest.raises(IdentifierError):
        keys.parse_key_id(bad)


def test_parse_key_id_hex_length_enforced():
    with pytest.raises(IdentifierError, match="16 octets"):
        keys.parse_key_id("0011@mef.example.com", hex_length=16)
    with pytest.raises(IdentifierError, match="hexBinary"):
        keys.parse_key_id("zz" * 16 + "@mef.example.com", hex_length=16)


def test_parse_key_id_rejects_non_str():
    with pytest.raises(IdentifierError):
        keys.parse_key_id(b"ab@c.d")  # type: ignore[arg-type]


# --- 10.3.6 HKDF-style expansion ------------------------------------------------------------

# RFC 5869 Appendix A, test cases 1-3 (SHA-256).
RFC5869 = [
    (
        "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
        "000102030405060708090a0b0c",
        "f0f1f2f3f4f5f6f7f8f9",
        42,
        "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
        "404142434445464748494a4b4c4d4e4f",
        "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
        "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",
        "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf"
        "d0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeef"
        "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
        82,
        "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
    ),
    (
        "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
        "",
        "",
        42,
        "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
]


@pytest.mark.parametrize("ikm,salt,info,length,prk,okm", RFC5869)
def test_hkdf_rfc5869_vectors(ikm, salt, info, length, prk, okm):
    ikm, salt, info = bytes.fromhex(ikm), bytes.fromhex(salt), bytes.fromhex(info)
    got_prk = keys.hkdf_extract(salt, ikm)
    assert got_prk.hex() == prk
    n = -(-length // 32)
    got = b"".join(keys.hkdf_expand_blocks(got_prk, [info] * n))[:length]
    assert got.hex() == okm
    # and against an independent implementation
    assert HKDF(hashes.SHA256(), length, salt or None, info).derive(ikm) == got


def test_derive_e2e_keys_independent():
    kpsa, salt = b"\x11" * 32, b"\x22" * 16
    got = keys.derive_e2e_keys(kpsa, salt)
    master = H(salt, kpsa)
    t1 = H(master, b"E2E Message Authentication Key" + b"\x01")
    t2 = H(master, t1 + b"E2E Message Confidentiality Key" + b"\x02")
    t3 = H(master, t2 + b"E2E Attribute Authenticity Key" + b"\x03")
    t4 = H(master, t3 + b"E2E Attribute Confidentiality Key" + b"\x04")
    assert got == {
        "Ke2e_master": master,
        "Ke2e_msg_auth": t1,
        "Ke2e_msg_conf": t2,
        "Ke2e_att_auth": t3,
        "Ke2e_att_conf": t4,
    }
    # first block equals HKDF-Expand with that block's info, as RFC 5869 defines it
    assert HKDFExpand(hashes.SHA256(), 32, b"E2E Message Authentication Key").derive(master) == t1


@pytest.mark.parametrize("kpsa,salt", [(b"", b"s"), (b"k", b""), ("k", b"s")])
def test_derive_e2e_keys_rejects(kpsa, salt):
    with pytest.raises(ParseError):
        keys.derive_e2e_keys(kpsa, salt)


# --- 10.3.8 sessionESPrimKey ----------------------------------------------------------------


def test_session_esprim_key_independent():
    pk = b"\x33" * 32
    r, o = b"\x01" * 16, b"\x02" * 16
    expected = H(pk, r + o + b"oneM2M HMAC-SHA256 sessionESPrimKey derivation algorithm")
    assert keys.derive_session_esprim_key(pk, r, o) == expected
    assert keys.derive_session_esprim_key(pk, o, r) != expected  # order matters


def test_session_esprim_key_rejects():
    pk, r = b"\x33" * 32, b"\x01" * 16
    with pytest.raises(ParseError, match="esprimKeyGenAlgID"):
        keys.derive_session_esprim_key(pk, r, r, key_gen_alg_id=2)
    with pytest.raises(ParseError, match="esprimKeyGenAlgID"):
        keys.derive_session_esprim_key(pk, r, r, key_gen_alg_id=True)  # type: ignore[arg-type]
    with pytest.raises(ParseError, match="16 octets"):
        keys.derive_session_esprim_key(pk, r[:15], r)
    with pytest.raises(ParseError, match="16 octets"):
        keys.derive_session_esprim_key(pk, r, r + b"\x00")
    with pytest.raises(ParseError, match="at least 16"):
        keys.derive_session_esprim_key(b"\x01" * 8, r, r)


@pytest.mark.parametrize("alg,n", [(10, 16), (11, 24), (12, 32)])
def test_esprim_content_key_truncation(alg, n):
    sk = bytes(range(32))
    assert keys.esprim_content_key(sk, alg) == bytes(range(n))


@pytest.mark.parametrize("alg", [0, 9, 13, True])
def test_esprim_content_key_rejects_alg(alg):
    with pytest.raises(ParseError):
        keys.esprim_content_key(bytes(32), alg)
