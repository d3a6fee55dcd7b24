"""Certificate Enrolment with EST against a real MEF (TS-0003 8.3.6; seed 004 8.3.3.3; RFC 7030).

Enrolment over the PSK RSPF and the certificate RSPF, re-enrolment with the issued
certificate, installation, the completion report, and every refusal of the RA.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from _esthelp import AE_ALT, AE_ID, CERT_ENROLEE, CERT_ENROLEE_EST_ID, World, make_world
from _mefhelp import ENROLEE, ENROLEE_B, B_PSK, B_PSK_ID, run
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from cryptography.x509.oid import AttributeOID, ExtendedKeyUsageOID

from m2msec.mef import EnrolmentRequest, enrol, mef_tls_config
from m2msec.mef.est import (
    EKU_FOR,
    NS_EST_CA,
    NS_EST_CHALLENGE,
    NS_EST_ISSUED,
    SecurityType,
)
from m2msec.mef.est_client import ESTClientError, build_est_csr, est_enrol, load_installed
from m2msec.mef.estder import read_tlv, tlv
from m2msec.mef.state import NS_CERTIDX
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import build_csr, identifiers_of
from m2msec.tls.engine import PSKCredentials


@pytest.fixture
def w(tmp_path: Path) -> World:
    world = make_world(tmp_path)
    yield world
    world.state.store.close()


def ekus(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_enrol_over_psk_rspf_and_install(w: World, tmp_path: Path) -> None:
    with w.mef() as m:
        e, prov = run(lambda: est_enrol(m.host, m.port, w.psk_tls()))
    # the Enrolment Exchange happened on the same session (Ke/KeID checked by the client)
    assert e.enrolee_id == ENROLEE and e.allowed(ENROLEE_B, 22)
    cert = prov.certificate
    # identifiers: the requested one plus the one the MEF adds (8.3.3.3 step 11)
    assert sorted(identifiers_of(cert, F.AE_ID)) == sorted([AE_ID, AE_ALT])
    # usages the MEF allowed are recorded as EKUs: TLS + SAEF + ESPrim, not ESData
    assert ekus(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH,
                          EKU_FOR[SecurityType.SAEF], EKU_FOR[SecurityType.ESPRIM]}
    assert prov.security_types == (SecurityType.SAEF, SecurityType.ESPRIM)
    # name-constrained chain: leaf <- intermediate <- root (the trust anchor from /cacerts)
    assert prov.trust_anchors == (w.ca.trust_anchor,) and prov.chain == (w.ca.intermediate_cert,)
    assert cert.issuer == w.ca.intermediate_cert.subject
    assert w.ca.trust_anchor.extensions.get_extension_for_class(x509.NameConstraints).critical
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
    # the MEF recorded the issuance, consumed the challenge, and got the success report (step 6)
    rec = w.state.store.get_record(NS_EST_ISSUED, prov.serial).doc
    assert rec["enrolee_id"] == ENROLEE and rec["installed"] is True and rec["ke_id"] == e.ke_id
    assert rec["security_types"] == ["SAEF", "ESPrim"]
    assert w.state.store.list_records(NS_EST_CHALLENGE) == []
    actions = [a.action for a in w.state.store.list_audit()]
    assert "est-enroll" in actions and "est-installed" in actions
    # install: key 0600, chain, anchors; load back
    paths = prov.install(tmp_path / "dev")
    assert stat.S_IMODE(os.stat(paths["key"]).st_mode) == 0o600
    again = load_installed(tmp_path / "dev")
    assert again.certificate == cert and again.chain == prov.chain and again.trust_anchors == prov.trust_anchors
    assert again.security_types == prov.security_types and again.identifiers == prov.identifiers
    assert "hidden" in repr(prov)
    pk = prov.private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    assert pk.hex() not in repr(prov)


def test_ca_key_is_encrypted_at_rest(w: World, tmp_path: Path) -> None:
    """The DevCA keys live in the store (NS mef.est.ca), encrypted with the store's KEK."""
    key_der = w.state.store.get_credential(NS_EST_CA, "root").secret
    assert serialization.load_der_private_key(key_der, None).public_key() == w.ca.trust_anchor.public_key()
    files = [p for p in tmp_path.iterdir() if p.name.startswith("mef.db")]
    assert files and all(key_der not in p.read_bytes() for p in files)
    assert all(key_der[-32:] not in p.read_bytes() for p in files)


