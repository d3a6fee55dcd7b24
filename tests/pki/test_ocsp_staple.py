"""m2msec.pki.ocsp_staple.OCSPStapler: a server's own OCSP response fetched from a real responder
(OCSPHTTPServer around the dev CA's OCSPResponder, plain http and https), what is stapled, the
schedule (half the remaining validity, backoff, SIGHUP trigger) and every refusal."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from _pki_support import CSE, make_ca
from m2msec.pki import CertificateFlavour, DevCA
from m2msec.pki.ca import private_key_pem
from m2msec.pki.ocsp import OCSPResponder, OCSPStatus, verify_response
from m2msec.pki.ocsp_http import OCSPHTTPServer
from m2msec.pki.ocsp_staple import OCSPStapler, stapler_for_chain

PEM = serialization.Encoding.PEM


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


@contextlib.contextmanager
def serving(respond: Callable[[bytes], bytes]) -> Iterator[OCSPHTTPServer]:
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    server = asyncio.run_coroutine_threadsafe(OCSPHTTPServer(respond).start(), loop).result(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
        loop.close()


def _dead_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}/"


class World:
    def __init__(self) -> None:
        self.clock = Clock()
        self.ca: DevCA = make_ca("Staple SP")
        issued = self.ca.issue(CertificateFlavour.CSE_ID, [CSE], now=self.clock())
        self.leaf = issued.certificate
        self.chain = [self.leaf, *self.ca.chain]
        self.responder = OCSPResponder(self.ca, clock=self.clock)

    def stapler(self, url: str, **kw: Any) -> OCSPStapler:
        return stapler_for_chain(url, self.chain, clock=self.clock, timeout=3, **kw)


@pytest.fixture()
def world() -> World:
    return World()


def test_good_response_is_stapled_for_our_certificate_only(world: World) -> None:
    with serving(world.responder.respond) as srv:
        st = world.stapler(srv.url)
        assert st.staple(world.leaf) is None  # nothing before the first query
        f = st.refresh_once()
    assert f.ok and f.result is not None and f.result.status is OCSPStatus.GOOD
    der = st.staple(world.leaf)
    assert der is not None
    # what is stapled verifies as a client would check it (no nonce)
    assert verify_response(der, world.leaf, world.ca.issuing_cert, now=world.clock()).status is OCSPStatus.GOOD
    other = world.ca.issue(CertificateFlavour.CSE_ID, [CSE], now=world.clock()).certificate
    assert st.staple(other) is None
    # half of the 1 h validity
    assert st.due() == f.at + timedelta(minutes=30)
    # stale: nothing stapled any more
    world.clock.now += timedelta(hours=1, seconds=1)
    assert st.staple(world.leaf) is None and st.current() is None and st.held is not None


def test_revoked_answer_is_stapled_and_logged(world: World, caplog: pytest.LogCaptureFixture) -> None:
    with serving(world.responder.respond) as srv:
        st = world.stapler(srv.url)
        assert st.refresh_once().ok
        world.ca.revoke(world.leaf, now=world.clock(), reason=x509.ReasonFlags.key_compromise)
        with caplog.at_level(logging.INFO, logger="m2msec.pki.ocsp_staple"):
            f = st.refresh_once()
    assert f.result is not None and f.result.status is OCSPStatus.REVOKED
    der = st.staple(world.leaf)
    assert der is not None
    assert verify_response(der, world.leaf, world.ca.issuing_cert, now=world.clock()).status is OCSPStatus.REVOKED
    assert any(r.levelno == logging.ERROR and "REVOKED" in r.getMessage() for r in caplog.records)


def test_responder_down_backoff_and_kept_staple(world: World, caplog: pytest.LogCaptureFixture) -> None:
    st = world.stapler(_dead_url())
    delays = []
    with caplog.at_level(logging.WARNING, logger="m2msec.pki.ocsp_staple"):
        for _ in range(9):
            f = st.refresh_once()
            assert not f.ok and f.error
            delays.append(st.due() - f.at)  # type: ignore[operator]
    assert st.staple(world.leaf) is None
    assert delays[:4] == [timedelta(seconds=s) for s in (30, 60, 120, 240)]
    assert delays[-1] == timedelta(hours=1)  # capped at the period
    assert "no staple" in caplog.text and "failed" in caplog.text
    # with a current response held: a failure keeps it and retries by half its remaining validity
    with serving(world.responder.respond) as srv:
        st = world.stapler(srv.url)
        assert st.refresh_once().ok
    held = st.staple(world.leaf)
    world.clock.now += timedelta(minutes=50)  # 10 min of validity left
    f = st.refresh_once()  # the server is closed now
    assert not f.ok and st.staple(world.leaf) == held
    assert st.due() - f.at == timedelta(seconds=30)  # type: ignore[operator]  # min(30 s backoff, 5 min)
    f = st.refresh_once()
    assert st.due() - f.at == timedelta(minutes=1)  # type: ignore[operator]
    world.clock.now += timedelta(minutes=6)  # 4 min left: half is 2 min, below the 4 min backoff
    f = st.refresh_once()
    assert st.due() - f.at == timedelta(minutes=2)  # type: ignore[operator]


def test_bad_answers_are_not_stapled(world: World) -> None:
    foreign = make_ca("Foreign SP")
    with serving(OCSPResponder(foreign, clock=world.clock).respond) as srv:  # unauthorized for our issuer
        st = world.stapler(srv.url)
        f = st.refresh_once()
    assert not f.ok and f.error == "UNSUCCESSFUL: responseStatus UNAUTHORIZED"
    assert st.staple(world.leaf) is None

    def no_nonce(req: bytes) -> bytes:  # a replayed response without our nonce
        from m2msec.pki.ocsp import build_request
        plain, _ = build_request(world.leaf, world.ca.issuing_cert, nonce=False)
        return world.responder.respond(plain.public_bytes(serialization.Encoding.DER))

    with serving(no_nonce) as srv:
        f = world.stapler(srv.url).refresh_once()
    assert not f.ok and "nonce" in (f.error or "").lower()


def test_configuration_refusals(world: World) -> None:
    with pytest.raises(ValueError, match="issuing CA certificate"):
        stapler_for_chain("http://127.0.0.1:1/", [world.leaf])
    with pytest.raises(ValueError, match="not the issuer"):
        OCSPStapler("http://127.0.0.1:1/", world.leaf, world.ca.trust_anchor)  # the root, not the intermediate
    for url in ("ftp://127.0.0.1/", "http:///nohost", "127.0.0.1:80"):
        with pytest.raises(ValueError, match="not an http"):
            world.stapler(url)
    with pytest.raises(ValueError):
        world.stapler("http://127.0.0.1:1/", period=timedelta(0))


def test_run_trigger_refreshes_at_once(world: World) -> None:
    """The task queries at start, sleeps until due, and a trigger (SIGHUP) queries at once."""
    async def main() -> None:
        async with OCSPHTTPServer(world.responder.respond) as srv:
            sleeps: list[float] = []

            async def sleep(s: float) -> None:
                sleeps.append(s)
                await asyncio.sleep(3600)

            st = stapler_for_chain(srv.url, world.chain, clock=world.clock, sleep=sleep)
            st.start()
            for _ in range(200):
                if st.held is not None and sleeps:
                    break
                await asyncio.sleep(0.01)
            assert st.held is not None and st.held.status is OCSPStatus.GOOD
            assert sleeps == [1800.0]
            world.ca.revoke(world.leaf, now=world.clock())
            st.trigger()
            for _ in range(300):
                if st.held.status is OCSPStatus.REVOKED:
                    break
                await asyncio.sleep(0.01)
            assert st.held.status is OCSPStatus.REVOKED
            with pytest.raises(RuntimeError):
                st.start()
            await st.stop()

    asyncio.run(main())


# ------------------------------------------------------------------ https responder


def _tls_ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _https_server_cert(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> tuple[x509.Certificate, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ocsp")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


@contextlib.contextmanager
def https_responder(tmp: Path, respond: Callable[[bytes], bytes]) -> Iterator[tuple[str, Path]]:
    """An https OCSP responder (POST only) on 127.0.0.1; yields (url, CA file)."""
    ca, ca_key = _tls_ca("OCSP https CA")
    cert, key = _https_server_cert(ca, ca_key)
    (tmp / "ocsp-https-ca.pem").write_bytes(ca.public_bytes(PEM))
    (tmp / "srv.pem").write_bytes(cert.public_bytes(PEM))
    (tmp / "srv.key").write_bytes(private_key_pem(key))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "srv.pem", tmp / "srv.key")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            out = respond(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/ocsp-response")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}/", tmp / "ocsp-https-ca.pem"
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(5)


def test_https_responder_needs_its_ca(world: World, tmp_path: Path) -> None:
    with https_responder(tmp_path, world.responder.respond) as (url, ca_file):
        f = world.stapler(url).refresh_once()  # default store: the private CA is unknown
        assert not f.ok and "does not verify" in (f.error or "")
        st = world.stapler(url, https_ca=ca_file)
        assert st.refresh_once().ok and st.staple(world.leaf) is not None
