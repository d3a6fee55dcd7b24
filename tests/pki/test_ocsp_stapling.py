"""OCSP stapling (RFC 6066 section 8) through the TLS engine: the server staples its own response,
the client requests and verifies it (m2msec.tls.pkiverify.OCSPStapleCheck); openssl s_client -status
sees our staple."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from _pki_support import CSE, make_ca
from m2msec.pki import CertificateFlavour, DevCA, IssuedCertificate, PeerCertInfo
from m2msec.pki.ca import private_key_pem
from m2msec.pki.errors import CertificateVerificationError, VerificationReason
from m2msec.pki.ocsp import OCSPResponder, OCSPStatus, OCSPStore, build_request
from m2msec.tls.engine import CertCredentials, Role, TLSConfig, TLSEngine, TLSFailureReason, TLSHandshakeError
from m2msec.tls.pkiverify import OCSPStapleCheck, pki_tls_kwargs

DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM
CLIENT_ID = "cse2.m2m.example.com"


def _now() -> datetime:
    return datetime.now(UTC)


class World:
    def __init__(self) -> None:
        self.ca: DevCA = make_ca("Stapling SP")
        self.server: IssuedCertificate = self.ca.issue(CertificateFlavour.CSE_ID, [CSE], now=_now())
        self.client: IssuedCertificate = self.ca.issue(CertificateFlavour.CSE_ID, [CLIENT_ID], now=_now())
        self.responder = OCSPResponder(self.ca, clock=_now)
        self.asked: list[x509.Certificate] = []

    def response_for(self, cert: x509.Certificate, *, at: Callable[[], datetime] = _now) -> bytes:
        req, _ = build_request(cert, self.ca.issuing_cert, nonce=False)
        return OCSPResponder(self.ca, clock=at).respond(req.public_bytes(DER))

    def staple(self, cert: x509.Certificate) -> bytes | None:
        self.asked.append(cert)
        return self.response_for(cert)

    def creds(self, who: IssuedCertificate) -> CertCredentials:
        return CertCredentials(who.private_key, who.certificate, tuple(self.ca.chain))  # type: ignore[arg-type]

    def handshake(self, *, staple: Any = "default", check: Any = None) -> tuple[TLSEngine, TLSEngine]:
        source = self.staple if staple == "default" else staple
        kw = pki_tls_kwargs(PeerCertInfo(CertificateFlavour.CSE_ID, CSE), [self.ca.root_cert], _now)
        client = TLSEngine(TLSConfig(role=Role.CLIENT, credentials=self.creds(self.client), check_ocsp_staple=check,
                                     **kw))
        server = TLSEngine(TLSConfig(role=Role.SERVER, credentials=self.creds(self.server),
                                     trust_anchors=[self.ca.root_cert], ocsp_staple=source))
        client.do_handshake()
        for _ in range(30):
            moved = False
            for a, b in ((client, server), (server, client)):
                d = a.data_to_send()
                if d:
                    moved = True
                    b.receive_data(d)
            if not moved:
                break
        return client, server


@pytest.fixture()
def world() -> World:
    return World()


def test_good_staple_is_verified_and_stored(world: World) -> None:
    store = OCSPStore()
    client, server = world.handshake(check=OCSPStapleCheck(_now, require=True, store=store))
    assert client.established and server.established
    assert world.asked == [world.server.certificate]
    res = client.ocsp_staple_result
    assert res is not None and res.status is OCSPStatus.GOOD and res.serial_number == world.server.certificate.serial_number
    assert len(store.for_serial(world.server.certificate.serial_number)) == 1


def _refused(world: World, reason: VerificationReason, **kw: Any) -> TLSHandshakeError:
    with pytest.raises(TLSHandshakeError) as ei:
        world.handshake(**kw)
    assert ei.value.reason is TLSFailureReason.BAD_CERTIFICATE_STATUS, ei.value
    cause = ei.value.__cause__
    assert isinstance(cause, CertificateVerificationError) and cause.reason_code is reason, cause
    return ei.value


def test_revoked_staple_refused(world: World) -> None:
    world.ca.revoke(world.server.certificate, now=_now())
    err = _refused(world, VerificationReason.REVOKED, check=OCSPStapleCheck(_now))
    assert "stapled OCSP" in str(err.__cause__)


def test_missing_staple(world: World) -> None:
    _refused(world, VerificationReason.REVOCATION_UNKNOWN, staple=None, check=OCSPStapleCheck(_now, require=True))
    client, _ = world.handshake(staple=None, check=OCSPStapleCheck(_now))
    assert client.established and client.ocsp_staple_result is None

    def broken(cert: x509.Certificate) -> bytes:
        raise RuntimeError("responder down")

    client, _ = world.handshake(staple=broken, check=OCSPStapleCheck(_now))  # a failing source: no staple
    assert client.established and client.ocsp_staple_result is None


def test_stale_staple_refused(world: World) -> None:
    stale = world.response_for(world.server.certificate, at=lambda: _now() - timedelta(hours=2))
    err = _refused(world, VerificationReason.OCSP_INVALID, staple=lambda c: stale, check=OCSPStapleCheck(_now))
    assert "STALE" in str(err.__cause__)


def test_openssl_bundled_server_drops_staples_for_other_certificates(world: World) -> None:
    """pyOpenSSL's OpenSSL sends a staple only when it parses and names the server certificate."""
    other = world.response_for(world.client.certificate)
    for bad in (other, b"\x30\x03abc"):
        client, _ = world.handshake(staple=lambda c, b=bad: b, check=OCSPStapleCheck(_now))
        assert client.established and client.ocsp_staple_result is None
        _refused(world, VerificationReason.REVOCATION_UNKNOWN, staple=lambda c, b=bad: b,
                 check=OCSPStapleCheck(_now, require=True))


