"""The MEF's own EST certificate revocations end established sessions (TS-0003 8.1.2.2, 8.3.6;
profile M19, P26; :mod:`m2msec.mef.revocation_watch`).

The gap closed: a certificate the MEF issued over EST and later revoked with ``m2msec mef
enrolee revoke`` / ``est-revoke`` (a store record, no CRL) refused new handshakes at once but
left an established keep-alive session of that certificate running unless the MEF also read a
CRL of its own CA.

* the watch alone (SQLite: the sequence number is read at most once per poll interval, with an
  injected monotonic clock; PostgreSQL: a notification from another store object bumps it, a
  listener that is not connected makes every call a change);
* real MEF servers (in-process, real certificate TLS, keep-alive HTTP/1.1 driven with h11) on
  SQLite and on PostgreSQL, two instances each on one store: a session of an EST certificate is
  open on each; ``m2msec mef enrolee revoke`` runs as a separate process; the next request of
  both sessions gets 4106 ORIGINATOR_NOT_AUTHENTICATED / HTTP 403 with ``Connection: close``
  and the MEF closes the connection within the documented bound (SQLite: the poll interval,
  1 s; PostgreSQL: the notification's delivery); another enrolee's certificate session is still
  served; before the revocation no request looked anything up in the store;
* a revocation in the MEF's own process (``ESTService.revoke_certificate``) is seen by the
  next request at once, whatever the poll interval.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _esthelp import AE_ID, CERT_ENROLEE, CERT_ENROLEE_EST_ID, SP, creds
from _h11_session import KeepAliveSession
from _mefhelp import (
    ENROLEE,
    KPM,
    KPM_ID,
    MEF_FQDN,
    Clock,
    ThreadedMEF,
    configure_default,
)
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from m2msec.mef import EnroleeConfig, EnrolmentRequest, MEFState, mef_tls_config
from m2msec.mef.est import (
    DevCAAuthority,
    ESTProfile,
    ESTService,
    SecurityType,
    load_dev_ca,
    store_dev_ca,
)
from m2msec.mef.est_client import est_enrol
from m2msec.mef.revocation_watch import DEFAULT_POLL_S, OwnRevocationWatch
from m2msec.mef.state import EST_REVOKED_CHANNEL
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import DevCA, PeerCertInfo, VerifiedPeer
from m2msec.pki.session_status import SessionStatusGuard, StatusUnavailable
from m2msec.store import KeyEncryptionKey, Store, open_store
from m2msec.tls.engine import CertCredentials, PSKCredentials

BOUND = {"sqlite": DEFAULT_POLL_S, "postgresql": 0.5}  # the documented delay (PostgreSQL: delivery)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mef.db'}"
    return str(request.getfixturevalue("pg_server").create_database())


@dataclass
class Site:
    """An MEF store with an EST CA, the PSK enrolee ENROLEE (EST profile) and the certificate
    enrolee CERT_ENROLEE (manufacturer certificate), and a ``mef.toml`` for the CLI."""

    url: str
    kek: KeyEncryptionKey
    clock: Clock
    config: Path
    ca: DevCA
    mef_creds: CertCredentials
    maker_dev: CertCredentials
    maker_ca_anchor: x509.Certificate
    stores: list[Store]

    def state(self) -> tuple[MEFState, ESTService]:
        store = open_store(self.url, self.kek, clock=self.clock)
        self.stores.append(store)
        state = MEFState(store, MEF_FQDN, self.clock, (self.maker_ca_anchor, self.ca.trust_anchor))
        loaded = load_dev_ca(store)
        assert loaded is not None
        return state, ESTService(state, DevCAAuthority(loaded, self.clock))

    def cert_tls(self, c: CertCredentials) -> Any:
        return mef_tls_config(credentials=c, mef_fqdn=MEF_FQDN, mef_anchors=(self.ca.trust_anchor,), clock=self.clock)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "m2msec.mef.cli", *args, "--config", str(self.config)],
                              check=False, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture()
def site(url: str, tmp_path: Path) -> Iterator[Site]:
    clock = Clock()
    kek = KeyEncryptionKey.generate()
    kek.write_file(tmp_path / "mef.kek")
    config = tmp_path / "mef.toml"
    config.write_text(f'[mef]\nfqdn = "{MEF_FQDN}"\nstore = "{url}"\nkek_file = "mef.kek"\n'
                      'host = "127.0.0.1"\nport = 0\n')
    past = clock.now - timedelta(hours=1)
    mef_ca = DevCA.create("MEF CA", now=past, permit_dns=[SP], permit_uri=[SP], intermediate=True)
    maker = DevCA.create("Maker", now=past, permit_uri=[SP])
    store = open_store(url, kek, clock=clock)
    state = MEFState(store, MEF_FQDN, clock, (maker.trust_anchor, mef_ca.trust_anchor))
    store_dev_ca(store, mef_ca)
    loaded = load_dev_ca(store)
    assert loaded is not None
    est = ESTService(state, DevCAAuthority(loaded, clock))
    configure_default(state)
    est.set_profile(ESTProfile(ENROLEE, F.AE_ID, (AE_ID,), (SecurityType.SAEF,)))
    state.add_enrolee(EnroleeConfig(CERT_ENROLEE, cert=PeerCertInfo(F.AE_ID, CERT_ENROLEE),
                                    cert_anchors_pem=(maker.trust_anchor.public_bytes(Encoding.PEM).decode(),)))
    est.set_profile(ESTProfile(CERT_ENROLEE, F.AE_ID, (CERT_ENROLEE_EST_ID,), (SecurityType.SAEF,)))
    s = Site(url, kek, clock, config, loaded, creds(mef_ca.issue(F.FQDN, [MEF_FQDN], now=past)),
             creds(maker.issue(F.AE_ID, [CERT_ENROLEE], now=past)), maker.trust_anchor, [store])
    try:
        yield s
    finally:
        for st in s.stores:
            st.close()


class Session(KeepAliveSession):
    async def enrol(self) -> tuple[int, int, dict[bytes, bytes], bytes]:
        return await self.post_json("/enrolment", MEF_FQDN, EnrolmentRequest().to_json(), [("X-M2M-RI", "rq-own")])


async def _est_certificate(site: Site, port: int) -> CertCredentials:
    """ENROLEE's EST certificate (Kpm session: Enrolment Exchange + simpleenroll)."""
    tls = mef_tls_config(psk=PSKCredentials(KPM_ID.encode(), KPM))
    _, prov = await est_enrol("127.0.0.1", port, tls, clock=site.clock)
    return prov.credentials()