def test_enrol_over_certificate_rspf_then_reenrol(w: World) -> None:
    with w.mef() as m:
        # the manufacturer certificate authenticates the certificate-RSPF enrolee
        e1, p1 = run(lambda: est_enrol(m.host, m.port, w.cert_tls(w.maker_dev)))
        assert e1.enrolee_id == CERT_ENROLEE
        assert identifiers_of(p1.certificate, F.AE_ID) == [CERT_ENROLEE_EST_ID]
        assert EKU_FOR[SecurityType.ESPRIM] not in ekus(p1.certificate)  # only SAEF allowed for this one
        # the MEF-provisioned certificate now authenticates the enrolee to the MEF (8.3.6.2.2 step 3f) ...
        e2, p2 = run(lambda: est_enrol(m.host, m.port, w.cert_tls(p1.credentials()), reenroll=True))
        assert e2.enrolee_id == CERT_ENROLEE and e2.ke_id != e1.ke_id
        assert p2.serial != p1.serial and identifiers_of(p2.certificate, F.AE_ID) == [CERT_ENROLEE_EST_ID]
        assert p2.private_key.public_key() != p1.private_key.public_key()  # re-keyed
        assert w.state.store.get_record(NS_EST_ISSUED, p2.serial).doc["reenroll"] is True
        # ... and simplereenroll with the manufacturer certificate is refused (not MEF-provisioned)
        with pytest.raises(ESTClientError) as ei:
            run(lambda: est_enrol(m.host, m.port, w.cert_tls(w.maker_dev), reenroll=True))
        assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE and "not provisioned by this MEF" in str(ei.value)
        # simplereenroll over the PSK RSPF is refused too (RFC 7030 4.2.2: the current certificate)
        with pytest.raises(ESTClientError) as ei:
            run(lambda: est_enrol(m.host, m.port, w.psk_tls(), reenroll=True))
        assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    assert w.state.store.get_record(NS_CERTIDX, f"ae-id|{CERT_ENROLEE_EST_ID}").doc["id"] == CERT_ENROLEE


def test_psk_enrolee_certificate_then_used_for_certificate_rspf(w: World) -> None:
    with w.mef() as m:
        _, p = run(lambda: est_enrol(m.host, m.port, w.psk_tls()))
        e = run(lambda: enrol(m.host, m.port, w.cert_tls(p.credentials())))
    assert e.enrolee_id == ENROLEE


# ------------------------------------------------------------------ refusals


def refused(w: World, csr_hook: Any, *, tls: Any = None) -> ESTClientError:
    with w.mef() as m:
        with pytest.raises(ESTClientError) as ei:
            run(lambda: est_enrol(m.host, m.port, tls or w.psk_tls(), csr_hook=csr_hook))
    assert w.state.store.list_records(NS_EST_ISSUED) == []
    assert any(a.action == "est" and a.outcome == "refused" for a in w.state.store.list_audit())
    return ei.value


def test_wrong_challenge_password(w: World) -> None:
    err = refused(w, lambda key, _cp, exts: build_est_csr(key, "not-the-challenge", exts))
    assert err.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE and "challengePassword" in str(err)
    assert len(w.state.store.list_records(NS_EST_CHALLENGE)) == 1  # not consumed


def test_missing_challenge_password(w: World) -> None:
    err = refused(w, lambda key, _cp, _exts: build_csr(key, F.AE_ID, [AE_ID]))
    assert err.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE and "no challengePassword" in str(err)


def test_identifiers_not_entitled(w: World) -> None:
    other = "//m2m.example.com/id-in/Csomebody-else"
    err = refused(w, lambda key, cp, _e: build_csr(key, F.AE_ID, [AE_ID, other], challenge_password=cp))
    assert err.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE and "not entitled" in str(err) and other in str(err)


