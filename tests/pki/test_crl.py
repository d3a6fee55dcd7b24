"""Certificate status with CRLs (TS-0003 8.1.2.2, RFC 5280 5 and 6.3): CA side, store, verifier, CLI, openssl."""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from _pki_support import CSE, NOW, SP, make_ca
from m2msec.pki import (
    CertificateFlavour,
    CertificateVerificationError,
    CRLError,
    CRLStore,
    DevCA,
    IssuedCertificate,
    PeerCertInfo,
    RevocationPolicy,
    RevocationStatus,
    VerificationReason,
    generate_private_key,
    load_crl_files,
    load_crls,
    verify_peer_certificate,
)
from m2msec.pki.cli import app
from m2msec.pki.crl import RevocationEntry, build_crl, check_path_revocation
from m2msec.pki.profile import build_leaf
from m2msec.tls.pkiverify import tls_alert_for

R = VerificationReason
F = CertificateFlavour
EXPECTED = PeerCertInfo(F.CSE_ID, CSE)
OPENSSL = shutil.which("openssl")
POLICIES = ["if-available", "require"]


@pytest.fixture(scope="module")
def world() -> dict[str, object]:
    """A CA with a revoked and an unrevoked leaf, and current CRLs of both CAs."""
    ca = make_ca("CRL SP")
    good = ca.issue(F.CSE_ID, [CSE], now=NOW)
    bad = ca.issue(F.CSE_ID, [CSE], now=NOW)
    ca.revoke(bad.certificate, now=NOW - timedelta(hours=1), reason=x509.ReasonFlags.key_compromise)
    return {"ca": ca, "good": good, "bad": bad,
            "leaf_crl": ca.issue_crl(now=NOW - timedelta(minutes=1)),
            "root_crl": ca.issue_crl(now=NOW - timedelta(minutes=1), signer="root")}


def verify(issued: IssuedCertificate, ca: DevCA, crls: object, policy: str, now: datetime = NOW):
    return verify_peer_certificate([issued.certificate, *issued.chain], expected=EXPECTED,
                                   trust_anchors=[ca.trust_anchor], now=now, crls=crls, revocation=policy)


def reason(issued: IssuedCertificate, ca: DevCA, crls: object, policy: str, now: datetime = NOW) -> R:
    with pytest.raises(CertificateVerificationError) as e:
        verify(issued, ca, crls, policy, now)
    return e.value.reason_code


def forged_crl(*, issuer_name: x509.Name, key: object, entries: list[x509.RevokedCertificate] = (),
               this_update: datetime = NOW - timedelta(hours=1), next_update: datetime | None = NOW + timedelta(days=1),
               extensions: list[tuple[x509.ExtensionType, bool]] = (), number: int | None = 1,
               hash_alg: hashes.HashAlgorithm | None | str = "sha256") -> x509.CertificateRevocationList:
    """A free-form CRL for negative tests (bypasses the CA's profile)."""
    b = x509.CertificateRevocationListBuilder().issuer_name(issuer_name).last_update(this_update)
    if next_update is not None:
        b = b.next_update(next_update)
    if number is not None:
        b = b.add_extension(x509.CRLNumber(number), critical=False)
    for ext, critical in extensions:
        b = b.add_extension(ext, critical=critical)
    for e in entries:
        b = b.add_revoked_certificate(e)
    return b.sign(key, hashes.SHA256() if hash_alg == "sha256" else hash_alg)  # type: ignore[arg-type]


def entry(serial: int, *exts: tuple[x509.ExtensionType, bool]) -> x509.RevokedCertificate:
    b = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW - timedelta(hours=2))
    for ext, critical in exts:
        b = b.add_extension(ext, critical=critical)
    return b.build()


UNKNOWN_EXT = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")


# ------------------------------------------------------------------ CA side: CRL profile, numbering, persistence


