from __future__ import annotations

from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from m2msec.pki import DevCA

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
SP = "m2m.example.com"
CSE = f"cse1.{SP}"
AE = f"//{SP}/CSE1/C9886"
DEVICE = "0.2.481.1.100.3030.10011"
NODE = "urn:gsma:imei:90420156-025763-0;svn=42"
MEF = f"mef.{SP}"



def make_ca(name: str = "Example SP", intermediate: bool = True) -> DevCA:
    return DevCA.create(
        name,
        now=NOW - timedelta(days=1),
        permit_dns=[SP],
        permit_uri=[SP, "urn:gsma:imei:"],
        permit_device=["0.2.481.1/100"],
        intermediate=intermediate,
    )





def raw_cert(
    *,
    subject_cn: str,
    issuer: x509.Certificate | None,
    issuer_key: object,
    public_key: object,
    extensions: list[tuple[x509.ExtensionType, bool]],
    not_before: datetime = NOW - timedelta(days=1),
    not_after: datetime = NOW + timedelta(days=30),
) -> x509.Certificate:
    """Free-form certificate for negative tests (bypasses every m2msec policy)."""
    from cryptography.hazmat.primitives import hashes

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for ext, crit in extensions:
        b = b.add_extension(ext, critical=crit)
    return b.sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


SERVER_ONLY_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])


def splice_csr_signature(csr_der: bytes, tbs: bytes, old_sig: bytes, new_sig: bytes) -> bytes:
    """Replace the signature of a DER CSR (test helper; builds a CSR without proof of possession)."""

    def tlv(tag: int, content: bytes) -> bytes:
        n = len(content)
        if n < 0x80:
            ln = bytes([n])
        else:
            b = n.to_bytes((n.bit_length() + 7) // 8, "big")
            ln = bytes([0x80 | len(b)]) + b
        return bytes([tag]) + ln + content

    hdr = 2 if csr_der[1] < 0x80 else 2 + (csr_der[1] & 0x7F)
    content = csr_der[hdr:]
    assert content.startswith(tbs)
    old_bits = tlv(0x03, b"\x00" + old_sig)
    assert content.endswith(old_bits)
    algid = content[len(tbs) : len(content) - len(old_bits)]
    return tlv(0x30, tbs + algid + tlv(0x03, b"\x00" + new_sig))
