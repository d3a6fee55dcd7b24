"""A standard EST client against the MEF: curl + openssl (RFC 7030 examples) over the certificate RSPF.

curl runs the Enrolment Exchange (JSON) to get the one-time challengePassword, fetches
/cacerts and /csrattrs (parsed by openssl), ``openssl req`` makes the CSR, curl posts it
to /simpleenroll; the certificate (openssl pkcs7 -print_certs) verifies with openssl and
then authenticates curl to the MEF for a second Enrolment Exchange and /simplereenroll.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from _esthelp import CERT_ENROLEE, CERT_ENROLEE_EST_ID, World, make_world
from _mefhelp import MEF_FQDN
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from m2msec.mef.est import NS_EST_ISSUED
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import identifiers_of

pytestmark = pytest.mark.skipif(shutil.which("curl") is None or shutil.which("openssl") is None,
                                reason="curl and openssl CLIs needed")
PEM = serialization.Encoding.PEM
AE_URI = "https:" + CERT_ENROLEE_EST_ID


def sh(*args: str, input: bytes | None = None) -> bytes:
    done = subprocess.run(list(args), input=input, capture_output=True, timeout=20)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-600:]
    return done.stdout


class Curl:
    def __init__(self, tmp: Path, port: int, cert: Path, key: Path, cacert: Path) -> None:
        self.base = f"https://{MEF_FQDN}:{port}"
        self.common = ["curl", "-sS", "--resolve", f"{MEF_FQDN}:{port}:127.0.0.1", "--cacert", str(cacert),
                       "--cert", str(cert), "--key", str(key), "--max-time", "15"]
        self.tmp = tmp

    def __call__(self, path: str, *extra: str) -> tuple[int, bytes]:
        out = self.tmp / "curl.out"
        code = sh(*self.common, "-o", str(out), "-w", "%{http_code}", *extra, self.base + path)
        return int(code), out.read_bytes()

    def enrolment_challenge(self) -> str:
        status, body = self("/enrolment", "-H", "Content-Type: application/json", "--data-binary",
                            '{"CertificateEnrolmentIndication":true,"MAFEnrolmentIndication":false,'
                            '"RemoteManagementIndication":false}')
        assert status == 200, body
        ins = json.loads(body)["Instructions"]
        return next(i["ChallengePassword"] for i in ins if i["InstructionType"] == "CertificateEnrolment")


def openssl_csr(tmp: Path, stem: str, challenge: str) -> tuple[Path, Path]:
    """``openssl req``: new P-256 key, SAN URI = the AE-ID, challengePassword attribute; base64 DER CSR."""
    cnf = tmp / f"{stem}.cnf"
    cnf.write_text("[req]\ndistinguished_name = dn\nattributes = attrs\nprompt = no\n"
                   f"[dn]\nCN = Ccertdev-op\n[attrs]\nchallengePassword = {challenge}\n")
    key, der = tmp / f"{stem}.key.pem", tmp / f"{stem}.csr.der"
    sh("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", str(key), "-config", str(cnf), "-addext", f"subjectAltName=URI:{AE_URI}",
       "-outform", "DER", "-out", str(der))
    b64 = tmp / f"{stem}.csr.b64"
    b64.write_bytes(base64.encodebytes(der.read_bytes()))
    return key, b64


def test_curl_and_openssl_as_est_client(tmp_path: Path) -> None:
    w: World = make_world(tmp_path)
    mef_root = tmp_path / "mef-root.pem"
    mef_root.write_bytes(w.ca.trust_anchor.public_bytes(PEM))
    dev_cert, dev_key = tmp_path / "maker.cert.pem", tmp_path / "maker.key.pem"
    dev_cert.write_bytes(w.maker_dev.certificate.public_bytes(PEM))
    dev_key.write_bytes(w.maker_dev.private_key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    with w.mef() as m:
        curl = Curl(tmp_path, m.port, dev_cert, dev_key, mef_root)
        challenge = curl.enrolment_challenge()

        # /cacerts: openssl parses our PKCS#7 certs-only
        status, body = curl("/.well-known/est/cacerts")
        assert status == 200
        p7 = tmp_path / "cacerts.p7"
        p7.write_bytes(base64.b64decode(body))
        cas = x509.load_pem_x509_certificates(sh("openssl", "pkcs7", "-inform", "DER", "-in", str(p7),
                                                 "-print_certs"))
        assert set(cas) == {w.ca.trust_anchor, w.ca.intermediate_cert}

        # /csrattrs: openssl parses the DER; it asks for challengePassword, P-256, SAN and EKU
        status, body = curl("/.well-known/est/csrattrs")
        assert status == 200
        attrs = tmp_path / "csrattrs.der"
        attrs.write_bytes(base64.b64decode(body))
        dump = sh("openssl", "asn1parse", "-inform", "DER", "-in", str(attrs)).decode()
        for needle in ("challengePassword", "prime256v1", "Extension Request", "X509v3 Subject Alternative Name",
                       "X509v3 Extended Key Usage", "ecdsa-with-SHA256"):
            assert needle in dump, needle

        # openssl req + curl /simpleenroll (RFC 7030 4.2.1)
        key, csr = openssl_csr(tmp_path, "new", challenge)
        status, body = curl("/.well-known/est/simpleenroll", "-H", "Content-Type: application/pkcs10",
                            "--data-binary", f"@{csr}")
        assert status == 200, body
        p7.write_bytes(base64.b64decode(body))
        issued = sh("openssl", "pkcs7", "-inform", "DER", "-in", str(p7), "-print_certs")
        cert = x509.load_pem_x509_certificates(issued)[0]
        assert identifiers_of(cert, F.AE_ID) == [CERT_ENROLEE_EST_ID]
        chain = tmp_path / "new.cert.pem"
        chain.write_bytes(cert.public_bytes(PEM) + w.ca.intermediate_cert.public_bytes(PEM))
        inter = tmp_path / "inter.pem"
        inter.write_bytes(w.ca.intermediate_cert.public_bytes(PEM))
        leaf = tmp_path / "leaf.pem"
        leaf.write_bytes(cert.public_bytes(PEM))
        assert b"OK" in sh("openssl", "verify", "-CAfile", str(mef_root), "-untrusted", str(inter),
                           "-purpose", "sslclient", str(leaf))
        serial = sh("openssl", "x509", "-in", str(leaf), "-noout", "-serial").decode().strip().split("=")[1]

        # a replayed CSR (challenge already used) is refused
        status, body = curl("/.well-known/est/simpleenroll", "-H", "Content-Type: application/pkcs10",
                            "--data-binary", f"@{csr}")
        assert status == 403 and b"challengePassword" in body

        # report success (Enrolment Exchange step 6) with openssl's serial spelling
        status, body = curl("/enrolment/complete", "-H", "Content-Type: application/json", "--data-binary",
                            json.dumps({"InstructionType": "CertificateEnrolment", "Status": True,
                                        "CertificateSerial": serial}))
        assert status == 200 and json.loads(body) == {"Status": True}

        # the new certificate authenticates curl to the MEF: Enrolment Exchange + /simplereenroll
        curl2 = Curl(tmp_path, m.port, chain, key, mef_root)
        challenge2 = curl2.enrolment_challenge()
        _, csr2 = openssl_csr(tmp_path, "renew", challenge2)
        status, body = curl2("/.well-known/est/simplereenroll", "-H", "Content-Type: application/pkcs10",
                             "--data-binary", f"@{csr2}")
        assert status == 200, body
        renewed = x509.load_der_x509_certificate(_single_cert(base64.b64decode(body)))
        assert renewed.serial_number != cert.serial_number
    docs = {r.rec_id: r.doc for r in w.state.store.list_records(NS_EST_ISSUED)}
    assert docs[format(cert.serial_number, "x")]["installed"] is True
    assert docs[format(renewed.serial_number, "x")]["reenroll"] is True
    assert all(d["enrolee_id"] == CERT_ENROLEE for d in docs.values())
    w.state.store.close()


def _single_cert(p7_der: bytes) -> bytes:
    from cryptography.hazmat.primitives.serialization import pkcs7

    certs = pkcs7.load_der_pkcs7_certificates(p7_der)
    assert len(certs) == 1  # RFC 7030 4.2.3: only the issued certificate
    return certs[0].public_bytes(serialization.Encoding.DER)
