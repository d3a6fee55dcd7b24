"""RFC 5280 4.2.1.10 name-constraint semantics used by TS-0003 8.1.2.2 (pure functions)."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from m2msec.pki.der import encode_relative_oid
from m2msec.pki.identifiers import DeviceId
from m2msec.pki.nameconstraints import dns_in_subtree, first_violation, uri_in_subtree


@pytest.mark.parametrize(
    ("name", "base", "ok"),
    [
        ("example.com", "example.com", True),
        ("a.b.example.com", "example.com", True),
        ("EXAMPLE.com", "example.COM", True),
        ("badexample.com", "example.com", False),
        ("example.com", ".example.com", False),
        ("a.example.com", ".example.com", True),
        ("anything.org", "", True),
    ],
)
def test_dns(name: str, base: str, ok: bool) -> None:
    assert dns_in_subtree(name, base) is ok


@pytest.mark.parametrize(
    ("uri", "base", "ok"),
    [
        ("https://m2m.example.com/CSE1/C1", "m2m.example.com", True),
        ("https://x.m2m.example.com/CSE1/C1", "m2m.example.com", False),  # URI: exact host unless leading dot
        ("https://x.m2m.example.com/CSE1/C1", ".m2m.example.com", True),
        ("https://evilm2m.example.com/", ".m2m.example.com", False),
        ("urn:gsma:imei:90420156-025763-0", "m2m.example.com", False),  # no host: outside any host subtree
        ("urn:gsma:imei:90420156-025763-0", "urn:gsma:imei:", True),  # m2msec URN-prefix extension
        ("URN:GSMA:IMEI:1", "urn:gsma:imei:", True),
        ("urn:dev:mac:00", "urn:gsma:imei:", False),
    ],
)
def test_uri(uri: str, base: str, ok: bool) -> None:
    assert uri_in_subtree(uri, base) is ok


def _nc(permitted=None, excluded=None) -> x509.NameConstraints:
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded)


def test_permitted_excluded_and_other_forms() -> None:
    dev = DeviceId.parse("0.2.481.1/100.3030.10011").to_general_name()
    nc = _nc(permitted=[x509.DNSName("example.com"), DeviceId.parse("0.2.481.1/100").to_general_name()],
             excluded=[x509.DNSName("bad.example.com")])
    assert first_violation([x509.DNSName("ok.example.com"), dev], nc) is None
    assert "excluded" in first_violation([x509.DNSName("x.bad.example.com")], nc)
    assert "outside" in first_violation([x509.DNSName("other.org")], nc)
    assert "outside" in first_violation([DeviceId.parse("0.2.481.1/101.1.1").to_general_name()], nc)
    # forms without constraints of their kind are unconstrained
    assert first_violation([x509.UniformResourceIdentifier("https://other.org/x")], nc) is None
    # device subtree prefix works on the full OID whatever the split
    nc2 = _nc(permitted=[x509.OtherName(x509.ObjectIdentifier("0.2.481"), encode_relative_oid([1, 100]))])
    assert first_violation([dev], nc2) is None
    # IP and directoryName constraints
    nc3 = _nc(permitted=[x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")),
                         x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SP")]))])
    assert first_violation([x509.IPAddress(ipaddress.ip_address("10.1.2.3"))], nc3) is None
    assert first_violation([x509.IPAddress(ipaddress.ip_address("192.0.2.1"))], nc3) is not None
    inside = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SP"), x509.NameAttribute(NameOID.COMMON_NAME, "a")])
    assert first_violation([x509.DirectoryName(inside)], nc3) is None
    outside = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a")])
    assert first_violation([x509.DirectoryName(outside)], nc3) is not None


def test_unevaluable_constraint_refuses() -> None:
    nc = _nc(permitted=[x509.RFC822Name("example.com")])
    assert "cannot evaluate" in first_violation([x509.RFC822Name("a@example.com")], nc)
    other = x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), b"\x0c\x01a")  # UPN, UTF8String
    nc = _nc(excluded=[other])
    assert "cannot evaluate" in first_violation([other], nc)
