"""m2msec.pki.session_status (TS-0003 8.1.2.2 for established sessions): a session's validated path
is checked once on its first request and again only after the CRL or OCSP store changed; a CRL
entry or a REVOKED answer revokes it for good; a stale, unusable or removed CRL does not; PSK
sessions (no VerifiedPeer), pinned certificates and servers without status sources get no
SessionStatus.  And the checker's failure memory (PeerOCSPChecker.failure_cache) in process."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import timedelta

import pytest
from _pki_support import AE, NOW, SP
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from m2msec.pki import CertificateFlavour as F
from m2msec.pki import (
    CRLStore,
    DevCA,
    OCSPResponder,
    OCSPStore,
    PeerCertInfo,
    verify_peer_certificate,
)
from m2msec.pki.ocsp import build_request
from m2msec.pki.ocsp_check import PeerOCSPChecker
from m2msec.pki.session_status import SessionStatusGuard


def clock() -> object:
    return NOW


@pytest.fixture()
def ca() -> DevCA:
    return DevCA.create("Session SP", now=NOW - timedelta(days=1), permit_uri=[SP], intermediate=True)


def _verified(ca: DevCA, issued: object, crls: CRLStore | None = None) -> object:
    return verify_peer_certificate([issued.certificate, *issued.chain], expected=PeerCertInfo(F.AE_ID, AE),  # type: ignore[attr-defined]
                                   trust_anchors=[ca.trust_anchor], now=NOW, crls=crls)


def _crls(ca: DevCA) -> list[x509.CertificateRevocationList]:
    return [ca.issue_crl(now=NOW), ca.issue_crl(now=NOW, signer="root")]


def test_no_status_for_psk_pinned_or_without_sources(ca: DevCA) -> None:
    vp = _verified(ca, ca.issue(F.AE_ID, [AE], now=NOW))
    guard = SessionStatusGuard(crls=CRLStore(), ocsp=None, clock=clock)  # type: ignore[arg-type]
    assert guard.session(None) is None  # a PSK session
    assert guard.session(replace(vp, trust_anchor=None)) is None  # type: ignore[type-var]
    assert SessionStatusGuard(crls=None, ocsp=None, clock=clock).session(vp) is None  # type: ignore[arg-type]
    assert guard.session(vp) is not None  # type: ignore[arg-type]


def test_checked_once_then_only_after_a_change(ca: DevCA) -> None:
    issued, other = ca.issue(F.AE_ID, [AE], now=NOW), ca.issue(F.AE_ID, [AE], now=NOW)
    store = CRLStore(_crls(ca))
    guard = SessionStatusGuard(crls=store, ocsp=OCSPStore(), clock=clock)  # type: ignore[arg-type]
    st = guard.session(_verified(ca, issued, store))  # type: ignore[arg-type]
    st_other = guard.session(_verified(ca, other, store))  # type: ignore[arg-type]
    assert st is not None and st_other is not None
    assert st.revoked() is None and guard.rechecks == 1  # first request
    for _ in range(100):
        assert st.revoked() is None
    assert guard.rechecks == 1
    ca.revoke(issued.certificate, now=NOW, reason=x509.ReasonFlags.key_compromise)
    assert st.revoked() is None  # the store has not changed yet
    store.replace(_crls(ca))
    why = st.revoked()
    assert why is not None and "revoked" in why and "keyCompromise" in why
    assert st_other.revoked() is None  # the other certificate is not on the CRL
    checks = guard.rechecks
    store.replace([])  # the CRL disappears: a revocation stays
    assert st.revoked() == why and guard.rechecks == checks


def test_intermediate_revocation_reaches_every_session_below_it(ca: DevCA) -> None:
    issued = ca.issue(F.AE_ID, [AE], now=NOW)
    store = CRLStore(_crls(ca))
    st = SessionStatusGuard(crls=store, ocsp=None, clock=clock).session(_verified(ca, issued, store))  # type: ignore[arg-type]
    assert st is not None and st.revoked() is None
    ca.revoke(issued.chain[0], now=NOW)
    store.replace(_crls(ca))
    assert st.revoked() is not None


def test_stale_or_unusable_crl_does_not_end_a_session(ca: DevCA, caplog: pytest.LogCaptureFixture) -> None:
    issued = ca.issue(F.AE_ID, [AE], now=NOW)
    store = CRLStore(_crls(ca))
    later = [NOW]
    guard = SessionStatusGuard(crls=store, ocsp=None, clock=lambda: later[0])
    st = guard.session(_verified(ca, issued, store))  # type: ignore[arg-type]
    assert st is not None and st.revoked() is None
    later[0] = NOW + timedelta(days=30)  # every CRL is stale now
    store.replace(_crls(ca))  # (issued at NOW: stale at the new clock)
    assert st.revoked() is None
    twin = DevCA.create("Session SP", now=NOW - timedelta(days=1), permit_uri=[SP], intermediate=True)
    forged = twin.issue_crl(now=NOW)  # the issuing CA's name, another key: unusable
    assert forged.issuer == issued.certificate.issuer
    with caplog.at_level(logging.WARNING, logger="m2msec.pki.session_status"):
        store.replace([forged])
        assert st.revoked() is None
    assert "not re-checked" in caplog.text


def test_ocsp_revoked_answer_revokes_the_session(ca: DevCA) -> None:
    issued = ca.issue(F.AE_ID, [AE], now=NOW)
    ocsp = OCSPStore()
    st = SessionStatusGuard(crls=None, ocsp=ocsp, clock=clock).session(_verified(ca, issued))  # type: ignore[arg-type]
    assert st is not None and st.revoked() is None
    responder = OCSPResponder(ca, clock=clock)  # type: ignore[arg-type]
    der = build_request(issued.certificate, issued.chain[0], nonce=False)[0].public_bytes(Encoding.DER)
    ocsp.add(responder.respond(der))  # GOOD
    assert st.revoked() is None
    ca.revoke(issued.certificate, now=NOW)
    ocsp.add(responder.respond(der))  # REVOKED
    why = st.revoked()
    assert why is not None and "OCSP" in why


# ------------------------------------------------------------------ PeerOCSPChecker failure memory


def test_failure_cache_bounds_and_validation(ca: DevCA) -> None:
    with pytest.raises(ValueError, match="failure cache"):
        PeerOCSPChecker(clock=clock, url="http://127.0.0.1:1/", failure_cache=-1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="failure cache"):
        PeerOCSPChecker(clock=clock, url="http://127.0.0.1:1/", failure_cache=3601)  # type: ignore[arg-type]
    now = [NOW]
    chk = PeerOCSPChecker(clock=lambda: now[0], url="http://127.0.0.1:1/", failure_cache=10,  # type: ignore[arg-type]
                          max_serials=4)
    leaves = [ca.issue(F.AE_ID, [AE], now=NOW) for _ in range(6)]
    for i in leaves:
        chk._remember_failure(i.certificate, i.chain[0], "down", now[0])
    assert len(chk._failures) <= 4  # bounded
    last = leaves[-1]
    assert chk.remembered_failure(last.certificate, last.chain[0]) == "down"
    now[0] += timedelta(seconds=10)
    assert chk.remembered_failure(last.certificate, last.chain[0]) is None  # the window is [t, t + 10 s)


def test_failure_remembered_by_the_checker_itself(ca: DevCA) -> None:
    """Against a closed port: one query per certificate within the window, the policy applied to
    the remembered failure (require refuses, and the problem names it)."""
    from m2msec.pki import CertificateVerificationError

    issued = ca.issue(F.AE_ID, [AE], now=NOW)
    now = [NOW]
    chk = PeerOCSPChecker(clock=lambda: now[0], policy="require", url="http://127.0.0.1:1/",  # type: ignore[arg-type]
                          timeout=1, failure_cache=5)
    vp = _verified(ca, issued)

    async def go() -> None:
        for n in range(2):
            with pytest.raises(CertificateVerificationError) as ei:
                await chk.check(vp)  # type: ignore[arg-type]
            assert chk.queries == 2
            assert ("remembered failure" in str(ei.value)) is (n == 1)
        now[0] += timedelta(seconds=6)
        with pytest.raises(CertificateVerificationError):
            await chk.check(vp)  # type: ignore[arg-type]
        assert chk.queries == 4 and chk.failures_reused == 2

    asyncio.run(go())