def test_crl_profile(world: dict) -> None:
    ca, crl, bad = world["ca"], world["leaf_crl"], world["bad"]
    assert crl.issuer == ca.intermediate_cert.subject
    assert crl.last_update_utc == (NOW - timedelta(minutes=1)).replace(microsecond=0)
    assert crl.next_update_utc - crl.last_update_utc == timedelta(days=7)
    assert crl.is_signature_valid(ca.intermediate_cert.public_key())
    assert isinstance(crl.signature_hash_algorithm, hashes.SHA256)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    ski = ca.intermediate_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert not aki.critical and aki.value.key_identifier == ski.digest
    assert all(not e.critical for e in crl.extensions)
    assert len(crl) == 1
    e = crl.get_revoked_certificate_by_serial_number(bad.certificate.serial_number)
    assert e is not None and e.revocation_date_utc == (NOW - timedelta(hours=1)).replace(microsecond=0)
    assert e.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.key_compromise
    root_crl = world["root_crl"]
    assert root_crl.issuer == ca.root_cert.subject and len(root_crl) == 0
    assert root_crl.is_signature_valid(ca.root_cert.public_key())
    # the CA certificates carry cRLSign (RFC 5280 4.2.1.3)
    for c in (ca.root_cert, ca.intermediate_cert):
        assert c.extensions.get_extension_for_class(x509.KeyUsage).value.crl_sign


def test_crl_numbers_increase_per_ca_and_survive_save_load(tmp_path: Path) -> None:
    ca = make_ca("Numbering SP")
    leaf = ca.issue(F.CSE_ID, [CSE], now=NOW)
    nums = [ca.issue_crl(now=NOW).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
            for _ in range(3)]
    assert nums == [1, 2, 3]
    assert ca.issue_crl(now=NOW, signer="root").extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    ca.revoke(leaf.certificate, now=NOW, reason=x509.ReasonFlags.superseded)
    ca.revoke(ca.intermediate_cert, now=NOW, reason=x509.ReasonFlags.ca_compromise)
    ca.save(tmp_path, b"pw")
    again = DevCA.load(tmp_path, b"pw")
    assert again.next_crl_number == {"intermediate": 4, "root": 2}
    assert set(again.revoked["intermediate"]) == {leaf.certificate.serial_number}
    assert again.revoked["root"][ca.intermediate_cert.serial_number].reason is x509.ReasonFlags.ca_compromise
    crl = again.issue_crl(now=NOW)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 4
    e = crl.get_revoked_certificate_by_serial_number(leaf.certificate.serial_number)
    assert e.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.superseded
    # a corrupted revocation file is refused, not silently reset
    (tmp_path / "revocations.json").write_text("{not json")
    with pytest.raises(CRLError):
        DevCA.load(tmp_path, b"pw")


def test_revoke_refusals(world: dict) -> None:
    ca = make_ca("Refusals SP")
    leaf = ca.issue(F.CSE_ID, [CSE], now=NOW)
    ca.revoke(leaf.certificate, now=NOW)
    with pytest.raises(CRLError, match="already revoked"):
        ca.revoke(leaf.certificate, now=NOW)
    with pytest.raises(CRLError, match="not issued by"):
        ca.revoke(world["good"].certificate, now=NOW)  # another CA's certificate
    with pytest.raises(CRLError, match="not issued by"):
        ca.revoke(ca.root_cert, now=NOW)
    with pytest.raises(CRLError, match="root certificate"):
        ca.revoke(ca.root_cert.serial_number, now=NOW, signer="root")
    with pytest.raises(CRLError, match="removeFromCRL"):
        ca.revoke(12345, now=NOW, reason=x509.ReasonFlags.remove_from_crl)
    with pytest.raises(CRLError, match="signed by the intermediate"):
        ca.revoke(ca.issue(F.CSE_ID, [CSE], now=NOW).certificate, now=NOW, signer="root")
    with pytest.raises(CRLError, match="no intermediate"):
        make_ca("Flat SP", intermediate=False).issue_crl(now=NOW, signer="intermediate")
    with pytest.raises(CRLError, match="positive"):
        ca.issue_crl(now=NOW, validity=timedelta(0))
    with pytest.raises(ValueError):
        ca.revoke(777, now=datetime(2026, 1, 1))  # naive clock
    # a bare serial of the issuing CA
    assert ca.revoke(0xABC, now=NOW).serial_number == 0xABC and 0xABC in ca.revoked["intermediate"]


