"""OCSP requests, response verification, the DevCA responder and the store (m2msec.pki.ocsp)."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from _pki_support import CSE, NOW, make_ca, new_ec_key, raw_cert
from m2msec.pki import CertificateFlavour, CRLStore, DevCA, PeerCertInfo, verify_peer_certificate
from m2msec.pki.ca import private_key_pem
from m2msec.pki.errors import CertificateVerificationError, VerificationReason
from m2msec.pki.ocsp import (
    OCSPFailure,
    OCSPResponder,
    OCSPResponseError,
    OCSPStatus,
    OCSPStore,
    build_request,
    issue_responder_certificate,
    load_request,
    verify_response,
)

DER = serialization.Encoding.DER


@pytest.fixture()
def fresh_ca() -> DevCA:
    return make_ca("OCSP SP")


@pytest.fixture()
def leaf(fresh_ca: DevCA) -> x509.Certificate:
    return fresh_ca.issue(CertificateFlavour.CSE_ID, [CSE], now=NOW).certificate


def _respond(ca: DevCA, cert: x509.Certificate, *, nonce: bool | bytes = True, now: datetime = NOW,
             validity: timedelta = timedelta(hours=1)) -> tuple[bytes, bytes | None]:
    req, n = build_request(cert, ca.issuing_cert, nonce=nonce)
    return OCSPResponder(ca, clock=lambda: now, validity=validity).respond(req.public_bytes(DER)), n


def _handmade(ca: DevCA, cert: x509.Certificate, *, this_update: datetime = NOW,
              next_update: datetime | None = NOW + timedelta(hours=1), signer: tuple[x509.Certificate, object] | None = None,
              responder: x509.Certificate | None = None, algorithm: hashes.HashAlgorithm | None = None,
              status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD, nonce: bytes | None = None,
              include: list[x509.Certificate] | None = None, issuer: x509.Certificate | None = None,
              serial_cert: x509.Certificate | None = None) -> bytes:
    """A response built directly with cryptography (bypasses every OCSPResponder rule)."""
    iss_cert, iss_key = ca._signer(ca.issuing_signer)  # noqa: SLF001
    sign_cert, sign_key = signer or (iss_cert, iss_key)
    b = ocsp.OCSPResponseBuilder().add_response(
        cert=serial_cert or cert, issuer=issuer or iss_cert, algorithm=hashes.SHA1(), cert_status=status,
        this_update=this_update, next_update=next_update,
        revocation_time=NOW - timedelta(hours=1) if status is ocsp.OCSPCertStatus.REVOKED else None,
        revocation_reason=None)
    b = b.responder_id(ocsp.OCSPResponderEncoding.NAME, responder or sign_cert)
    if include:
        b = b.certificates(include)
    if nonce is not None:
        b = b.add_extension(x509.OCSPNonce(nonce), critical=False)
    return b.sign(sign_key, algorithm or hashes.SHA256()).public_bytes(DER)  # type: ignore[arg-type]


# ------------------------------------------------------------------ requests


def test_request_carries_certid_and_nonce(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    req, nonce = build_request(leaf, fresh_ca.issuing_cert)
    assert nonce is not None and len(nonce) == 32
    parsed = load_request(req.public_bytes(DER))
    assert parsed.serial_number == leaf.serial_number
    assert isinstance(parsed.hash_algorithm, hashes.SHA1)
    assert parsed.issuer_key_hash == x509.SubjectKeyIdentifier.from_public_key(
        fresh_ca.issuing_cert.public_key()).digest  # type: ignore[arg-type]
    assert parsed.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    req2, n2 = build_request(leaf, fresh_ca.issuing_cert, nonce=False)
    assert n2 is None and len(list(req2.extensions)) == 0
    with pytest.raises(ValueError):
        build_request(leaf, fresh_ca.issuing_cert, nonce=b"x" * 33)


# ------------------------------------------------------------------ responder + verification, positive


def test_good_then_revoked(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    der, n = _respond(fresh_ca, leaf)
    res = verify_response(der, leaf, fresh_ca.issuing_cert, now=NOW, nonce=n)
    assert res.status is OCSPStatus.GOOD and res.next_update == NOW + timedelta(hours=1) and not res.delegated
    fresh_ca.revoke(leaf, now=NOW - timedelta(minutes=1), reason=x509.ReasonFlags.key_compromise)
    der, n = _respond(fresh_ca, leaf)
    res = verify_response(der, leaf, fresh_ca.issuing_cert, now=NOW, nonce=n)
    assert res.status is OCSPStatus.REVOKED
    assert res.revocation_reason is x509.ReasonFlags.key_compromise
    assert res.revocation_time == (NOW - timedelta(minutes=1)).replace(microsecond=0)


def test_root_signed_intermediate_and_unknown(fresh_ca: DevCA) -> None:
    inter, root = fresh_ca.intermediate_cert, fresh_ca.root_cert
    assert inter is not None
    req, n = build_request(inter, root)
    r = OCSPResponder(fresh_ca, clock=lambda: NOW)
    assert verify_response(r.respond(req.public_bytes(DER)), inter, root, now=NOW, nonce=n).status is OCSPStatus.GOOD
    req, n = build_request(root, root)  # the root asked of itself
    assert verify_response(r.respond(req.public_bytes(DER)), root, root, now=NOW, nonce=n).status is OCSPStatus.UNKNOWN


def test_is_issued_hook_gives_unknown(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    req, n = build_request(leaf, fresh_ca.issuing_cert)
    r = OCSPResponder(fresh_ca, clock=lambda: NOW, is_issued=lambda signer, serial: False)
    res = verify_response(r.respond(req.public_bytes(DER)), leaf, fresh_ca.issuing_cert, now=NOW, nonce=n)
    assert res.status is OCSPStatus.UNKNOWN


def test_sha256_certid_accepted(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    req, n = build_request(leaf, fresh_ca.issuing_cert, algorithm=hashes.SHA256())
    der = OCSPResponder(fresh_ca, clock=lambda: NOW).respond(req.public_bytes(DER))
    assert verify_response(der, leaf, fresh_ca.issuing_cert, now=NOW, nonce=n).status is OCSPStatus.GOOD


def test_delegated_responder(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    rc, rk = issue_responder_certificate(fresh_ca, now=NOW)
    req, n = build_request(leaf, fresh_ca.issuing_cert)
    r = OCSPResponder(fresh_ca, clock=lambda: NOW).with_delegated_signer("intermediate", rc, rk)
    res = verify_response(r.respond(req.public_bytes(DER)), leaf, fresh_ca.issuing_cert, now=NOW, nonce=n)
    assert res.status is OCSPStatus.GOOD and res.delegated


def test_no_next_update_within_max_age(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    der = _handmade(fresh_ca, leaf, next_update=None)
    assert verify_response(der, leaf, fresh_ca.issuing_cert, now=NOW + timedelta(minutes=59)).status is OCSPStatus.GOOD
    with pytest.raises(OCSPResponseError) as ei:
        verify_response(der, leaf, fresh_ca.issuing_cert, now=NOW + timedelta(minutes=61))
    assert ei.value.failure is OCSPFailure.STALE


# ------------------------------------------------------------------ responder, refusals


def test_responder_malformed_and_unauthorized(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    r = OCSPResponder(fresh_ca, clock=lambda: NOW)
    for garbage in (b"", b"garbage", b"\x30\x03\x02\x01\x01"):
        resp = ocsp.load_der_ocsp_response(r.respond(garbage))
        assert resp.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    good, _ = build_request(leaf, fresh_ca.issuing_cert)
    truncated = good.public_bytes(DER)[:-3]
    assert ocsp.load_der_ocsp_response(r.respond(truncated)).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    other = make_ca("Foreign SP", intermediate=False)
    foreign = other.issue(CertificateFlavour.CSE_ID, [CSE], now=NOW).certificate
    req, _ = build_request(foreign, other.issuing_cert)
    resp = ocsp.load_der_ocsp_response(r.respond(req.public_bytes(DER)))
    assert resp.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED


# ------------------------------------------------------------------ verification, refusals


def _refused(der: bytes, cert: x509.Certificate, issuer: x509.Certificate, failure: OCSPFailure, *,
             now: datetime = NOW, nonce: bytes | None = None) -> None:
    with pytest.raises(OCSPResponseError) as ei:
        verify_response(der, cert, issuer, now=now, nonce=nonce)
    assert ei.value.failure is failure, ei.value


def _impostor(ca: DevCA) -> tuple[x509.Certificate, object]:
    """A self-made certificate with the issuing CA's subject and another key."""
    k = new_ec_key()
    c = (x509.CertificateBuilder().subject_name(ca.issuing_cert.subject).issuer_name(ca.issuing_cert.subject)
         .public_key(k.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=1)).sign(k, hashes.SHA256()))
    return c, k


