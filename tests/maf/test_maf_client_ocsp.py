"""OCSP status checks of MAF Client certificates (TS-0003 8.1.2.2; maf.toml ``[tls] client_ocsp``).

Real MAF servers (``build_server`` from a ``maf.toml`` in-process, and ``m2msec maf serve`` as a
process), a real responder (the in-process RFC 6960 Appendix A server around the development CA's
``OCSPResponder``, counting its requests, or ``m2msec pki serve-ocsp``) and real MAF Clients:
a good certificate is accepted; a certificate revoked at the responder is refused during the
handshake with alert certificate_revoked and nothing of the connection reaches the service; a
responder that is down is no answer (``if-available`` accepts, ``require`` refuses); a forged
response is no answer (a forged GOOD does not satisfy ``require``, a forged REVOKED revokes
nothing); an answer is cached (a second handshake makes no query) and concurrent handshakes
share one query; the event loop serves other connections while a query hangs; the keys are
refused when malformed.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from _mafserve import MAFServe
from cryptography import x509
from cryptography.hazmat.primitives import serialization

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _ocsp_peer import Responder  # noqa: E402
from _ocsp_proc import DevPKI, Leaf, OCSPServe, free_port, now  # noqa: E402

from m2msec.errors import ParseError  # noqa: E402
from m2msec.maf import MAFClient, MAFClientConfig  # noqa: E402
from m2msec.maf.client import MAFResponseError  # noqa: E402
from m2msec.onem2m.rsc import ResponseStatusCode as RSC  # noqa: E402
from m2msec.maf.server import MAFServer, build_server, load_config, open_config_store  # noqa: E402
from m2msec.maf.service import MAFService  # noqa: E402
from m2msec.pki import CertificateFlavour as F  # noqa: E402
from m2msec.pki import PeerCertInfo  # noqa: E402
from m2msec.maf.service import NS  # noqa: E402
from m2msec.store import KeyEncryptionKey  # noqa: E402
from m2msec.tls.engine import CertCredentials, TLSFailureReason, TLSHandshakeError  # noqa: E402

MAF = "maf.example.com"
ADMIN = "sp.example.com"
AE1, AE2, AE3 = "//sp.example.com/CAE1", "//sp.example.com/CAE2", "//sp.example.com/CAE3"


class Setup:
    def __init__(self, tmp: Path, *, aia: bool = False) -> None:
        self.tmp = tmp
        self.pki = DevPKI(tmp)
        self.maf = self.pki.issue(F.FQDN, MAF, "maf")
        self.resp = Responder(self.pki)
        self.aia = aia
        self.leaves: dict[str, Leaf] = {}
        KeyEncryptionKey.generate().write_file(tmp / "kek.hex")

    def issue_clients(self, url: str | None) -> None:
        if self.aia:
            self.pki.ca.ocsp_url = url
        for ae in (AE1, AE2, AE3):
            self.leaves[ae] = self.pki.issue(F.AE_ID, ae, ae.rsplit("/", 1)[-1].lower())

    def write_config(self, tls_extra: str, revocation: str = "if-available") -> Path:
        config = self.tmp / "maf.toml"
        config.write_text(
            f'fqdn = "{MAF}"\nstore = "sqlite:///{self.tmp / "maf.db"}"\nkek_file = "kek.hex"\n'
            f'[tls]\ncert = "maf.pem"\nkey = "maf.key"\nclient_trust_anchors = "root.pem"\n'
            f'revocation = "{revocation}"\n{tls_extra}\n'
            f'[[admin]]\nfqdn = "{ADMIN}"\n', encoding="utf-8")
        cfg = load_config(config)
        store = open_config_store(cfg, clock=now)
        try:
            svc = MAFService(store, MAF, admins=cfg.admins, clock=now)
            for ae in (AE1, AE2, AE3):
                if store.find_record(NS.CERT_CLIENT, ae) is None:
                    svc.add_cert_client(ae, PeerCertInfo(F.AE_ID, ae))
        finally:
            store.close()
        return config

    def client(self, port: int, ae: str) -> MAFClientConfig:
        a = self.leaves[ae]
        return MAFClientConfig(maf_fqdn=MAF, admin_fqdn=ADMIN, host="127.0.0.1", port=port, timeout=10.0,
                               credentials=CertCredentials(a.key, a.cert, a.chain),
                               maf_trust_anchors=(self.pki.ca.trust_anchor,), clock=now)

    async def register(self, port: int, ae: str) -> TLSHandshakeError | None:
        """None when the handshake and a Client Registration succeeded, else the handshake error."""
        try:
            async with MAFClient(self.client(port, ae)) as c:
                try:
                    rsp = await c.register(now() + timedelta(days=1))
                    assert rsp.maf_client_id == ae
                except MAFResponseError as exc:  # a later connection: the request was processed
                    assert exc.rsc is RSC.ORIGINATOR_HAS_ALREADY_REGISTERED, exc
        except TLSHandshakeError as exc:
            return exc
        return None


async def serve(s: Setup, config: Path) -> MAFServer:
    cfg = load_config(config)
    store = open_config_store(cfg, clock=now)
    return await build_server(cfg, store, clock=now).start()


def run(coro_fn: Callable[[], object]) -> None:
    asyncio.run(coro_fn())  # type: ignore[arg-type]


# ------------------------------------------------------------------ in-process MAF + responder


def test_good_accepted_revoked_refused_and_cached(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.issue_clients(None)

    async def go() -> None:
        await s.resp.server.start()
        config = s.write_config(f'client_ocsp = true\nclient_ocsp_url = "{s.resp.server.url}"\n'
                                'client_ocsp_timeout_s = 3')
        srv = await serve(s, config)
        try:
            assert await s.register(srv.port, AE1) is None
            # the leaf and the intermediate (no CRL gives their status): two queries
            assert s.resp.count == 2 and srv.service.client_ocsp.queries == 2
            assert await s.register(srv.port, AE1) is None  # the GOOD answers are held: no query
            assert s.resp.count == 2
            s.pki.ca.revoke(s.leaves[AE2].cert, reason=x509.ReasonFlags.key_compromise, now=now())
            err = await s.register(srv.port, AE2)
            assert err is not None and err.reason is TLSFailureReason.BAD_CERTIFICATE
            assert "certificate revoked" in err.detail  # the alert of the refusal
            assert s.resp.count == 3  # AE2's leaf only: the intermediate's answer is held
            err = await s.register(srv.port, AE2)  # the held REVOKED answer refuses in the hook
            assert err is not None and "certificate revoked" in err.detail and s.resp.count == 3
            # nothing of AE2's connections reached the service: two refused handshakes audited, no procedure
            audit = srv.service.store.list_audit(limit=None)
            refused = [e for e in audit if e.action == "handshake" and e.outcome == "refused"]
            assert len(refused) == 2 and all("revoked" in e.details["reason"] for e in refused)
            assert not any(AE2 in e.subject and "regist" in e.action.lower() for e in audit)
            assert any(AE1 in e.subject and "regist" in e.action.lower() for e in audit)
        finally:
            await srv.close()
            await s.resp.server.close()

    run(go)


def test_revoked_connection_never_reaches_a_handler(tmp_path: Path) -> None:
    """A client with a revoked certificate completes its side of the handshake: the held Finished
    is replaced by the alert and the MAF dispatches nothing for it (a client cannot write a
    request before the server's Finished; input that arrives while the flight is held is
    tested at the engine: tests/tls/test_tls_status_hold.py)."""
    from m2msec.tls.aio import open_connection
    from m2msec.tls.engine import Role, TLSConfig

    s = Setup(tmp_path)
    s.issue_clients(None)
    s.pki.ca.revoke(s.leaves[AE3].cert, reason=x509.ReasonFlags.key_compromise, now=now())

    async def go() -> None:
        await s.resp.server.start()
        config = s.write_config(f'client_ocsp = true\nclient_ocsp_url = "{s.resp.server.url}"')
        srv = await serve(s, config)
        dispatched: list[object] = []
        orig = srv._dispatch

        async def spy(*a: object) -> object:
            dispatched.append(a)
            return await orig(*a)  # type: ignore[arg-type]

        srv._dispatch = spy  # type: ignore[method-assign]
        try:
            a = s.leaves[AE3]
            cfg = TLSConfig(role=Role.CLIENT, credentials=CertCredentials(a.key, a.cert, a.chain),
                            trust_anchors=(s.pki.ca.trust_anchor,))
            with pytest.raises(TLSHandshakeError) as ei:
                await open_connection("127.0.0.1", srv.port, cfg, server_name=MAF)
            assert "certificate revoked" in ei.value.detail
            assert await s.register(srv.port, AE1) is None  # a good client still works
            assert len(dispatched) == 1  # AE1's registration only
        finally:
            await srv.close()
            await s.resp.server.close()

    run(go)


@pytest.mark.parametrize("revocation, accepted", [("if-available", True), ("require", False)])
def test_responder_down(tmp_path: Path, revocation: str, accepted: bool) -> None:
    s = Setup(tmp_path)
    s.issue_clients(None)

    async def go() -> None:
        config = s.write_config(f'client_ocsp = true\nclient_ocsp_url = "http://127.0.0.1:{free_port()}/"',
                                revocation)
        srv = await serve(s, config)
        try:
            err = await s.register(srv.port, AE1)
            if accepted:
                assert err is None
            else:
                assert err is not None and err.reason is TLSFailureReason.BAD_CERTIFICATE
                assert "certificate unknown" in err.detail
            assert srv.service.client_ocsp.queries == 2  # leaf and intermediate, both failed
        finally:
            await srv.close()

    run(go)


@pytest.mark.parametrize("mode", ["forged-good", "forged-revoked"])
@pytest.mark.parametrize("revocation", ["if-available", "require"])
def test_forged_response_is_no_answer(tmp_path: Path, mode: str, revocation: str) -> None:
    s = Setup(tmp_path)
    s.issue_clients(None)
    s.resp.mode = mode

    async def go() -> None:
        await s.resp.server.start()
        # failure cache off: the next handshake asks again at once (tests/maf/test_maf_session_revocation.py
        # has the cache)
        config = s.write_config(f'client_ocsp = true\nclient_ocsp_url = "{s.resp.server.url}"\n'
                                'client_ocsp_failure_cache_s = 0', revocation)
        srv = await serve(s, config)
        try:
            err = await s.register(srv.port, AE1)
            assert s.resp.count == 2
            assert len(srv.service.client_ocsp.store) == 0  # nothing unverified is held
            if revocation == "if-available":
                assert err is None  # a forged REVOKED revokes nothing
            else:
                assert err is not None and "certificate unknown" in err.detail  # a forged GOOD proves nothing
            s.resp.mode = "real"
            assert await s.register(srv.port, AE1) is None  # the next handshake asks again
            assert s.resp.count == 4
        finally:
            await srv.close()
            await s.resp.server.close()

    run(go)


def test_require_satisfied_by_ocsp_and_url_from_aia(tmp_path: Path) -> None:
    """No client_ocsp_url: the URL comes from the leaf's authorityInfoAccess; under ``require``
    the leaf's GOOD answer suffices (the intermediate is covered by a CRL file)."""
    s = Setup(tmp_path, aia=True)

    async def go() -> None:
        await s.resp.server.start()
        s.issue_clients(s.resp.server.url)
        crl = s.pki.ca.issue_crl(now=now(), signer="root")
        (tmp_path / "root.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        config = s.write_config('client_ocsp = true\nclient_crls = ["root.crl"]', "require")
        srv = await serve(s, config)
        try:
            assert await s.register(srv.port, AE1) is None
            assert s.resp.count == 1  # only the leaf: the intermediate has a current CRL
        finally:
            await srv.close()
            await s.resp.server.close()

    run(go)


def test_queries_shared_and_event_loop_not_blocked(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.issue_clients(None)

    async def go() -> None:
        await s.resp.server.start()
        config = s.write_config(f'client_ocsp = true\nclient_ocsp_url = "{s.resp.server.url}"\n'
                                'client_ocsp_timeout_s = 4')
        srv = await serve(s, config)
        try:
            # three concurrent handshakes of one certificate: one query per certificate of the path
            # (leaf, intermediate; 0.4 s each at the responder)
            s.resp.delay = 0.4
            res = await asyncio.gather(*(s.register(srv.port, AE1) for _ in range(3)))
            assert res == [None, None, None] and s.resp.count == 2
            s.resp.delay = 0.0
            # AE2's query hangs; AE1 (answer held) is served meanwhile
            s.resp.mode = "hang"
            t0 = time.monotonic()
            slow = asyncio.create_task(s.register(srv.port, AE2))
            while s.resp.count < 3:
                await asyncio.sleep(0.01)
            assert await s.register(srv.port, AE1) is None
            assert time.monotonic() - t0 < 2.0 and not slow.done()
            s.resp.mode = "real"
            s.resp.release.set()
            assert await slow is None
        finally:
            s.resp.release.set()
            await srv.close()
            await s.resp.server.close()

    run(go)


def test_a_hanging_responder_is_cut_at_the_timeout(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.issue_clients(None)
    s.resp.mode = "hang"

    async def go() -> None:
        await s.resp.server.start()
        config = s.write_config(f'client_ocsp = true\nclient_ocsp_url = "{s.resp.server.url}"\n'
                                'client_ocsp_timeout_s = 1', "require")
        srv = await serve(s, config)
        try:
            t0 = time.monotonic()
            err = await s.register(srv.port, AE1)
            assert err is not None and "certificate unknown" in err.detail
            assert 0.9 < time.monotonic() - t0 < 5
        finally:
            s.resp.release.set()
            await srv.close()
            await s.resp.server.close()

    run(go)


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize("extra, revocation, needle", [
    ("client_ocsp = 1", "if-available", "client_ocsp must be true or false"),
    ('client_ocsp_url = "http://127.0.0.1:1/"', "if-available", "without client_ocsp = true"),
    ("client_ocsp = true", "off", "not \"off\""),
    ('client_ocsp = true\nclient_ocsp_url = "ftp://x/"', "if-available", "client_ocsp_url must be"),
    ("client_ocsp = true\nclient_ocsp_url = 5", "if-available", "client_ocsp_url must be"),
    ("client_ocsp = true\nclient_ocsp_timeout_s = 0", "if-available", "client_ocsp_timeout_s"),
    ("client_ocsp = true\nclient_ocsp_timeout_s = 30", "if-available", "client_ocsp_timeout_s"),
    ('client_ocsp = true\nclient_ocsp_timeout_s = "5"', "if-available", "client_ocsp_timeout_s"),
    ('client_ocsp = true\nclient_ocsp_https_ca = "missing.pem"', "if-available", "client_ocsp_https_ca"),
    ('client_ocsp = true\nclient_ocsp_https_ca = ""', "if-available", "client_ocsp_https_ca"),
    ("client_ocsp_true = true", "if-available", "client_ocsp_true"),
])
def test_malformed_keys_are_refused(tmp_path: Path, extra: str, revocation: str, needle: str) -> None:
    s = Setup(tmp_path)
    with pytest.raises(ParseError) as ei:
        s.write_config(extra, revocation)
    assert needle in str(ei.value)


def test_config_values(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    (tmp_path / "ocsp-ca.pem").write_bytes(s.pki.ca.trust_anchor.public_bytes(serialization.Encoding.PEM))
    cfg = load_config(s.write_config('client_ocsp = true\nclient_ocsp_url = "https://pki.example.com/ocsp"\n'
                                     'client_ocsp_https_ca = "ocsp-ca.pem"\nclient_ocsp_timeout_s = 2.5', "require"))
    assert cfg.client_ocsp is not None and cfg.client_ocsp.url == "https://pki.example.com/ocsp"
    assert cfg.client_ocsp.timeout == 2.5 and cfg.client_ocsp.https_ca == str(tmp_path / "ocsp-ca.pem")
    checker = cfg.client_ocsp_checker(clock=now)
    assert checker is not None and checker.policy.value == "require" and checker.https_ca is not None
    assert load_config(s.write_config("client_ocsp = false")).client_ocsp is None
    assert load_config(s.write_config("")).client_ocsp_checker(clock=now) is None


# ------------------------------------------------------------------ processes: maf serve + pki serve-ocsp


def test_maf_serve_with_pki_serve_ocsp(tmp_path: Path) -> None:
    s = Setup(tmp_path, aia=True)
    ocsp_srv = OCSPServe(s.pki)
    s.issue_clients(ocsp_srv.url)  # leaves name the responder in authorityInfoAccess
    s.pki.revoke(s.leaves[AE2])  # m2msec pki revoke, before AE2's first handshake
    # the intermediate names no responder: the root's CRL gives its status (require)
    crl = s.pki.ca.issue_crl(now=now(), signer="root")
    (tmp_path / "root.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    config = s.write_config('client_ocsp = true\nclient_crls = ["root.crl"]', "require")
    srv = MAFServe(config)
    try:
        assert asyncio.run(s.register(srv.port, AE1)) is None
        err = asyncio.run(s.register(srv.port, AE2))
        assert err is not None and err.reason is TLSFailureReason.BAD_CERTIFICATE and "certificate revoked" in err.detail
        ocsp_srv.stop()  # responder down: AE1's answer is held, AE3 has none -> refused under require
        assert asyncio.run(s.register(srv.port, AE1)) is None
        err = asyncio.run(s.register(srv.port, AE3))
        assert err is not None and "certificate unknown" in err.detail
        assert srv.proc.poll() is None
    finally:
        srv.stop()
        ocsp_srv.stop()
