"""A delta CRL naming a newer base makes the CRLRefresher fetch that base at once (TS-0003
8.1.2.2; RFC 5280 5.2.4, 6.3.3): with the base N held, a verified delta on base N+1 makes the
status from N "superseded" (``require`` refuses); the refresher fetches the URL the base came
from again in the same round instead of waiting for that URL's own schedule, at most once per
``min_retry`` per URL (a server still serving the old base is not hammered) and never while
the URL backs off after a failure.  A real ThreadingHTTPServer on 127.0.0.1 serves the CRLs of
a DevCA; the refresher runs as its real asyncio task where the schedule matters."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from _crl_web import CRLWeb
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from m2msec.pki import (
    CertificateFlavour,
    CertificateVerificationError,
    CRLRefresher,
    CRLStore,
    DevCA,
    FetchOutcome,
    VerificationReason,
)
from m2msec.pki.crl import check_path_revocation, crl_number

DER = serialization.Encoding.DER
SP = "m2m.example.com"


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def web() -> Iterator[CRLWeb]:
    with CRLWeb("application/pkix-crl") as w:
        yield w


@pytest.fixture
def ca() -> DevCA:
    return DevCA.create("Delta Refetch SP", now=now() - timedelta(days=1), permit_dns=[SP], intermediate=True)


def leaf(ca: DevCA, name: str = "a") -> list[x509.Certificate]:
    issued = ca.issue(CertificateFlavour.FQDN, [f"{name}.{SP}"], now=now() - timedelta(hours=1))
    return [issued.certificate, *issued.chain, ca.trust_anchor]


def status(path: list[x509.Certificate], store: CRLStore) -> object:
    try:
        return check_path_revocation(path, crls=store, policy="require", now=now())[0].value
    except CertificateVerificationError as exc:
        return exc.reason_code


def issue_base(web: CRLWeb, ca: DevCA) -> tuple[int, x509.CertificateRevocationList]:
    """A new complete CRL (naming /delta.crl), not yet served; its number and the CRL."""
    base = ca.issue_crl(now=now(), freshest_url=web.url("/delta.crl"))
    return crl_number(base) or 0, base


def serve_delta(web: CRLWeb, ca: DevCA, base_n: int, hours: float = 1) -> None:
    web.bodies["/delta.crl"] = ca.issue_delta_crl(base_number=base_n, now=now(),
                                                  validity=timedelta(hours=hours)).public_bytes(DER)


def start(web: CRLWeb, ca: DevCA) -> int:
    """Base N (+ the root's CRL) and a delta on N are served; returns N."""
    n, base = issue_base(web, ca)
    web.bodies["/base.crl"] = base.public_bytes(DER)
    web.bodies["/root.crl"] = ca.issue_crl(now=now(), signer="root").public_bytes(DER)
    serve_delta(web, ca, n)
    return n


def refresher(web: CRLWeb, ca: DevCA, store: CRLStore, **kw: object) -> CRLRefresher:
    return CRLRefresher(store, [web.url("/base.crl"), web.url("/root.crl")], [ca.trust_anchor, *ca.chain], **kw)


def held_base(store: CRLStore, ca: DevCA) -> int | None:
    bases = store.complete_for(ca.intermediate_cert.subject)  # type: ignore[union-attr]
    return crl_number(bases[0]) if bases else None


class Clock:
    """Real time plus an offset the test can advance (the refresher's injected clock)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return now() + self.offset


# ------------------------------------------------------------------ one round (refresh_once)


def test_delta_on_a_newer_base_fetches_the_base_in_the_same_round(web: CRLWeb, ca: DevCA) -> None:
    good, gap = leaf(ca, "good"), leaf(ca, "gap")
    n = start(web, ca)
    store = CRLStore()
    r = refresher(web, ca, store)
    r.refresh_once()
    assert held_base(store, ca) == n and status(good, store) == "good" and status(gap, store) == "good"
    assert r.early_fetches == 0 and web.count("/base.crl") == 1
    # the CA revokes ``gap``, issues base N+1 (listing it) and a delta on N+1; only the delta URL is due
    ca.revoke(gap[0], now=now(), reason=x509.ReasonFlags.key_compromise)
    n1, base1 = issue_base(web, ca)
    web.bodies["/base.crl"] = base1.public_bytes(DER)
    serve_delta(web, ca, n1)
    old_base = store.complete_for(ca.intermediate_cert.subject)[0]  # type: ignore[union-attr]
    new_delta = x509.load_der_x509_crl(web.bodies["/delta.crl"])
    # without the early fetch: base N + the delta on N+1 is superseded, ``require`` refuses
    assert status(good, CRLStore([old_base, new_delta])) is VerificationReason.REVOCATION_UNKNOWN
    results = r.refresh_once([web.url("/delta.crl")])
    assert [(x.url, x.outcome) for x in results] == [(web.url("/delta.crl"), FetchOutcome.UPDATED),
                                                     (web.url("/base.crl"), FetchOutcome.UPDATED)]
    assert held_base(store, ca) == n1 and r.early_fetches == 1 and web.count("/base.crl") == 2
    assert status(good, store) == "good"  # accepted again under require
    assert status(gap, store) is VerificationReason.REVOKED  # the revocation of the gap is known
    assert web.count("/delta.crl") == 2  # the new base names the delta URL already fetched: not again
    assert web.count("/root.crl") == 1  # only the base's URL is fetched early
    # the base URL is rescheduled as after any fetch (its own schedule, not at once)
    assert r.due(web.url("/base.crl")) - r.last[web.url("/base.crl")].at >= r.min_retry  # type: ignore[operator]
    # the delta on the held base triggers nothing more
    r.refresh_once([web.url("/delta.crl")])
    assert web.count("/base.crl") == 2 and r.early_fetches == 1


def test_no_early_fetch_when_the_newer_base_is_held_already(web: CRLWeb, ca: DevCA) -> None:
    n = start(web, ca)
    store = CRLStore()
    r = refresher(web, ca, store)
    r.refresh_once()
    n1, base1 = issue_base(web, ca)
    store.add(base1)  # e.g. from a CRL file
    serve_delta(web, ca, n1)
    assert [x.url for x in r.refresh_once([web.url("/delta.crl")])] == [web.url("/delta.crl")]
    assert web.count("/base.crl") == 1 and r.early_fetches == 0 and held_base(store, ca) == n1 > n


def test_old_base_served_again_is_fetched_early_once_per_min_retry(web: CRLWeb, ca: DevCA) -> None:
    path = leaf(ca)
    start(web, ca)
    clock = Clock()
    store = CRLStore()
    r = refresher(web, ca, store, clock=clock, min_retry=timedelta(seconds=30))
    r.refresh_once()
    n1, _ = issue_base(web, ca)  # issued, but the server (e.g. a stale CDN) keeps serving base N
    serve_delta(web, ca, n1)
    results = r.refresh_once([web.url("/delta.crl")])
    assert [(x.url, x.outcome) for x in results] == [(web.url("/delta.crl"), FetchOutcome.UPDATED),
                                                     (web.url("/base.crl"), FetchOutcome.UNCHANGED)]
    assert web.count("/base.crl") == 2 and r.early_fetches == 1
    assert status(path, store) is VerificationReason.REVOCATION_UNKNOWN  # still superseded
    for _ in range(10):  # the delta again and again within min_retry: no more base fetches
        r.refresh_once([web.url("/delta.crl")])
    assert web.count("/base.crl") == 2 and r.early_fetches == 1 and web.count("/delta.crl") == 12
    clock.offset += timedelta(seconds=31)  # min_retry later: one more early fetch
    r.refresh_once([web.url("/delta.crl")])
    r.refresh_once([web.url("/delta.crl")])
    assert web.count("/base.crl") == 3 and r.early_fetches == 2


def test_failing_base_url_backs_off_and_keeps_the_old_base(web: CRLWeb, ca: DevCA) -> None:
    path = leaf(ca)
    n = start(web, ca)
    clock = Clock()
    store = CRLStore()
    r = refresher(web, ca, store, clock=clock, min_retry=timedelta(seconds=30))
    r.refresh_once()
    n1, base1 = issue_base(web, ca)
    serve_delta(web, ca, n1)
    del web.bodies["/base.crl"]  # the base URL now fails (404)
    results = r.refresh_once([web.url("/delta.crl")])
    base_url = web.url("/base.crl")
    assert [(x.url, x.outcome) for x in results] == [(web.url("/delta.crl"), FetchOutcome.UPDATED),
                                                     (base_url, FetchOutcome.FAILED)]
    assert held_base(store, ca) == n  # previous CRLs kept
    assert r.due(base_url) - r.last[base_url].at == timedelta(seconds=30)  # type: ignore[operator]
    assert status(path, store) is VerificationReason.REVOCATION_UNKNOWN
    # while it backs off, deltas do not make it fetched early, even after min_retry
    clock.offset += timedelta(seconds=31)
    r.refresh_once([web.url("/delta.crl")])
    assert web.count("/base.crl") == 2 and r.early_fetches == 1
    # its own schedule fetches it (fails again: the back-off doubles)
    r.refresh_once([base_url])
    assert r.due(base_url) - r.last[base_url].at == timedelta(seconds=60)  # type: ignore[operator]
    # the server recovers: the scheduled fetch brings base N+1, and early fetches are possible again
    web.bodies["/base.crl"] = base1.public_bytes(DER)
    assert r.refresh_once([base_url])[0].outcome is FetchOutcome.UPDATED
    assert held_base(store, ca) == n1 and status(path, store) == "good"


def test_follow_freshest_off_still_fetches_the_newer_base(web: CRLWeb, ca: DevCA) -> None:
    """A delta URL configured directly (not discovered) works the same way."""
    path = leaf(ca)
    start(web, ca)
    store = CRLStore()
    r = CRLRefresher(store, [web.url(p) for p in ("/base.crl", "/root.crl", "/delta.crl")],
                     [ca.trust_anchor, *ca.chain], follow_freshest=False)
    r.refresh_once()
    n1, base1 = issue_base(web, ca)
    web.bodies["/base.crl"] = base1.public_bytes(DER)
    serve_delta(web, ca, n1)
    r.refresh_once([web.url("/delta.crl")])
    assert held_base(store, ca) == n1 and status(path, store) == "good" and r.early_fetches == 1


# ------------------------------------------------------------------ the running task


def run_for(r: CRLRefresher, seconds: float, until: Callable[[], bool] | None = None,
            between: Callable[[], None] | None = None) -> float:
    """Run ``r`` as its task: wait for its first round, call ``between``, then run ``seconds``
    (or until ``until()``); returns the time from ``between`` to the end."""
    async def main() -> float:
        task = r.start()
        try:
            for _ in range(200):
                if r.last.get(r.urls[0]) is not None and all(u in r.last for u in r.scheduled_urls):
                    break
                await asyncio.sleep(0.02)
            if between is not None:
                between()
            t0 = time.monotonic()
            while time.monotonic() - t0 < seconds:
                if until is not None and until():
                    break
                await asyncio.sleep(0.02)
            return time.monotonic() - t0
        finally:
            await r.stop()
            assert task.done()
    return asyncio.run(main())


# delta nextUpdate 1 h; margin 1 h - 0.5 s: the delta URL comes round every 0.5 s (min_retry), the
# base (nextUpdate 7 days) after the period, 1 h
FAST = {"margin": timedelta(hours=1) - timedelta(seconds=0.5), "min_retry": timedelta(seconds=0.5)}


def test_running_refresher_fetches_the_newer_base_long_before_its_schedule(web: CRLWeb, ca: DevCA) -> None:
    path = leaf(ca)
    n = start(web, ca)
    store = CRLStore()
    r = refresher(web, ca, store, **FAST)
    base_url = web.url("/base.crl")
    due: list[datetime] = []

    def publish_new_base() -> None:
        due.append(r.due(base_url))  # type: ignore[arg-type]
        n1, base1 = issue_base(web, ca)
        web.bodies["/base.crl"] = base1.public_bytes(DER)
        serve_delta(web, ca, n1)

    took = run_for(r, 5.0, until=lambda: held_base(store, ca) == n + 2 and status(path, store) == "good",
                   between=publish_new_base)
    assert due[0] - now() > timedelta(minutes=50)  # the base URL was not due for an hour
    assert held_base(store, ca) == n + 2 and status(path, store) == "good"  # base N+1 = cRLNumber n + 2
    assert took < 3.0 and r.early_fetches >= 1 and web.count("/base.crl") == 2


@pytest.mark.parametrize("base_fails", [False, True], ids=["stale-server", "failing-server"])
def test_running_refresher_does_not_loop_on_a_base_that_stays_old(web: CRLWeb, ca: DevCA, base_fails: bool) -> None:
    path = leaf(ca)
    n = start(web, ca)
    store = CRLStore()
    r = refresher(web, ca, store, **FAST)
    base_hits: list[float] = []

    def delta_on_unpublished_base() -> None:
        n1, _ = issue_base(web, ca)
        serve_delta(web, ca, n1)
        if base_fails:
            del web.bodies["/base.crl"]
        base_hits.append(web.count("/base.crl"))

    took = run_for(r, 3.0, between=delta_on_unpublished_base)
    assert took >= 2.9
    deltas = web.count("/delta.crl")
    hits = web.times["/base.crl"][base_hits[0]:]
    assert deltas >= 4  # the delta URL came round every ~0.5 s
    assert held_base(store, ca) == n  # the old base is kept
    assert status(path, store) is VerificationReason.REVOCATION_UNKNOWN  # superseded, never "good"
    if base_fails:
        # failed early fetch, then the back-off: 0.5 s, 1 s, 2 s
        assert 1 <= len(hits) <= 4 and r.early_fetches == 1
        assert not r.last[web.url("/base.crl")].ok
    else:
        # at most one early fetch per min_retry (0.5 s) over ~3 s, far from a loop
        assert 2 <= len(hits) <= 8 and r.early_fetches == len(hits)
        assert all(b - a >= 0.25 for a, b in itertools.pairwise(hits))  # 0.5 s apart, less HTTP jitter
