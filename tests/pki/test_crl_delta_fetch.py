"""Fetching delta CRLs (TS-0003 8.1.2.2; RFC 5280 5.2.6 freshestCRL, 6.3.3 (a)(2)): a
CRLRefresher that fetches a complete CRL naming a freshestCRL fetches the delta in the same
round, refreshes it on its own (shorter) schedule, verifies it like any fetched CRL, applies the
same size limit, and drops a delta URL its base no longer names.  A real ThreadingHTTPServer on
127.0.0.1 serves the CRLs of a DevCA."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
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
from m2msec.pki.crl import check_path_revocation
from m2msec.pki.crl_fetch import MAX_FRESHEST_URLS

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
    return DevCA.create("Delta Fetch SP", now=now() - timedelta(days=1), permit_dns=[SP], intermediate=True)


def leaf(ca: DevCA) -> list[x509.Certificate]:
    issued = ca.issue(CertificateFlavour.FQDN, [f"a.{SP}"], now=now() - timedelta(hours=1))
    return [issued.certificate, *issued.chain, ca.trust_anchor]


def status(path: list[x509.Certificate], store: CRLStore) -> object:
    try:
        return check_path_revocation(path, crls=store, policy="require", now=now())[0]
    except CertificateVerificationError as exc:
        return exc.reason_code


def publish(web: CRLWeb, ca: DevCA, *, delta_path: str | None = "/delta.crl", delta_hours: float = 1) -> int:
    """A new base at /base.crl (naming ``delta_path``) and a delta for it; returns the base number."""
    base = ca.issue_crl(now=now(), freshest_url=web.url(delta_path) if delta_path else None)
    web.bodies["/base.crl"] = base.public_bytes(DER)
    web.bodies["/root.crl"] = ca.issue_crl(now=now(), signer="root").public_bytes(DER)
    n = base.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    if delta_path:
        web.bodies[delta_path] = ca.issue_delta_crl(base_number=n, now=now(),
                                                    validity=timedelta(hours=delta_hours)).public_bytes(DER)
    return n


def refresher(web: CRLWeb, ca: DevCA, store: CRLStore, **kw: object) -> CRLRefresher:
    return CRLRefresher(store, [web.url("/base.crl"), web.url("/root.crl")], [ca.trust_anchor, *ca.chain], **kw)


def test_delta_is_fetched_with_its_base_and_revokes(web: CRLWeb, ca: DevCA) -> None:
    path = leaf(ca)
    base_n = publish(web, ca)
    store = CRLStore()
    r = refresher(web, ca, store)
    results = r.refresh_once()
    assert [x.url for x in results] == [web.url("/base.crl"), web.url("/root.crl"), web.url("/delta.crl")]
    assert all(x.outcome is FetchOutcome.UPDATED for x in results)
    assert r.delta_urls == (web.url("/delta.crl"),) and web.hits["/delta.crl"] == 1
    assert len(store.deltas_for(ca.intermediate_cert.subject)) == 1  # type: ignore[union-attr]
    assert status(path, store).value == "good"  # type: ignore[attr-defined]
    # revoked at the CA, published only in a new delta: the next round of the delta URL finds it
    ca.revoke(path[0], now=now(), reason=x509.ReasonFlags.key_compromise)
    web.bodies["/delta.crl"] = ca.issue_delta_crl(base_number=base_n, now=now()).public_bytes(DER)
    assert r.refresh_once([web.url("/delta.crl")])[0].outcome is FetchOutcome.UPDATED
    assert status(path, store) is VerificationReason.REVOKED
    assert web.hits["/base.crl"] == 1  # the base was not fetched again
    # a file reload that keeps fetched CRLs keeps the delta
    store.replace(r.crls())
    assert status(path, store) is VerificationReason.REVOKED


def test_the_delta_url_runs_on_its_own_schedule(web: CRLWeb, ca: DevCA) -> None:
    publish(web, ca, delta_hours=0.5)  # base: nextUpdate + 7 days; delta: + 30 min
    r = refresher(web, ca, CRLStore(), period=timedelta(hours=6), margin=timedelta(minutes=5))
    asyncio.run(r.refresh())
    base_due, delta_due = r.due(web.url("/base.crl")), r.due(web.url("/delta.crl"))
    at = r.last[web.url("/delta.crl")].at
    assert base_due is not None and delta_due is not None
    assert base_due - r.last[web.url("/base.crl")].at == timedelta(hours=6)  # the period
    assert timedelta(minutes=24) < delta_due - at <= timedelta(minutes=25)  # its nextUpdate - margin
    # trigger() (SIGHUP) makes the delta due too
    r.trigger()
    assert r.due(web.url("/delta.crl")) <= now()  # type: ignore[operator]


def test_a_new_base_fetches_its_delta_again(web: CRLWeb, ca: DevCA) -> None:
    publish(web, ca)
    r = refresher(web, ca, CRLStore())
    r.refresh_once()
    assert web.hits["/delta.crl"] == 1
    r.refresh_once([web.url("/base.crl")])  # same base (UNCHANGED): its delta is not fetched
    assert web.hits["/delta.crl"] == 1
    publish(web, ca)
    results = r.refresh_once([web.url("/base.crl")])  # a new base: its delta is fetched in the round
    assert [x.url for x in results] == [web.url("/base.crl"), web.url("/delta.crl")]
    assert web.hits["/delta.crl"] == 2


def test_refused_delta_keeps_the_base(web: CRLWeb, ca: DevCA) -> None:
    path = leaf(ca)
    base_n = publish(web, ca)
    evil = DevCA.create("Evil Delta Fetch", now=now() - timedelta(days=1), intermediate=True)
    # signed by the wrong key under our issuer's name, revoking our leaf
    from m2msec.pki.crl import RevocationEntry, build_crl

    forged = build_crl(issuer_cert=ca.intermediate_cert, issuer_key=evil._intermediate_key,  # type: ignore[arg-type]
                       entries=[RevocationEntry(path[0].serial_number, now())], number=base_n + 5,
                       this_update=now(), delta_of=base_n)
    web.bodies["/delta.crl"] = forged.public_bytes(DER)
    store = CRLStore()
    results = refresher(web, ca, store).refresh_once()
    delta = next(x for x in results if x.url == web.url("/delta.crl"))
    assert delta.outcome is FetchOutcome.FAILED and "signature does not verify" in (delta.error or "")
    assert store.deltas_for(ca.intermediate_cert.subject) == ()  # type: ignore[union-attr]
    assert status(path, store).value == "good"  # type: ignore[attr-defined]
    # another issuer's delta is refused as well
    evil.issue_crl(now=now())
    web.bodies["/delta.crl"] = evil.issue_delta_crl(base_number=1, now=now()).public_bytes(DER)
    r = refresher(web, ca, CRLStore())
    res = next(x for x in r.refresh_once() if x.url == web.url("/delta.crl"))
    assert res.outcome is FetchOutcome.FAILED and "not a configured issuer" in (res.error or "")


def test_size_limit_applies_to_the_delta(web: CRLWeb, ca: DevCA) -> None:
    publish(web, ca)
    base_len = len(web.bodies["/base.crl"])
    web.bodies["/delta.crl"] = b"0" * (base_len + 2000)
    r = refresher(web, ca, CRLStore(), max_size=base_len + 1000)
    res = {x.url: x for x in r.refresh_once()}
    assert res[web.url("/base.crl")].ok
    assert not res[web.url("/delta.crl")].ok and "larger than" in (res[web.url("/delta.crl")].error or "")


def test_follow_freshest_off_and_dropped_delta_urls(web: CRLWeb, ca: DevCA) -> None:
    publish(web, ca)
    r = refresher(web, ca, CRLStore(), follow_freshest=False)
    assert len(r.refresh_once()) == 2 and r.delta_urls == () and "/delta.crl" not in web.hits
    store = CRLStore()
    r = refresher(web, ca, store)
    r.refresh_once()
    assert r.delta_urls == (web.url("/delta.crl"),) and len(r.crls()) == 3
    publish(web, ca, delta_path=None)  # the CA stops publishing deltas
    results = r.refresh_once([web.url("/base.crl")])
    assert len(results) == 1 and r.delta_urls == () and r.due(web.url("/delta.crl")) is None
    assert len(r.crls()) == 2  # what the dropped URL brought is not kept across a reload


def test_at_most_max_freshest_urls_per_base(web: CRLWeb, ca: DevCA) -> None:
    from m2msec.pki.crl import build_crl

    urls = [web.url(f"/d{i}.crl") for i in range(MAX_FRESHEST_URLS + 2)] + ["ldap://dir.example.com/x"]
    base = build_crl(issuer_cert=ca.intermediate_cert, issuer_key=ca._intermediate_key,  # type: ignore[arg-type]
                     entries=(), number=7, this_update=now(), freshest_urls=urls)
    web.bodies["/base.crl"] = base.public_bytes(DER)
    r = refresher(web, ca, CRLStore())
    r.refresh_once()
    assert r.delta_urls == tuple(urls[:MAX_FRESHEST_URLS])