def test_other_name_form_refused(w: World) -> None:
    err = refused(w, lambda key, cp, _e: build_csr(key, F.FQDN, ["evil.m2m.example.com"], challenge_password=cp))
    assert err.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE and "other than ae-id" in str(err)


def test_eku_not_allowed(w: World) -> None:
    err = refused(w, lambda key, cp, _e: build_csr(key, F.AE_ID, [AE_ID], challenge_password=cp,
                                                  extended_key_usage=[EKU_FOR[SecurityType.ESDATA_ENCRYPTION]]))
    assert err.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE and "extendedKeyUsage" in str(err)


def _splice_signature(csr_der: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """The CSR's TBS signed by ``key`` (not the key in the CSR): a failed proof of possession."""
    _, content, _ = read_tlv(csr_der)
    _, _, tbs_end = read_tlv(content)
    tbs = content[:tbs_end]
    _, _, alg_end = read_tlv(content, tbs_end)
    sig = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return tlv(0x30, tbs + content[tbs_end:alg_end] + tlv(0x03, b"\x00" + sig))


def test_bad_proof_of_possession(w: World) -> None:
    other = ec.generate_private_key(ec.SECP256R1())

    def hook(key: Any, cp: str, exts: Any) -> Any:
        der = _splice_signature(build_est_csr(key, cp, exts).public_bytes(serialization.Encoding.DER), other)
        return x509.load_der_x509_csr(der)

    err = refused(w, hook)
    assert err.rsc is RSC.BAD_REQUEST and "proof of possession" in str(err)


@pytest.mark.parametrize("kind", ["rsa-1024", "ed448"])
def test_unsupported_key(w: World, kind: str) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024) if kind == "rsa-1024" \
        else ed448.Ed448PrivateKey.generate()

    def hook(_key: Any, cp: str, _exts: Any) -> Any:
        b = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
             .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("https:" + AE_ID)]), True)
             .add_attribute(AttributeOID.CHALLENGE_PASSWORD, cp.encode()))
        return b.sign(weak, None if kind == "ed448" else hashes.SHA256())

    err = refused(w, hook)
    assert err.rsc is RSC.BAD_REQUEST
    assert ("1024 bits" in str(err)) if kind == "rsa-1024" else ("Ed448" in str(err))


def test_expired_enrolment(w: World) -> None:
    def hook(key: Any, cp: str, exts: Any) -> Any:
        w.clock.advance(3601)  # past the Enrolment Expiry (10.7): Ke and the challenge are gone
        return build_est_csr(key, cp, exts)

    err = refused(w, hook)
    assert err.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE and "expired" in str(err)


def test_challenge_is_single_use_and_bound_to_the_enrolee(w: World) -> None:
    with w.mef() as m:
        e, prov = run(lambda: est_enrol(m.host, m.port, w.psk_tls()))
    cp = next(i.params["ChallengePassword"] for i in e.instructions)
    key = ec.generate_private_key(ec.SECP256R1())
    body = base64.encodebytes(build_csr(key, F.AE_ID, [AE_ID], challenge_password=cp)
                              .public_bytes(serialization.Encoding.DER))
    from m2msec.mef.state import SessionPeer

    peer = SessionPeer("enrolee", ENROLEE, "kpm:x")
    resp = w.est.handle("POST", "/.well-known/est/simpleenroll", body, peer)
    assert resp.status == 403 and b"wrong, used or expired" in resp.body
    # a fresh challenge for ENROLEE is refused to another enrolee's session
    pending = w.est.prepare(ENROLEE, e.ke_id, e.expiry)
    assert pending is not None
    with w.state.store.transaction() as tx:
        pending.store(tx)
    body = base64.encodebytes(build_csr(key, F.AE_ID, [CERT_ENROLEE_EST_ID], challenge_password=pending.value)
                              .public_bytes(serialization.Encoding.DER))
    resp = w.est.handle("POST", "/.well-known/est/simpleenroll", body, SessionPeer("enrolee", CERT_ENROLEE, "cert:x"))
    assert resp.status == 403 and b"challengePassword" in resp.body
    assert pending.value not in repr(pending)