def test_crl_distribution_point_on_leaves() -> None:
    url = f"http://crl.{SP}/issuing.crl"
    ca = DevCA.create("CDP SP", now=NOW - timedelta(days=1), permit_dns=[SP], intermediate=True, crl_url=url)
    leaf = ca.issue(F.CSE_ID, [CSE], now=NOW).certificate
    cdp = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    assert not cdp.critical and cdp.value[0].full_name == [x509.UniformResourceIdentifier(url)]
    plain = make_ca("No CDP SP").issue(F.CSE_ID, [CSE], now=NOW).certificate
    with pytest.raises(x509.ExtensionNotFound):
        plain.extensions.get_extension_for_class(x509.CRLDistributionPoints)


# ------------------------------------------------------------------ verifier: revoked / good / policies


@pytest.mark.parametrize("policy", POLICIES)
def test_revoked_leaf_refused(world: dict, policy: str) -> None:
    store = CRLStore([world["leaf_crl"], world["root_crl"]])
    with pytest.raises(CertificateVerificationError) as e:
        verify(world["bad"], world["ca"], store, policy)
    assert e.value.reason_code is R.REVOKED
    assert "keyCompromise" in e.value.detail and format(world["bad"].certificate.serial_number, "x") in e.value.detail
    assert tls_alert_for(R.REVOKED) == "certificate_revoked"


@pytest.mark.parametrize("policy", POLICIES)
def test_unrevoked_leaf_passes(world: dict, policy: str) -> None:
    vp = verify(world["good"], world["ca"], CRLStore([world["leaf_crl"], world["root_crl"]]), policy)
    assert vp.revocation == (RevocationStatus.GOOD, RevocationStatus.GOOD)


def test_intermediate_revoked_by_root_crl() -> None:
    ca = make_ca("Inter SP")
    leaf = ca.issue(F.CSE_ID, [CSE], now=NOW)
    ca.revoke(ca.intermediate_cert, now=NOW)
    crls = [ca.issue_crl(now=NOW), ca.issue_crl(now=NOW, signer="root")]
    for policy in POLICIES:
        with pytest.raises(CertificateVerificationError) as e:
            verify(leaf, ca, crls, policy)
        assert e.value.reason_code is R.REVOKED and "Issuing CA" in e.value.detail
    # only the root's CRL: still found under if-available
    assert reason(leaf, ca, [crls[1]], "if-available") is R.REVOKED


def test_off_policy_ignores_crls(world: dict) -> None:
    vp = verify(world["bad"], world["ca"], [world["leaf_crl"]], "off")
    assert vp.revocation == (RevocationStatus.NOT_CHECKED, RevocationStatus.NOT_CHECKED)


def test_default_policy_is_if_available(world: dict) -> None:
    leaf = world["bad"]
    with pytest.raises(CertificateVerificationError) as e:
        verify_peer_certificate([leaf.certificate, *leaf.chain], expected=EXPECTED,
                                trust_anchors=[world["ca"].trust_anchor], now=NOW, crls=[world["leaf_crl"]])
    assert e.value.reason_code is R.REVOKED
    # no CRLs at all: exactly the behaviour before revocation checking
    vp = verify_peer_certificate([leaf.certificate, *leaf.chain], expected=EXPECTED,
                                 trust_anchors=[world["ca"].trust_anchor], now=NOW)
    assert vp.revocation == (RevocationStatus.UNDETERMINED, RevocationStatus.UNDETERMINED)


def test_require_without_crl(world: dict) -> None:
    ca, good = world["ca"], world["good"]
    for crls in (None, [], [world["root_crl"]]):  # the issuing CA's CRL is missing in all three
        with pytest.raises(CertificateVerificationError) as e:
            verify(good, ca, crls, "require")
        assert e.value.reason_code is R.REVOCATION_UNKNOWN and "Issuing CA" in e.value.detail
    assert reason(good, ca, [world["leaf_crl"]], "require") is R.REVOCATION_UNKNOWN  # root CRL missing
    assert tls_alert_for(R.REVOCATION_UNKNOWN) == "certificate_unknown"
    vp = verify(good, ca, [world["root_crl"]], "if-available")
    assert vp.revocation == (RevocationStatus.UNDETERMINED, RevocationStatus.GOOD)


