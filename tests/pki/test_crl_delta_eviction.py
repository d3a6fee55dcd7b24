"""Delta CRL eviction must never fail open (TS-0003 8.1.2.2 with RFC 5280 5.2.4, 6.3.3).

Regression tests for two review findings on :class:`m2msec.pki.CRLStore` and the status check:

1. the per-stream cap (MAX_DELTAS_PER_BASE) evicted the only delta applicable to the held base in
   favour of deltas against bases not held, and the base alone then said GOOD;
2. an unverifiable (forged) delta with a huge cRLNumber and BaseCRLNumber 0 loaded from a file
   superseded the valid delta, was then ignored as unusable, and the base alone said GOOD;

plus the same hole for a forged *base* beside a surviving delta, and a property test: whatever
sequence of genuine and forged deltas reaches the store, a certificate revoked by a genuine delta
is never GOOD.  CRLs are built with cryptography's builder (through ``build_crl``)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from _pki_support import CSE, NOW, make_ca
from m2msec.pki import (
    CertificateFlavour,
    CertificateVerificationError,
    CRLStore,
    DevCA,
    IssuedCertificate,
    PeerCertInfo,
    RevocationStatus,
    VerificationReason,
    verify_peer_certificate,
)
from m2msec.pki.crl import MAX_DELTAS_PER_BASE, RevocationEntry, build_crl, crl_number

R = VerificationReason
F = CertificateFlavour
GOOD = RevocationStatus.GOOD
UNDETERMINED = RevocationStatus.UNDETERMINED
T0 = NOW - timedelta(hours=1)
POLICIES = ["if-available", "require"]


class World:
    """A DevCA (root + intermediate), two leaves, a current root CRL and an unrelated CA whose
    key forges CRLs with the genuine intermediate's name and authorityKeyIdentifier."""

    def __init__(self) -> None:
        self.ca = make_ca("Eviction SP")
        self.a, self.b = (self.ca.issue(F.CSE_ID, [CSE], now=NOW - timedelta(hours=2)) for _ in range(2))
        self.root_crl = self.ca.issue_crl(now=T0, signer="root")
        self.evil = make_ca("Eviction Evil")

    def crl(self, number: int, revoked: tuple[IssuedCertificate, ...] = (), *, delta_of: int | None = None,
            forged: bool = False, validity: timedelta = timedelta(days=7)) -> x509.CertificateRevocationList:
        key = self.evil._intermediate_key if forged else self.ca._intermediate_key
        return build_crl(issuer_cert=self.ca.intermediate_cert, issuer_key=key,  # type: ignore[arg-type]
                         entries=[RevocationEntry(i.certificate.serial_number, T0, x509.ReasonFlags.key_compromise)
                                  for i in revoked],
                         number=number, this_update=T0, validity=validity, delta_of=delta_of)

    def delta(self, number: int, base: int, revoked: tuple[IssuedCertificate, ...] = (),
              forged: bool = False) -> x509.CertificateRevocationList:
        return self.crl(number, revoked, delta_of=base, forged=forged, validity=timedelta(hours=2))

    def store(self, *crls: x509.CertificateRevocationList) -> CRLStore:
        return CRLStore([self.root_crl, *crls])

    def status(self, leaf: IssuedCertificate, store: CRLStore, policy: str) -> tuple[RevocationStatus, ...] | R:
        """The path's statuses, or the reason code of the refusal."""
        try:
            return verify_peer_certificate([leaf.certificate, *leaf.chain], expected=PeerCertInfo(F.CSE_ID, CSE),
                                           trust_anchors=[self.ca.trust_anchor], now=NOW, crls=store,
                                           revocation=policy).revocation
        except CertificateVerificationError as exc:
            return exc.reason_code

    def refusal(self, leaf: IssuedCertificate, store: CRLStore, policy: str) -> CertificateVerificationError:
        with pytest.raises(CertificateVerificationError) as e:
            verify_peer_certificate([leaf.certificate, *leaf.chain], expected=PeerCertInfo(F.CSE_ID, CSE),
                                    trust_anchors=[self.ca.trust_anchor], now=NOW, crls=store, revocation=policy)
        return e.value