def _served(r: tuple[int, int, dict[bytes, bytes], bytes]) -> bool:
    return r[:2] in ((200, int(RSC.OK)), (409, int(RSC.CONFLICT)))


# ------------------------------------------------------------------ the watch alone


def test_sqlite_watch_reads_the_sequence_at_most_once_per_interval(tmp_path: Path) -> None:
    clock = Clock()
    kek = KeyEncryptionKey.generate()
    a = open_store(f"sqlite:///{tmp_path / 'mef.db'}", kek, clock=clock)
    b = open_store(f"sqlite:///{tmp_path / 'mef.db'}", kek, clock=clock)
    t = [100.0]
    try:
        watch = OwnRevocationWatch(MEFState(a, MEF_FQDN, clock), poll_interval=1.0, monotonic=lambda: t[0])
        assert watch.mode == "seq"
        g0 = watch.generation()
        assert watch.polls == 1
        b.notify(EST_REVOKED_CHANNEL, "abc")  # another process records a revocation
        t[0] += 0.999
        assert watch.generation() == g0 and watch.polls == 1  # not read again within the interval
        t[0] += 0.001
        g1 = watch.generation()
        assert g1 > g0 and watch.polls == 2
        t[0] += 5
        assert watch.generation() == g1  # read again, nothing new
        watch.state.note_est_revocation()  # this process: at once, without a read
        assert watch.generation() == g1 + 1 and watch.polls == 3
        with pytest.raises(ValueError):
            OwnRevocationWatch(watch.state, poll_interval=0)
    finally:
        b.close()
        a.close()


@pytest.mark.postgres
def test_postgresql_watch_follows_notifications_and_its_listener(pg_server: Any) -> None:
    url = pg_server.create_database()
    clock = Clock()
    kek = KeyEncryptionKey.generate()
    a, b = open_store(url, kek, clock=clock), open_store(url, kek, clock=clock)
    try:
        watch = OwnRevocationWatch(MEFState(a, MEF_FQDN, clock))
        assert watch.mode == "listen"
        g = watch.generation()
        assert watch.generation() > g  # no listener yet: every call is a change
        assert watch.wait_ready(10)
        g0 = watch.generation()
        assert watch.generation() == g0  # listening, nothing happened: steady
        b.notify(EST_REVOKED_CHANNEL, "abc")
        deadline = time.monotonic() + 5
        while watch.generation() == g0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        watch.close()
        g2 = watch.generation()
        assert watch.generation() > g2  # listener gone: every call is a change again
    finally:
        b.close()
        a.close()


class _Source:
    """A status source whose answer the test sets (the guard is what is tested here)."""

    def __init__(self) -> None:
        self.gen, self.why, self.checks = 0, None, 0

    def generation(self) -> int:
        return self.gen

    def check(self, _verified: VerifiedPeer) -> str | None:
        self.checks += 1
        return self.why