def test_trust_anchor_itself_is_not_checked() -> None:
    """Only certificates below the anchor have an issuer whose CRL could list them."""
    ca = make_ca("Self SP", intermediate=False)
    assert check_path_revocation([ca.root_cert], crls=None, policy="require", now=NOW) == ()
    leaf = ca.issue(F.CSE_ID, [CSE], now=NOW)
    assert check_path_revocation([leaf.certificate, ca.root_cert], crls=[ca.issue_crl(now=NOW)], policy="require",
                                 now=NOW) == (RevocationStatus.GOOD,)


# ------------------------------------------------------------------ verifier: bad CRLs


@pytest.mark.parametrize("policy", POLICIES)
def test_crl_signed_by_wrong_key(world: dict, policy: str) -> None:
    ca = world["ca"]
    crl = forged_crl(issuer_name=ca.intermediate_cert.subject, key=generate_private_key())
    with pytest.raises(CertificateVerificationError) as e:
        verify(world["good"], ca, [crl, world["root_crl"]], policy)
    assert e.value.reason_code is R.CRL_INVALID and "signature" in e.value.detail
    assert tls_alert_for(R.CRL_INVALID) == "bad_certificate"
    # a good CRL of the same issuer next to the forged one is used (key rollover)
    vp = verify(world["good"], ca, [crl, world["leaf_crl"], world["root_crl"]], policy)
    assert vp.revocation == (RevocationStatus.GOOD, RevocationStatus.GOOD)
    assert reason(world["bad"], ca, [crl, world["leaf_crl"], world["root_crl"]], policy) is R.REVOKED


def test_crl_of_another_issuer_name(world: dict) -> None:
    ca, other = world["ca"], make_ca("Other SP")
    other_leaf = other.issue(F.CSE_ID, [CSE], now=NOW)
    other.revoke(other_leaf.certificate.serial_number, now=NOW)
    # same serial revoked, but by a CA of another name: it does not apply
    crl = build_crl(issuer_cert=other.intermediate_cert, issuer_key=other._intermediate_key,
                    entries=[RevocationEntry(world["bad"].certificate.serial_number, NOW)], number=1, this_update=NOW)
    vp = verify(world["bad"], ca, [crl], "if-available")
    assert vp.revocation == (RevocationStatus.UNDETERMINED, RevocationStatus.UNDETERMINED)
    assert reason(world["bad"], ca, [crl, world["root_crl"]], "require") is R.REVOCATION_UNKNOWN
    # the other name but the right key: the name decides (RFC 5280 6.3.3 (b)) - not applicable either
    renamed = forged_crl(issuer_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the issuer")]),
                         key=ca._intermediate_key, entries=[entry(world["bad"].certificate.serial_number)])
    assert verify(world["bad"], ca, [renamed, world["root_crl"]], "if-available").revocation[0] \
        is RevocationStatus.UNDETERMINED


@pytest.mark.parametrize("when", ["expired", "not-yet-valid"])
def test_crl_not_current(world: dict, when: str) -> None:
    ca = world["ca"]
    key = ca._intermediate_key
    kw: dict[str, object] = {
        "expired": {"this_update": NOW - timedelta(days=8), "next_update": NOW - timedelta(days=1)},
        "not-yet-valid": {"this_update": NOW + timedelta(hours=1), "next_update": NOW + timedelta(days=7)},
    }[when]
    name = ca.intermediate_cert.subject
    stale_good = forged_crl(issuer_name=name, key=key, **kw)
    stale_bad = forged_crl(issuer_name=name, key=key, entries=[entry(world["bad"].certificate.serial_number)], **kw)
    root = world["root_crl"]
    # if-available: status undetermined, accepted - but a listed certificate is still revoked
    assert verify(world["good"], ca, [stale_good, root], "if-available").revocation == \
        (RevocationStatus.UNDETERMINED, RevocationStatus.GOOD)
    assert reason(world["bad"], ca, [stale_bad, root], "if-available") is R.REVOKED
    # require: unknown
    with pytest.raises(CertificateVerificationError) as e:
        verify(world["good"], ca, [stale_good, root], "require")
    assert e.value.reason_code is R.REVOCATION_UNKNOWN
    assert {"expired": "stale", "not-yet-valid": "not valid before"}[when] in e.value.detail
    assert reason(world["bad"], ca, [stale_bad, root], "require") is R.REVOKED


