"""Shared fixtures: a small test PKI (root -> intermediate -> end-point certificates with a
URI subjectAltName carrying the oneM2M identifier) and provisioned keys."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from m2msec.esdata import InMemoryKeySource, x509_verifier

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.timezone.utc)


def clock() -> dt.datetime:
    return NOW


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(subject_key, issuer_key, subject: str, issuer: str, *, ca: bool, san: str | None = None,
              days: int = 365, not_before: dt.datetime | None = None) -> x509.Certificate:
    nb = not_before or NOW - dt.timedelta(days=1)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(nb)
        .not_valid_after(nb + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False), critical=True)
    if san:
        b = b.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(san)]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@dataclass
class EndPoint:
    key: object
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    ident: str


@dataclass
class PKI:
    root: x509.Certificate
    root_key: object
    inter: x509.Certificate
    inter_key: object

    def issue(self, key, ident: str, **kw) -> EndPoint:
        cert = make_cert(key, self.inter_key, ident, "Test Intermediate", ca=False, san=ident, **kw)
        return EndPoint(key, cert, (cert, self.inter), ident)

    def verifier(self):
        return x509_verifier([self.root], clock=clock)


def _build_pki(cn: str) -> PKI:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = make_cert(root_key, root_key, cn, cn, ca=True, days=3650)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = make_cert(inter_key, root_key, "Test Intermediate", cn, ca=True, days=3650)
    return PKI(root, root_key, inter, inter_key)


@pytest.fixture(scope="session")
def now() -> dt.datetime:
    return NOW


@pytest.fixture(scope="session")
def fixed_clock():
    return clock


@pytest.fixture(scope="session")
def pki() -> PKI:
    return _build_pki("Test Root")


@pytest.fixture(scope="session")
def other_pki() -> PKI:
    return _build_pki("Other Root")


@pytest.fixture(scope="session")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def rsa_key2():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def ec_keys():
    return {c: ec.generate_private_key(cls()) for c, cls in
            (("P-256", ec.SECP256R1), ("P-384", ec.SECP384R1), ("P-521", ec.SECP521R1))}


@pytest.fixture(scope="session")
def source_ep(pki, ec_keys) -> EndPoint:
    return pki.issue(ec_keys["P-256"], "/id-in/Csource-ae")


@pytest.fixture(scope="session")
def rsa_source_ep(pki, rsa_key) -> EndPoint:
    return pki.issue(rsa_key, "/id-in/Crsa-source")


@pytest.fixture(scope="session")
def target_ec_ep(pki, ec_keys) -> EndPoint:
    return pki.issue(ec_keys["P-384"], "/id-in/Ctarget-ec")


@pytest.fixture(scope="session")
def target_rsa_ep(pki, rsa_key2) -> EndPoint:
    return pki.issue(rsa_key2, "/id-in/Ctarget-rsa")


@pytest.fixture()
def keys():
    """Fresh provisioned keys: name -> bytes."""
    return {
        "enc16": secrets.token_bytes(16),
        "enc24": secrets.token_bytes(24),
        "enc32": secrets.token_bytes(32),
        "mic32": secrets.token_bytes(32),
        "mic64": secrets.token_bytes(64),
    }


@pytest.fixture()
def key_source(keys, target_ec_ep, target_rsa_ep) -> InMemoryKeySource:
    ks = InMemoryKeySource()
    ks.add_symmetric("enc16@mef.example.com", keys["enc16"], suid=14)
    ks.add_symmetric("enc24@mef.example.com", keys["enc24"], suid=24)
    ks.add_symmetric("enc32@mef.example.com", keys["enc32"], suid=14)
    ks.add_symmetric("mic32@mef.example.com", keys["mic32"], suid=15)
    ks.add_symmetric("mic64@mef.example.com", keys["mic64"], suid=25)
    ks.add_certificate_key(target_ec_ep.key, target_ec_ep.cert)
    ks.add_certificate_key(target_rsa_ep.key, target_rsa_ep.cert)
    return ks


def pytest_configure(config: pytest.Config) -> None:
    # also registered by tests/net/conftest.py; repeated so tests/esdata runs on its own
    config.addinivalue_line("markers", "acme: needs the ACME CSE (PyPI acmecse) started as a subprocess")
