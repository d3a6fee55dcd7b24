"""OCSP over HTTP (m2msec.pki.ocsp_http): the responder, the client, openssl as a client, and a TLS
handshake refused because an OCSP response says the peer is revoked."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from _pki_support import CSE, make_ca
from m2msec.pki import CertificateFlavour, DevCA, PeerCertInfo, verify_peer_certificate
from m2msec.pki.errors import CertificateVerificationError, VerificationReason
from m2msec.pki.ocsp import OCSPFailure, OCSPResponder, OCSPResponseError, OCSPStatus, OCSPStore, build_request
from m2msec.pki.ocsp_http import OCSP_REQUEST_TYPE, OCSP_RESPONSE_TYPE, OCSPClient, OCSPFetchError, OCSPHTTPServer, get_url

DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM


def _now() -> datetime:
    return datetime.now(UTC)


@contextlib.contextmanager
def serving(respond: Callable[[bytes], bytes], **kw: object) -> Iterator[OCSPHTTPServer]:
    """An OCSPHTTPServer on an ephemeral loopback port, in a thread with its own event loop."""
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    server = asyncio.run_coroutine_threadsafe(OCSPHTTPServer(respond, **kw).start(), loop).result(10)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
        loop.close()


@pytest.fixture()
def dev() -> tuple[DevCA, x509.Certificate, OCSPResponder]:
    ca = make_ca("HTTP OCSP SP")
    leaf = ca.issue(CertificateFlavour.CSE_ID, [CSE], now=_now()).certificate
    return ca, leaf, OCSPResponder(ca, clock=_now)


def test_client_post_and_get(dev: tuple[DevCA, x509.Certificate, OCSPResponder]) -> None:
    ca, leaf, responder = dev
    store = OCSPStore()
    with serving(responder.respond, base_path="/ocsp") as srv:
        for method in ("POST", "GET"):
            res = OCSPClient(srv.url, method=method, store=store).query_sync(leaf, ca.issuing_cert)
            assert res.status is OCSPStatus.GOOD
        assert len(store) == 2
        ca.revoke(leaf, now=_now(), reason=x509.ReasonFlags.superseded)
        res = asyncio.run(OCSPClient(srv.url).query(leaf, ca.issuing_cert))
        assert res.status is OCSPStatus.REVOKED and res.revocation_reason is x509.ReasonFlags.superseded


def test_http_cache_headers_and_errors(dev: tuple[DevCA, x509.Certificate, OCSPResponder]) -> None:
    ca, leaf, responder = dev
    with serving(responder.respond) as srv, httpx.Client(timeout=5, trust_env=False) as c:
        plain, _ = build_request(leaf, ca.issuing_cert, nonce=False)
        r = c.get(get_url(srv.url, plain.public_bytes(DER)))
        assert r.status_code == 200 and r.headers["content-type"] == OCSP_RESPONSE_TYPE
        cc = r.headers["cache-control"]
        assert cc.startswith("max-age=") and "public" in cc and "no-transform" in cc and "must-revalidate" in cc
        assert 3500 <= int(cc.split(",")[0].split("=")[1]) <= 3600
        assert r.headers["etag"].startswith('"') and "expires" in r.headers and "last-modified" in r.headers
        assert ocsp.load_der_ocsp_response(r.content).certificate_status is ocsp.OCSPCertStatus.GOOD
        # with a nonce (echoed) or by POST: not cacheable
        with_nonce, _ = build_request(leaf, ca.issuing_cert)
        assert c.get(get_url(srv.url, with_nonce.public_bytes(DER))).headers["cache-control"] == "no-store"
        r = c.post(srv.url, content=plain.public_bytes(DER), headers={"Content-Type": OCSP_REQUEST_TYPE})
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        # GET with an unpadded/unencoded base64 containing '/' still works when it decodes
        raw = base64.b64encode(plain.public_bytes(DER)).decode()
        r = c.get(srv.url + raw.replace("/", "%2F").replace("+", "%2B").replace("=", "%3D"))
        assert ocsp.load_der_ocsp_response(r.content).response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        # garbage -> OCSP malformedRequest inside a 200
        for r in (c.get(srv.url + "not-base64!"), c.get(srv.url + base64.b64encode(b"junk").decode()),
                  c.post(srv.url, content=b"junk", headers={"Content-Type": OCSP_REQUEST_TYPE})):
            assert r.status_code == 200
            resp = ocsp.load_der_ocsp_response(r.content)
            assert resp.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
            assert r.headers["cache-control"] == "no-store"
        # HTTP-level refusals
        assert c.post(srv.url, content=b"x", headers={"Content-Type": "text/plain"}).status_code == 415
        assert c.put(srv.url, content=b"x").status_code == 405
        assert c.post(srv.url, content=b"x" * 20000,
                      headers={"Content-Type": OCSP_REQUEST_TYPE}).status_code == 413
    with serving(responder.respond, base_path="/ocsp/") as srv2, httpx.Client(timeout=5, trust_env=False) as c:
        assert c.get(f"http://{srv2.host}:{srv2.port}/elsewhere/xyz").status_code == 404


def test_client_refusals(dev: tuple[DevCA, x509.Certificate, OCSPResponder]) -> None:
    ca, leaf, responder = dev
    other = make_ca("Other HTTP SP", intermediate=False)
    other_leaf = other.issue(CertificateFlavour.CSE_ID, [CSE], now=_now()).certificate

    def no_nonce(der: bytes) -> bytes:  # a responder that ignores the nonce (pre-produced responses)
        req, _ = build_request(leaf, ca.issuing_cert, nonce=False)
        return responder.respond(req.public_bytes(DER))

    def try_later(der: bytes) -> bytes:
        return ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER).public_bytes(DER)

    def huge(der: bytes) -> bytes:
        return b"\x30" * 70000

    with serving(no_nonce) as srv:
        with pytest.raises(OCSPResponseError) as ei:
            OCSPClient(srv.url).query_sync(leaf, ca.issuing_cert)
        assert ei.value.failure is OCSPFailure.NONCE_MISSING
        assert OCSPClient(srv.url, nonce=False).query_sync(leaf, ca.issuing_cert).status is OCSPStatus.GOOD
    with serving(try_later) as srv:
        with pytest.raises(OCSPResponseError) as ei:
            OCSPClient(srv.url).query_sync(leaf, ca.issuing_cert)
        assert ei.value.failure is OCSPFailure.UNSUCCESSFUL
    with serving(huge) as srv:
        with pytest.raises(OCSPFetchError, match="larger"):
            OCSPClient(srv.url).query_sync(leaf, ca.issuing_cert)
        with pytest.raises(OCSPFetchError, match="larger"):
            asyncio.run(OCSPClient(srv.url).query(leaf, ca.issuing_cert))
    with serving(responder.respond) as srv:
        # a foreign issuer: the responder says unauthorized
        with pytest.raises(OCSPResponseError) as ei:
            OCSPClient(srv.url).query_sync(other_leaf, other.issuing_cert)
        assert ei.value.failure is OCSPFailure.UNSUCCESSFUL
    with serving(responder.respond, base_path="/ocsp") as srv:
        with pytest.raises(OCSPFetchError, match="HTTP 404"):
            OCSPClient(f"http://{srv.host}:{srv.port}/other").query_sync(leaf, ca.issuing_cert)
    with pytest.raises(ValueError):
        OCSPClient("ldap://example.com/")


def test_client_timeout() -> None:
    ca = make_ca("Slow SP", intermediate=False)
    leaf = ca.issue(CertificateFlavour.CSE_ID, [CSE], now=_now()).certificate
    import socket

    with socket.socket() as s:  # accepts (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/"
        with pytest.raises(OCSPFetchError, match="timed out"):
            OCSPClient(url, timeout=0.5).query_sync(leaf, ca.issuing_cert)
        with pytest.raises(OCSPFetchError, match="timed out"):
            asyncio.run(OCSPClient(url, timeout=0.5).query(leaf, ca.issuing_cert))


OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(OPENSSL is None, reason="openssl binary not installed")
def test_openssl_client_against_our_responder(tmp_path: Path,
                                              dev: tuple[DevCA, x509.Certificate, OCSPResponder]) -> None:
    ca, leaf, responder = dev
    (tmp_path / "ca.pem").write_bytes(ca.issuing_cert.public_bytes(PEM))
    (tmp_path / "chain.pem").write_bytes(ca.issuing_cert.public_bytes(PEM) + ca.root_cert.public_bytes(PEM))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(PEM))

    def ask(url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([OPENSSL, "ocsp", "-issuer", "ca.pem", "-cert", "leaf.pem", "-url", url,
                               "-CAfile", "chain.pem", "-timeout", "10"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=30)

    with serving(responder.respond) as srv:
        out = ask(srv.url)
        assert out.returncode == 0, out.stderr
        assert "Response verify OK" in out.stderr + out.stdout
        assert "leaf.pem: good" in out.stdout
        ca.revoke(leaf, now=_now(), reason=x509.ReasonFlags.key_compromise)
        out = ask(srv.url)
        assert "leaf.pem: revoked" in out.stdout and "Reason: keyCompromise" in out.stdout, out.stdout + out.stderr
        assert "WARNING: no nonce" not in out.stdout + out.stderr  # the nonce was echoed


# ------------------------------------------------------------------ TLS: a revoked peer refused via OCSP


def _pump(a: object, b: object, rounds: int = 30) -> None:
    a.do_handshake()  # type: ignore[attr-defined]
    for _ in range(rounds):
        moved = False
        for x, y in ((a, b), (b, a)):
            d = x.data_to_send()  # type: ignore[attr-defined]
            if d:
                moved = True
                y.receive_data(d)  # type: ignore[attr-defined]
        if not moved:
            return


def test_tls_handshake_refuses_peer_revoked_via_ocsp(dev: tuple[DevCA, x509.Certificate, OCSPResponder]) -> None:
    from m2msec.tls.engine import CertCredentials, Role, TLSConfig, TLSEngine, TLSHandshakeError

    ca, _, responder = dev
    server_id = ca.issue(CertificateFlavour.CSE_ID, [CSE], now=_now())
    client_id = ca.issue(CertificateFlavour.CSE_ID, ["cse2.m2m.example.com"], now=_now())
    assert server_id.private_key is not None and client_id.private_key is not None
    store = OCSPStore()
    with serving(responder.respond) as srv:
        client_ocsp = OCSPClient(srv.url, store=store)
        assert client_ocsp.query_sync(server_id.certificate, ca.issuing_cert).status is OCSPStatus.GOOD
        assert ca.intermediate_cert is not None
        client_ocsp.query_sync(ca.intermediate_cert, ca.root_cert)

        def handshake() -> TLSEngine:
            hook = partial(verify_peer_certificate, expected=PeerCertInfo(CertificateFlavour.CSE_ID, CSE),
                           trust_anchors=[ca.root_cert], now=_now(), revocation="require", ocsp=store)
            client = TLSEngine(TLSConfig(role=Role.CLIENT, trust_anchors=[ca.root_cert], verify_peer=hook,
                                         credentials=CertCredentials(client_id.private_key, client_id.certificate,
                                                                     tuple(ca.chain))))  # type: ignore[arg-type]
            server = TLSEngine(TLSConfig(role=Role.SERVER, trust_anchors=[ca.root_cert], credentials=CertCredentials(
                server_id.private_key, server_id.certificate, tuple(ca.chain))))  # type: ignore[arg-type]
            _pump(client, server)
            return client

        assert handshake().established  # GOOD from OCSP satisfies "require" with no CRL at all
        ca.revoke(server_id.certificate, now=_now())
        client_ocsp.query_sync(server_id.certificate, ca.issuing_cert)  # the fresh (REVOKED) answer joins the store
        with pytest.raises(TLSHandshakeError) as ei:
            handshake()
    cause = ei.value.__cause__ or ei.value.__context__
    text = str(ei.value) + repr(cause)
    assert "REVOKED" in text and "OCSP" in text
    # the same store, checked directly
    with pytest.raises(CertificateVerificationError) as ve:
        verify_peer_certificate([server_id.certificate, *ca.chain],
                                expected=PeerCertInfo(CertificateFlavour.CSE_ID, CSE), trust_anchors=[ca.root_cert],
                                now=_now(), revocation="if-available", ocsp=store)
    assert ve.value.reason_code is VerificationReason.REVOKED