def test_expired_ca_crl_through_the_clock(world: dict) -> None:
    """The CA's own CRL, checked 8 days later (certificates still valid): stale."""
    later = NOW + timedelta(days=8)
    store = CRLStore([world["leaf_crl"], world["root_crl"]])
    assert reason(world["good"], world["ca"], store, "require", now=later) is R.REVOCATION_UNKNOWN
    assert verify(world["good"], world["ca"], store, "if-available", now=later).revocation == \
        (RevocationStatus.UNDETERMINED, RevocationStatus.UNDETERMINED)


@pytest.mark.parametrize("case", ["critical-ext", "delta", "indirect-idp", "some-reasons", "ed25519"])
@pytest.mark.parametrize("policy", POLICIES)
def test_unusable_crl(world: dict, case: str, policy: str) -> None:
    ca = world["ca"]
    name, key = ca.intermediate_cert.subject, ca._intermediate_key
    kw: dict[str, object] = {}
    if case == "critical-ext":
        kw["extensions"] = [(UNKNOWN_EXT, True)]
        why = "unsupported critical extension"
    elif case == "delta":
        kw["extensions"] = [(x509.DeltaCRLIndicator(1), False)]  # RFC 5280 5.2.4: MUST be critical
        kw["number"] = 2
        why = "deltaCRLIndicator of a delta CRL must be critical"
    elif case == "indirect-idp":
        kw["extensions"] = [(x509.IssuingDistributionPoint(None, None, False, False, None, True, False), True)]
        why = "indirect CRLs are not supported"
    elif case == "some-reasons":
        kw["extensions"] = [(x509.IssuingDistributionPoint(None, None, False, False,
                                                           frozenset({x509.ReasonFlags.key_compromise}), False,
                                                           False), True)]
        why = "onlySomeReasons"
    else:  # no SHA-2 hash (cryptography will not sign a CRL with SHA-1)
        kw["hash_alg"], key = None, Ed25519PrivateKey.generate()
        why = "disallowed algorithm"
    crl = forged_crl(issuer_name=name, key=key, **kw)
    with pytest.raises(CertificateVerificationError) as e:
        verify(world["good"], ca, [crl, world["root_crl"]], policy)
    assert e.value.reason_code is R.CRL_INVALID and why in e.value.detail
    verify(world["good"], ca, [crl, world["root_crl"]], "off")  # not looked at


def test_unknown_critical_non_critical_extension_is_fine(world: dict) -> None:
    ca = world["ca"]
    crl = forged_crl(issuer_name=ca.intermediate_cert.subject, key=ca._intermediate_key,
                     extensions=[(UNKNOWN_EXT, False)])
    assert verify(world["good"], ca, [crl, world["root_crl"]], "require").revocation[0] is RevocationStatus.GOOD


def test_entry_extensions(world: dict) -> None:
    ca = world["ca"]
    name, key = ca.intermediate_cert.subject, ca._intermediate_key
    serial = world["bad"].certificate.serial_number
    crit = forged_crl(issuer_name=name, key=key, entries=[entry(serial, (UNKNOWN_EXT, True))])
    with pytest.raises(CertificateVerificationError) as e:
        verify(world["bad"], ca, [crit, world["root_crl"]], "if-available")
    assert e.value.reason_code is R.CRL_INVALID and "entry extension" in e.value.detail
    # the unknown entry extension concerns only that entry
    assert verify(world["good"], ca, [crit, world["root_crl"]], "require").revocation[0] is RevocationStatus.GOOD
    indirect = forged_crl(issuer_name=name, key=key, entries=[
        entry(serial, (x509.CertificateIssuer([x509.DNSName("other.example")]), True))])
    assert reason(world["bad"], ca, [indirect], "if-available") is R.CRL_INVALID
    removed = forged_crl(issuer_name=name, key=key, entries=[
        entry(serial, (x509.CRLReason(x509.ReasonFlags.remove_from_crl), False))])
    assert verify(world["bad"], ca, [removed, world["root_crl"]], "require").revocation[0] is RevocationStatus.GOOD


