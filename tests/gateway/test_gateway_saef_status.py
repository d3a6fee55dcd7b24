"""Certificate status of AE certificates on the gateway's SAEF listener (TS-0003 8.1.2.2 for the
Certificate-Based SAEF of 8.2.2.2; m2msec.gateway.saefstatus), in process.

A real gateway.toml (``[[saef_cert]]`` with ``crl_urls``/``crl_issuers``/``crl_refresh_s`` or
``ocsp``/``ocsp_url``), the SAEF listener of :meth:`SAEFListener.for_config` in front of a
recording stand-in CSE, a real CRL HTTP server (:class:`m2msec.pki.crl_http.CRLHTTPServer`
serving the development CA's CRLs, signed per request) and a real OCSP responder
(:class:`m2msec.pki.ocsp_http.OCSPHTTPServer` + :class:`m2msec.pki.OCSPResponder`), and real
TLS 1.2 handshakes by AEs with AE-ID certificates: a good AE is accepted; an AE revoked at the
CA is refused (alert certificate_revoked, nothing reaches the CSE) after the next refresh or a
reload (CRL URLs) or at once (OCSP); a CRL server or responder that is down is accepted under
``if-available`` and refused under ``require``; malformed keys are configuration errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from _saef_support import (
    BASE,
    CSE_ID,
    CSE_NAME,
    PEM,
    SP,
    SP_ID,
    RecordingCSE,
    ae_certificate_client,
    empty_receiver,
    utc_now,
    write_ca_files,
    write_cse_credentials,
)
from _saef_support import run as saef_run
from cryptography import x509

from m2msec.gateway.config import ConfigError, load_config
from m2msec.gateway.saef import SAEFListener, build_endpoint
from m2msec.gateway.server import Gateway
from m2msec.net.endpoint import AEEndpoint
from m2msec.onem2m import Operation, RequestPrimitive
from m2msec.pki import CertificateFlavour, DevCA, IssuedCertificate, OCSPResponder
from m2msec.pki.crl_http import CRLHTTPServer
from m2msec.pki.ocsp_http import OCSPHTTPServer
from m2msec.saef.http import SAEFHTTPClient
from m2msec.tls.engine import TLSFailureReason, TLSHandshakeError

GOOD, BAD = "Cstat-good", "Cstat-bad"


@dataclass
class World:
    tmp: Path
    ca: DevCA
    ae: dict[str, IssuedCertificate]

    def revoke(self, ae: str) -> None:
        self.ca.revoke(self.ae[ae].certificate, now=utc_now(), reason=x509.ReasonFlags.key_compromise)

    def write(self, extra: str, *, revocation: str = "if-available") -> Path:
        """gateway.toml: [saef] with the CSE certificate and one [[saef_cert]] per AE (``extra`` in each)."""
        text = (f'[cse]\nid = "{CSE_ID}"\nname = "{CSE_NAME}"\nsp_id = "{SP_ID}"\n'
                f'[saef]\nlisten = "127.0.0.1:0"\ncert = "cse.pem"\nkey = "cse.key"\n')
        for ae in (GOOD, BAD):
            text += (f'[[saef_cert]]\nflavour = "ae-id"\nidentifier = "{SP_ID}/{CSE_ID}/{ae}"\n'
                     f'root_of_trust = "root.pem"\nae_id = "{ae}"\nrevocation = "{revocation}"\n{extra}\n')
        path = self.tmp / "gateway.toml"
        path.write_text(text, encoding="utf-8")
        return path


def _write_pki(directory: Path, ca: DevCA, t0: datetime) -> None:
    """cse.pem/cse.key (a CSE-ID certificate of ``ca``), root.pem and sub.pem in ``directory``."""
    write_cse_credentials(directory, ca.issue(CertificateFlavour.CSE_ID, [f"in.{SP}"], now=t0), "cse.pem", "cse.key")
    write_ca_files(directory, ca)


@pytest.fixture
def world(tmp_path: Path) -> World:
    t0 = utc_now() - timedelta(hours=1)
    ca = DevCA.create("SAEF status SP", now=t0, intermediate=True)
    _write_pki(tmp_path, ca, t0)
    aes = {ae: ca.issue(CertificateFlavour.AE_ID, [f"{SP_ID}/{CSE_ID}/{ae}"], now=t0) for ae in (GOOD, BAD)}
    return World(tmp_path, ca, aes)


@dataclass
class Rig:
    cse: RecordingCSE
    saef: SAEFListener
    config: Path


@asynccontextmanager
async def rig(config: Path) -> AsyncIterator[Rig]:
    cse = RecordingCSE()
    async with AEEndpoint(cse) as ep:
        cfg = load_config(config, cse_url=ep.url)
        assert cfg.saef is not None
        gw = Gateway(cse_url=ep.url, cse_id=CSE_ID, cse_name=CSE_NAME, receiver=empty_receiver(), sp_id=SP_ID)
        async with gw:
            lst = SAEFListener.for_config(gw, cfg.saef, clock=utc_now, sp_id=SP_ID)
            async with lst:
                yield Rig(cse, lst, config)


class CRLServer:
    """The CA's issuing (intermediate) and root CRLs over HTTP, signed at every request."""

    def __init__(self, ca: DevCA) -> None:
        self.server = CRLHTTPServer({"issuing": lambda: ca.issue_crl(now=utc_now()),
                                     "root": lambda: ca.issue_crl(now=utc_now(), signer="root")})

    def keys(self) -> str:
        return (f'crl_urls = ["{self.server.url("issuing")}", "{self.server.url("root")}"]\n'
                'crl_issuers = "sub.pem"\n')


