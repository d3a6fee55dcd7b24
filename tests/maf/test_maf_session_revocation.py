"""Revocation during an established MAF session and the OCSP failure cache (TS-0003 8.1.2.2;
maf.toml ``[tls] client_crls`` / ``client_ocsp`` / ``client_ocsp_failure_cache_s``).

Real MAF servers (``build_server`` from a ``maf.toml`` in-process with an injected clock, and
``m2msec maf serve`` as a process with SIGHUP), real TLS (certificate MAF Handshakes, keep-alive
HTTP/1.1 written with h11 by the test so that the server's close is observed, not the
client's), the development CA's CRLs and OCSP responder, and a real local responder that
fails every query with HTTP 500 (counting its hits) or a closed port:

* a client certificate revoked after the handshake (CRL files re-read as SIGHUP does, or a
  REVOKED OCSP answer fetched by another handshake of the certificate) gets 4106
  ORIGINATOR_NOT_AUTHENTICATED / HTTP 403 with ``Connection: close`` on its next request
  of the same connection, the MAF closes the connection, and the refusal is audited; a client
  that is not revoked keeps its session; a PSK session is not watched at all;
* a failed query is reused within ``client_ocsp_failure_cache_s`` (no new responder hit),
  queried again after it; ``require`` refuses on the remembered failure as on a fresh one,
  ``if-available`` accepts it (never as GOOD); 0 turns the cache off; malformed values are
  refused.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _mafserve import MAFServe
from cryptography import x509

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _h11_session import KeepAliveSession, write_crls
from _ocsp_failing import FailingResponder, MovableClock
from _ocsp_peer import Responder
from _ocsp_proc import DevPKI, Leaf, free_port, now

from m2msec.errors import ParseError
from m2msec.maf import MAFClient, MAFClientConfig
from m2msec.maf.protocol import (
    ClientRegistrationRequest,
    ClientRegistrationResponse,
    ConfigurationRetrievalRequest,
    Procedure,
    decode_body,
    encode_body,
)
from m2msec.maf.server import MAFServer, build_server, load_config, open_config_store
from m2msec.maf.service import NS, MAFService
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import OCSPResponder, PeerCertInfo
from m2msec.pki.cli import reload_crls_and_report
from m2msec.store import KeyEncryptionKey
from m2msec.tls.engine import CertCredentials, PSKCredentials, TLSHandshakeError

MAF = "maf.example.com"
ADMIN = "sp.example.com"
AE1, AE2 = "//sp.example.com/CAE1", "//sp.example.com/CAE2"
KMID = "psk-client@maf.example.com"
KM = bytes(range(32))


class Setup:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pki = DevPKI(tmp)
        self.pki.issue(F.FQDN, MAF, "maf")
        self.leaves: dict[str, Leaf] = {ae: self.pki.issue(F.AE_ID, ae, ae.rsplit("/", 1)[-1].lower())
                                        for ae in (AE1, AE2)}
        KeyEncryptionKey.generate().write_file(tmp / "kek.hex")

    def write_crls(self) -> None:
        write_crls(self.tmp, self.pki.ca)

    def write_config(self, tls_extra: str, revocation: str = "if-available") -> Path:
        config = self.tmp / "maf.toml"
        config.write_text(
            f'fqdn = "{MAF}"\nstore = "sqlite:///{self.tmp / "maf.db"}"\nkek_file = "kek.hex"\n'
            f'[tls]\ncert = "maf.pem"\nkey = "maf.key"\nclient_trust_anchors = "root.pem"\n'
            f'revocation = "{revocation}"\n{tls_extra}\n'
            f'[[admin]]\nfqdn = "{ADMIN}"\nclient_config = {{ httpPort = 8443 }}\n', encoding="utf-8")
        cfg = load_config(config)
        store = open_config_store(cfg, clock=now)
        try:
            svc = MAFService(store, MAF, admins=cfg.admins, clock=now)
            for ae in (AE1, AE2):
                if store.find_record(NS.CERT_CLIENT, ae) is None:
                    svc.add_cert_client(ae, PeerCertInfo(F.AE_ID, ae))
            if store.find_credential(NS.KM, svc._kmid_key(KMID)) is None:
                svc.add_km_client(KMID, KM, client_id="psk-client")
        finally:
            store.close()
        return config

    def client(self, port: int, ae: str | None) -> MAFClientConfig:
        if ae is None:
            return MAFClientConfig(maf_fqdn=MAF, admin_fqdn=ADMIN, host="127.0.0.1", port=port, timeout=10.0,
                                   psk=PSKCredentials(KMID.encode(), KM), clock=now)
        a = self.leaves[ae]
        return MAFClientConfig(maf_fqdn=MAF, admin_fqdn=ADMIN, host="127.0.0.1", port=port, timeout=10.0,
                               credentials=CertCredentials(a.key, a.cert, a.chain),
                               maf_trust_anchors=(self.pki.ca.trust_anchor,), clock=now)

    async def handshake(self, port: int, ae: str) -> TLSHandshakeError | None:
        """None when a certificate MAF Handshake succeeds (the connection is closed again)."""
        try:
            async with MAFClient(self.client(port, ae)):
                pass
        except TLSHandshakeError as exc:
            return exc
        return None


class Session(KeepAliveSession):
    """One keep-alive MAF connection driven with h11 by the test: ``post``, ``closed_by_server``."""

    @classmethod
    async def open(cls, cfg: MAFClientConfig) -> Session:
        return await cls.connect(cfg.host, cfg.port, cfg.tls_config(cfg.psk), server_name=MAF)

    async def post(self, proc: Procedure, msg: Any) -> tuple[int, int, dict[bytes, bytes], bytes]:
        return await self.post_json(proc.path, MAF, encode_body(msg))

    async def register(self) -> str:
        status, rsc, _, out = await self.post(Procedure.CLIENT_REGISTRATION,
                                              ClientRegistrationRequest(MAF, now() + timedelta(days=1), ADMIN))
        assert status == 201 and rsc == int(RSC.CREATED), out
        return decode_body(ClientRegistrationResponse, out).maf_client_reg_id

    async def configuration(self, reg_id: str) -> tuple[int, int, dict[bytes, bytes], bytes]:
        return await self.post(Procedure.CONFIGURATION_RETRIEVAL, ConfigurationRetrievalRequest(MAF, reg_id))


async def serve(config: Path, clock: Any = now) -> MAFServer:
    cfg = load_config(config)
    return await build_server(cfg, open_config_store(cfg, clock=clock), clock=clock).start()


def _refusal_audited(srv: MAFServer, subject: str) -> list[Any]:
    srv.service.audit.flush()
    return [e for e in srv.service.store.list_audit(limit=None)
            if e.action == "session" and e.subject == subject and e.outcome == "refused 4106"]


# ------------------------------------------------------------------ revocation during a session (CRLs)


def test_crl_revocation_ends_the_session_of_that_client_only(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.write_crls()
    config = s.write_config('client_crls = ["issuing.crl", "root.crl"]', "require")

    async def go() -> None:
        srv = await serve(config)
        sessions: list[Session] = []
        try:
            s1 = await Session.open(s.client(srv.port, AE1))
            s2 = await Session.open(s.client(srv.port, AE2))
            sp = await Session.open(s.client(srv.port, None))  # a PSK session on the same MAF
            sessions += [s1, s2, sp]
            reg1, reg2 = await s1.register(), await s2.register()
            await sp.register()
            guard = srv.service.session_guard
            checks = guard.rechecks  # one per certificate session (its first request)
            for _ in range(20):  # nothing changed: no path check per request
                assert (await s1.configuration(reg1))[0] == 200
            assert guard.rechecks == checks

            s.pki.ca.revoke(s.leaves[AE1].cert, reason=x509.ReasonFlags.key_compromise, now=now())
            s.write_crls()
            cfg = load_config(config)
            reload_crls_and_report(srv.service.client_crls, list(cfg.client_crl_files))  # what SIGHUP does

            status, rsc, headers, out = await s1.configuration(reg1)
            assert (status, rsc) == (403, int(RSC.ORIGINATOR_NOT_AUTHENTICATED))
            assert headers.get(b"connection") == b"close" and b"revoked" in out
            assert await s1.closed_by_server()
            assert _refusal_audited(srv, AE1)
            # AE2 (not revoked) and the PSK client keep their sessions
            status, rsc, _, _ = await s2.configuration(reg2)
            assert (status, rsc) == (200, int(RSC.OK))
            assert (await sp.post(Procedure.CLIENT_REGISTRATION,
                                  ClientRegistrationRequest(MAF, now() + timedelta(days=1), ADMIN)))[1] \
                == int(RSC.ORIGINATOR_HAS_ALREADY_REGISTERED)
            assert not _refusal_audited(srv, AE2)
            # a new handshake of AE1 is refused by the same CRL
            err = await s.handshake(srv.port, AE1)
            assert err is not None and "certificate revoked" in err.detail
        finally:
            for x in sessions:
                x.close()
            await srv.close()

    asyncio.run(go())


def test_psk_sessions_are_not_watched(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.write_crls()
    config = s.write_config('client_crls = ["issuing.crl", "root.crl"]')

    async def go() -> None:
        srv = await serve(config)
        try:
            sp = await Session.open(s.client(srv.port, None))
            s1 = await Session.open(s.client(srv.port, AE1))
            await sp.register()
            await s1.register()
            # the server side: the PSK session's peer has no session status, the certificate one has
            assert srv.service.session_status(srv.service.bind(sp.writer.engine)) is None
            assert srv.service.session_guard.rechecks == 1  # AE1's first request only
            for _ in range(10):
                await sp.post(Procedure.CLIENT_REGISTRATION,
                              ClientRegistrationRequest(MAF, now() + timedelta(days=1), ADMIN))
            assert srv.service.session_guard.rechecks == 1
            sp.close()
            s1.close()
        finally:
            await srv.close()

    asyncio.run(go())


def test_sighup_revocation_closes_the_session_in_maf_serve(tmp_path: Path) -> None:
    """``m2msec maf serve``: an open session of a certificate that a re-read CRL file revokes
    is refused on its next request and closed."""
    s = Setup(tmp_path)
    s.write_crls()
    config = s.write_config('client_crls = ["issuing.crl", "root.crl"]', "require")
    srv = MAFServe(config, start_timeout=20)

    async def go() -> None:
        s1 = await Session.open(s.client(srv.port, AE1))
        try:
            reg = await s1.register()
            assert (await s1.configuration(reg))[0] == 200
            s.pki.ca.revoke(s.leaves[AE1].cert, now=now())
            s.write_crls()
            srv.proc.send_signal(signal.SIGHUP)
            assert srv.line(10).strip() == "crls reloaded 2"
            status, rsc, headers, _ = await s1.configuration(reg)
            assert (status, rsc) == (403, int(RSC.ORIGINATOR_NOT_AUTHENTICATED))
            assert headers.get(b"connection") == b"close"
            assert await s1.closed_by_server()
        finally:
            s1.close()

    try:
        asyncio.run(go())
        assert srv.proc.poll() is None
    finally:
        srv.stop()


# ------------------------------------------------------------------ revocation during a session (OCSP)


def test_ocsp_revoked_answer_of_a_later_handshake_ends_the_session(tmp_path: Path) -> None:
    """AE1's session started on GOOD answers; after their nextUpdate (the MAF's clock moved on) a
    second handshake of AE1 fetches REVOKED: that handshake is refused and the first session's
    next request too (the held answer; no query per request)."""
    s = Setup(tmp_path)
    clock = MovableClock()
    resp = Responder(s.pki)
    resp.real = OCSPResponder(s.pki.ca, clock=clock)  # the responder shares the MAF's clock

    async def go() -> None:
        await resp.server.start()
        config = s.write_config(f'client_ocsp = true\nclient_ocsp_url = "{resp.server.url}"', "require")
        srv = await serve(config, clock)
        try:
            s1 = await Session.open(s.client(srv.port, AE1))
            s2 = await Session.open(s.client(srv.port, AE2))
            reg1, reg2 = await s1.register(), await s2.register()
            assert resp.count == 3  # AE1: leaf + intermediate; AE2: its leaf (the intermediate's answer is held)
            hits = resp.count
            for _ in range(5):
                assert (await s1.configuration(reg1))[0] == 200
            assert resp.count == hits  # no query per request
            s.pki.ca.revoke(s.leaves[AE1].cert, reason=x509.ReasonFlags.key_compromise, now=now())
            assert (await s1.configuration(reg1))[0] == 200  # the held GOOD answer is still current
            clock.advance(2 * 3600)  # past the answers' nextUpdate (1 h)
            err = await s.handshake(srv.port, AE1)
            assert err is not None and "certificate revoked" in err.detail
            status, rsc, headers, _ = await s1.configuration(reg1)
            assert (status, rsc) == (403, int(RSC.ORIGINATOR_NOT_AUTHENTICATED))
            assert headers.get(b"connection") == b"close" and await s1.closed_by_server()
            # AE2's session: its stale GOOD answer is no revocation (only a revocation ends a session)
            assert (await s2.configuration(reg2))[0] == 200
            s1.close()
            s2.close()
        finally:
            await srv.close()
            await resp.server.close()

    asyncio.run(go())


# ------------------------------------------------------------------ failure cache


@pytest.mark.parametrize("revocation", ["if-available", "require"])
def test_failed_query_is_reused_within_the_window(tmp_path: Path, revocation: str) -> None:
    s = Setup(tmp_path)
    clock = MovableClock()
    bad = FailingResponder(500)

    async def go() -> None:
        config = s.write_config(f'client_ocsp = true\nclient_ocsp_url = "{bad.url}"\n'
                                'client_ocsp_failure_cache_s = 30', revocation)
        srv = await serve(config, clock)
        checker = srv.service.client_ocsp
        assert checker is not None and checker.failure_cache == 30
        try:
            for attempt in range(3):
                err = await s.handshake(srv.port, AE1)
                if revocation == "require":  # the remembered failure refuses like a fresh one
                    assert err is not None and "certificate unknown" in err.detail, attempt
                else:
                    assert err is None, attempt
                assert bad.count == 2  # leaf + intermediate, queried once only
            assert checker.failures_reused == 4 and checker.queries == 2
            assert len(checker.store) == 0  # a failure is never held as an answer
            clock.advance(29)
            await s.handshake(srv.port, AE1)
            assert bad.count == 2
            clock.advance(2)  # the window has passed: asked again
            err = await s.handshake(srv.port, AE1)
            assert bad.count == 4 and checker.queries == 4
            assert (err is None) is (revocation == "if-available")
            # another certificate is not decided by AE1's failures
            await s.handshake(srv.port, AE2)
            assert bad.count == 5  # AE2's leaf (the intermediate's failure is remembered)
        finally:
            await srv.close()

    try:
        asyncio.run(go())
    finally:
        bad.close()


def test_remembered_failure_is_not_a_good_answer_after_the_responder_recovers(tmp_path: Path) -> None:
    """Within the window the remembered failure stands even if the responder works again
    (require: refused); after it, the real GOOD answer is fetched and accepted."""
    s = Setup(tmp_path)
    clock = MovableClock()
    resp = Responder(s.pki)
    resp.real = OCSPResponder(s.pki.ca, clock=clock)
    resp.mode = "forged-good"  # an unauthorised signer: a failure

    async def go() -> None:
        await resp.server.start()
        config = s.write_config(f'client_ocsp = true\nclient_ocsp_url = "{resp.server.url}"\n'
                                'client_ocsp_failure_cache_s = 10', "require")
        srv = await serve(config, clock)
        try:
            err = await s.handshake(srv.port, AE1)
            assert err is not None and "certificate unknown" in err.detail and resp.count == 2
            resp.mode = "real"
            err = await s.handshake(srv.port, AE1)
            assert err is not None and "certificate unknown" in err.detail and resp.count == 2
            clock.advance(11)
            assert await s.handshake(srv.port, AE1) is None and resp.count == 4
        finally:
            await srv.close()
            await resp.server.close()

    asyncio.run(go())


@pytest.mark.parametrize("where", ["http-500", "closed-port"])
def test_failure_cache_off(tmp_path: Path, where: str) -> None:
    s = Setup(tmp_path)
    bad = FailingResponder(500) if where == "http-500" else None
    url = bad.url if bad is not None else f"http://127.0.0.1:{free_port()}/"

    async def go() -> None:
        config = s.write_config(f'client_ocsp = true\nclient_ocsp_url = "{url}"\nclient_ocsp_failure_cache_s = 0',
                                "require")
        srv = await serve(config)
        checker = srv.service.client_ocsp
        try:
            for n in (1, 2, 3):
                err = await s.handshake(srv.port, AE1)
                assert err is not None and "certificate unknown" in err.detail
                assert checker.queries == 2 * n and checker.failures_reused == 0
                if bad is not None:
                    assert bad.count == 2 * n
        finally:
            await srv.close()

    try:
        asyncio.run(go())
    finally:
        if bad is not None:
            bad.close()


def test_closed_port_failure_is_reused_by_default(tmp_path: Path) -> None:
    """Without the key the window is 30 s: a second handshake makes no query to a dead responder."""
    s = Setup(tmp_path)

    async def go() -> None:
        config = s.write_config(f'client_ocsp = true\nclient_ocsp_url = "http://127.0.0.1:{free_port()}/"')
        srv = await serve(config)
        checker = srv.service.client_ocsp
        try:
            assert checker.failure_cache == 30
            assert await s.handshake(srv.port, AE1) is None
            assert await s.handshake(srv.port, AE1) is None
            assert checker.queries == 2 and checker.failures_reused == 2
        finally:
            await srv.close()

    asyncio.run(go())


@pytest.mark.parametrize("extra, needle", [
    ("client_ocsp = true\nclient_ocsp_failure_cache_s = -1", "client_ocsp_failure_cache_s"),
    ("client_ocsp = true\nclient_ocsp_failure_cache_s = 3601", "client_ocsp_failure_cache_s"),
    ('client_ocsp = true\nclient_ocsp_failure_cache_s = "30"', "client_ocsp_failure_cache_s"),
    ("client_ocsp = true\nclient_ocsp_failure_cache_s = true", "client_ocsp_failure_cache_s"),
    ("client_ocsp_failure_cache_s = 30", "without client_ocsp = true"),
])
def test_malformed_failure_cache_refused(tmp_path: Path, extra: str, needle: str) -> None:
    s = Setup(tmp_path)
    with pytest.raises(ParseError) as ei:
        s.write_config(extra)
    assert needle in str(ei.value)


def test_failure_cache_values(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    cfg = load_config(s.write_config("client_ocsp = true\nclient_ocsp_failure_cache_s = 2.5"))
    assert cfg.client_ocsp is not None and cfg.client_ocsp.failure_cache == 2.5
    assert cfg.client_ocsp_checker(clock=now).failure_cache == 2.5  # type: ignore[union-attr]
    assert load_config(s.write_config("client_ocsp = true")).client_ocsp.failure_cache == 30  # type: ignore[union-attr]
    assert load_config(s.write_config("client_ocsp = true\nclient_ocsp_failure_cache_s = 0")) \
        .client_ocsp.failure_cache == 0  # type: ignore[union-attr]