def test_issuer_without_crl_sign() -> None:
    """An issuer whose keyUsage lacks cRLSign cannot sign CRLs (RFC 5280 6.3.3 (f))."""
    rk, lk = generate_private_key(), generate_private_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "No CRLSign Root")])
    ku = x509.KeyUsage(False, False, False, False, False, True, False, False, False)
    root = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(rk.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(ku, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(rk.public_key()), critical=False)
            .sign(rk, hashes.SHA256()))
    leaf = build_leaf(flavour=F.CSE_ID, identifiers=[CSE], public_key=lk.public_key(), issuer_cert=root,
                      issuer_key=rk, not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=30))
    crl = build_crl(issuer_cert=root, issuer_key=rk, entries=[], number=1, this_update=NOW)
    for policy in POLICIES:
        with pytest.raises(CertificateVerificationError) as e:
            verify_peer_certificate([leaf], expected=EXPECTED, trust_anchors=[root], now=NOW, crls=[crl],
                                    revocation=policy)
        assert e.value.reason_code is R.CRL_INVALID and "cRLSign" in e.value.detail


def test_idp_scope(world: dict) -> None:
    ca = world["ca"]
    name, key = ca.intermediate_cert.subject, ca._intermediate_key
    serial = world["bad"].certificate.serial_number
    ca_only = forged_crl(issuer_name=name, key=key, entries=[entry(serial)],
                         extensions=[(x509.IssuingDistributionPoint(None, None, False, True, None, False, False), True)])
    # a CA-certificates-only CRL does not cover a leaf
    assert verify(world["bad"], ca, [ca_only, world["root_crl"]], "if-available").revocation[0] \
        is RevocationStatus.UNDETERMINED
    assert reason(world["bad"], ca, [ca_only, world["root_crl"]], "require") is R.REVOCATION_UNKNOWN
    users = forged_crl(issuer_name=name, key=key, entries=[entry(serial)],
                       extensions=[(x509.IssuingDistributionPoint(None, None, True, False, None, False, False), True)])
    assert reason(world["bad"], ca, [users, world["root_crl"]], "require") is R.REVOKED
    # a distribution point name: covers only certificates naming it in cRLDistributionPoints
    url = x509.UniformResourceIdentifier(f"http://crl.{SP}/p1.crl")
    dp = forged_crl(issuer_name=name, key=key, entries=[entry(serial)],
                    extensions=[(x509.IssuingDistributionPoint([url], None, False, False, None, False, False), True)])
    assert reason(world["bad"], ca, [dp, world["root_crl"]], "require") is R.REVOCATION_UNKNOWN


# ------------------------------------------------------------------ store and loading


def test_store_keeps_the_latest_issue(world: dict) -> None:
    ca = make_ca("Store SP")
    first, second = ca.issue_crl(now=NOW), ca.issue_crl(now=NOW)
    store = CRLStore([second])
    assert store.add(first) is False  # an older cRLNumber never replaces a newer one
    assert store.for_issuer(ca.intermediate_cert.subject) == (second,)
    third = ca.issue_crl(now=NOW)
    assert store.add(third) is True and store.for_issuer(ca.intermediate_cert.subject) == (third,)
    # a CRL of the same name by another key is kept beside (distinct authorityKeyIdentifier)
    other = forged_crl(issuer_name=ca.intermediate_cert.subject, key=generate_private_key(), number=99)
    assert store.add(other) and len(store.for_issuer(ca.intermediate_cert.subject)) == 2
    store.replace([world["leaf_crl"]])
    assert len(store) == 1 and store.for_issuer(ca.intermediate_cert.subject) == ()
    assert "CRLStore(issuers=1" in repr(store)
    with pytest.raises(CRLError):
        store.add("not a crl")  # type: ignore[arg-type]