class Responder:
    """The CA's OCSP responder over HTTP, counting the requests."""

    def __init__(self, ca: DevCA) -> None:
        self.real = OCSPResponder(ca, clock=utc_now)
        self.count = 0
        self.server = OCSPHTTPServer(self.respond)

    def respond(self, der: bytes) -> bytes:
        self.count += 1
        return self.real.respond(der)


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return saef_run(fn, 25)


def _client(w: World, ae: str) -> Any:
    return ae_certificate_client(w.ae[ae], w.ca, "/" + CSE_ID)


async def attempt(w: World, r: Rig, ae: str, rqi: str) -> TLSHandshakeError | None:
    """Handshake as ``ae`` and retrieve the CSEBase: None when the CSE answered, else the error."""
    try:
        async with await SAEFHTTPClient.connect(_client(w, ae), r.saef.host, r.saef.port, timeout=8) as c:
            rsp = await c.send(RequestPrimitive(op=Operation.RETRIEVE, to=BASE, fr=ae, rqi=rqi, rvi="3"))
    except TLSHandshakeError as exc:
        return exc
    assert int(rsp.rsc) == 2000
    return None


def _revoked(err: TLSHandshakeError | None) -> bool:
    return err is not None and err.reason is TLSFailureReason.BAD_CERTIFICATE and "certificate revoked" in err.detail


# ---------------------------------------------------------------- CRL URLs


def test_crl_urls_fetched_before_listening_shared_and_a_refresh_revokes(world: World) -> None:
    w = world

    async def go() -> None:
        srv = CRLServer(w.ca)
        async with srv.server as crl:
            config = w.write(srv.keys() + "crl_refresh_s = 1", revocation="require")
            async with rig(config) as r:
                status = r.saef.status
                assert status is not None and len(status.groups) == 1  # two AEs of one CA: one refresher
                [refresher] = status.refreshers
                # both URLs fetched (and verified: the issuing CRL by crl_issuers) before the first handshake
                assert sorted(res.outcome.value for res in refresher.last.values()) == ["updated", "updated"]
                assert await attempt(w, r, GOOD, "g1") is None  # require: a current CRL for leaf and intermediate
                assert await attempt(w, r, BAD, "b1") is None
                w.revoke(BAD)
                t_revoked = utc_now()
                deadline = time.monotonic() + 8
                while time.monotonic() < deadline:  # the next refresh (crl_refresh_s = 1)
                    last = refresher.last[crl.url("issuing")]
                    if last.at > t_revoked and last.ok:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the CRL was not refreshed")
                err = await attempt(w, r, BAD, "b2")
                assert _revoked(err), err
                assert await attempt(w, r, GOOD, "g2") is None
                assert [q.rqi for q in r.cse.seen] == ["g1", "b1", "g2"]  # nothing of the refused association

    run(go)


