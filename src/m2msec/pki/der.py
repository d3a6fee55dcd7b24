"""Minimal DER for the one ASN.1 type ``cryptography`` lacks: RELATIVE-OID.

TS-0003 clause 10.1.1.4.1 carries an OID-based M2M Device ID (TS-0001 annex H)
in a subjectAltName otherName whose type-id is the M2M Device Indication ID arc
and whose value is "the remainder of the object identifier" (manufacturer,
model, serial and optional expanded arcs).  That remainder is not a valid
OBJECT IDENTIFIER (its first arc may exceed 2), so m2msec encodes it as the
ASN.1 type made for it, RELATIVE-OID (X.680 clause 33, X.690 8.20, tag 13).
"""

from __future__ import annotations

from collections.abc import Sequence

from m2msec.pki.errors import CertificateParseError

RELATIVE_OID_TAG = 0x0D


def _encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _encode_arc(arc: int) -> bytes:
    if arc < 0:
        raise ValueError("OID arcs are non-negative")
    out = [arc & 0x7F]
    arc >>= 7
    while arc:
        out.append(0x80 | (arc & 0x7F))
        arc >>= 7
    return bytes(reversed(out))


def encode_relative_oid(arcs: Sequence[int]) -> bytes:
    """DER TLV of a RELATIVE-OID with the given arcs (at least one)."""
    if not arcs:
        raise ValueError("a RELATIVE-OID has at least one arc")
    content = b"".join(_encode_arc(a) for a in arcs)
    return bytes([RELATIVE_OID_TAG]) + _encode_length(len(content)) + content


def decode_relative_oid(der: bytes) -> tuple[int, ...]:
    """Parse a DER RELATIVE-OID TLV (strict: minimal length, minimal arcs, no trailing bytes)."""
    if len(der) < 3 or der[0] != RELATIVE_OID_TAG:
        raise CertificateParseError("not a DER RELATIVE-OID")
    first = der[1]
    if first < 0x80:
        length, pos = first, 2
    else:
        nlen = first & 0x7F
        if nlen == 0 or nlen > 4 or len(der) < 2 + nlen:
            raise CertificateParseError("bad DER length in RELATIVE-OID")
        length = int.from_bytes(der[2 : 2 + nlen], "big")
        if length < 0x80 or der[2] == 0:
            raise CertificateParseError("non-minimal DER length in RELATIVE-OID")
        pos = 2 + nlen
    content = der[pos:]
    if len(content) != length or length == 0:
        raise CertificateParseError("RELATIVE-OID length does not match its content")
    arcs: list[int] = []
    value = 0
    start = True
    for b in content:
        if start and b == 0x80:
            raise CertificateParseError("non-minimal arc encoding in RELATIVE-OID")
        value = (value << 7) | (b & 0x7F)
        if b & 0x80:
            start = False
        else:
            arcs.append(value)
            value, start = 0, True
    if not start:
        raise CertificateParseError("truncated arc in RELATIVE-OID")
    return tuple(arcs)
