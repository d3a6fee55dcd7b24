"""Pure functions of the EST profile: DER CsrAttrs against RFC 7030's example and openssl/cryptography
encodings, the csrattrs the MEF serves, PKCS#7 certs-only round trips, and the EKU OIDs."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import AttributeOID, ExtendedKeyUsageOID
from hypothesis import given
from hypothesis import strategies as st

from m2msec.errors import ParseError
from m2msec.mef.est import EKU_FOR, M2MSEC_EKU_ARC, SecurityType, certs_only, load_certs_only
from m2msec.mef.estder import (
    OID_EXTENSION_REQUEST,
    attribute,
    csrattrs,
    decode_csrattrs,
    decode_oid,
    encode_csrattrs,
    encode_oid,
    read_tlv,
    tlv,
)
from m2msec.mef.state import SessionPeer
from m2msec.pki import CertificateFlavour as F

# RFC 7030 section 4.5.2 example: challengePassword, id-ecPublicKey {secp384r1},
# extensionRequest {macAddress}, ecdsa-with-SHA384
RFC7030_CSRATTRS = base64.b64decode(
    "MEEGCSqGSIb3DQEJBzASBgcqhkjOPQIBMQcGBSuBBAAiMBYGCSqGSIb3DQEJDjEJ"
    "BgcrBgEBAQEWBggqhkjOPQQDAw==")


def test_oid_vectors() -> None:
    assert encode_oid(AttributeOID.CHALLENGE_PASSWORD).hex() == "06092a864886f70d010907"
    assert encode_oid("2.5.29.37").hex() == "0603551d25"
    assert encode_oid("2.999.3").hex() == "0603883703"  # X.690 8.19.5 example
    assert decode_oid(bytes.fromhex("883703")) == "2.999.3"
    for bad in ("1", "3.1", "1.40", "a.b"):
        with pytest.raises(ValueError):
            encode_oid(bad)
    with pytest.raises(ParseError):
        decode_oid(bytes.fromhex("80 01".replace(" ", "")))  # non-minimal arc
    with pytest.raises(ParseError):
        decode_oid(b"\x81")  # truncated


@given(st.lists(st.integers(min_value=0, max_value=2**128 - 1), min_size=1, max_size=6),
       st.integers(0, 2), st.integers(0, 39))
def test_oid_round_trip_matches_cryptography(arcs: list[int], a: int, b: int) -> None:
    dotted = ".".join(map(str, [a, b, *arcs]))
    der = encode_oid(dotted)
    tag, content, end = read_tlv(der)
    assert tag == 6 and end == len(der) and decode_oid(content) == dotted
    # cryptography's own DER of the same OID (inside an extendedKeyUsage SEQUENCE); its
    # ObjectIdentifier refuses contents longer than 63 octets, so the oracle stops there.
    if len(content) <= 63:
        eku = x509.ExtendedKeyUsage([x509.ObjectIdentifier(dotted)]).public_bytes()
        assert eku == tlv(0x30, der)


def test_rfc7030_example_decodes_and_reencodes_byte_exact() -> None:
    a = decode_csrattrs(RFC7030_CSRATTRS)
    assert a.oids == ("1.2.840.113549.1.9.7", "1.2.840.10045.4.3.3")
    assert a.attribute_oids("1.2.840.10045.2.1") == ("1.3.132.0.34",)
    assert a.extension_oids == ("1.3.6.1.1.1.1.22",) and a.extensions == {}
    again = csrattrs(encode_oid(AttributeOID.CHALLENGE_PASSWORD),
                     attribute("1.2.840.10045.2.1", [encode_oid("1.3.132.0.34")]),
                     attribute(OID_EXTENSION_REQUEST, [encode_oid("1.3.6.1.1.1.1.22")]),
                     encode_oid("1.2.840.10045.4.3.3"))
    assert again == RFC7030_CSRATTRS


def test_extension_request_round_trip() -> None:
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier("https://m2m.example.com/id-in/Cx")])
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, EKU_FOR[SecurityType.SAEF]])
    der = encode_csrattrs(oids=[AttributeOID.CHALLENGE_PASSWORD], extensions=[(san, True), (eku, False)])
    a = decode_csrattrs(der)
    assert a.extensions[san.oid.dotted_string] == (True, san.public_bytes())
    assert a.extensions[eku.oid.dotted_string] == (False, eku.public_bytes())
    assert a.extended_key_usages() == ("1.3.6.1.5.5.7.3.2", f"{M2MSEC_EKU_ARC}.1")


@pytest.mark.parametrize("bad", [
    b"", b"\x31\x00", b"\x30\x01", b"\x30\x00\x00",  # not a SEQUENCE / truncated / trailing
    b"\x30\x81\x02\x06\x00",  # non-minimal length
    b"\x30\x03\x02\x01\x00",  # INTEGER element
    b"\x30\x04\x30\x02\x06\x00",  # Attribute without values
    bytes.fromhex("300f300d06092a864886f70d01090e3100"),  # extensionRequest with empty SET
])
def test_malformed_csrattrs(bad: bytes) -> None:
    with pytest.raises(ParseError):
        decode_csrattrs(bad)


def test_served_csrattrs(tmp_path: Path) -> None:
    """What the MEF answers on /csrattrs for the PSK enrolee (through ESTService, no network)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _esthelp import AE_ID, make_world
    from _mefhelp import ENROLEE

    w = make_world(tmp_path)
    try:
        resp = w.est.handle("GET", "/.well-known/est/csrattrs", b"", SessionPeer("enrolee", ENROLEE, "kpm:x"))
        assert resp.status == 200 and resp.content_type == "application/csrattrs"
        a = decode_csrattrs(base64.b64decode(resp.body))
        assert a.oids == ("1.2.840.113549.1.9.7", "1.2.840.10045.4.3.2")  # challengePassword, ecdsa-with-SHA256
        assert a.attribute_oids("1.2.840.10045.2.1") == ("1.2.840.10045.3.1.7",)  # P-256
        assert set(a.extended_key_usages()) == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2",
                                                f"{M2MSEC_EKU_ARC}.1", f"{M2MSEC_EKU_ARC}.2"}
        crit, san_der = a.extensions["2.5.29.17"]
        assert not crit
        assert san_der == x509.SubjectAlternativeName([x509.UniformResourceIdentifier("https:" + AE_ID)]).public_bytes()
        resp = w.est.handle("GET", "/.well-known/est/cacerts", b"", SessionPeer("enrolee", ENROLEE, "kpm:x"))
        assert set(load_certs_only(resp.body)) == {w.ca.trust_anchor, w.ca.intermediate_cert}
        assert w.est.handle("GET", "/.well-known/est/csrattrs", b"", None).status == 403
    finally:
        w.state.store.close()


def test_certs_only_round_trip_and_errors() -> None:
    from datetime import UTC, datetime

    from m2msec.pki import DevCA

    ca = DevCA.create("T", now=datetime.now(UTC), permit_dns=["example.com"])
    leaf = ca.issue(F.FQDN, ["a.example.com"], now=datetime.now(UTC)).certificate
    body = certs_only([leaf, ca.trust_anchor])  # a DER SET: the order is not kept
    assert set(load_certs_only(body)) == {leaf, ca.trust_anchor}
    assert set(load_certs_only(body.replace(b"\n", b"\r\n"))) == {leaf, ca.trust_anchor}
    for bad in (b"@@@", base64.b64encode(b"\x30\x00")):
        with pytest.raises(ParseError):
            load_certs_only(bad)


def test_eku_oids_are_distinct_and_under_the_uuid_arc() -> None:
    dotted = [o.dotted_string for o in EKU_FOR.values()]
    assert len(set(dotted)) == len(SecurityType) == 4
    assert all(d.startswith("2.25.") and d.rsplit(".", 1)[0] == M2MSEC_EKU_ARC for d in dotted)
    assert int(M2MSEC_EKU_ARC.split(".")[2]) == 0xCAF0C69CED554607A8AA11232420C34A