@pytest.fixture(scope="module")
def w() -> World:
    return World()


def numbers(store: CRLStore, w: World) -> list[int | None]:
    return [crl_number(d) for d in store.deltas_for(w.ca.intermediate_cert.subject)]


# ------------------------------------------------------------------ finding 1: the cap


@pytest.mark.parametrize("policy", POLICIES)
def test_cap_never_evicts_the_delta_applicable_to_the_held_base(w: World, policy: str) -> None:
    base5, d10 = w.crl(5), w.delta(10, 5, (w.a,))
    store = w.store(base5, d10)
    assert w.status(w.a, store, policy) is R.REVOKED
    later = [w.delta(n, b) for n, b in ((11, 6), (12, 7), (13, 8), (14, 9))]  # against bases not held
    for d in later:
        assert store.add(d) is True
    held = numbers(store, w)
    assert len(held) == MAX_DELTAS_PER_BASE and 10 in held  # the one that applies to base 5 stays
    assert held == [14, 13, 12, 10]  # newest first; 11 (against base 6, not held) made room
    assert w.status(w.a, store, policy) is R.REVOKED  # was GOOD: base 5 alone decided
    # a further delta against base 5 supersedes every one held (it applies wherever they do)
    assert store.add(w.delta(15, 5, (w.a,))) is True
    assert numbers(store, w) == [15]
    assert w.status(w.a, store, policy) is R.REVOKED


def test_a_delta_the_cap_would_drop_at_once_is_not_added(w: World) -> None:
    store = w.store(w.crl(5), w.delta(10, 5), *(w.delta(n, b) for n, b in ((20, 16), (21, 17), (22, 18))))
    assert numbers(store, w) == [22, 21, 20, 10]
    gen = store.generation
    assert store.add(w.delta(19, 15)) is False  # older than every evictable one: nothing changes
    assert store.generation == gen and numbers(store, w) == [22, 21, 20, 10]


@pytest.mark.parametrize("policy", POLICIES)
def test_delta_naming_a_newer_base_makes_the_held_base_not_current(w: World, policy: str) -> None:
    """A verified delta whose BaseCRLNumber is above what the status is built from proves that a
    newer complete CRL exists: revocations between the two are unknown, the status is not GOOD."""
    base5 = w.crl(5)
    ahead = [w.delta(n, b) for n, b in ((11, 6), (12, 7), (13, 8), (14, 9))]  # d10 (base 5) never arrived
    store = w.store(base5, *ahead)
    if policy == "require":
        e = w.refusal(w.b, store, policy)
        assert e.reason_code is R.REVOCATION_UNKNOWN and "a delta CRL names complete CRL 9" in e.detail
    else:
        assert w.status(w.b, store, policy) == (UNDETERMINED, GOOD)
    assert w.status(w.b, w.store(base5), policy) == (GOOD, GOOD)  # without it the base decides, as before
    # an applied delta that reaches beyond the newer base closes the gap: current again
    assert w.status(w.b, w.store(base5, w.delta(10, 5), w.delta(11, 6)), policy) == (GOOD, GOOD)
    # ... one that does not, does not
    store = w.store(base5, w.delta(10, 5), w.delta(13, 11))
    assert w.status(w.b, store, policy) == (R.REVOCATION_UNKNOWN if policy == "require" else (UNDETERMINED, GOOD))
    # what the newer delta lists is revoked all the same
    assert w.status(w.a, w.store(base5, w.delta(12, 7, (w.a,))), policy) is R.REVOKED


# ------------------------------------------------------------------ finding 2: forged deltas