def test_refuses_foreign_signer(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    other = make_ca("Evil OCSP", intermediate=False)
    o_cert, o_key = other._signer("root")  # noqa: SLF001
    # responderID names the other CA: not the issuer, no delegated certificate.
    _refused(_handmade(fresh_ca, leaf, signer=(o_cert, o_key)), leaf, fresh_ca.issuing_cert,
             OCSPFailure.UNAUTHORIZED_SIGNER)
    # responderID claims the issuer (by name), signature by another key.
    _refused(_handmade(fresh_ca, leaf, signer=_impostor(fresh_ca)), leaf, fresh_ca.issuing_cert,
             OCSPFailure.BAD_SIGNATURE)


def test_refuses_delegated_without_eku(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    rc, rk = issue_responder_certificate(fresh_ca, now=NOW, extended_key_usage=(ExtendedKeyUsageOID.SERVER_AUTH,))
    _refused(_handmade(fresh_ca, leaf, signer=(rc, rk), include=[rc]), leaf, fresh_ca.issuing_cert,
             OCSPFailure.UNAUTHORIZED_SIGNER)
    rc2, rk2 = issue_responder_certificate(fresh_ca, now=NOW, extended_key_usage=())
    _refused(_handmade(fresh_ca, leaf, signer=(rc2, rk2), include=[rc2]), leaf, fresh_ca.issuing_cert,
             OCSPFailure.UNAUTHORIZED_SIGNER)


def test_refuses_delegated_of_other_issuer(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    # issued by the root, not by the intermediate that issued the leaf
    rc, rk = issue_responder_certificate(fresh_ca, now=NOW, signer="root")
    _refused(_handmade(fresh_ca, leaf, signer=(rc, rk), include=[rc]), leaf, fresh_ca.issuing_cert,
             OCSPFailure.UNAUTHORIZED_SIGNER)
    # a delegated certificate that has expired
    rc3, rk3 = issue_responder_certificate(fresh_ca, now=NOW - timedelta(days=40))
    _refused(_handmade(fresh_ca, leaf, signer=(rc3, rk3), include=[rc3]), leaf, fresh_ca.issuing_cert,
             OCSPFailure.UNAUTHORIZED_SIGNER)


def test_refuses_forged_delegated_certificate(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    """A responder certificate with the issuer's name, OCSPSigning EKU, but self-made."""
    k = new_ec_key()
    fake_issuer_key = new_ec_key()
    forged = raw_cert(subject_cn="forged responder", issuer=fresh_ca.issuing_cert, issuer_key=fake_issuer_key,
                      public_key=k.public_key(),
                      extensions=[(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), False)])
    _refused(_handmade(fresh_ca, leaf, signer=(forged, k), include=[forged]), leaf, fresh_ca.issuing_cert,
             OCSPFailure.UNAUTHORIZED_SIGNER)


def test_refuses_wrong_certid(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    other_leaf = fresh_ca.issue(CertificateFlavour.CSE_ID, [CSE], now=NOW).certificate
    _refused(_handmade(fresh_ca, leaf, serial_cert=other_leaf), leaf, fresh_ca.issuing_cert,
             OCSPFailure.CERT_ID_MISMATCH)
    # right serial, but the CertID names another issuer (the root) while signed by the intermediate
    _refused(_handmade(fresh_ca, leaf, issuer=fresh_ca.root_cert), leaf, fresh_ca.issuing_cert,
             OCSPFailure.CERT_ID_MISMATCH)


def test_refuses_times(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    der = _handmade(fresh_ca, leaf)  # NOW .. NOW + 1 h
    _refused(der, leaf, fresh_ca.issuing_cert, OCSPFailure.STALE, now=NOW + timedelta(hours=1))
    assert verify_response(der, leaf, fresh_ca.issuing_cert, now=NOW + timedelta(minutes=59)).status is OCSPStatus.GOOD
    _refused(der, leaf, fresh_ca.issuing_cert, OCSPFailure.NOT_YET_VALID, now=NOW - timedelta(minutes=6))
    assert verify_response(der, leaf, fresh_ca.issuing_cert, now=NOW - timedelta(minutes=4)).status is OCSPStatus.GOOD


def test_refuses_nonce_problems(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    _refused(_handmade(fresh_ca, leaf), leaf, fresh_ca.issuing_cert, OCSPFailure.NONCE_MISSING, nonce=b"n" * 16)
    _refused(_handmade(fresh_ca, leaf, nonce=b"m" * 16), leaf, fresh_ca.issuing_cert, OCSPFailure.NONCE_MISMATCH,
             nonce=b"n" * 16)
    # an unrequested nonce is ignored; an echoed one passes
    assert verify_response(_handmade(fresh_ca, leaf, nonce=b"n" * 16), leaf, fresh_ca.issuing_cert, now=NOW,
                           nonce=b"n" * 16).status is OCSPStatus.GOOD
    assert verify_response(_handmade(fresh_ca, leaf, nonce=b"m"), leaf, fresh_ca.issuing_cert,
                           now=NOW).status is OCSPStatus.GOOD


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    ln = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + ln + content


def _items(der: bytes) -> list[bytes]:
    """The TLVs (whole) inside the content ``der``."""
    out, i = [], 0
    while i < len(der):
        n, j = der[i + 1], i + 2
        if n & 0x80:
            k = n & 0x7F
            n, j = int.from_bytes(der[j:j + k], "big"), j + k
        out.append(der[i:j + n])
        i = j + n
    return out


def _content(tlv: bytes) -> bytes:
    n, j = tlv[1], 2
    if n & 0x80:
        j += n & 0x7F
    return tlv[j:]


ECDSA_SHA1 = bytes.fromhex("300906072a8648ce3d0401")


def _resign_sha1(der: bytes, key: object) -> bytes:
    """Re-sign a response's tbsResponseData with ECDSA-SHA1 (cryptography refuses to build one)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    status, rb = _items(_content(der))
    rb_seq = _content(rb)  # [0] EXPLICIT ResponseBytes
    oid, octets = _items(_content(rb_seq))
    basic = _content(octets)
    tbs, _alg, _sig, *rest = _items(_content(basic))
    sig = key.sign(tbs, ec.ECDSA(hashes.SHA1()))  # type: ignore[attr-defined]
    new_basic = _tlv(0x30, tbs + ECDSA_SHA1 + _tlv(0x03, b"\x00" + sig) + b"".join(rest))
    return _tlv(0x30, status + _tlv(0xA0, _tlv(0x30, oid + _tlv(0x04, new_basic))))


def test_refuses_sha1_signature(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    der = _handmade(fresh_ca, leaf)
    _, key = fresh_ca._signer("intermediate")  # noqa: SLF001
    sha1 = _resign_sha1(der, key)
    assert ocsp.load_der_ocsp_response(sha1).signature_algorithm_oid.dotted_string == "1.2.840.10045.4.1"
    _refused(sha1, leaf, fresh_ca.issuing_cert, OCSPFailure.UNSUPPORTED_ALGORITHM)


def test_refuses_unsuccessful_status(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    for st in (ocsp.OCSPResponseStatus.TRY_LATER, ocsp.OCSPResponseStatus.UNAUTHORIZED,
               ocsp.OCSPResponseStatus.INTERNAL_ERROR, ocsp.OCSPResponseStatus.MALFORMED_REQUEST):
        der = ocsp.OCSPResponseBuilder.build_unsuccessful(st).public_bytes(DER)
        _refused(der, leaf, fresh_ca.issuing_cert, OCSPFailure.UNSUCCESSFUL)


def test_refuses_garbled_der(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    der, n = _respond(fresh_ca, leaf)
    for bad in (b"", b"garbage", der[:-10], der[: len(der) // 2]):
        _refused(bad, leaf, fresh_ca.issuing_cert, OCSPFailure.MALFORMED, nonce=n)
    flipped = bytearray(der)
    flipped[-5] ^= 0x01  # inside the signature
    with pytest.raises(OCSPResponseError) as ei:
        verify_response(bytes(flipped), leaf, fresh_ca.issuing_cert, now=NOW, nonce=n)
    assert ei.value.failure in (OCSPFailure.BAD_SIGNATURE, OCSPFailure.MALFORMED)


# ------------------------------------------------------------------ store + path verification


def _verify(ca: DevCA, leaf: x509.Certificate, store: OCSPStore | None, *, policy: str = "require",
            crls: list[x509.CertificateRevocationList] | None = None, now: datetime = NOW) -> object:
    return verify_peer_certificate([leaf, *ca.chain], expected=PeerCertInfo(CertificateFlavour.CSE_ID, CSE),
                                   trust_anchors=[ca.root_cert], now=now, crls=crls, revocation=policy, ocsp=store)


def test_path_verification_uses_ocsp(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    inter = fresh_ca.intermediate_cert
    assert inter is not None
    store = OCSPStore()
    # require: no evidence at all -> unknown
    with pytest.raises(CertificateVerificationError) as ei:
        _verify(fresh_ca, leaf, store)
    assert ei.value.reason_code is VerificationReason.REVOCATION_UNKNOWN
    # good responses for the leaf and the intermediate satisfy require
    store.add(_respond(fresh_ca, leaf, nonce=False)[0])
    req, _ = build_request(inter, fresh_ca.root_cert, nonce=False)
    store.add(OCSPResponder(fresh_ca, clock=lambda: NOW).respond(req.public_bytes(DER)))
    vp = _verify(fresh_ca, leaf, store)
    assert [s.value for s in vp.revocation] == ["good", "good"]  # type: ignore[attr-defined]
    # once stale they no longer do
    with pytest.raises(CertificateVerificationError) as ei:
        _verify(fresh_ca, leaf, store, now=NOW + timedelta(hours=2))
    assert ei.value.reason_code is VerificationReason.REVOCATION_UNKNOWN
    # a REVOKED response wins over a current good CRL, even once stale
    crl = fresh_ca.issue_crl(now=NOW)
    root_crl = fresh_ca.issue_crl(now=NOW, signer="root")
    assert _verify(fresh_ca, leaf, None, crls=[crl, root_crl])
    fresh_ca.revoke(leaf, now=NOW)
    store.add(_respond(fresh_ca, leaf, nonce=False, now=NOW + timedelta(seconds=1))[0])
    for now in (NOW + timedelta(seconds=2), NOW + timedelta(days=2)):
        with pytest.raises(CertificateVerificationError) as ei:
            _verify(fresh_ca, leaf, store, crls=[crl, root_crl], policy="if-available", now=now)
        assert ei.value.reason_code is VerificationReason.REVOKED
        assert "OCSP" in ei.value.detail


def test_crl_revocation_wins_over_ocsp_good(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    store = OCSPStore([_respond(fresh_ca, leaf, nonce=False)[0]])
    fresh_ca.revoke(leaf, now=NOW)
    crl = fresh_ca.issue_crl(now=NOW)
    with pytest.raises(CertificateVerificationError) as ei:
        _verify(fresh_ca, leaf, store, crls=[crl], policy="if-available")
    assert ei.value.reason_code is VerificationReason.REVOKED


def test_store_ignores_foreign_or_invalid_responses(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    other = make_ca("Other OCSP", intermediate=False)
    o_cert, o_key = other._signer("root")  # noqa: SLF001
    store = OCSPStore([_handmade(fresh_ca, leaf, signer=_impostor(fresh_ca)),
                       _handmade(fresh_ca, leaf, signer=(o_cert, o_key))])
    with pytest.raises(CertificateVerificationError) as ei:
        _verify(fresh_ca, leaf, store)
    assert ei.value.reason_code is VerificationReason.REVOCATION_UNKNOWN
    assert "BAD_SIGNATURE" in ei.value.detail
    # a badly signed REVOKED response proves nothing
    store2 = OCSPStore([_handmade(fresh_ca, leaf, signer=_impostor(fresh_ca), status=ocsp.OCSPCertStatus.REVOKED)])
    assert _verify(fresh_ca, leaf, store2, policy="if-available")
    with pytest.raises(OCSPResponseError):
        OCSPStore().add(ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER).public_bytes(DER))
    with pytest.raises(OCSPResponseError):
        OCSPStore().add(b"junk")


def test_store_keeps_latest_and_counts_generation(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    store = OCSPStore(per_serial=2)
    g = store.generation
    ders = [_handmade(fresh_ca, leaf, this_update=NOW + timedelta(minutes=i)) for i in range(3)]
    assert store.add(ders[0]) and store.add(ders[2]) and store.add(ders[1])
    assert not store.add(ders[2])
    assert store.generation == g + 3 and len(store) == 2
    assert [r.this_update_utc for r in store.for_serial(leaf.serial_number)] == [
        NOW + timedelta(minutes=2), NOW + timedelta(minutes=1)]


def test_crl_behaviour_unchanged_without_ocsp(fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    crl = fresh_ca.issue_crl(now=NOW)
    with pytest.raises(CertificateVerificationError) as ei:  # root CRL missing for the intermediate
        _verify(fresh_ca, leaf, None, crls=[crl])
    assert ei.value.reason_code is VerificationReason.REVOCATION_UNKNOWN
    assert _verify(fresh_ca, leaf, None, crls=CRLStore([crl, fresh_ca.issue_crl(now=NOW, signer="root")]))


# ------------------------------------------------------------------ independent check with openssl


OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl binary not installed")


def _pem(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


def _index_line(cert: x509.Certificate, revoked_at: datetime | None = None) -> str:
    exp = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
    dn = "/" + "/".join(a.rfc4514_string() for a in cert.subject)
    serial = format(cert.serial_number, "X")
    if len(serial) % 2:
        serial = "0" + serial
    if revoked_at is None:
        return f"V\t{exp}\t\t{serial}\tunknown\t{dn}\n"
    return f"R\t{exp}\t{revoked_at.strftime('%y%m%d%H%M%SZ')},keyCompromise\t{serial}\tunknown\t{dn}\n"


@needs_openssl
@pytest.mark.parametrize("delegated", [False, True])
def test_openssl_responses_are_accepted(tmp_path: Path, fresh_ca: DevCA, delegated: bool) -> None:
    now = datetime.now(UTC)
    good = fresh_ca.issue(CertificateFlavour.CSE_ID, [CSE], now=now).certificate
    bad = fresh_ca.issue(CertificateFlavour.CSE_ID, [CSE], now=now).certificate
    issuer = fresh_ca.issuing_cert
    (tmp_path / "index.txt").write_text(_index_line(good) + _index_line(bad, now - timedelta(minutes=1)))
    (tmp_path / "ca.pem").write_bytes(_pem(issuer))
    if delegated:
        rc, rk = issue_responder_certificate(fresh_ca, now=now)
    else:
        rc, rk = fresh_ca._signer("intermediate")  # noqa: SLF001
    (tmp_path / "rs.pem").write_bytes(_pem(rc))
    (tmp_path / "rk.pem").write_bytes(private_key_pem(rk))  # type: ignore[arg-type]
    for cert, expected in ((good, OCSPStatus.GOOD), (bad, OCSPStatus.REVOKED)):
        (tmp_path / "leaf.pem").write_bytes(_pem(cert))
        req, nonce = build_request(cert, issuer)
        (tmp_path / "req.der").write_bytes(req.public_bytes(DER))
        subprocess.run([OPENSSL, "ocsp", "-index", "index.txt", "-CA", "ca.pem", "-rsigner", "rs.pem",
                        "-rkey", "rk.pem", "-reqin", "req.der", "-respout", "resp.der", "-nmin", "30"],
                       cwd=tmp_path, check=True, capture_output=True, timeout=30)
        res = verify_response((tmp_path / "resp.der").read_bytes(), cert, issuer, now=now, nonce=nonce)
        assert res.status is expected and res.delegated is delegated
        if expected is OCSPStatus.REVOKED:
            assert res.revocation_reason is x509.ReasonFlags.key_compromise
        # without -nmin/-ndays openssl omits nextUpdate: the max age applies
        subprocess.run([OPENSSL, "ocsp", "-index", "index.txt", "-CA", "ca.pem", "-rsigner", "rs.pem",
                        "-rkey", "rk.pem", "-reqin", "req.der", "-respout", "resp2.der"],
                       cwd=tmp_path, check=True, capture_output=True, timeout=30)
        res2 = verify_response((tmp_path / "resp2.der").read_bytes(), cert, issuer, now=now, nonce=nonce)
        assert res2.next_update is None and res2.status is expected
        with pytest.raises(OCSPResponseError) as ei:
            verify_response((tmp_path / "resp2.der").read_bytes(), cert, issuer, now=now + timedelta(hours=2))
        assert ei.value.failure is OCSPFailure.STALE


@needs_openssl
def test_openssl_accepts_our_responses(tmp_path: Path, fresh_ca: DevCA, leaf: x509.Certificate) -> None:
    now = datetime.now(UTC)
    issuer = fresh_ca.issuing_cert
    (tmp_path / "ca.pem").write_bytes(_pem(issuer))
    (tmp_path / "chain.pem").write_bytes(_pem(issuer) + _pem(fresh_ca.root_cert))
    (tmp_path / "leaf.pem").write_bytes(_pem(leaf))
    r = OCSPResponder(fresh_ca, clock=lambda: now)
    req, _ = build_request(leaf, issuer)
    (tmp_path / "resp.der").write_bytes(r.respond(req.public_bytes(DER)))
    out = subprocess.run([OPENSSL, "ocsp", "-respin", "resp.der", "-issuer", "ca.pem", "-cert", "leaf.pem",
                          "-CAfile", "chain.pem", "-no_nonce"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "Response verify OK" in out.stderr + out.stdout and "leaf.pem: good" in out.stdout
    fresh_ca.revoke(leaf, now=now)
    (tmp_path / "resp.der").write_bytes(r.respond(req.public_bytes(DER)))
    out = subprocess.run([OPENSSL, "ocsp", "-respin", "resp.der", "-issuer", "ca.pem", "-cert", "leaf.pem",
                          "-CAfile", "chain.pem", "-no_nonce"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert "leaf.pem: revoked" in out.stdout, out.stdout + out.stderr


def test_dev_ca_ocsp_url_in_leaves() -> None:
    from cryptography.x509.oid import AuthorityInformationAccessOID

    plain = make_ca("No AIA SP", intermediate=False)
    c = plain.issue(CertificateFlavour.CSE_ID, [CSE], now=NOW).certificate
    with pytest.raises(x509.ExtensionNotFound):
        c.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    ca = DevCA.create("AIA SP", now=NOW, permit_dns=["m2m.example.com"], ocsp_url="http://ocsp.example.com/")
    ext = ca.issue(CertificateFlavour.CSE_ID, [CSE], now=NOW).certificate.extensions.get_extension_for_class(
        x509.AuthorityInformationAccess)
    assert not ext.critical
    assert [(d.access_method, d.access_location.value) for d in ext.value] == [
        (AuthorityInformationAccessOID.OCSP, "http://ocsp.example.com/")]