def test_no_status_request_no_staple(world: World) -> None:
    client, _ = world.handshake(check=None)
    assert client.established and world.asked == [] and client.ocsp_staple_result is None


OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(OPENSSL is None, reason="openssl binary not installed")
def test_openssl_s_client_sees_our_staple(tmp_path: Path, world: World) -> None:
    (tmp_path / "ca.pem").write_bytes(world.ca.root_cert.public_bytes(PEM))
    (tmp_path / "c.pem").write_bytes(world.client.certificate.public_bytes(PEM))
    (tmp_path / "chain.pem").write_bytes(b"".join(c.public_bytes(PEM) for c in world.ca.chain))
    (tmp_path / "c.key").write_bytes(private_key_pem(world.client.private_key))  # type: ignore[arg-type]
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(20)
    port = srv.getsockname()[1]
    outcome: dict[str, Any] = {}

    def serve() -> None:
        try:
            conn, _ = srv.accept()
        except OSError as exc:
            outcome["error"] = exc
            return
        with conn:
            conn.settimeout(20)
            eng = TLSEngine(TLSConfig(role=Role.SERVER, credentials=world.creds(world.server),
                                      trust_anchors=[world.ca.root_cert], ocsp_staple=world.staple))
            try:
                while not eng.established:
                    data = conn.recv(65536)
                    if not data:
                        break
                    eng.receive_data(data)
                    eng.do_handshake()
                    out = eng.data_to_send()
                    if out:
                        conn.sendall(out)
                outcome["established"] = eng.established
                eng.close()
                with_bye = eng.data_to_send()
                if with_bye:
                    conn.sendall(with_bye)
            except (TLSHandshakeError, OSError) as exc:
                outcome["error"] = exc

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        p = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-status", "-tls1_2",
                            "-CAfile", "ca.pem", "-cert", "c.pem", "-cert_chain", "chain.pem", "-key", "c.key", "-verify_return_error"],
                           cwd=tmp_path, input="", capture_output=True, text=True, timeout=30)
    finally:
        t.join(20)
        srv.close()
    text = p.stdout + p.stderr
    assert outcome.get("established") is True, (outcome, text)
    assert "OCSP Response Status: successful" in text, text
    assert "Cert Status: good" in text, text


def _client_against_openssl_server(tmp_path: Path, world: World, status: bytes, check: OCSPStapleCheck) -> TLSEngine:
    """Our client engine against ``openssl s_server -status_file`` (a peer that staples anything)."""
    def key_pem(k: Any) -> bytes:
        return private_key_pem(k)

    (tmp_path / "ca.pem").write_bytes(world.ca.root_cert.public_bytes(PEM))
    (tmp_path / "s.pem").write_bytes(world.server.certificate.public_bytes(PEM))
    (tmp_path / "chain.pem").write_bytes(b"".join(c.public_bytes(PEM) for c in world.ca.chain))
    (tmp_path / "s.key").write_bytes(key_pem(world.server.private_key))
    (tmp_path / "status.der").write_bytes(status)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", "-cert", "s.pem", "-cert_chain",
                             "chain.pem", "-key", "s.key", "-tls1_2", "-Verify", "1", "-CAfile", "ca.pem",
                             "-status_file", "status.der", "-naccept", "1"],
                            cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        assert proc.stdout is not None
        for _ in range(50):
            line = proc.stdout.readline()
            if "ACCEPT" in line or not line:
                break
        kw = pki_tls_kwargs(PeerCertInfo(CertificateFlavour.CSE_ID, CSE), [world.ca.root_cert], _now)
        eng = TLSEngine(TLSConfig(role=Role.CLIENT, credentials=world.creds(world.client), check_ocsp_staple=check,
                                  **kw))
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            eng.do_handshake()
            while not eng.established:
                out = eng.data_to_send()
                if out:
                    sock.sendall(out)
                data = sock.recv(65536)
                if not data:
                    raise AssertionError("openssl s_server closed the connection")
                try:
                    eng.receive_data(data)
                    eng.do_handshake()
                except TLSHandshakeError:
                    with contextlib.suppress(OSError):
                        sock.sendall(eng.data_to_send())
                    raise
        return eng
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stdin is not None:
            proc.stdin.close()