def test_store_refresh_applies_to_a_configured_verifier(world: dict) -> None:
    """Callers keep the store by reference: refreshing it changes the next verdict."""
    from m2msec.tls.pkiverify import PKIVerifyHook

    ca = make_ca("Refresh SP")
    leaf = ca.issue(F.CSE_ID, [CSE], now=NOW)
    store = CRLStore([ca.issue_crl(now=NOW), ca.issue_crl(now=NOW, signer="root")])
    hook = PKIVerifyHook(EXPECTED, [ca.trust_anchor], lambda: NOW, crls=store, revocation="require")
    hook([leaf.certificate, *leaf.chain])
    ca.revoke(leaf.certificate, now=NOW)
    store.add(ca.issue_crl(now=NOW))
    with pytest.raises(CertificateVerificationError) as e:
        hook([leaf.certificate, *leaf.chain])
    assert e.value.reason_code is R.REVOKED and e.value.tls_alert == "certificate_revoked"  # type: ignore[attr-defined]
    assert "revocation=require" in repr(hook)


def test_load_crls(world: dict, tmp_path: Path) -> None:
    pem = b"".join(world[k].public_bytes(serialization.Encoding.PEM) for k in ("leaf_crl", "root_crl"))
    assert load_crls(pem) == [world["leaf_crl"], world["root_crl"]]
    der = world["leaf_crl"].public_bytes(serialization.Encoding.DER)
    assert load_crls(der) == [world["leaf_crl"]]
    (tmp_path / "a.pem").write_bytes(pem)
    (tmp_path / "b.der").write_bytes(der)
    assert len(load_crl_files([tmp_path / "a.pem", tmp_path / "b.der"])) == 3
    for bad in (b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", der[:-5]):
        with pytest.raises(CRLError):
            load_crls(bad)
    with pytest.raises(CRLError, match="cannot read"):
        load_crl_files([tmp_path / "missing.crl"])
    with pytest.raises(ValueError):
        RevocationPolicy("sometimes")


# ------------------------------------------------------------------ CLI and openssl interop

ENV = {"M2MSEC_CA_PASSPHRASE": "crl-dev-passphrase"}
runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args), env=ENV)


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, *args], capture_output=True, text=True, timeout=20)