@pytest.mark.parametrize("policy", POLICIES)
def test_forged_delta_cannot_evict_the_valid_one_into_good(w: World, policy: str) -> None:
    base5, d10 = w.crl(5), w.delta(10, 5, (w.a,))
    store = w.store(base5, d10)
    assert w.status(w.a, store, policy) is R.REVOKED
    forged = w.delta(10**40, 0, forged=True)  # right name and AKI, wrong key, supersedes everything
    assert store.add(forged) is True  # the store cannot tell (it holds no keys)
    e = w.refusal(w.a, store, policy)
    assert e.reason_code is R.CRL_INVALID and "signature does not verify" in e.detail  # was GOOD
    assert "delta CRL" in e.detail
    # the forged delta beside a usable base is no longer ignored: it may have displaced a valid one
    assert w.status(w.b, w.store(base5, forged), policy) is R.CRL_INVALID
    assert w.status(w.b, w.store(base5, d10, w.delta(11, 5, forged=True)), policy) is R.CRL_INVALID
    # revocations still win over the unusable delta
    assert w.status(w.a, w.store(w.crl(5, (w.a,)), forged), policy) is R.REVOKED


@pytest.mark.parametrize("policy", POLICIES)
def test_forged_delta_without_a_base_cannot_hide_a_revocation(w: World, policy: str) -> None:
    """No complete CRL held (e.g. its fetch failed): a delta's revocations count on their own, and a
    forged delta that displaced the one listing the certificate must not leave it accepted."""
    d11, d12 = w.delta(11, 6, (w.a,)), w.delta(12, 11)  # a revoked after base 6, so base 11 lists it
    assert w.status(w.a, w.store(d11, d12), policy) is R.REVOKED
    store = w.store(d11, d12, w.delta(11, 5, forged=True))  # supersedes d11 (not d12)
    assert numbers(store, w) == [12, 11] and store.deltas_for(w.ca.intermediate_cert.subject)[1] is not d11
    assert w.status(w.a, store, policy) is R.CRL_INVALID  # was UNDETERMINED (accepted) / REVOCATION_UNKNOWN


@pytest.mark.parametrize("policy", POLICIES)
def test_forged_deltas_filling_the_cap_cannot_make_it_good(w: World, policy: str) -> None:
    base5, d10 = w.crl(5), w.delta(10, 5, (w.a,))
    store = w.store(base5, d10)
    for n, b in ((10**40, 6), (10**40 + 1, 7), (10**40 + 2, 8), (10**40 + 3, 9)):
        store.add(w.delta(n, b, forged=True))
    assert 10 in numbers(store, w)  # not applicable to base 5: they never push d10 out
    assert w.status(w.a, store, policy) is R.REVOKED
    assert w.status(w.b, store, policy) is R.CRL_INVALID


def test_forged_delta_of_another_key_or_scope_is_still_ignored(w: World) -> None:
    """Only a delta of the base's own stream (name, key id, scope) can have displaced its deltas."""
    other = DevCA.create("Eviction Other", now=NOW - timedelta(days=1), intermediate=False)
    foreign_aki = (x509.CertificateRevocationListBuilder().issuer_name(w.ca.intermediate_cert.subject)
                   .last_update(T0).next_update(NOW + timedelta(hours=1))
                   .add_extension(x509.CRLNumber(10**40), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       other.trust_anchor.public_key()), critical=False)  # type: ignore[arg-type]
                   .add_extension(x509.DeltaCRLIndicator(0), critical=True)
                   .sign(other._root_key, hashes.SHA256()))  # type: ignore[arg-type]
    assert w.status(w.b, w.store(w.crl(5), w.delta(10, 5), foreign_aki), "require") == (GOOD, GOOD)
    # ... but with no current complete CRL it may have displaced deltas that count on their own
    stale = w.crl(5, validity=timedelta(minutes=30))
    assert w.status(w.b, w.store(stale, foreign_aki), "if-available") is R.CRL_INVALID
    assert w.status(w.b, w.store(stale), "if-available") == (UNDETERMINED, GOOD)


