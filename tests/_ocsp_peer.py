"""Shared by the client-certificate OCSP tests (tests/maf, tests/mef): the development CA's
responder behind the in-process RFC 6960 Appendix A server, counting requests, able to hang or
to answer with forged responses."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from _ocsp_proc import DevPKI, now
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from m2msec.pki import OCSPResponder
from m2msec.pki.ocsp_http import OCSPHTTPServer


class Responder:
    """The development CA's responder behind OCSPHTTPServer; ``mode``: real | forged-good |
    forged-revoked | hang; ``count`` requests received."""

    def __init__(self, pki: DevPKI, delay: float = 0.0) -> None:
        self.real = OCSPResponder(pki.ca, clock=now)
        self.mode = "real"
        self.count = 0
        self.delay = delay
        self.release = threading.Event()
        self.server = OCSPHTTPServer(self.respond)

    def respond(self, der: bytes) -> bytes:
        self.count += 1
        if self.mode == "hang":
            self.release.wait(10)
        if self.delay:
            time.sleep(self.delay)
        if self.mode.startswith("forged"):
            return forge(der, revoked=self.mode == "forged-revoked")
        return self.real.respond(der)


def forge(der: bytes, *, revoked: bool) -> bytes:
    """A well-formed answer for the request's CertID (nonce echoed) signed by a key of nobody."""
    req = ocsp.load_der_ocsp_request(der)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "forger")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now() - timedelta(days=1)).not_valid_after(now() + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    t = now().replace(microsecond=0)
    b = ocsp.OCSPResponseBuilder().add_response_by_hash(
        issuer_name_hash=req.issuer_name_hash, issuer_key_hash=req.issuer_key_hash, serial_number=req.serial_number,
        algorithm=req.hash_algorithm,
        cert_status=ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD,
        this_update=t, next_update=t + timedelta(hours=1),
        revocation_time=t - timedelta(hours=1) if revoked else None, revocation_reason=None)
    b = b.responder_id(ocsp.OCSPResponderEncoding.HASH, cert).certificates([cert])
    for e in req.extensions:
        if isinstance(e.value, x509.OCSPNonce):
            b = b.add_extension(e.value, critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