def test_cli_revoke_and_crl(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    r = cli("init-ca", str(d), "--name", "CLI CRL SP", "--permit-dns", SP, "--intermediate",
            "--crl-url", f"http://crl.{SP}/issuing.crl")
    assert r.exit_code == 0, r.output
    for stem in ("good", "bad"):
        r = cli("issue", str(d), "--flavour", "cse-id", "--id", CSE, "--out", str(tmp_path / stem))
        assert r.exit_code == 0, r.output
    bad = x509.load_pem_x509_certificate((tmp_path / "bad.crt.pem").read_bytes())
    assert bad.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    r = cli("revoke", str(d), "--cert", str(tmp_path / "bad.crt.pem"), "--reason", "keyCompromise")
    assert r.exit_code == 0, r.output
    assert f"revoked: {bad.serial_number:x}" in r.output
    r = cli("crl", str(d), "--out", str(tmp_path / "issuing.crl.pem"))
    assert r.exit_code == 0 and "crl_number: 1" in r.output and "revoked: 1" in r.output, r.output
    r = cli("crl", str(d), "--out", str(tmp_path / "issuing.crl.der"), "--der", "--days", "2")
    assert r.exit_code == 0 and "crl_number: 2" in r.output, r.output
    r = cli("crl", str(d), "--ca", "root", "--out", str(tmp_path / "root.crl.pem"))
    assert r.exit_code == 0 and "crl_number: 1" in r.output and "revoked: 0" in r.output, r.output
    pem_crl = x509.load_pem_x509_crl((tmp_path / "issuing.crl.pem").read_bytes())
    der_crl = x509.load_der_x509_crl((tmp_path / "issuing.crl.der").read_bytes())
    assert pem_crl.get_revoked_certificate_by_serial_number(bad.serial_number) is not None
    assert der_crl.next_update_utc - der_crl.last_update_utc == timedelta(days=2)
    # refusals
    assert cli("revoke", str(d), "--cert", str(tmp_path / "bad.crt.pem")).exit_code == 1  # already revoked
    r = cli("revoke", str(d), "--serial", "abc", "--reason", "because")
    assert r.exit_code == 1 and "unknown reason" in r.output
    assert cli("revoke", str(d)).exit_code == 1  # neither --cert nor --serial
    r = cli("revoke", str(d), "--serial", "zz")
    assert r.exit_code == 1
    r = runner.invoke(app, ["crl", str(d), "--out", str(tmp_path / "x.crl")], env={"M2MSEC_CA_PASSPHRASE": "wrong"})
    assert r.exit_code == 1 and not (tmp_path / "x.crl").exists()
    r = cli("revoke", str(d), "--serial", "1234", "--ca", "root", "--reason", "cACompromise")
    assert r.exit_code == 0, r.output
    assert 0x1234 in DevCA.load(d, ENV["M2MSEC_CA_PASSPHRASE"].encode()).revoked["root"]


@pytest.mark.skipif(OPENSSL is None, reason="openssl not installed")
def test_openssl_agrees(tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)  # openssl verify uses the wall clock
    ca = DevCA.create("OpenSSL CRL SP", now=now - timedelta(days=1), permit_dns=[SP], intermediate=True)
    good, bad = (ca.issue(F.CSE_ID, [CSE], now=now) for _ in range(2))
    ca.revoke(bad.certificate, now=now, reason=x509.ReasonFlags.key_compromise)
    pem = serialization.Encoding.PEM
    files = {
        "root.pem": ca.root_cert.public_bytes(pem), "inter.pem": ca.intermediate_cert.public_bytes(pem),
        "good.pem": good.certificate.public_bytes(pem), "bad.pem": bad.certificate.public_bytes(pem),
        "issuing.crl": ca.issue_crl(now=now).public_bytes(pem),
        "root.crl": ca.issue_crl(now=now, signer="root").public_bytes(pem),
    }
    for n, data in files.items():
        (tmp_path / n).write_bytes(data)
    p = lambda n: str(tmp_path / n)  # noqa: E731
    (tmp_path / "chain.pem").write_bytes(files["root.pem"] + files["inter.pem"])
    r = _openssl("crl", "-in", p("issuing.crl"), "-CAfile", p("chain.pem"), "-noout")
    assert r.returncode == 0 and "verify OK" in r.stderr + r.stdout, r.stderr
    r = _openssl("crl", "-in", p("root.crl"), "-CAfile", p("root.pem"), "-noout")
    assert r.returncode == 0 and "verify OK" in r.stderr + r.stdout, r.stderr
    r = _openssl("crl", "-in", p("issuing.crl"), "-noout", "-text")
    assert "CRL Number" in r.stdout and "Key Compromise" in r.stdout and "Authority Key Identifier" in r.stdout
    store = CRLStore(load_crl_files([p("issuing.crl"), p("root.crl")]))
    for name, issued in (("good.pem", good), ("bad.pem", bad)):
        for flag in ("-crl_check", "-crl_check_all"):
            r = _openssl("verify", flag, "-CRLfile", p("issuing.crl"), "-CRLfile", p("root.crl"),
                         "-CAfile", p("root.pem"), "-untrusted", p("inter.pem"), p(name))
            ours_ok = True
            try:
                verify(issued, ca, store, "require", now=now)
            except CertificateVerificationError as exc:
                ours_ok = False
                assert exc.reason_code is R.REVOKED
            assert (r.returncode == 0) is ours_ok is (name == "good.pem"), (name, flag, r.stdout, r.stderr)
            if not ours_ok:
                assert "certificate revoked" in r.stdout + r.stderr
    # revoked intermediate: openssl -crl_check_all and we both refuse the good leaf
    ca.revoke(ca.intermediate_cert, now=now)
    (tmp_path / "root.crl").write_bytes(ca.issue_crl(now=now, signer="root").public_bytes(pem))
    r = _openssl("verify", "-crl_check_all", "-CRLfile", p("issuing.crl"), "-CRLfile", p("root.crl"),
                 "-CAfile", p("root.pem"), "-untrusted", p("inter.pem"), p("good.pem"))
    assert r.returncode != 0 and "certificate revoked" in r.stdout + r.stderr
    store.replace(load_crl_files([p("issuing.crl"), p("root.crl")]))
    with pytest.raises(CertificateVerificationError) as e:
        verify(good, ca, store, "require", now=now)
    assert e.value.reason_code is R.REVOKED
