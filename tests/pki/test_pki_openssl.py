"""Independent checks: the system ``openssl`` CLI accepts the chains we issue and shows the SANs.

Real subprocesses; ``-attime`` pins verification to the test clock.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from _pki_support import AE, CSE, DEVICE, MEF, NODE, NOW, SP, new_ec_key
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import DevCA
from m2msec.pki.profile import build_leaf

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")
PEM = serialization.Encoding.PEM


def _write(path: Path, certs) -> Path:
    path.write_bytes(b"".join(c.public_bytes(PEM) for c in certs))
    return path


def openssl_verify(tmp: Path, ca: DevCA, leaf, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = ["openssl", "verify", "-x509_strict", "-attime", str(int(NOW.timestamp())),
           "-CAfile", str(_write(tmp / "root.pem", [ca.root_cert]))]
    if ca.chain:
        cmd += ["-untrusted", str(_write(tmp / "untrusted.pem", ca.chain))]
    cmd += [*extra, str(_write(tmp / "leaf.pem", [leaf]))]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize(("flavour", "ident"), [(F.CSE_ID, CSE), (F.FQDN, MEF), (F.AE_ID, AE)])
@pytest.mark.parametrize("purpose", ["sslserver", "sslclient"])
def test_openssl_accepts_constrained_chains(tmp_path: Path, ca: DevCA, flavour: F, ident: str, purpose: str) -> None:
    # The CA carries DNS, URI and device-ID otherName constraints; OpenSSL applies the
    # DNS/URI ones and ignores otherName constraints for certificates without otherNames.
    leaf = ca.issue(flavour, [ident], now=NOW).certificate
    r = openssl_verify(tmp_path, ca, leaf, "-purpose", purpose)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith(": OK")


def test_openssl_accepts_unconstrained_device_and_node_chains(tmp_path: Path) -> None:
    # OpenSSL 3.0 cannot evaluate device-ID otherName constraints ("unsupported name
    # constraint type") nor URN URIs against URI constraints, so use an unconstrained CA here.
    ca = DevCA.create("no constraints", now=NOW - timedelta(days=1), intermediate=True)
    for flavour, ident in ((F.DEVICE, DEVICE), (F.NODE_ID, NODE)):
        leaf = ca.issue(flavour, [ident], now=NOW).certificate
        r = openssl_verify(tmp_path, ca, leaf)
        assert r.returncode == 0, r.stdout + r.stderr


def test_openssl_refuses_what_we_refuse(tmp_path: Path, ca: DevCA, other_ca: DevCA) -> None:
    outside = build_leaf(flavour=F.CSE_ID, identifiers=["cse1.other.org"], public_key=new_ec_key().public_key(),
                         issuer_cert=ca.issuing_cert, issuer_key=ca._issuing_key,
                         not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=1))
    r = openssl_verify(tmp_path, ca, outside)
    assert r.returncode != 0 and "permitted subtree violation" in (r.stdout + r.stderr)
    foreign = other_ca.issue(F.CSE_ID, [CSE], now=NOW).certificate
    r = openssl_verify(tmp_path, ca, foreign)
    assert r.returncode != 0 and "unable to get local issuer certificate" in (r.stdout + r.stderr)


def test_openssl_text_shows_sans(tmp_path: Path, ca: DevCA) -> None:
    leaf = ca.issue(F.AE_ID, [AE], now=NOW).certificate
    p = _write(tmp_path / "ae.pem", [leaf])
    text = subprocess.run(["openssl", "x509", "-in", str(p), "-noout", "-text"], capture_output=True, text=True,
                          check=True, timeout=20).stdout
    assert f"URI:https:{AE}" in text
    assert "Digital Signature, Key Agreement" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    leaf = ca.issue(F.CSE_ID, [CSE], now=NOW).certificate
    text = subprocess.run(["openssl", "x509", "-noout", "-text"], input=leaf.public_bytes(PEM).decode(),
                          capture_output=True, text=True, check=True, timeout=20).stdout
    assert f"DNS:{CSE}" in text
    root = subprocess.run(["openssl", "x509", "-noout", "-text"], input=ca.root_cert.public_bytes(PEM).decode(),
                          capture_output=True, text=True, check=True, timeout=20).stdout
    assert "X509v3 Name Constraints: critical" in root
    assert f"DNS:{SP}" in root and f"URI:{SP}" in root


def test_openssl_parses_device_other_name(ca: DevCA) -> None:
    leaf = ca.issue(F.DEVICE, [DEVICE], now=NOW).certificate
    der = leaf.public_bytes(serialization.Encoding.DER)
    ext = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-ext", "subjectAltName"], input=der,
                         capture_output=True, check=True, timeout=20).stdout.decode()
    assert "othername: 0.2.481.1::" in ext  # type-id = M2M Device Indication ID
    parsed = subprocess.run(["openssl", "asn1parse", "-inform", "DER"], input=der, capture_output=True,
                            check=True, timeout=20).stdout.decode()
    # GeneralNames { otherName [0] { OID 0.2.481.1, [0] EXPLICIT RELATIVE-OID 100.3030.10011 } }
    assert "[HEX DUMP]:3011A00F060402836101A0070D05649756CE1B" in parsed


def test_cryptography_verifier_agrees(ca: DevCA) -> None:
    """pyca's RFC 5280 verifier (web profile) accepts our CSE-ID chain and refuses the same NC violation."""
    from cryptography import x509
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    issued = ca.issue(F.CSE_ID, [CSE], now=NOW)
    builder = PolicyBuilder().store(Store([ca.root_cert])).time(NOW)
    assert builder.build_server_verifier(x509.DNSName(CSE)).verify(issued.certificate, issued.chain)[-1] == ca.root_cert
    assert builder.build_client_verifier().verify(issued.certificate, issued.chain).subjects == [x509.DNSName(CSE)]
    outside = build_leaf(flavour=F.CSE_ID, identifiers=["cse1.other.org"], public_key=new_ec_key().public_key(),
                         issuer_cert=ca.issuing_cert, issuer_key=ca._issuing_key,
                         not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=1))
    with pytest.raises(VerificationError):
        builder.build_server_verifier(x509.DNSName("cse1.other.org")).verify(outside, ca.chain)
