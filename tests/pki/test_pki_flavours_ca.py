"""Certificate flavours (TS-0003 8.1.2.1, 10.1.1), DevCA issuance and CSRs (8.1.2.2, 10.1.4)."""

from __future__ import annotations

import os
import stat
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from m2msec.errors import IdentifierError
from m2msec.pki import (
    STRICT_ONEM2M,
    CertificateFlavour as F,
    CSRError,
    DevCA,
    DeviceId,
    IssuanceError,
    KeyType,
    NameConstraintError,
    UnsupportedKeyError,
    build_csr,
    identifiers_of,
)
from m2msec.pki.der import encode_relative_oid

from _pki_support import AE, CSE, DEVICE, MEF, NODE, NOW, SP

CASES = [
    (F.CSE_ID, CSE, x509.DNSName, CSE),
    (F.FQDN, MEF, x509.DNSName, MEF),
    (F.AE_ID, AE, x509.UniformResourceIdentifier, f"https:{AE}"),
    (F.NODE_ID, NODE, x509.UniformResourceIdentifier, NODE),
]


@pytest.mark.parametrize(("flavour", "ident", "kind", "san_value"), CASES)
def test_flavour_san_and_profile(ca: DevCA, flavour: F, ident: str, kind: type, san_value: str) -> None:
    issued = ca.issue(flavour, [ident], now=NOW)
    cert = issued.certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [n.value for n in san if isinstance(n, kind)] == [san_value]
    assert identifiers_of(cert, flavour) == [ident if flavour is not F.AE_ID else AE]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_agreement and not ku.value.key_cert_sign
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
    assert cert.signature_hash_algorithm is not None and cert.signature_hash_algorithm.name == "sha256"
    assert cert.issuer == ca.intermediate_cert.subject
    assert issued.chain == [ca.intermediate_cert]
    assert "hidden" in repr(issued) and "PRIVATE" not in repr(issued)


def test_device_certificate_other_name(ca: DevCA) -> None:
    cert = ca.issue(F.DEVICE, [DEVICE], now=NOW).certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    (other,) = [n for n in san if isinstance(n, x509.OtherName)]
    assert other.type_id.dotted_string == "0.2.481.1"  # M2M Device Indication ID arc
    assert other.value == bytes.fromhex("0d05649756ce1b")  # RELATIVE-OID 100.3030.10011
    assert identifiers_of(cert, F.DEVICE) == [DEVICE]
    assert identifiers_of(cert, F.CSE_ID) == [] and identifiers_of(cert, F.AE_ID) == []


def test_device_id_forms() -> None:
    d = DeviceId.parse("0.2.481.1/100.3030.10011.7")  # with expanded ID
    assert d.arcs == (100, 3030, 10011, 7) and d.dotted == "0.2.481.1.100.3030.10011.7"
    assert DeviceId.parse(DEVICE).split_form == "0.2.481.1/100.3030.10011"
    assert DeviceId.from_general_name(d.to_general_name()) == d
    for bad in ("abc", "0.2", "5.1.2.3.4.5", "0.2/x"):
        with pytest.raises(IdentifierError):
            DeviceId.parse(bad)


def test_several_identifiers_and_node_oid(ca: DevCA) -> None:
    cert = ca.issue(F.CSE_ID, [CSE, f"cse2.{SP}"], now=NOW).certificate
    assert identifiers_of(cert, F.CSE_ID) == [CSE, f"cse2.{SP}"]
    ca2 = DevCA.create("oid nodes", now=NOW, permit_uri=["urn:oid:0.2.481.1."])
    cert = ca2.issue(F.NODE_ID, ["0.2.481.1.100.3030.10011"], now=NOW).certificate
    assert identifiers_of(cert, F.NODE_ID) == ["urn:oid:0.2.481.1.100.3030.10011"]


def test_raw_flavour_identifier(ca: DevCA) -> None:
    from m2msec.pki import public_key_identifier

    issued = ca.issue(F.CSE_ID, [CSE], now=NOW)
    assert identifiers_of(issued.certificate, F.RAW_PUBLIC_KEY) == [public_key_identifier(issued.private_key.public_key())]
    with pytest.raises(IssuanceError):
        ca.issue(F.RAW_PUBLIC_KEY, ["x"], now=NOW)


@pytest.mark.parametrize("bad", ["*.m2m.example.com", "m2m.example.com.", "no_underscore.m2m.example.com", "single"])
def test_invalid_fqdns_refused(ca: DevCA, bad: str) -> None:
    with pytest.raises(IdentifierError):
        ca.issue(F.CSE_ID, [bad], now=NOW)


@pytest.mark.parametrize("bad", ["/CSE1/C9886", "C9886", f"//{SP}", f"//{SP}:8080/CSE1/C1", f"http://{SP}/CSE1/C1", "//*.x.com/C1"])
def test_invalid_ae_ids_refused(ca: DevCA, bad: str) -> None:
    with pytest.raises(IdentifierError):
        ca.issue(F.AE_ID, [bad], now=NOW)


def test_other_key_types(ca: DevCA) -> None:
    c384 = ca.issue(F.CSE_ID, [CSE], now=NOW, key_type=KeyType.EC_P384).certificate
    assert c384.public_key().curve.name == "secp384r1"
    crsa = ca.issue(F.CSE_ID, [CSE], now=NOW, key_type=KeyType.RSA_2048).certificate
    ku = crsa.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and not ku.key_agreement