def test_target_session_and_protocol_errors(w: World) -> None:
    from m2msec.mef.client import _http
    from m2msec.tls.aio import open_connection

    async def req(tls: Any, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        reader, writer = await open_connection(m.host, m.port, tls)
        try:
            return await _http(reader, writer, method, path, [], body, "mef")
        finally:
            writer.close()

    target = mef_tls_config(psk=PSKCredentials(B_PSK_ID.encode(), B_PSK))
    with w.mef() as m:
        status, hdrs, body = run(lambda: req(target, "GET", "/.well-known/est/csrattrs"))
        assert status == 403 and hdrs["x-m2m-rsc"] == "4103" and b"Enrolment Target" in body
        status, hdrs, _ = run(lambda: req(target, "GET", "/.well-known/est/cacerts"))
        assert status == 200 and hdrs["content-type"] == "application/pkcs7-mime"  # trust anchors for anyone
        status, _, _ = run(lambda: req(w.psk_tls(), "GET", "/.well-known/est/simpleenroll"))
        assert status == 405
        status, _, _ = run(lambda: req(w.psk_tls(), "GET", "/.well-known/est/serverkeygen"))
        assert status == 405  # served since RFC 7030 4.4 support, POST only
        status, _, _ = run(lambda: req(w.psk_tls(), "POST", "/.well-known/est/serverkeygen2"))
        assert status == 404
        status, hdrs, body = run(lambda: req(w.psk_tls(), "POST", "/.well-known/est/simpleenroll", b"%%%"))
        assert status == 400 and b"base64" in body
        status, _, body = run(lambda: req(w.psk_tls(), "POST", "/.well-known/est/simpleenroll",
                                          base64.b64encode(b"\x30\x03\x02\x01\x00")))
        assert status == 400 and b"PKCS#10" in body
        # completion report for a certificate that was never issued
        status, hdrs, _ = run(lambda: req(w.psk_tls(), "POST", "/enrolment/complete",
                                          b'{"InstructionType":"CertificateEnrolment","Status":true,'
                                          b'"CertificateSerial":"abc"}'))
        assert status == 404
        status, _, _ = run(lambda: req(w.psk_tls(), "POST", "/enrolment/complete", b'{"Status":true}'))
        assert status == 400


def test_no_profile_no_instruction(w: World) -> None:
    """An enrolee without an EST profile gets no CertificateEnrolment instruction."""
    w.state.store.delete_record("mef.est.profile", ENROLEE)
    with w.mef() as m:
        e = run(lambda: enrol(m.host, m.port, w.psk_tls(), EnrolmentRequest(certificate_enrolment=True)))
        assert e.instructions == ()
        with pytest.raises(ESTClientError) as ei:
            run(lambda: est_enrol(m.host, m.port, w.psk_tls()))
    assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE


def test_refused_enrolment_leaves_no_challenge(w: World) -> None:
    """The challengePassword is committed with Ke/Kre: a refused Enrolment Exchange leaves none."""
    from m2msec.mef import EnroleeConfig

    cfg = w.state.get_enrolee(ENROLEE)
    w.state.store.put_record("mef.enrolee", ENROLEE, EnroleeConfig(**{**cfg.__dict__, "token_required": True}).to_doc())
    with w.mef() as m:
        with pytest.raises(ESTClientError) as ei:
            run(lambda: est_enrol(m.host, m.port, w.psk_tls()))
        assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE and "Enrolment-Token" in str(ei.value)
        assert w.state.store.list_records(NS_EST_CHALLENGE) == []
        token = w.state.issue_token(ENROLEE)
        _, prov = run(lambda: est_enrol(m.host, m.port, w.psk_tls(),
                                        request=EnrolmentRequest(certificate_enrolment=True, token=token)))
    assert identifiers_of(prov.certificate, F.AE_ID)