def test_guard_with_only_an_extra_source_checks_only_after_it_changed(site: Site) -> None:
    leaf = site.maker_dev.certificate
    vp = VerifiedPeer(F.AE_ID, CERT_ENROLEE, leaf, path=[leaf], trust_anchor=site.maker_ca_anchor)
    assert SessionStatusGuard(crls=None, ocsp=None, clock=site.clock).session(vp) is None  # nothing to watch
    src = _Source()
    guard = SessionStatusGuard(crls=None, ocsp=None, clock=site.clock, extra=(src,))
    status = guard.session(vp)
    assert status is not None
    assert status.revoked() is None and src.checks == 1  # the first request checks once
    assert status.revoked() is None and src.checks == 1  # unchanged: no check
    src.why = "gone"
    assert status.revoked() is None and src.checks == 1  # the answer changed without a generation: unseen
    src.gen += 1
    assert status.revoked() == "gone" and src.checks == 2
    src.why, src.gen = None, src.gen + 1
    assert status.revoked() == "gone" and src.checks == 2  # revoked for good


class _Flaky(_Source):
    """A source whose look-up fails (StatusUnavailable) while ``fail`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = False

    def check(self, verified: VerifiedPeer) -> str | None:
        if self.fail:
            self.checks += 1
            raise StatusUnavailable("database is locked")
        return super().check(verified)


def test_a_source_that_cannot_answer_is_asked_again_at_the_next_request(site: Site) -> None:
    """A transient failure of a look-up must not count as 'checked at this generation': the
    revocation it missed would otherwise stay hidden until some other revocation (review finding)."""
    leaf = site.maker_dev.certificate
    vp = VerifiedPeer(F.AE_ID, CERT_ENROLEE, leaf, path=[leaf], trust_anchor=site.maker_ca_anchor)
    src = _Flaky()
    status = SessionStatusGuard(crls=None, ocsp=None, clock=site.clock, extra=(src,)).session(vp)
    assert status is not None and status.revoked() is None and src.checks == 1
    src.why, src.gen, src.fail = "revoked by this MEF", src.gen + 1, True
    assert status.revoked() is None and src.checks == 2  # could not tell: this request passes ...
    assert status.revoked() is None and src.checks == 3  # ... and the next one asks again (no new generation)
    src.fail = False
    assert status.revoked() == "revoked by this MEF" and src.checks == 4
    # another source's revocation still decides while one cannot answer
    other, flaky = _Source(), _Flaky()
    flaky.fail = True
    status2 = SessionStatusGuard(crls=None, ocsp=None, clock=site.clock, extra=(flaky, other)).session(vp)
    assert status2 is not None and status2.revoked() is None and other.checks == 1
    other.why, other.gen = "gone", other.gen + 1
    assert status2.revoked() == "gone"


def test_the_watch_reports_an_unusable_store_as_unavailable(tmp_path: Path, site: Site) -> None:
    clock = Clock()
    store = open_store(f"sqlite:///{tmp_path / 'own.db'}", KeyEncryptionKey.generate(), clock=clock)
    watch = OwnRevocationWatch(MEFState(store, MEF_FQDN, clock), poll_interval=1.0)
    leaf = site.maker_dev.certificate
    vp = VerifiedPeer(F.AE_ID, CERT_ENROLEE, leaf, path=[leaf], trust_anchor=site.maker_ca_anchor)
    assert watch.check(vp) is None  # not revoked by this MEF
    store.close()
    with pytest.raises(StatusUnavailable):
        watch.check(vp)


# ------------------------------------------------------------------ real MEF servers


def test_cli_enrolee_revoke_ends_open_sessions_on_every_instance(site: Site, url: str) -> None:
    backend = "postgresql" if url.startswith("postgresql") else "sqlite"
    bound = BOUND[backend]
    (state_a, est_a), (state_b, est_b) = site.state(), site.state()

    async def go(pa: int, pb: int, ma: ThreadedMEF, mb: ThreadedMEF) -> None:
        est_cert = await _est_certificate(site, pa)
        s1 = await Session.connect("127.0.0.1", pa, site.cert_tls(est_cert))  # EST certificate, instance A
        s2 = await Session.connect("127.0.0.1", pb, site.cert_tls(est_cert))  # the same, instance B
        s3 = await Session.connect("127.0.0.1", pb, site.cert_tls(site.maker_dev))  # another enrolee
        try:
            for s in (s1, s2, s3):
                assert _served(await s.enrol())
            watches = (ma.server.own_revocations, mb.server.own_revocations)
            lookups = [w.lookups for w in watches]
            for _ in range(5):  # nothing changed: requests look nothing up in the store
                for s in (s1, s2, s3):
                    assert _served(await s.enrol())
            assert [w.lookups for w in watches] == lookups

            r = await asyncio.to_thread(site.cli, "enrolee", "revoke", "--enrolee-id", ENROLEE)
            assert r.returncode == 0, r.stderr
            assert f"certificate revoked: {est_cert.certificate.serial_number:x}" in r.stdout
            t0 = time.monotonic()
            refused_after: dict[str, float] = {}
            while len(refused_after) < 2:
                for name, s in (("a", s1), ("b", s2)):
                    if name in refused_after:
                        continue
                    status, rsc, headers, body = await s.enrol()
                    if (status, rsc) == (403, int(RSC.ORIGINATOR_NOT_AUTHENTICATED)):
                        refused_after[name] = time.monotonic() - t0
                        assert headers.get(b"connection") == b"close" and headers.get(b"x-m2m-ri") == b"rq-own"
                        assert b"revoked by this MEF" in body and b"privilegeWithdrawn" in body
                        assert await s.closed_by_server()
                    else:  # not seen yet: the request is processed (the enrolee is revoked: 4103, open)
                        assert (status, rsc) == (403, int(RSC.ORIGINATOR_HAS_NO_PRIVILEGE)), (status, rsc, body)
                assert time.monotonic() - t0 < bound + 1.0, refused_after
                await asyncio.sleep(0.05)
            # within the bound (plus the request itself); SQLite: a request that starts a full
            # poll interval after the CLI returned is refused
            print(f"{backend}: refused {refused_after} s after the CLI returned")
            assert max(refused_after.values()) <= bound + 0.3, refused_after
            assert _served(await s3.enrol())  # the other enrolee's certificate session continues
            assert _served(await s3.enrol())
        finally:
            for s in (s1, s2, s3):
                s.close()

    with (ThreadedMEF(state_a, credentials=site.mef_creds, est=est_a) as ma,
          ThreadedMEF(state_b, credentials=site.mef_creds, est=est_b) as mb):
        asyncio.run(go(ma.port, mb.port, ma, mb))
    audit = state_a.store.list_audit(limit=None)
    refused = [e for e in audit if e.action == "request" and e.outcome == "refused"
               and e.details.get("rsc") == int(RSC.ORIGINATOR_NOT_AUTHENTICATED)]
    assert [e.subject for e in refused] == [ENROLEE, ENROLEE]
    assert all("revoked by this MEF" in e.details["why"] for e in refused)


def test_a_revocation_in_the_same_process_is_seen_at_once(site: Site) -> None:
    state, est = site.state()

    async def go(port: int, m: ThreadedMEF) -> None:
        est_cert = await _est_certificate(site, port)
        s1 = await Session.connect("127.0.0.1", port, site.cert_tls(est_cert))
        s3 = await Session.connect("127.0.0.1", port, site.cert_tls(site.maker_dev))
        try:
            assert _served(await s1.enrol()) and _served(await s3.enrol())
            polls = m.server.own_revocations.polls
            await asyncio.to_thread(est.revoke_certificate, est_cert.certificate.serial_number,
                                    x509.ReasonFlags.key_compromise)
            status, rsc, headers, body = await s1.enrol()  # no waiting: the local counter moved
            assert (status, rsc) == (403, int(RSC.ORIGINATOR_NOT_AUTHENTICATED)) and b"keyCompromise" in body
            assert headers.get(b"connection") == b"close" and await s1.closed_by_server()
            assert m.server.own_revocations.polls == polls  # no sequence read was needed
            assert _served(await s3.enrol())
        finally:
            s1.close()
            s3.close()

    with ThreadedMEF(state, credentials=site.mef_creds, est=est, own_revocation_poll=3600) as m:
        asyncio.run(go(m.port, m))


def test_a_session_of_a_certificate_that_is_not_revoked_is_untouched(site: Site) -> None:
    """Another enrolee's EST certificate is revoked from the CLI: this session's re-check finds
    nothing and it goes on (one look-up for the change, none for the requests after it)."""
    state, est = site.state()

    async def go(port: int, m: ThreadedMEF) -> None:
        mine = await _est_certificate(site, port)
        _, theirs = await est_enrol("127.0.0.1", port, site.cert_tls(site.maker_dev), clock=site.clock)
        s1 = await Session.connect("127.0.0.1", port, site.cert_tls(mine))
        try:
            assert _served(await s1.enrol())
            r = await asyncio.to_thread(site.cli, "est-revoke", "--serial", f"{theirs.certificate.serial_number:x}")
            assert r.returncode == 0, r.stderr
            await asyncio.sleep(DEFAULT_POLL_S + 0.1)
            before = m.server.own_revocations.lookups
            for _ in range(3):
                assert _served(await s1.enrol())
            assert m.server.own_revocations.lookups == before + 1
        finally:
            s1.close()

    with ThreadedMEF(state, credentials=site.mef_creds, est=est) as m:
        asyncio.run(go(m.port, m))