@pytest.mark.parametrize("policy", POLICIES)
def test_forged_base_beside_a_surviving_delta_fails_closed(w: World, policy: str) -> None:
    """A forged base (same key id, higher cRLNumber) replaces the genuine one in the store; a delta
    it leaves behind must not turn the genuine base's revocation into an accepted status."""
    store = w.store(w.crl(5, (w.a,)), w.delta(10, 5, (w.a,)), w.delta(12, 11))
    assert w.status(w.a, store, policy) is R.REVOKED
    assert store.add(w.crl(11, forged=True)) is True  # drops d10 (<= 11), keeps d12 (base 11)
    assert numbers(store, w) == [12]
    e = w.refusal(w.a, store, policy)
    assert e.reason_code is R.CRL_INVALID and "signature does not verify" in e.detail  # was UNDETERMINED/UNKNOWN


# ------------------------------------------------------------------ property


BASE = 10  # the held complete CRL; genuine complete CRLs have even numbers, genuine deltas odd ones


@st.composite
def histories(draw: st.DrawFn) -> tuple[int, int, list[tuple[bool, int, int]]]:
    """(revoked_at, base position, deltas): ``w.a`` is revoked by the genuine delta numbered
    ``revoked_at`` (odd, against BASE); the others are genuine (odd number, even base) or forged
    (any numbers), in arrival order; the base arrives at ``base position`` (-1: never)."""
    revoked_at = draw(st.integers(6, 20)) * 2 + 1
    others = draw(st.lists(st.one_of(
        st.tuples(st.just(False), st.integers(6, 30), st.integers(5, 29)).map(
            lambda t: (False, t[1] * 2 + 1, min(t[2], t[1]) * 2)),
        st.tuples(st.just(True), st.integers(0, 64), st.integers(0, 64)).map(
            lambda t: (True, max(t[1], t[2] + 1), min(t[1], t[2]))),
    ), max_size=9))
    pos = draw(st.integers(0, len(others)))
    history = [*others[:pos], (False, revoked_at, BASE), *others[pos:]]
    return revoked_at, draw(st.integers(-1, len(history))), history  # -1: the base never arrives


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(histories())
@example((13, -1, [(False, 13, 10), (True, 13, 5), (False, 15, 14)]))  # no base: the forged one displaced 13
def test_no_history_of_deltas_makes_a_revoked_certificate_good(w: World,
                                                               h: tuple[int, int, list[tuple[bool, int, int]]]) -> None:
    revoked_at, base_pos, history = h
    # a consistent genuine CA: every genuine delta issued after the revocation whose base predates it lists it
    crls = [w.delta(n, b, (w.a,) if (not forged and n >= revoked_at and b < revoked_at) else (), forged=forged)
            for forged, n, b in history]
    crls_without_base = list(crls)
    if base_pos >= 0:
        crls.insert(base_pos, w.crl(BASE))
    store = w.store(*crls)
    assert w.status(w.a, store, "require") in (R.REVOKED, R.CRL_INVALID, R.REVOCATION_UNKNOWN)
    # under if-available an unknown status is accepted; it may only arise when the CA issued a
    # complete CRL after the revocation (which lists it) that the store does not hold
    newer_base = any(not forged and b > revoked_at for forged, _, b in history)
    if not newer_base:
        assert w.status(w.a, store, "if-available") in (R.REVOKED, R.CRL_INVALID)
    # forged deltas never make a refused certificate accepted
    genuine = w.store(*(c for c, (forged, _, _) in zip(crls_without_base, history, strict=True) if not forged),
                      *([w.crl(BASE)] if base_pos >= 0 else []))
    if not isinstance(w.status(w.a, genuine, "if-available"), tuple):
        assert not isinstance(w.status(w.a, store, "if-available"), tuple)
