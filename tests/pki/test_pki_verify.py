"""Peer certificate verification, TS-0003 8.1.2.5: every reason code provoked."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from _pki_support import AE, CSE, DEVICE, MEF, NODE, NOW, SERVER_ONLY_EKU, SP, make_ca, new_ec_key, raw_cert
from m2msec.errors import IdentifierError
from m2msec.pki import (
    CertificateFlavour as F,
    CertificateVerificationError,
    DevCA,
    PeerCertInfo,
    VerificationReason as R,
    public_key_identifier,
    verify_peer_certificate,
)
from m2msec.pki.profile import CA_KEY_USAGE, build_leaf


def verify(chain, flavour: F, ident: str, anchors, now=NOW, **kw):
    return verify_peer_certificate(chain, expected=PeerCertInfo(flavour, ident), trust_anchors=anchors, now=now, **kw)


def reason(exc_info) -> R:
    return exc_info.value.reason_code


ALL = [(F.CSE_ID, CSE), (F.FQDN, MEF), (F.AE_ID, AE), (F.NODE_ID, NODE), (F.DEVICE, DEVICE)]


@pytest.mark.parametrize(("flavour", "ident"), ALL)
def test_chain_with_intermediate_verifies(ca: DevCA, flavour: F, ident: str) -> None:
    issued = ca.issue(flavour, [ident], now=NOW)
    peer = verify([issued.certificate, *issued.chain], flavour, ident, [ca.trust_anchor])
    assert peer.certificate == issued.certificate
    assert peer.path == [issued.certificate, ca.intermediate_cert]
    assert peer.trust_anchor == ca.root_cert


def test_root_only_and_root_sent_by_peer(root_only_ca: DevCA, ca: DevCA) -> None:
    issued = root_only_ca.issue(F.CSE_ID, [CSE], now=NOW)
    assert verify([issued.certificate], F.CSE_ID, CSE, [root_only_ca.trust_anchor]).path == [issued.certificate]
    issued2 = ca.issue(F.CSE_ID, [CSE], now=NOW)
    chain = [issued2.certificate, ca.intermediate_cert, ca.root_cert]
    assert verify(chain, F.CSE_ID, CSE, [ca.trust_anchor]).path == chain[:2]
    # several anchors configured, the right one is found; case-insensitive DNS match
    assert verify(chain[:2], F.CSE_ID, CSE.upper(), [root_only_ca.trust_anchor, ca.trust_anchor]).identifier == CSE


def test_raw_public_key_flavour(ca: DevCA) -> None:
    issued = ca.issue(F.CSE_ID, [CSE], now=NOW)
    ident = public_key_identifier(issued.private_key.public_key(), "sha-256-120")
    assert verify([issued.certificate], F.RAW_PUBLIC_KEY, ident, []).identifier == ident
    other = public_key_identifier(new_ec_key().public_key())
    with pytest.raises(CertificateVerificationError) as ei:
        verify([issued.certificate], F.RAW_PUBLIC_KEY, other, [])
    assert reason(ei) is R.IDENTIFIER_MISMATCH


@pytest.mark.parametrize(
    ("flavour", "ident", "wrong"),
    [
        (F.CSE_ID, CSE, f"cse2.{SP}"),
        (F.FQDN, MEF, f"maf.{SP}"),
        (F.AE_ID, AE, f"//{SP}/CSE1/C9887"),
        (F.AE_ID, AE, f"//{SP}/cse1/C9886"),  # URIs compare exactly
        (F.NODE_ID, NODE, "urn:gsma:imei:90420156-025763-0;svn=43"),
        (F.DEVICE, DEVICE, "0.2.481.1.100.3030.10012"),
    ],
)
def test_identifier_mismatch(ca: DevCA, flavour: F, ident: str, wrong: str) -> None:
    issued = ca.issue(flavour, [ident], now=NOW)
    with pytest.raises(CertificateVerificationError) as ei:
        verify([issued.certificate, *issued.chain], flavour, wrong, [ca.trust_anchor])
    assert reason(ei) is R.IDENTIFIER_MISMATCH
    assert ei.value.rsc == 4106


@pytest.mark.parametrize(
    ("issued_as", "ident", "expected_as", "expected_ident"),
    [
        (F.AE_ID, AE, F.CSE_ID, SP),  # the SP FQDN is only the URI host, not a dNSName
        (F.CSE_ID, CSE, F.AE_ID, f"//{CSE}/CSE1/C1"),
        (F.NODE_ID, NODE, F.DEVICE, DEVICE),
        (F.DEVICE, DEVICE, F.NODE_ID, "urn:oid:" + DEVICE),
    ],
)
def test_wrong_flavour(ca: DevCA, issued_as: F, ident: str, expected_as: F, expected_ident: str) -> None:
    issued = ca.issue(issued_as, [ident], now=NOW)
    with pytest.raises(CertificateVerificationError) as ei:
        verify([issued.certificate, *issued.chain], expected_as, expected_ident, [ca.trust_anchor])
    assert reason(ei) is R.WRONG_FLAVOUR


def test_fqdn_flavour_uri_forms(ca: DevCA) -> None:
    # 8.1.2.5: for an FQDN certificate a URI may carry the FQDN; m2msec accepts scheme://FQDN[/] only,
    # so that an AE-ID certificate https://<sp-fqdn>/<ae> cannot pass as the FQDN certificate of <sp-fqdn>.
    issued = ca.issue(F.AE_ID, [f"//{SP}/S1"], now=NOW)
    with pytest.raises(CertificateVerificationError) as ei:
        verify([issued.certificate, *issued.chain], F.FQDN, SP, [ca.trust_anchor])
    assert reason(ei) is R.WRONG_FLAVOUR
    # URI constraint ".<sp>" permits hosts below the SP domain (RFC 5280: "m2m.example.com" alone is one host)
    root_only_ca = DevCA.create("uri hosts", now=NOW - timedelta(days=1), permit_uri=["." + SP])
    ku = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    for uri, ok in ((f"https://{MEF}/", True), (f"coaps://{MEF}", True), (f"https://{MEF}:8443/", False)):
        leaf = raw_cert(subject_cn="mef", issuer=root_only_ca.root_cert, issuer_key=root_only_ca._root_key,
                        public_key=new_ec_key().public_key(),
                        extensions=[(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), False),
                                    (ku, True)])
        if ok:
            assert verify([leaf], F.FQDN, MEF, [root_only_ca.trust_anchor]).identifier == MEF
        else:
            with pytest.raises(CertificateVerificationError) as ei:
                verify([leaf], F.FQDN, MEF, [root_only_ca.trust_anchor])
            assert reason(ei) is R.WRONG_FLAVOUR


def test_misconfigured_identifier_is_local_error(ca: DevCA) -> None:
    issued = ca.issue(F.CSE_ID, [CSE], now=NOW)
    with pytest.raises(IdentifierError):
        verify([issued.certificate], F.CSE_ID, "*.m2m.example.com", [ca.trust_anchor])


def test_untrusted_root(ca: DevCA, other_ca: DevCA) -> None:
    issued = other_ca.issue(F.CSE_ID, [CSE], now=NOW)
    for chain in ([issued.certificate], [issued.certificate, other_ca.root_cert]):
        with pytest.raises(CertificateVerificationError) as ei:
            verify(chain, F.CSE_ID, CSE, [ca.trust_anchor])
        assert reason(ei) is R.UNTRUSTED_ROOT
    with pytest.raises(CertificateVerificationError) as ei:
        verify([issued.certificate], F.CSE_ID, CSE, [])
    assert reason(ei) is R.UNTRUSTED_ROOT


def test_impostor_root_with_same_name(root_only_ca: DevCA) -> None:
    impostor = DevCA.create("Root Only SP", now=NOW - timedelta(days=1), permit_dns=[SP])
    assert impostor.root_cert.subject == root_only_ca.root_cert.subject
    issued = impostor.issue(F.CSE_ID, [CSE], now=NOW)
    with pytest.raises(CertificateVerificationError) as ei:
        verify([issued.certificate, impostor.root_cert], F.CSE_ID, CSE, [root_only_ca.trust_anchor])
    assert reason(ei) is R.UNTRUSTED_ROOT
    with pytest.raises(CertificateVerificationError) as ei:
        verify([issued.certificate], F.CSE_ID, CSE, [root_only_ca.trust_anchor])
    assert reason(ei) is R.BAD_SIGNATURE


@pytest.mark.parametrize("when", ["past", "future"])
def test_validity(when: str) -> None:
    ca = DevCA.create("validity", now=NOW - timedelta(days=100), permit_dns=[SP], intermediate=True)
    issue_at = NOW - timedelta(days=40) if when == "past" else NOW + timedelta(days=1)
    issued = ca.issue(F.CSE_ID, [CSE], now=issue_at, validity=timedelta(days=30))
    with pytest.raises(CertificateVerificationError) as ei:
        verify([issued.certificate, *issued.chain], F.CSE_ID, CSE, [ca.trust_anchor])
    assert reason(ei) is (R.EXPIRED if when == "past" else R.NOT_YET_VALID)
    # the same chain is fine at a time inside its window
    verify([issued.certificate, *issued.chain], F.CSE_ID, CSE, [ca.trust_anchor], now=issue_at + timedelta(days=1))


def test_expired_anchor(ca: DevCA) -> None:
    issued = ca.issue(F.CSE_ID, [CSE], now=NOW)
    with pytest.raises(CertificateVerificationError) as ei:
        verify([issued.certificate, *issued.chain], F.CSE_ID, CSE, [ca.trust_anchor], now=NOW + timedelta(days=4000))
    assert reason(ei) is R.EXPIRED


def test_leaf_signed_by_different_key(ca: DevCA, root_only_ca: DevCA) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    for issuer_ca, chain_tail in ((ca, ca.chain), (root_only_ca, [])):
        forged = build_leaf(
            flavour=F.CSE_ID, identifiers=[CSE], public_key=new_ec_key().public_key(),
            issuer_cert=issuer_ca.issuing_cert, issuer_key=stranger,
            not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=1),
        )
        with pytest.raises(CertificateVerificationError) as ei:
            verify([forged, *chain_tail], F.CSE_ID, CSE, [issuer_ca.trust_anchor])
        assert reason(ei) is R.BAD_SIGNATURE


def _fake_intermediate(root_ca: DevCA, *, ca_flag: bool | None, key_usage: x509.KeyUsage | None = CA_KEY_USAGE):
    key = new_ec_key()
    exts: list = []
    if ca_flag is not None:
        exts.append((x509.BasicConstraints(ca=ca_flag, path_length=None), True))
    if key_usage is not None:
        exts.append((key_usage, True))
    cert = raw_cert(subject_cn="Sub CA", issuer=root_ca.root_cert, issuer_key=root_ca._root_key,
                    public_key=key.public_key(), extensions=exts)
    leaf = build_leaf(flavour=F.CSE_ID, identifiers=[CSE], public_key=new_ec_key().public_key(), issuer_cert=cert,
                      issuer_key=key, not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=1))
    return [leaf, cert]


@pytest.mark.parametrize("ca_flag", [False, None])
def test_intermediate_without_ca_flag(ca_flag: bool | None) -> None:
    root = make_ca("pathlen one", intermediate=True)  # root pathLen 1 so only the cA flag is at fault
    with pytest.raises(CertificateVerificationError) as ei:
        verify(_fake_intermediate(root, ca_flag=ca_flag), F.CSE_ID, CSE, [root.trust_anchor])
    assert reason(ei) is R.NOT_A_CA


def test_path_length_exceeded(root_only_ca: DevCA) -> None:
    chain = _fake_intermediate(root_only_ca, ca_flag=True)  # root has pathLen 0
    with pytest.raises(CertificateVerificationError) as ei:
        verify(chain, F.CSE_ID, CSE, [root_only_ca.trust_anchor])
    assert reason(ei) is R.NOT_A_CA
    assert "pathLen" in str(ei.value)


def test_intermediate_without_key_cert_sign() -> None:
    root = make_ca("ku", intermediate=True)
    ku = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    with pytest.raises(CertificateVerificationError) as ei:
        verify(_fake_intermediate(root, ca_flag=True, key_usage=ku), F.CSE_ID, CSE, [root.trust_anchor])
    assert reason(ei) is R.KEY_USAGE


def test_leaf_wrong_key_usage(ca: DevCA) -> None:
    ku = x509.KeyUsage(False, False, True, False, False, False, False, False, False)  # keyEncipherment only
    leaf = build_leaf(flavour=F.CSE_ID, identifiers=[CSE], public_key=new_ec_key().public_key(),
                      issuer_cert=ca.issuing_cert, issuer_key=ca._issuing_key,
                      not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=1), key_usage=ku)
    with pytest.raises(CertificateVerificationError) as ei:
        verify([leaf, *ca.chain], F.CSE_ID, CSE, [ca.trust_anchor])
    assert reason(ei) is R.KEY_USAGE


def test_leaf_without_key_usage_and_eku(root_only_ca: DevCA) -> None:
    san = x509.SubjectAlternativeName([x509.DNSName(CSE)])
    leaf = raw_cert(subject_cn=CSE, issuer=root_only_ca.root_cert, issuer_key=root_only_ca._root_key,
                    public_key=new_ec_key().public_key(), extensions=[(san, False)])
    with pytest.raises(CertificateVerificationError) as ei:
        verify([leaf], F.CSE_ID, CSE, [root_only_ca.trust_anchor])
    assert reason(ei) is R.KEY_USAGE
    ku = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    leaf = raw_cert(subject_cn=CSE, issuer=root_only_ca.root_cert, issuer_key=root_only_ca._root_key,
                    public_key=new_ec_key().public_key(), extensions=[(san, False), (ku, True), (SERVER_ONLY_EKU, False)])
    verify([leaf], F.CSE_ID, CSE, [root_only_ca.trust_anchor], required_eku=ExtendedKeyUsageOID.SERVER_AUTH)
    with pytest.raises(CertificateVerificationError) as ei:
        verify([leaf], F.CSE_ID, CSE, [root_only_ca.trust_anchor], required_eku=ExtendedKeyUsageOID.CLIENT_AUTH)
    assert reason(ei) is R.KEY_USAGE


@pytest.mark.parametrize(
    ("flavour", "ident"),
    [
        (F.CSE_ID, "cse1.other.org"),
        (F.FQDN, "mef.other.org"),
        (F.AE_ID, "//other.org/CSE1/C1"),
        (F.AE_ID, f"//evil{SP}/CSE1/C1"),  # suffix without a dot boundary
        (F.NODE_ID, "urn:dev:mac:0024befffe804ff1"),
        (F.DEVICE, "0.2.481.1.200.1.1"),
    ],
)
@pytest.mark.parametrize("with_intermediate", [True, False])
def test_name_constraint_violation_at_verification(
    ca: DevCA, root_only_ca: DevCA, flavour: F, ident: str, with_intermediate: bool
) -> None:
    issuer = ca if with_intermediate else root_only_ca
    # bypass DevCA.issue's check: sign directly with the CA key
    leaf = build_leaf(flavour=flavour, identifiers=[ident], public_key=new_ec_key().public_key(),
                      issuer_cert=issuer.issuing_cert, issuer_key=issuer._issuing_key,
                      not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=1))
    with pytest.raises(CertificateVerificationError) as ei:
        verify([leaf, *issuer.chain], flavour, ident, [issuer.trust_anchor])
    assert reason(ei) is R.NAME_CONSTRAINT_VIOLATION


def test_root_constraints_bind_an_unconstrained_intermediate(ca: DevCA) -> None:
    key = new_ec_key()
    inter = raw_cert(subject_cn="Unconstrained Sub CA", issuer=ca.root_cert, issuer_key=ca._root_key,
                     public_key=key.public_key(),
                     extensions=[(x509.BasicConstraints(ca=True, path_length=0), True), (CA_KEY_USAGE, True)])
    leaf = build_leaf(flavour=F.CSE_ID, identifiers=["cse.other.org"], public_key=new_ec_key().public_key(),
                      issuer_cert=inter, issuer_key=key, not_before=NOW - timedelta(days=1),
                      not_after=NOW + timedelta(days=1))
    with pytest.raises(CertificateVerificationError) as ei:
        verify([leaf, inter], F.CSE_ID, "cse.other.org", [ca.trust_anchor])
    assert reason(ei) is R.NAME_CONSTRAINT_VIOLATION


def test_malformed_and_unsupported(root_only_ca: DevCA) -> None:
    with pytest.raises(CertificateVerificationError) as ei:
        verify([], F.CSE_ID, CSE, [root_only_ca.trust_anchor])
    assert reason(ei) is R.MALFORMED
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    issued = root_only_ca.issue(F.CSE_ID, [CSE], now=NOW)
    ku = issued.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    san = x509.SubjectAlternativeName([x509.DNSName(CSE)])
    leaf = raw_cert(subject_cn=CSE, issuer=root_only_ca.root_cert, issuer_key=root_only_ca._root_key,
                    public_key=new_ec_key().public_key(), extensions=[(san, False), (ku, True), (unknown, True)])
    with pytest.raises(CertificateVerificationError) as ei:
        verify([leaf], F.CSE_ID, CSE, [root_only_ca.trust_anchor])
    assert reason(ei) is R.MALFORMED
    weak = rsa.generate_private_key(65537, 1024)
    leaf = raw_cert(subject_cn=CSE, issuer=root_only_ca.root_cert, issuer_key=root_only_ca._root_key,
                    public_key=weak.public_key(), extensions=[(san, False), (ku, True)])
    with pytest.raises(CertificateVerificationError) as ei:
        verify([leaf], F.CSE_ID, CSE, [root_only_ca.trust_anchor])
    assert reason(ei) is R.UNSUPPORTED_ALGORITHM
    with pytest.raises(ValueError):
        verify([leaf], F.CSE_ID, CSE, [root_only_ca.trust_anchor], now=NOW.replace(tzinfo=None))


def test_self_signed_peer_as_trust_anchor() -> None:
    key = new_ec_key()
    ku = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    cert = raw_cert(subject_cn=CSE, issuer=None, issuer_key=key, public_key=key.public_key(),
                    extensions=[(x509.SubjectAlternativeName([x509.DNSName(CSE)]), False), (ku, True)])
    assert verify([cert], F.CSE_ID, CSE, [cert]).trust_anchor == cert