@pytest.mark.parametrize(
    "key",
    [
        rsa.generate_private_key(65537, 1024).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
        ed448.Ed448PrivateKey.generate().public_key(),
        ec.generate_private_key(ec.SECP521R1()).public_key(),
    ],
    ids=["rsa1024", "ed25519", "ed448", "p521"],
)
def test_unsupported_keys_refused(ca: DevCA, key: object) -> None:
    with pytest.raises(UnsupportedKeyError):
        ca.issue(F.CSE_ID, [CSE], now=NOW, public_key=key)


def test_strict_policy_refuses_p384_and_rsa() -> None:
    STRICT_ONEM2M.check(ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(UnsupportedKeyError):
        STRICT_ONEM2M.check(ec.generate_private_key(ec.SECP384R1()).public_key())
    with pytest.raises(UnsupportedKeyError):
        STRICT_ONEM2M.check(rsa.generate_private_key(65537, 2048).public_key())


def test_ca_certificates_carry_name_constraints(ca: DevCA) -> None:
    for c in (ca.root_cert, ca.intermediate_cert):
        ext = c.extensions.get_extension_for_class(x509.NameConstraints)
        assert ext.critical
        permitted = ext.value.permitted_subtrees
        assert x509.DNSName(SP) in permitted
        assert x509.UniformResourceIdentifier(SP) in permitted
        assert x509.OtherName(x509.ObjectIdentifier("0.2.481.1"), encode_relative_oid([100])) in permitted
        bc = c.extensions.get_extension_for_class(x509.BasicConstraints).value
        assert bc.ca
    assert ca.root_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 1
    assert ca.intermediate_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0


@pytest.mark.parametrize(
    ("flavour", "ident"),
    [
        (F.CSE_ID, "cse1.other.org"),
        (F.FQDN, "mef.other.org"),
        (F.AE_ID, "//other.org/CSE1/C1"),
        (F.NODE_ID, "urn:dev:mac:0024befffe804ff1"),
        (F.DEVICE, "0.2.481.1.200.1.1"),
    ],
)
def test_name_constraints_refused_at_issuance(ca: DevCA, flavour: F, ident: str) -> None:
    with pytest.raises(NameConstraintError):
        ca.issue(flavour, [ident], now=NOW)


def test_csr_issuance(ca: DevCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = build_csr(key, F.AE_ID, [AE])
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [n.value for n in san] == [f"https:{AE}"]
    issued = ca.issue_from_csr(csr, F.AE_ID, [AE], now=NOW)
    assert issued.private_key is None
    assert issued.certificate.public_key() == key.public_key()
    assert identifiers_of(issued.certificate, F.AE_ID) == [AE]


def test_csr_bad_signature_refused(ca: DevCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = bytearray(build_csr(key, F.CSE_ID, [CSE]).public_bytes(__import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.DER))
    der[-1] ^= 0x01  # last byte of the ECDSA signature's s value
    csr = x509.load_der_x509_csr(bytes(der))
    with pytest.raises(CSRError, match="proof of possession"):
        ca.issue_from_csr(csr, F.CSE_ID, [CSE], now=NOW)


def test_csr_signed_by_another_key_refused(ca: DevCA) -> None:
    from cryptography.hazmat.primitives import hashes, serialization

    from _pki_support import splice_csr_signature

    a, b = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    csr = build_csr(a, F.CSE_ID, [CSE])
    forged_sig = b.sign(csr.tbs_certrequest_bytes, ec.ECDSA(hashes.SHA256()))
    forged = x509.load_der_x509_csr(
        splice_csr_signature(csr.public_bytes(serialization.Encoding.DER), csr.tbs_certrequest_bytes, csr.signature, forged_sig)
    )
    assert forged.public_key() == a.public_key() and forged.signature == forged_sig
    with pytest.raises(CSRError, match="proof of possession"):
        ca.issue_from_csr(forged, F.CSE_ID, [CSE], now=NOW)


def test_csr_identifier_mismatch_and_weak_key(ca: DevCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CSRError, match="authorised"):
        ca.issue_from_csr(build_csr(key, F.CSE_ID, [f"cse9.{SP}"]), F.CSE_ID, [CSE], now=NOW)
    weak = rsa.generate_private_key(65537, 1024)
    with pytest.raises(UnsupportedKeyError):
        ca.issue_from_csr(build_csr(weak, F.CSE_ID, [CSE]), F.CSE_ID, [CSE], now=NOW)
    with pytest.raises(NameConstraintError):
        ca.issue_from_csr(build_csr(key, F.CSE_ID, ["cse1.other.org"]), F.CSE_ID, ["cse1.other.org"], now=NOW)


def test_save_load_roundtrip(tmp_path, ca: DevCA) -> None:
    ca.save(tmp_path / "ca", b"correct horse")
    for f in ("root.key.pem", "intermediate.key.pem"):
        p = tmp_path / "ca" / f
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
        assert b"ENCRYPTED PRIVATE KEY" in p.read_bytes()
    loaded = DevCA.load(tmp_path / "ca", b"correct horse")
    assert loaded.root_cert == ca.root_cert and loaded.intermediate_cert == ca.intermediate_cert
    cert = loaded.issue(F.CSE_ID, [CSE], now=NOW).certificate
    cert.verify_directly_issued_by(ca.intermediate_cert)
    with pytest.raises(IssuanceError, match="passphrase"):
        DevCA.load(tmp_path / "ca", b"wrong")
    with pytest.raises(ValueError):
        ca.save(tmp_path / "x", b"")


def test_validity_window(ca: DevCA) -> None:
    cert = ca.issue(F.CSE_ID, [CSE], now=NOW, validity=timedelta(days=10)).certificate
    assert cert.not_valid_after_utc == NOW + timedelta(days=10)
    assert cert.not_valid_before_utc <= NOW