def test_sighup_reload_fetches_at_once_and_keeps_the_refresher(world: World) -> None:
    """crl_refresh_s = 3600: a revocation is seen only when the reload fetches at once."""
    w = world

    async def go() -> None:
        srv = CRLServer(w.ca)
        async with srv.server:
            config = w.write(srv.keys())
            async with rig(config) as r:
                assert r.saef.status is not None
                [refresher] = r.saef.status.refreshers
                w.revoke(BAD)
                assert await attempt(w, r, BAD, "b1") is None  # the CRL in force predates the revocation
                cfg = load_config(config, cse_url="http://127.0.0.1:9")
                assert cfg.saef is not None
                assert await r.saef.reload_async(cfg.saef, clock=utc_now) == 2
                assert r.saef.status.refreshers == [refresher]  # same URLs: the same refresher
                assert refresher._task is not None and not refresher._task.done()
                assert _revoked(await attempt(w, r, BAD, "b2"))
                assert await attempt(w, r, GOOD, "g1") is None
                # a file without crl_urls: the refresher stops, the association keeps no fetched CRL
                w.write("")
                cfg = load_config(config, cse_url="http://127.0.0.1:9")
                assert cfg.saef is not None
                assert await r.saef.reload_async(cfg.saef, clock=utc_now) == 2
                await asyncio.sleep(0)
                assert r.saef.status.groups == []
                assert refresher._task is None or refresher._task.done()
                assert await attempt(w, r, BAD, "b3") is None  # if-available, no CRL any more
                assert [q.rqi for q in r.cse.seen] == ["b1", "g1", "b3"]

    run(go)


def test_new_crl_urls_on_reload_are_fetched_before_they_take_over(world: World) -> None:
    w = world

    async def go() -> None:
        srv = CRLServer(w.ca)
        async with srv.server:
            config = w.write("")  # no CRL URLs yet
            async with rig(config) as r:
                w.revoke(BAD)
                assert await attempt(w, r, BAD, "b1") is None
                w.write(srv.keys())
                cfg = load_config(config, cse_url="http://127.0.0.1:9")
                assert cfg.saef is not None
                await r.saef.reload_async(cfg.saef, clock=utc_now)
                assert r.saef.status is not None and len(r.saef.status.refreshers) == 1
                assert _revoked(await attempt(w, r, BAD, "b2"))  # fetched before the new bindings took over

    run(go)


@pytest.mark.parametrize(("revocation", "accepted"), [("if-available", True), ("require", False)])
def test_crl_server_down(world: World, revocation: str, accepted: bool) -> None:
    w = world

    async def go() -> None:
        dead = CRLHTTPServer({})
        await dead.start()
        url = f"http://127.0.0.1:{dead.port}/crl/issuing.crl"
        await dead.close()  # nothing listens there any more
        config = w.write(f'crl_urls = "{url}"\ncrl_issuers = "sub.pem"', revocation=revocation)
        async with rig(config) as r:
            assert r.saef.status is not None
            [refresher] = r.saef.status.refreshers
            assert not refresher.last[url].ok
            err = await attempt(w, r, GOOD, "g1")
            if accepted:
                assert err is None and [q.rqi for q in r.cse.seen] == ["g1"]
            else:
                assert err is not None and err.reason is TLSFailureReason.BAD_CERTIFICATE and r.cse.seen == []

    run(go)


# ---------------------------------------------------------------- OCSP


def test_ocsp_good_accepted_revoked_refused_at_once(world: World) -> None:
    w = world

    async def go() -> None:
        resp = Responder(w.ca)
        async with resp.server:
            config = w.write(f'ocsp = true\nocsp_url = "{resp.server.url}"\nocsp_timeout_s = 3')
            async with rig(config) as r:
                assert await attempt(w, r, GOOD, "g1") is None
                assert resp.count == 2  # leaf and intermediate (no CRL gives their status)
                assert await attempt(w, r, GOOD, "g2") is None
                assert resp.count == 2  # held GOOD answers: no query
                w.revoke(BAD)  # no refresh, no reload: the next handshake asks
                assert _revoked(await attempt(w, r, BAD, "b1"))
                assert resp.count == 3  # BAD's leaf only (the intermediate's answer is held)
                assert _revoked(await attempt(w, r, BAD, "b2"))  # the held REVOKED answer, no query
                assert resp.count == 3
                assert [q.rqi for q in r.cse.seen] == ["g1", "g2"]
                # both associations share one checker and the answers it holds
                certs = r.saef.endpoint.tls_context.config.verify_peer.hooks  # type: ignore[union-attr]
                assert certs[0][0].peer_ocsp is certs[1][0].peer_ocsp is not None

    run(go)