@pytest.mark.skipif(OPENSSL is None, reason="openssl binary not installed")
def test_staples_from_openssl_s_server(tmp_path: Path, world: World) -> None:
    good = world.response_for(world.server.certificate)
    eng = _client_against_openssl_server(tmp_path, world, good, OCSPStapleCheck(_now, require=True))
    assert eng.established and eng.ocsp_staple_result.status is OCSPStatus.GOOD
    other = world.response_for(world.client.certificate)  # a response for another certificate
    foreign = make_ca("Foreign staple SP", intermediate=False)
    fleaf = foreign.issue(CertificateFlavour.CSE_ID, [CSE], now=_now()).certificate
    freq, _ = build_request(fleaf, foreign.issuing_cert, nonce=False)
    fresp = OCSPResponder(foreign, clock=_now).respond(freq.public_bytes(DER))
    # (garbage is not testable here: s_server itself refuses a -status_file that does not parse)
    for bad, failure in ((other, "CERT_ID_MISMATCH"), (fresp, "UNAUTHORIZED_SIGNER")):
        with pytest.raises(TLSHandshakeError) as ei:
            _client_against_openssl_server(tmp_path, world, bad, OCSPStapleCheck(_now))
        assert ei.value.reason is TLSFailureReason.BAD_CERTIFICATE_STATUS
        cause = ei.value.__cause__
        assert isinstance(cause, CertificateVerificationError) and cause.reason_code is VerificationReason.OCSP_INVALID
        assert failure in str(cause), cause
    world.ca.revoke(world.server.certificate, now=_now())
    revoked = world.response_for(world.server.certificate)
    with pytest.raises(TLSHandshakeError) as ei:
        _client_against_openssl_server(tmp_path, world, revoked, OCSPStapleCheck(_now))
    assert isinstance(ei.value.__cause__, CertificateVerificationError)
    assert ei.value.__cause__.reason_code is VerificationReason.REVOKED


def test_pki_verify_hook_consults_ocsp_store(world: World) -> None:
    """PKIVerifyHook(ocsp=store): held responses satisfy "require"; a REVOKED one gets certificate_revoked."""
    store = OCSPStore([world.response_for(world.server.certificate)])
    assert world.ca.intermediate_cert is not None
    req, _ = build_request(world.ca.intermediate_cert, world.ca.root_cert, nonce=False)
    store.add(world.responder.respond(req.public_bytes(DER)))

    def run() -> TLSEngine:
        kw = pki_tls_kwargs(PeerCertInfo(CertificateFlavour.CSE_ID, CSE), [world.ca.root_cert], _now,
                            revocation="require", ocsp=store)
        client = TLSEngine(TLSConfig(role=Role.CLIENT, credentials=world.creds(world.client), **kw))
        server = TLSEngine(TLSConfig(role=Role.SERVER, credentials=world.creds(world.server),
                                     trust_anchors=[world.ca.root_cert]))
        client.do_handshake()
        for _ in range(30):
            moved = False
            for a, b in ((client, server), (server, client)):
                d = a.data_to_send()
                if d:
                    moved = True
                    b.receive_data(d)
            if not moved:
                break
        return client

    assert run().established
    world.ca.revoke(world.server.certificate, now=_now())
    store.add(world.response_for(world.server.certificate, at=lambda: _now() + timedelta(seconds=1)))
    with pytest.raises(TLSHandshakeError) as ei:
        run()
    assert ei.value.reason is TLSFailureReason.PEER_REJECTED
    cause = ei.value.__cause__
    assert isinstance(cause, CertificateVerificationError) and cause.reason_code is VerificationReason.REVOKED
    assert getattr(cause, "tls_alert", None) == "certificate_revoked"
