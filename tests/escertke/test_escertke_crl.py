"""Certificate status (TS-0003 8.1.2.2) in the ESCertKE Procedure (8.7.2.2): ``InitiatorInfo`` /
``TerminatorInfo`` ``crls`` and ``revocation`` reach the handshake verification, and the
verification cache never keeps accepting a certificate revoked after its first handshake."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from _escertke_support import INI_CERT_ID, INI_ID, SP, TER_CERT_ID, TER_ID, Clock, creds  # type: ignore[import-not-found]
from cryptography import x509

from m2msec.escertke import (
    ESCertKEError,
    ESCertKEKeys,
    InitiatingEndPoint,
    InitiatorInfo,
    InitiatorState,
    Reason,
    TerminatingEndPoint,
    TerminatorInfo,
)
from m2msec.escertke.procedure import _CachedVerify
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.pki import CertificateFlavour, CertificateVerificationError, CRLStore, DevCA, PeerCertInfo
from m2msec.pki import RevocationPolicy, RevocationStatus, VerificationReason
from m2msec.tls import CertCredentials

R = VerificationReason


@pytest.fixture(scope="module")
def ca() -> DevCA:
    """A CA of this module only: the tests revoke certificates on it."""
    from datetime import UTC, datetime

    return DevCA.create("ESCertKE CRL SP", now=datetime.now(UTC) - timedelta(hours=1), permit_uri=[SP],
                        permit_dns=[SP], intermediate=True)


def issue(ca: DevCA, clock: Clock, identifier: str) -> CertCredentials:
    return creds(ca.issue(CertificateFlavour.AE_ID, [identifier], now=clock.now - timedelta(minutes=5)))


def crls(ca: DevCA, clock: Clock) -> list[x509.CertificateRevocationList]:
    """Current CRLs of both CAs of the path (issuing intermediate, root) - enough for ``require``."""
    at = clock.now - timedelta(minutes=1)
    return [ca.issue_crl(now=at), ca.issue_crl(now=at, signer="root")]


def ter_info(ca: DevCA, **kw: Any) -> TerminatorInfo:
    return TerminatorInfo(PeerCertInfo(CertificateFlavour.AE_ID, TER_CERT_ID), (ca.trust_anchor,), identity=TER_ID,
                          **kw)


def ini_info(ca: DevCA, **kw: Any) -> InitiatorInfo:
    return InitiatorInfo(PeerCertInfo(CertificateFlavour.AE_ID, INI_CERT_ID), (ca.trust_anchor,), identity=INI_ID,
                         **kw)


def run(ini: InitiatingEndPoint, ter: TerminatingEndPoint, target: TerminatorInfo):
    proc = ini.initiate(target)
    m3 = proc.receive_message_2(ter.handle(INI_ID, proc.message_1()))
    return proc.receive_message_4(ter.handle(INI_ID, m3))


def cause(err: ESCertKEError) -> CertificateVerificationError:
    cve = err.__cause__.__cause__  # ESCertKEError <- TLSHandshakeError <- CertificateVerificationError
    assert isinstance(cve, CertificateVerificationError)
    return cve


def assert_refused(err: ESCertKEError, reason: VerificationReason) -> None:
    """Certificate failures map to AUTHENTICATION_FAILED / ORIGINATOR_NOT_AUTHENTICATED (4106, profile P12)."""
    assert err.reason is Reason.AUTHENTICATION_FAILED and err.rsc == RSC.ORIGINATOR_NOT_AUTHENTICATED
    assert cause(err).reason_code is reason and reason.value in str(err)


def ends(ca: DevCA, clock: Clock, ini_creds: CertCredentials, ter_creds: CertCredentials,
         info: InitiatorInfo) -> tuple[InitiatingEndPoint, TerminatingEndPoint]:
    return (InitiatingEndPoint(ini_creds, clock=clock, keys=ESCertKEKeys(clock=clock)),
            TerminatingEndPoint(ter_creds, [info], clock=clock, keys=ESCertKEKeys(clock=clock)))


# ------------------------------------------------------------------ revoked peers


def test_revoked_initiator_refused_at_message_3(ca: DevCA) -> None:
    clock = Clock()
    ini_c, ter_c = issue(ca, clock, INI_CERT_ID), issue(ca, clock, TER_CERT_ID)
    ca.revoke(ini_c.certificate, now=clock.now - timedelta(seconds=30), reason=x509.ReasonFlags.key_compromise)
    store = CRLStore(crls(ca, clock))
    ini, ter = ends(ca, clock, ini_c, ter_c, ini_info(ca, crls=store))
    proc = ini.initiate(ter_info(ca))
    m2 = ter.handle(INI_ID, proc.message_1())  # Message 1 carries no certificate: accepted
    m3 = proc.receive_message_2(m2)
    with pytest.raises(ESCertKEError) as ei:
        ter.handle(INI_ID, m3)
    assert_refused(ei.value, R.REVOKED)
    assert "keyCompromise" in str(cause(ei.value))
    assert ter.unfinished() == {} and len(ter.keys) == 0 and len(ini.keys) == 0
    assert proc.state is InitiatorState.AWAIT_MESSAGE_4

    # negative control: the same revoked certificate passes with the policy off (and without the CRLs)
    for info in (ini_info(ca, crls=store, revocation="off"), ini_info(ca)):
        ini2, ter2 = ends(ca, clock, ini_c, ter_c, info)
        assert run(ini2, ter2, ter_info(ca)).peer_id == TER_ID


def test_revoked_terminator_refused_at_message_2(ca: DevCA) -> None:
    clock = Clock()
    ini_c, ter_c = issue(ca, clock, INI_CERT_ID), issue(ca, clock, TER_CERT_ID)
    ca.revoke(ter_c.certificate, now=clock.now - timedelta(seconds=30))
    store = CRLStore(crls(ca, clock))
    ini, ter = ends(ca, clock, ini_c, ter_c, ini_info(ca))
    proc = ini.initiate(ter_info(ca, crls=store))
    with pytest.raises(ESCertKEError) as ei:
        proc.receive_message_2(ter.handle(INI_ID, proc.message_1()))
    assert_refused(ei.value, R.REVOKED)
    assert ei.value.args[0].startswith("AUTHENTICATION_FAILED: Terminating End-Point refused")
    assert proc.state is InitiatorState.FAILED and len(ini.keys) == 0
    # the same Initiator, same Terminator certificate, without status checking: accepted
    assert run(ini, ter, ter_info(ca, crls=store, revocation=RevocationPolicy.OFF)).peer_id == TER_ID


def test_revoked_intermediate_refuses_every_leaf_below(ca: DevCA) -> None:
    """A root CRL listing the issuing CA revokes the path (RFC 5280 6.3 over the whole path)."""
    from datetime import UTC, datetime

    clock = Clock()
    own = DevCA.create("ESCertKE CRL SP 2", now=datetime.now(UTC) - timedelta(hours=1), permit_uri=[SP],
                       permit_dns=[SP], intermediate=True)
    ini_c, ter_c = issue(own, clock, INI_CERT_ID), issue(own, clock, TER_CERT_ID)
    own.revoke(ini_c.chain[0], now=clock.now - timedelta(seconds=30))  # the intermediate, on the root's CRL
    store = CRLStore(crls(own, clock))
    ini, ter = ends(own, clock, ini_c, ter_c, ini_info(own, crls=store))
    with pytest.raises(ESCertKEError) as ei:
        run(ini, ter, ter_info(own))
    assert_refused(ei.value, R.REVOKED)


# ------------------------------------------------------------------ require


def test_require_without_crls_fails_both_ways(ca: DevCA) -> None:
    clock = Clock()
    ini_c, ter_c = issue(ca, clock, INI_CERT_ID), issue(ca, clock, TER_CERT_ID)
    ini, ter = ends(ca, clock, ini_c, ter_c, ini_info(ca, revocation="require"))
    with pytest.raises(ESCertKEError) as ei:
        run(ini, ter, ter_info(ca))
    assert_refused(ei.value, R.REVOCATION_UNKNOWN)
    assert ter.unfinished() == {}

    ini, ter = ends(ca, clock, ini_c, ter_c, ini_info(ca))
    proc = ini.initiate(ter_info(ca, revocation="require"))
    with pytest.raises(ESCertKEError) as ei:
        proc.receive_message_2(ter.handle(INI_ID, proc.message_1()))
    assert_refused(ei.value, R.REVOCATION_UNKNOWN)

    # only the issuing CA's CRL: the intermediate's status (root CRL) is unknown
    only_leaf = CRLStore([ca.issue_crl(now=clock.now - timedelta(minutes=1))])
    ini, ter = ends(ca, clock, ini_c, ter_c, ini_info(ca, crls=only_leaf, revocation="require"))
    with pytest.raises(ESCertKEError) as ei:
        run(ini, ter, ter_info(ca))
    assert_refused(ei.value, R.REVOCATION_UNKNOWN)


def test_require_with_current_crls_succeeds_and_records_status(ca: DevCA) -> None:
    clock = Clock()
    ini_c, ter_c = issue(ca, clock, INI_CERT_ID), issue(ca, clock, TER_CERT_ID)
    store = CRLStore(crls(ca, clock))
    ini, ter = ends(ca, clock, ini_c, ter_c, ini_info(ca, crls=store, revocation="require"))
    res = run(ini, ter, ter_info(ca, crls=store, revocation="require"))
    tres = ter.keys.for_peer(INI_ID)
    assert tres is not None and res.key == tres.key
    for peer in (res.peer, tres.peer):
        assert peer is not None and peer.revocation == (RevocationStatus.GOOD, RevocationStatus.GOOD)


def test_require_cache_ends_when_the_crl_goes_stale(ca: DevCA) -> None:
    """Under require a cached pass lasts only while the CRLs are current (nextUpdate = +7 days)."""
    clock = Clock()
    ini_c, ter_c = issue(ca, clock, INI_CERT_ID), issue(ca, clock, TER_CERT_ID)
    store = CRLStore(crls(ca, clock))
    ini, ter = ends(ca, clock, ini_c, ter_c, ini_info(ca, crls=store, revocation="require"))
    run(ini, ter, ter_info(ca))
    clock.advance(days=6)
    run(ini, ter, ter_info(ca))  # still current (and the cache entry still valid)
    clock.advance(days=1, minutes=1)
    with pytest.raises(ESCertKEError) as ei:
        run(ini, ter, ter_info(ca))
    assert_refused(ei.value, R.REVOCATION_UNKNOWN)
    # if-available accepts the same stale CRLs (status undetermined)
    ini, ter = ends(ca, clock, ini_c, ter_c, ini_info(ca, crls=store))
    assert run(ini, ter, ter_info(ca)).peer is not None


# ------------------------------------------------------------------ the verification cache


class Counting:
    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, 0

    def __call__(self, chain: Any) -> Any:
        self.calls += 1
        return self.inner(chain)


def _ter_hook(ter: TerminatingEndPoint) -> _CachedVerify:
    (ctx,) = ter._contexts.values()
    hook = ctx.config.verify_peer
    assert isinstance(hook, _CachedVerify)
    return hook


@pytest.mark.parametrize("refresh", ["replace", "add"])
def test_cache_does_not_outlive_a_revocation(ca: DevCA, refresh: str) -> None:
    clock = Clock()
    ini_c, ter_c = issue(ca, clock, INI_CERT_ID), issue(ca, clock, TER_CERT_ID)
    store = CRLStore(crls(ca, clock))
    ini, ter = ends(ca, clock, ini_c, ter_c, ini_info(ca, crls=store))
    target = ter_info(ca)
    first = run(ini, ter, target)
    checked = ter.keys.for_peer(INI_ID)
    assert checked is not None and checked.peer is not None and checked.key == first.key
    assert checked.peer.revocation == (RevocationStatus.GOOD, RevocationStatus.GOOD)  # the CRLs were used
    hook = _ter_hook(ter)
    hook._hook = counting = Counting(hook._hook)
    # the same chain again: a cache hit, the verifier is not called
    run(ini, ter, target)
    assert counting.calls == 0 and len(hook._ok) == 1

    clock.advance(minutes=1)
    ca.revoke(ini_c.certificate, now=clock.now)
    gen = store.generation
    fresh = crls(ca, clock)
    if refresh == "replace":
        store.replace(fresh)
    else:
        assert store.add(fresh[0]) is True
    assert store.generation > gen
    with pytest.raises(ESCertKEError) as ei:
        run(ini, ter, target)  # the very chain of the first procedure
    assert_refused(ei.value, R.REVOKED)
    assert counting.calls == 1  # verified in full, not served from the cache
    with pytest.raises(ESCertKEError):
        run(ini, ter, target)  # and again: failures are not cached either
    assert counting.calls == 2


def test_unchanged_store_keeps_the_cache(ca: DevCA) -> None:
    """An add that keeps nothing (an older or equal CRL) leaves the generation, so the cache hits."""
    clock = Clock()
    ini_c, ter_c = issue(ca, clock, INI_CERT_ID), issue(ca, clock, TER_CERT_ID)
    old = crls(ca, clock)
    newer = crls(ca, clock)
    store = CRLStore(newer)
    ini, ter = ends(ca, clock, ini_c, ter_c, ini_info(ca, crls=store))
    run(ini, ter, ter_info(ca))
    hook = _ter_hook(ter)
    hook._hook = counting = Counting(hook._hook)
    gen = store.generation
    assert store.add(old[0]) is False and store.add(newer[1]) is False and store.generation == gen
    run(ini, ter, ter_info(ca))
    assert counting.calls == 0


def test_initiator_cache_does_not_outlive_a_revocation(ca: DevCA) -> None:
    clock = Clock()
    ini_c, ter_c = issue(ca, clock, INI_CERT_ID), issue(ca, clock, TER_CERT_ID)
    store = CRLStore(crls(ca, clock))
    ini, ter = ends(ca, clock, ini_c, ter_c, ini_info(ca))
    target = ter_info(ca, crls=store)
    run(ini, ter, target)
    run(ini, ter, target)
    ca.revoke(ter_c.certificate, now=clock.now)
    store.replace(crls(ca, clock))
    proc = ini.initiate(target)
    with pytest.raises(ESCertKEError) as ei:
        proc.receive_message_2(ter.handle(INI_ID, proc.message_1()))
    assert_refused(ei.value, R.REVOKED)


# ------------------------------------------------------------------ configuration objects


def test_infos_normalise_and_compare_status_settings(ca: DevCA) -> None:
    clock = Clock()
    listed = crls(ca, clock)
    info = ini_info(ca, crls=listed, revocation="require")
    assert isinstance(info.crls, CRLStore) and len(info.crls) == 2
    assert info.revocation is RevocationPolicy.REQUIRE
    assert ter_info(ca).crls is None and ter_info(ca).revocation is RevocationPolicy.IF_AVAILABLE
    with pytest.raises(ValueError):
        ter_info(ca, revocation="sometimes")
    store = CRLStore(listed)
    # the policy and the store (by identity) are part of the configuration: equal infos share a
    # TLS context, different ones must not (a cached context would apply the wrong status policy)
    assert ter_info(ca, crls=store) == ter_info(ca, crls=store)
    assert hash(ter_info(ca, crls=store)) == hash(ter_info(ca, crls=store))
    assert ter_info(ca, crls=store) != ter_info(ca, crls=CRLStore(listed))
    assert ter_info(ca, revocation="off") != ter_info(ca) == ter_info(ca, revocation="if-available")


def test_endpoint_keeps_one_context_per_status_configuration(ca: DevCA) -> None:
    clock = Clock()
    ini_c, ter_c = issue(ca, clock, INI_CERT_ID), issue(ca, clock, TER_CERT_ID)
    ini, ter = ends(ca, clock, ini_c, ter_c, ini_info(ca))
    run(ini, ter, ter_info(ca, revocation="off"))
    proc = ini.initiate(ter_info(ca, revocation="require"))  # equal but for the policy: not the cached context
    with pytest.raises(ESCertKEError) as ei:
        proc.receive_message_2(ter.handle(INI_ID, proc.message_1()))
    assert_refused(ei.value, R.REVOCATION_UNKNOWN)
    assert len(ini._contexts) == 2