@pytest.mark.parametrize(("revocation", "accepted"), [("if-available", True), ("require", False)])
def test_ocsp_responder_down(world: World, revocation: str, accepted: bool) -> None:
    w = world

    async def go() -> None:
        dead = OCSPHTTPServer(lambda der: b"")
        await dead.start()
        url = dead.url
        await dead.close()
        config = w.write(f'ocsp = true\nocsp_url = "{url}"\nocsp_timeout_s = 2', revocation=revocation)
        async with rig(config) as r:
            err = await attempt(w, r, GOOD, "g1")
            if accepted:
                assert err is None and [q.rqi for q in r.cse.seen] == ["g1"]
            else:
                assert err is not None and err.reason is TLSFailureReason.BAD_CERTIFICATE
                assert "certificate unknown" in err.detail and r.cse.seen == []

    run(go)


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(("extra", "revocation", "message"), [
    ('crl_urls = "ftp://pki.m2m.example.com/x.crl"', "if-available", "not an http(s) CRL URL"),
    ('crl_urls = ["http://pki/x.crl"]\ncrl_refresh_s = 0', "if-available", "crl_refresh_s"),
    ('crl_urls = ["http://pki/x.crl"]\ncrl_refresh_s = 1.5', "if-available", "crl_refresh_s"),
    ('crl_urls = ["http://pki/x.crl"]\ncrl_refresh_s = true', "if-available", "crl_refresh_s"),
    ('crl_from_cdp = "yes"', "if-available", "crl_from_cdp must be true or false"),
    ("crl_from_cdp = true", "if-available", "names an http(s) cRLDistributionPoint"),
    ('crl_issuers = "sub.pem"', "if-available", "without crl_urls"),
    ("crl_refresh_s = 60", "if-available", "without crl_urls"),
    ('crl_urls = ["http://pki/x.crl"]\ncrl_https_ca = "sub.crl"', "if-available", "https CA file"),
    ('crl_urls = ["http://pki/x.crl"]\ncrl_issuers = "nothing.pem"', "if-available", "cannot read"),
    ('crl_urls = ["http://pki/x.crl"]', "off", 'not "off"'),
    ('ocsp = "yes"', "if-available", "ocsp must be true or false"),
    ('ocsp_url = "http://pki/ocsp"', "if-available", "without ocsp = true"),
    ('ocsp = true\nocsp_url = "ldap://pki/"', "if-available", "ocsp_url must be an http"),
    ("ocsp = true\nocsp_timeout_s = 10", "if-available", "ocsp_timeout_s"),
    ("ocsp = true", "off", 'needs revocation = "if-available" or "require"'),
    ('ocsp_uri = "http://pki/ocsp"', "if-available", "unknown key 'ocsp_uri' in [[saef_cert]]"),
])
def test_status_keys_are_checked(world: World, extra: str, revocation: str, message: str) -> None:
    (world.tmp / "sub.crl").write_bytes(world.ca.issue_crl(now=utc_now()).public_bytes(PEM))
    with pytest.raises(ConfigError) as ei:
        load_config(world.write(extra, revocation=revocation), cse_url="http://127.0.0.1:9")
    assert message in str(ei.value)


def test_crl_from_cdp_takes_the_distribution_points_of_the_configured_cas(tmp_path: Path) -> None:
    t0 = utc_now() - timedelta(hours=1)
    ca = DevCA.create("CDP SP", now=t0, intermediate=True, crl_url="http://pki.m2m.example.com/issuing.crl",
                      root_crl_url="http://pki.m2m.example.com/root.crl")
    w = World(tmp_path, ca, {})
    _write_pki(tmp_path, ca, t0)
    cfg = load_config(w.write('crl_from_cdp = true\ncrl_issuers = "sub.pem"\n'
                              'crl_urls = "http://pki.m2m.example.com/extra.crl"'), cse_url="http://127.0.0.1:9")
    assert cfg.saef is not None
    # configured URLs first; the intermediate's CDP (the root's CRL); never a leaf's
    assert cfg.saef.certs[0].crl_urls == ("http://pki.m2m.example.com/extra.crl", "http://pki.m2m.example.com/root.crl")


def test_build_endpoint_refuses_associations_without_their_status_sources(world: World) -> None:
    cfg = load_config(world.write('ocsp = true\nocsp_url = "http://127.0.0.1:9/"'), cse_url="http://127.0.0.1:9")
    assert cfg.saef is not None
    with pytest.raises(ValueError, match="SAEFCertStatus"):
        build_endpoint(cfg.saef, clock=utc_now)
