"""Fetching and refreshing CRLs over HTTP (m2msec.pki.crl_fetch; TS-0003 8.1.2.2, RFC 5280 4.2.1.13, 5).

A real ThreadingHTTPServer on 127.0.0.1 serves CRLs of a DevCA; every refusal path leaves the
previously fetched CRL in the store.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from _pki_support import AE, new_ec_key, raw_cert
from m2msec.pki import (
    CertificateFlavour,
    CertificateVerificationError,
    CRLFetcher,
    CRLFetchError,
    CRLRefresher,
    CRLStore,
    DevCA,
    FetchOutcome,
    VerificationReason,
    distribution_points,
    verify_fetched_crl,
)
from m2msec.pki.cli import reload_crls_and_report
from m2msec.pki.crl import build_crl, check_path_revocation

DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM
SP = "m2m.example.com"


def now() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------ a CRL web server


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    etag: str | None = None
    delay: float = 0.0
    location: str | None = None
    content_length: bool = True


@dataclass
class CRLServer:
    httpd: ThreadingHTTPServer
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def hits(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)


@pytest.fixture
def crl_server() -> Iterator[CRLServer]:
    holder: list[CRLServer] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            srv = holder[0]
            srv.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            r = srv.routes.get(self.path, Route(status=404))
            if r.delay:
                srv.stop.wait(r.delay)
            if r.etag is not None and self.headers.get("If-None-Match") == r.etag:
                self.send_response(304)
                self.send_header("ETag", r.etag)
                self.end_headers()
                return
            self.send_response(r.status)
            if r.location:
                self.send_header("Location", r.location)
            if r.etag:
                self.send_header("ETag", r.etag)
            self.send_header("Content-Type", "application/pkix-crl")
            if r.content_length:
                self.send_header("Content-Length", str(len(r.body)))
            else:
                self.close_connection = True
            self.end_headers()
            try:
                self.wfile.write(r.body)
            except OSError:
                pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    srv = CRLServer(httpd)
    holder.append(srv)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.stop.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def pki() -> DevCA:
    return DevCA.create("Fetch SP", now=now() - timedelta(days=1), permit_dns=[SP], permit_uri=[SP],
                        intermediate=True, crl_url="http://crl.m2m.example.com/issuing.crl")


@pytest.fixture(scope="module")
def evil() -> DevCA:
    return DevCA.create("Evil SP", now=now() - timedelta(days=1), permit_dns=[SP], intermediate=True)


def issuers(ca: DevCA) -> tuple[x509.Certificate, ...]:
    return (ca.trust_anchor, *ca.chain)


# ------------------------------------------------------------------ distribution_points


def test_distribution_points_of_devca_leaf_and_without_extension(pki: DevCA, evil: DevCA) -> None:
    leaf = pki.issue(CertificateFlavour.AE_ID, [AE.replace("m2m.example.com", SP)], now=now()).certificate
    assert distribution_points(leaf) == ["http://crl.m2m.example.com/issuing.crl"]
    assert distribution_points(evil.issue(CertificateFlavour.FQDN, [f"a.{SP}"], now=now()).certificate) == []
    assert distribution_points(pki.trust_anchor) == []


def test_distribution_points_keeps_only_plain_http_full_names() -> None:
    key = new_ec_key()
    uri = x509.UniformResourceIdentifier
    cdps = x509.CRLDistributionPoints([
        x509.DistributionPoint([uri("ldap://dir.example.com/cn=CA?certificateRevocationList"),
                                uri("http://a.example.com/a.crl")], None, None, None),
        x509.DistributionPoint([uri("HTTPS://b.example.com/b.crl"), uri("http://a.example.com/a.crl")],
                               None, None, None),
        x509.DistributionPoint(None, x509.RelativeDistinguishedName(
            [x509.NameAttribute(NameOID.COMMON_NAME, "CRL1")]), None, None),
        x509.DistributionPoint([uri("http://indirect.example.com/c.crl")], None, None,
                               [x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Other")]))]),
        x509.DistributionPoint([uri("http://part.example.com/d.crl")], None,
                               frozenset([x509.ReasonFlags.key_compromise]), None),
        x509.DistributionPoint([x509.DNSName("e.example.com")], None, None, None),
    ])
    cert = raw_cert(subject_cn="cdp", issuer=None, issuer_key=key, public_key=key.public_key(),
                    extensions=[(cdps, False)])
    assert distribution_points(cert) == ["http://a.example.com/a.crl", "HTTPS://b.example.com/b.crl"]


# ------------------------------------------------------------------ verify_fetched_crl (pure)


def test_verify_fetched_crl_picks_the_issuer_and_refuses_others(pki: DevCA, evil: DevCA) -> None:
    crl = pki.issue_crl(now=now())
    assert verify_fetched_crl(crl, issuers(pki), now=now()) == pki.intermediate_cert
    with pytest.raises(CRLFetchError, match="not a configured issuer"):
        verify_fetched_crl(crl, issuers(evil), now=now())
    with pytest.raises(CRLFetchError, match="not a configured issuer"):
        verify_fetched_crl(crl, (pki.trust_anchor,), now=now())  # the intermediate is needed
    future = build_crl(issuer_cert=pki.trust_anchor, issuer_key=pki._root_key, entries=(), number=50,  # noqa: SLF001
                       this_update=now() + timedelta(hours=1))
    with pytest.raises(CRLFetchError, match="not valid before"):
        verify_fetched_crl(future, issuers(pki), now=now())
    stale = build_crl(issuer_cert=pki.trust_anchor, issuer_key=pki._root_key, entries=(), number=51,  # noqa: SLF001
                      this_update=now() - timedelta(days=30))
    assert verify_fetched_crl(stale, issuers(pki), now=now()) == pki.trust_anchor  # proves revocation still


def _delta_crl(ca: DevCA, *, critical: bool = True) -> x509.CertificateRevocationList:
    t = now()
    return (x509.CertificateRevocationListBuilder().issuer_name(ca.trust_anchor.subject).last_update(t)
            .next_update(t + timedelta(days=1)).add_extension(x509.CRLNumber(500), critical=False)
            .add_extension(x509.DeltaCRLIndicator(1), critical=critical)
            .sign(ca._root_key, hashes.SHA256()))  # noqa: SLF001


def test_verify_fetched_crl_takes_a_delta_crl_with_a_critical_indicator(pki: DevCA) -> None:
    assert verify_fetched_crl(_delta_crl(pki), issuers(pki), now=now()) == pki.trust_anchor  # RFC 5280 5.2.4
    with pytest.raises(CRLFetchError, match="deltaCRLIndicator of a delta CRL must be critical"):
        verify_fetched_crl(_delta_crl(pki, critical=False), issuers(pki), now=now())


# ------------------------------------------------------------------ fetching


def test_fetch_der_and_pem_into_the_store(crl_server: CRLServer, pki: DevCA) -> None:
    der = pki.issue_crl(now=now())
    root = pki.issue_crl(now=now(), signer="root")
    crl_server.routes["/issuing.crl"] = Route(body=der.public_bytes(DER))
    crl_server.routes["/both.pem"] = Route(body=der.public_bytes(PEM) + root.public_bytes(PEM))
    store = CRLStore()
    r = CRLRefresher(store, [crl_server.url("/issuing.crl"), crl_server.url("/both.pem")], issuers(pki))
    results = r.refresh_once()
    assert [x.outcome for x in results] == [FetchOutcome.UPDATED, FetchOutcome.UPDATED]
    assert store.for_issuer(pki.intermediate_cert.subject) == (der,)
    assert store.for_issuer(pki.trust_anchor.subject) == (root,)
    assert len(store) == 2 and len(r.crls()) == 3  # the DER one arrived twice (second: same issue)
    assert crl_server.requests[0][1]["accept"].startswith("application/pkix-crl")


def test_newer_crl_replaces_older_and_revokes(crl_server: CRLServer) -> None:
    ca = DevCA.create("Refresh SP", now=now() - timedelta(days=1), permit_uri=[SP], intermediate=True)
    leaf = ca.issue(CertificateFlavour.AE_ID, [f"//{SP}/CAE1"], now=now() - timedelta(hours=1))
    path = [leaf.certificate, *leaf.chain, ca.trust_anchor]
    first = ca.issue_crl(now=now())
    crl_server.routes["/i.crl"] = Route(body=first.public_bytes(DER))
    store = CRLStore()
    r = CRLRefresher(store, [crl_server.url("/i.crl")], issuers(ca))
    assert r.refresh_once()[0].outcome is FetchOutcome.UPDATED
    statuses = check_path_revocation(path, crls=store, policy="if-available", now=now())
    assert [s.value for s in statuses] == ["good", "undetermined"]  # leaf: checked; intermediate: no root CRL
    ca.revoke(leaf.certificate, now=now())
    second = ca.issue_crl(now=now())
    crl_server.routes["/i.crl"] = Route(body=second.public_bytes(PEM))
    gen = store.generation
    assert r.refresh_once()[0].outcome is FetchOutcome.UPDATED
    assert store.for_issuer(ca.intermediate_cert.subject) == (second,) and store.generation > gen
    with pytest.raises(CertificateVerificationError) as ei:
        check_path_revocation(path, crls=store, policy="if-available", now=now())
    assert ei.value.reason_code is VerificationReason.REVOKED
    # the server going back to the older CRL (replay) changes nothing
    crl_server.routes["/i.crl"] = Route(body=first.public_bytes(DER))
    assert r.refresh_once()[0].outcome is FetchOutcome.UNCHANGED
    assert store.for_issuer(ca.intermediate_cert.subject) == (second,)
    assert r.crls() == [second]  # nor through a file reload that keeps the fetched CRLs
    reload_crls_and_report(store, [], keep=r.crls)
    assert store.for_issuer(ca.intermediate_cert.subject) == (second,)


@pytest.fixture
def primed(crl_server: CRLServer, pki: DevCA) -> tuple[CRLServer, CRLStore, x509.CertificateRevocationList]:
    good = pki.issue_crl(now=now())
    crl_server.routes["/c.crl"] = Route(body=good.public_bytes(DER))
    store = CRLStore()
    assert CRLFetcher(store, issuers(pki)).fetch_sync(crl_server.url("/c.crl")).outcome is FetchOutcome.UPDATED
    return crl_server, store, good


def _refused(srv: CRLServer, store: CRLStore, good: x509.CertificateRevocationList, fetcher: CRLFetcher,
             match: str, *, use_async: bool = False) -> None:
    url = srv.url("/c.crl")
    res = asyncio.run(fetcher.fetch(url)) if use_async else fetcher.fetch_sync(url)
    assert res.outcome is FetchOutcome.FAILED and not res.ok and res.crls == ()
    assert res.error is not None and match in res.error and not res.error.startswith("["), res.error
    assert store.for_issuer(good.issuer) == (good,) and len(store) == 1  # the previous CRL is kept


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_refusals_keep_the_previous_crl(primed: tuple[CRLServer, CRLStore, x509.CertificateRevocationList],
                                        pki: DevCA, evil: DevCA, use_async: bool) -> None:
    srv, store, good = primed
    f = CRLFetcher(store, issuers(pki), timeout=0.5, max_size=4096)
    # signed by the wrong key, with our issuer's name and a higher cRLNumber
    forged = build_crl(issuer_cert=pki.intermediate_cert, issuer_key=evil._intermediate_key,  # noqa: SLF001
                       entries=(), number=1000, this_update=now())
    srv.routes["/c.crl"] = Route(body=forged.public_bytes(DER))
    _refused(srv, store, good, f, "signature does not verify", use_async=use_async)
    srv.routes["/c.crl"] = Route(body=b"\x30\x82\x01\x00garbled")
    _refused(srv, store, good, f, "malformed CRL", use_async=use_async)
    srv.routes["/c.crl"] = Route(body=b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    _refused(srv, store, good, f, "malformed CRL", use_async=use_async)
    srv.routes["/c.crl"] = Route(body=good.public_bytes(PEM) + forged.public_bytes(PEM))  # all or nothing
    _refused(srv, store, good, f, "signature does not verify", use_async=use_async)
    srv.routes["/c.crl"] = Route(body=b"0" * 5000)
    _refused(srv, store, good, f, "larger than 4096 bytes", use_async=use_async)
    srv.routes["/c.crl"] = Route(body=b"0" * 5000, content_length=False)  # no Content-Length: counted
    _refused(srv, store, good, f, "larger than 4096 bytes", use_async=use_async)
    srv.routes["/c.crl"] = Route(status=404)
    _refused(srv, store, good, f, "HTTP status 404", use_async=use_async)
    srv.routes["/c.crl"] = Route(status=500, body=good.public_bytes(DER))
    _refused(srv, store, good, f, "HTTP status 500", use_async=use_async)
    srv.routes["/c.crl"] = Route(body=evil.issue_crl(now=now()).public_bytes(DER))
    _refused(srv, store, good, f, "not a configured issuer", use_async=use_async)
    srv.routes["/c.crl"] = Route(body=_delta_crl(pki, critical=False).public_bytes(DER))
    _refused(srv, store, good, f, "must be critical", use_async=use_async)
    srv.routes["/c.crl"] = Route(body=pki.issue_crl(now=now()).public_bytes(DER), delay=1.5)
    t0 = time.monotonic()
    _refused(srv, store, good, f, "timed out", use_async=use_async)
    assert time.monotonic() - t0 < 1.4


def test_redirects_followed_up_to_the_limit(crl_server: CRLServer, pki: DevCA) -> None:
    crl = pki.issue_crl(now=now())
    crl_server.routes["/final.crl"] = Route(body=crl.public_bytes(DER))
    for i, nxt in [(1, "/final.crl"), (2, "/r1"), (3, "/r2")]:
        crl_server.routes[f"/r{i}"] = Route(status=302, location=crl_server.url(nxt))
    store = CRLStore()
    f = CRLFetcher(store, issuers(pki))
    res = f.fetch_sync(crl_server.url("/r3"))  # three redirects: refused
    assert res.outcome is FetchOutcome.FAILED and res.error == "too many redirects" and len(store) == 0
    assert asyncio.run(f.fetch(crl_server.url("/r3"))).error == "too many redirects"
    assert f.fetch_sync(crl_server.url("/r2")).outcome is FetchOutcome.UPDATED  # two: followed
    assert store.for_issuer(crl.issuer) == (crl,)
    no = CRLFetcher(CRLStore(), issuers(pki), max_redirects=0).fetch_sync(crl_server.url("/r1"))
    assert no.outcome is FetchOutcome.FAILED and no.error == "HTTP status 302"


def test_conditional_get_with_etag(crl_server: CRLServer, pki: DevCA) -> None:
    crl = pki.issue_crl(now=now())
    crl_server.routes["/e.crl"] = Route(body=crl.public_bytes(DER), etag='"v1"')
    store = CRLStore()
    r = CRLRefresher(store, [crl_server.url("/e.crl")], issuers(pki))
    assert r.refresh_once()[0].outcome is FetchOutcome.UPDATED
    assert "if-none-match" not in crl_server.requests[-1][1]
    res = asyncio.run(r.refresh())[0]
    assert res.outcome is FetchOutcome.NOT_MODIFIED and res.crls == (crl,)
    assert crl_server.requests[-1][1]["if-none-match"] == '"v1"'
    store.replace([])  # e.g. a file reload without keep=: a 304 puts the held CRL back
    assert r.refresh_once()[0].outcome is FetchOutcome.NOT_MODIFIED
    assert store.for_issuer(crl.issuer) == (crl,)
    newer = pki.issue_crl(now=now())
    crl_server.routes["/e.crl"] = Route(body=newer.public_bytes(DER), etag='"v2"')
    assert r.refresh_once()[0].outcome is FetchOutcome.UPDATED
    assert store.for_issuer(crl.issuer) == (newer,)


def test_304_without_a_held_crl_is_a_failure(crl_server: CRLServer, pki: DevCA) -> None:
    crl_server.routes["/n.crl"] = Route(status=304)
    res = CRLFetcher(CRLStore(), issuers(pki)).fetch_sync(crl_server.url("/n.crl"))
    assert res.outcome is FetchOutcome.FAILED and res.error == "HTTP status 304"


def test_unreachable_and_log_hides_userinfo(pki: DevCA, caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    caplog.set_level(logging.WARNING, logger="m2msec.pki.crl_fetch")
    res = CRLFetcher(CRLStore(), issuers(pki), timeout=2).fetch_sync(f"http://user:s3cret@127.0.0.1:{port}/x.crl")
    assert res.outcome is FetchOutcome.FAILED and res.error == "ConnectError"
    assert caplog.records and "s3cret" not in caplog.text and f"http://127.0.0.1:{port}/x.crl" in caplog.text


def test_only_http_urls_and_sane_parameters(pki: DevCA) -> None:
    for bad in ["ldap://dir.example.com/cn=CA", "file:///etc/passwd", "http:///nohost"]:
        with pytest.raises(ValueError, match="not an http"):
            CRLRefresher(CRLStore(), [bad], issuers(pki))
    with pytest.raises(ValueError):
        CRLRefresher(CRLStore(), [], issuers(pki), period=timedelta(0))
    with pytest.raises(ValueError):
        CRLFetcher(CRLStore(), issuers(pki), max_size=0)


def test_file_reload_keeps_fetched_crls(crl_server: CRLServer, pki: DevCA, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    fetched = pki.issue_crl(now=now())
    crl_server.routes["/i.crl"] = Route(body=fetched.public_bytes(DER))
    root_file = tmp_path / "root.crl"
    root_file.write_bytes(pki.issue_crl(now=now(), signer="root").public_bytes(PEM))
    store = CRLStore()
    r = CRLRefresher(store, [crl_server.url("/i.crl")], issuers(pki))
    reload_crls_and_report(store, [root_file], keep=r.crls)
    r.refresh_once()
    assert len(store) == 2
    reload_crls_and_report(store, [root_file])  # without keep= the fetched CRL is dropped ...
    assert store.for_issuer(fetched.issuer) == ()
    r.refresh_once()  # (not-modified is impossible here: no ETag) ... and comes back on refresh
    newer_root = pki.issue_crl(now=now(), signer="root")
    root_file.write_bytes(newer_root.public_bytes(PEM))
    reload_crls_and_report(store, [root_file], keep=r.crls)
    assert store.for_issuer(fetched.issuer) == (fetched,)
    assert store.for_issuer(newer_root.issuer) == (newer_root,)
    assert capsys.readouterr().out.splitlines()[-1] == "crls reloaded 2"


# ------------------------------------------------------------------ schedule


class FakeTime:
    def __init__(self, start: datetime) -> None:
        self.t = start
        self.sleeps: list[float] = []

    def __call__(self) -> datetime:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += timedelta(seconds=seconds)
        await asyncio.sleep(0)


def test_next_delay_follows_next_update_period_and_backoff(crl_server: CRLServer, pki: DevCA) -> None:
    t0 = now().replace(microsecond=0)
    clock = FakeTime(t0)
    crl = build_crl(issuer_cert=pki.trust_anchor, issuer_key=pki._root_key, entries=(), number=700,  # noqa: SLF001
                    this_update=t0, validity=timedelta(minutes=10))
    crl_server.routes["/s.crl"] = Route(body=crl.public_bytes(DER))
    url = crl_server.url("/s.crl")
    r = CRLRefresher(CRLStore(), [url], issuers(pki), clock=clock, period=timedelta(hours=1),
                     margin=timedelta(minutes=1), min_retry=timedelta(seconds=30))
    assert r.due(url) is None
    r.refresh_once()
    assert r.due(url) == t0 + timedelta(minutes=9)  # nextUpdate - margin
    short = CRLRefresher(CRLStore(), [url], issuers(pki), clock=clock, period=timedelta(minutes=5))
    short.refresh_once()
    assert short.due(url) == t0 + timedelta(minutes=5)  # the period is shorter
    clock.t = t0 + timedelta(minutes=20)  # the CA did not publish: the held CRL is stale
    r.refresh_once()
    assert r.due(url) == clock.t + timedelta(seconds=30)  # never sooner than min_retry
    crl_server.routes["/s.crl"] = Route(status=503)
    delays = []
    for _ in range(9):
        res = r.refresh_once()[0]
        assert not res.ok
        delays.append((r.due(url) - clock.t).total_seconds())  # type: ignore[operator]
    assert delays == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    crl_server.routes["/s.crl"] = Route(body=crl.public_bytes(DER))
    assert r.refresh_once()[0].outcome is FetchOutcome.UNCHANGED
    assert r.due(url) == clock.t + timedelta(seconds=30)  # success resets the backoff


def test_run_fetches_at_start_then_when_due_and_on_trigger(crl_server: CRLServer, pki: DevCA) -> None:
    t0 = now().replace(microsecond=0)
    clock = FakeTime(t0)
    crl = build_crl(issuer_cert=pki.trust_anchor, issuer_key=pki._root_key, entries=(), number=800,  # noqa: SLF001
                    this_update=t0, validity=timedelta(minutes=30))
    crl_server.routes["/a.crl"] = Route(body=crl.public_bytes(DER))
    crl_server.routes["/b.crl"] = Route(status=404)
    a, b = crl_server.url("/a.crl"), crl_server.url("/b.crl")
    store = CRLStore()
    r = CRLRefresher(store, [a, b], issuers(pki), clock=clock, sleep=clock.sleep, period=timedelta(hours=1),
                     margin=timedelta(minutes=5), min_retry=timedelta(seconds=30))

    async def scenario() -> None:
        task = r.start()
        with pytest.raises(RuntimeError):
            r.start()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(clock.sleeps) >= 4:
                break
        # start: both fetched; b fails -> 30 s, 60 s, 120 s ... a is due after 25 min
        assert crl_server.hits("/a.crl") == 1 and crl_server.hits("/b.crl") >= 4
        assert clock.sleeps[:3] == [30, 60, 120]
        assert store.for_issuer(crl.issuer) == (crl,)
        crl_server.routes["/b.crl"] = Route(body=crl.public_bytes(DER))
        for _ in range(300):
            await asyncio.sleep(0.01)
            if crl_server.hits("/a.crl") >= 2 and r.last[b].ok:
                break
        assert crl_server.hits("/a.crl") >= 2  # due at t0 + 25 min (nextUpdate - margin)
        assert r.last[b].ok
        hits = crl_server.hits("/a.crl")
        r.trigger()  # e.g. SIGHUP: everything now
        for _ in range(300):
            await asyncio.sleep(0.01)
            if crl_server.hits("/a.crl") > hits:
                break
        assert crl_server.hits("/a.crl") > hits
        await r.stop()
        assert task.done() and task.cancelled()
        await r.stop()  # idempotent

    asyncio.run(scenario())


def test_run_with_real_sleep_stops_cleanly(crl_server: CRLServer, pki: DevCA) -> None:
    crl_server.routes["/x.crl"] = Route(body=pki.issue_crl(now=now()).public_bytes(DER))
    r = CRLRefresher(CRLStore(), [crl_server.url("/x.crl")], issuers(pki), period=timedelta(seconds=0.2))

    async def scenario() -> None:
        r.start()
        await asyncio.sleep(0.7)
        await r.stop()

    asyncio.run(scenario())
    assert 2 <= crl_server.hits("/x.crl") <= 6
