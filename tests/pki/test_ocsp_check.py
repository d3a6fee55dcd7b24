"""m2msec.pki.ocsp_check (TS-0003 8.1.2.2): which certificates of a verified path need a query,
the decision after it (REVOKED wins, ``require`` needs GOOD), the responder URL (configured or
authorityInfoAccess), single-flight queries against the in-process responder, the settings
parser and its refusals, OCSPStore.prune."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from _pki_support import AE, NOW, SP
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from m2msec.pki import CertificateFlavour as F
from m2msec.pki import CertificateVerificationError, DevCA, OCSPResponder, OCSPStore, PeerCertInfo
from m2msec.pki import VerificationReason, verify_peer_certificate
from m2msec.pki.crl import RevocationStatus
from m2msec.pki.ocsp import build_request
from m2msec.pki.ocsp_check import (
    PeerOCSPChecker,
    ocsp_urls,
    parse_peer_ocsp_settings,
    verified_peer_of,
)
from m2msec.pki.ocsp_http import OCSPHTTPServer


def clock() -> object:
    return NOW


@pytest.fixture()
def fresh_ca() -> DevCA:
    return DevCA.create("OCSP Check SP", now=NOW - timedelta(days=1), permit_uri=[SP], intermediate=True)


def verified(ca: DevCA, issued: object, ocsp: OCSPStore | None = None) -> object:
    return verify_peer_certificate([issued.certificate, *issued.chain], expected=PeerCertInfo(F.AE_ID, AE),  # type: ignore[attr-defined]
                                   trust_anchors=[ca.trust_anchor], now=NOW, ocsp=ocsp)


def test_urls_from_aia(fresh_ca: DevCA) -> None:
    fresh_ca.ocsp_url = "http://ocsp.example.com:8081/"
    leaf = fresh_ca.issue(F.AE_ID, [AE], now=NOW).certificate
    assert ocsp_urls(leaf) == ["http://ocsp.example.com:8081/"]
    fresh_ca.ocsp_url = None
    assert ocsp_urls(fresh_ca.issue(F.AE_ID, [AE], now=NOW).certificate) == []
    fresh_ca.ocsp_url = "ldap://ocsp.example.com/"
    assert ocsp_urls(fresh_ca.issue(F.AE_ID, [AE], now=NOW).certificate) == []  # only http/https


def test_undetermined_and_verified_peer_of(fresh_ca: DevCA) -> None:
    issued = fresh_ca.issue(F.AE_ID, [AE], now=NOW)
    vp = verified(fresh_ca, issued)
    assert verified_peer_of(vp) is vp and verified_peer_of(("cid", vp)) is vp and verified_peer_of("x") is None
    todo = PeerOCSPChecker.undetermined(vp)  # type: ignore[arg-type]
    assert [c.serial_number for c, _ in todo] == [issued.certificate.serial_number, issued.chain[0].serial_number]
    assert todo[0][1] == issued.chain[0] and todo[1][1] == fresh_ca.trust_anchor
    # a held current GOOD answer for the leaf: only the intermediate remains
    store = OCSPStore()
    req, _ = build_request(issued.certificate, issued.chain[0], nonce=False)
    store.add(OCSPResponder(fresh_ca, clock=clock).respond(req.public_bytes(Encoding.DER)))  # type: ignore[arg-type]
    vp2 = verified(fresh_ca, issued, store)
    assert vp2.revocation[0] is RevocationStatus.GOOD  # type: ignore[attr-defined]
    assert len(PeerOCSPChecker.undetermined(vp2)) == 1  # type: ignore[arg-type]
    checker = PeerOCSPChecker(clock=clock, url="http://127.0.0.1:1/", store=store)  # type: ignore[arg-type]
    waiting = checker.status_check(vp2)
    assert waiting is not None
    waiting.close()  # type: ignore[attr-defined] - a coroutine, not run here
    assert checker.status_check("psk-peer") is None


@pytest.mark.parametrize("kw, needle", [
    ({"policy": "off"}, "not off"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": 9.5}, "timeout"),
    ({"url": "ftp://x/"}, "not an http(s) OCSP URL"),
    ({"url": "http:///nohost"}, "not an http(s) OCSP URL"),
    ({"max_serials": 0}, "max_serials"),
])
def test_checker_refuses_bad_arguments(kw: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError) as ei:
        PeerOCSPChecker(clock=clock, **kw)  # type: ignore[arg-type]
    assert needle in str(ei.value)


def test_check_against_the_responder(fresh_ca: DevCA) -> None:
    count = [0]
    responder = OCSPResponder(fresh_ca, clock=clock)  # type: ignore[arg-type]

    def respond(der: bytes) -> bytes:
        count[0] += 1
        return responder.respond(der)

    good = fresh_ca.issue(F.AE_ID, [AE], now=NOW)
    bad = fresh_ca.issue(F.AE_ID, [AE], now=NOW)
    fresh_ca.revoke(bad.certificate, now=NOW, reason=x509.ReasonFlags.key_compromise)

    async def go() -> None:
        srv = OCSPHTTPServer(respond)
        await srv.start()
        try:
            checker = PeerOCSPChecker(clock=clock, policy="require", url=srv.url, timeout=2)  # type: ignore[arg-type]
            res = await asyncio.gather(*(checker.check(verified(fresh_ca, good)) for _ in range(4)))  # type: ignore[arg-type]
            assert all(r.revocation == (RevocationStatus.GOOD, RevocationStatus.GOOD) for r in res)
            assert count[0] == 2 and checker.queries == 2  # four checks, one query per certificate
            with pytest.raises(CertificateVerificationError) as ei:
                await checker.check(verified(fresh_ca, bad))  # type: ignore[arg-type]
            assert ei.value.reason_code is VerificationReason.REVOKED
            assert ei.value.tls_alert == "certificate_revoked"  # type: ignore[attr-defined]
            assert "keyCompromise" in str(ei.value)
        finally:
            await srv.close()
        # responder gone: if-available accepts (status stays undetermined), require refuses
        lax = PeerOCSPChecker(clock=clock, policy="if-available", url=srv.url, timeout=1)  # type: ignore[arg-type]
        vp = await lax.check(verified(fresh_ca, good))  # type: ignore[arg-type]
        assert vp.revocation == (RevocationStatus.UNDETERMINED, RevocationStatus.UNDETERMINED)
        strict = PeerOCSPChecker(clock=clock, policy="require", timeout=1)  # type: ignore[arg-type]
        with pytest.raises(CertificateVerificationError) as ei:
            await strict.check(verified(fresh_ca, good))  # type: ignore[arg-type]
        assert ei.value.reason_code is VerificationReason.REVOCATION_UNKNOWN
        assert ei.value.tls_alert == "certificate_unknown"  # type: ignore[attr-defined]
        assert "names no OCSP responder" in str(ei.value) and strict.queries == 0  # no AIA, no URL: no query

    asyncio.run(go())


def test_prune_keeps_current_and_revoked(fresh_ca: DevCA) -> None:
    a = fresh_ca.issue(F.AE_ID, [AE], now=NOW)
    b = fresh_ca.issue(F.AE_ID, [AE], now=NOW)
    fresh_ca.revoke(b.certificate, now=NOW)
    store = OCSPStore()
    for i in (a, b):
        req, _ = build_request(i.certificate, i.chain[0], nonce=False)
        store.add(OCSPResponder(fresh_ca, clock=clock).respond(req.public_bytes(Encoding.DER)))  # type: ignore[arg-type]
    assert store.prune(NOW) == 0 and len(store) == 2
    assert store.prune(NOW + timedelta(hours=2)) == 1  # a's GOOD expired; b's REVOKED stays evidence
    assert store.serial_count() == 1 and store.for_serial(b.certificate.serial_number)


KEYS = ("client_ocsp", "client_ocsp_url", "client_ocsp_https_ca", "client_ocsp_timeout_s")


def test_settings_parser(tmp_path: Path) -> None:
    def resolve(f: str) -> str:
        return str(tmp_path / f)

    assert parse_peer_ocsp_settings({}, KEYS, revocation="off", resolve=resolve) is None
    assert parse_peer_ocsp_settings({"client_ocsp": False}, KEYS, revocation="off", resolve=resolve) is None
    st = parse_peer_ocsp_settings({"client_ocsp": True, "client_ocsp_timeout_s": 2}, KEYS,
                                  revocation="require", resolve=resolve)
    assert st is not None and st.url is None and st.timeout == 2.0 and st.https_ca is None
    for bad, exc in [({"client_ocsp": "yes"}, TypeError), ({"client_ocsp_timeout_s": 2}, ValueError),
                     ({"client_ocsp": True, "client_ocsp_timeout_s": True}, ValueError),
                     ({"client_ocsp": True, "client_ocsp_https_ca": "none.pem"}, ValueError)]:
        with pytest.raises(exc):
            parse_peer_ocsp_settings(bad, KEYS, revocation="if-available", resolve=resolve)


def test_an_unverified_certificate_peer_is_refused_under_require_only() -> None:
    """No VerifiedPeer from the hook (a certificate handshake it did not verify): no status can
    be known, so `require` refuses (certificate_unknown) and `if-available` lets it pass."""
    def clock() -> object:
        return NOW

    strict = PeerOCSPChecker(clock=clock, policy="require", url="http://127.0.0.1:1/")  # type: ignore[arg-type]
    with pytest.raises(CertificateVerificationError) as ei:
        strict.status_check(None)
    assert ei.value.reason_code is VerificationReason.REVOCATION_UNKNOWN
    assert ei.value.tls_alert == "certificate_unknown"  # type: ignore[attr-defined]
    assert PeerOCSPChecker(clock=clock, url="http://127.0.0.1:1/").status_check(None) is None  # type: ignore[arg-type]
