"""Minimal DER for EST CSR attributes (RFC 7030 section 4.5.2; TS-0003 8.3.6.2.2 step 2, 10.1.4).

``cryptography`` has no API for the ``CsrAttrs`` structure::

    CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID
    AttrOrOID ::= CHOICE { oid OBJECT IDENTIFIER, attribute Attribute }
    Attribute ::= SEQUENCE { type OBJECT IDENTIFIER, values SET SIZE(1..MAX) OF ANY }

so this module encodes and strictly decodes the few DER types it needs
(SEQUENCE, SET, OBJECT IDENTIFIER, BOOLEAN, OCTET STRING).  Extension *values*
(subjectAltName, extendedKeyUsage) are produced by ``cryptography``
(``ExtensionType.public_bytes``); only the surrounding structure is built here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from cryptography import x509

from m2msec.errors import ParseError

__all__ = [
    "TAG_BOOLEAN",
    "TAG_OCTET_STRING",
    "TAG_OID",
    "TAG_SEQUENCE",
    "TAG_SET",
    "CsrAttrs",
    "attribute",
    "csrattrs",
    "decode_csrattrs",
    "decode_oid",
    "encode_csrattrs",
    "encode_oid",
    "extension_der",
    "read_tlv",
    "tlv",
]

TAG_BOOLEAN = 0x01
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_SEQUENCE = 0x30
TAG_SET = 0x31

OID_EXTENSION_REQUEST = x509.ObjectIdentifier("1.2.840.113549.1.9.14")  # PKCS#9 extensionRequest


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, content: bytes) -> bytes:
    """One DER TLV (single-octet tag)."""
    return bytes([tag]) + _length(len(content)) + content


def encode_oid(oid: x509.ObjectIdentifier | str) -> bytes:
    """DER OBJECT IDENTIFIER (X.690 8.19)."""
    dotted = oid.dotted_string if isinstance(oid, x509.ObjectIdentifier) else oid
    try:
        arcs = [int(a) for a in dotted.split(".")]
    except ValueError:
        raise ValueError(f"not a dotted OID: {dotted!r}") from None
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39) or any(a < 0 for a in arcs):
        raise ValueError(f"not a valid OID: {dotted!r}")
    out = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return tlv(TAG_OID, bytes(out))


def decode_oid(content: bytes) -> str:
    """Dotted text of OBJECT IDENTIFIER *content* octets (strict: minimal arcs)."""
    if not content:
        raise ParseError("empty OBJECT IDENTIFIER")
    arcs: list[int] = []
    value, start = 0, True
    for b in content:
        if start and b == 0x80:
            raise ParseError("non-minimal OBJECT IDENTIFIER arc")
        value = (value << 7) | (b & 0x7F)
        start = not (b & 0x80)
        if start:
            arcs.append(value)
            value = 0
    if not start:
        raise ParseError("truncated OBJECT IDENTIFIER arc")
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in head + arcs[1:])


def read_tlv(data: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """(tag, content, next position) of the TLV at ``pos``; strict DER lengths."""
    if pos + 2 > len(data):
        raise ParseError("truncated DER")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise ParseError("multi-octet DER tags are not supported")
    first = data[pos + 1]
    if first < 0x80:
        length, start = first, pos + 2
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + 2 + n > len(data):
            raise ParseError("bad DER length")
        length = int.from_bytes(data[pos + 2:pos + 2 + n], "big")
        if length < 0x80 or data[pos + 2] == 0:
            raise ParseError("non-minimal DER length")
        start = pos + 2 + n
    end = start + length
    if end > len(data):
        raise ParseError("DER content runs past the end")
    return tag, data[start:end], end


def _items(content: bytes) -> Iterator[tuple[int, bytes, bytes]]:
    """(tag, content, whole TLV) of each element of a constructed value."""
    pos = 0
    while pos < len(content):
        tag, inner, nxt = read_tlv(content, pos)
        yield tag, inner, content[pos:nxt]
        pos = nxt


def _der_set(elements: Sequence[bytes]) -> bytes:
    return tlv(TAG_SET, b"".join(sorted(elements)))  # DER SET OF: sorted encodings (X.690 11.6)


def extension_der(ext: x509.ExtensionType, critical: bool = False) -> bytes:
    """``Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }``."""
    body = encode_oid(ext.oid)
    if critical:
        body += tlv(TAG_BOOLEAN, b"\xff")
    return tlv(TAG_SEQUENCE, body + tlv(TAG_OCTET_STRING, ext.public_bytes()))


@dataclass(frozen=True)
class CsrAttrs:
    """Decoded CsrAttrs: bare OIDs, attributes (type -> raw value TLVs) and requested extensions.

    ``extensions`` maps extnID to (critical, extnValue DER) from an extensionRequest attribute;
    ``extension_oids`` are extension types requested without a value (RFC 7030 4.5.2 example).
    """

    oids: tuple[str, ...] = ()
    attributes: dict[str, tuple[bytes, ...]] = field(default_factory=dict)
    extensions: dict[str, tuple[bool, bytes]] = field(default_factory=dict)
    extension_oids: tuple[str, ...] = ()

    def attribute_oids(self, type_oid: str) -> tuple[str, ...]:
        """Values of an attribute that are OIDs (e.g. the curve of id-ecPublicKey)."""
        out = []
        for v in self.attributes.get(type_oid, ()):
            tag, content, _ = read_tlv(v)
            if tag == TAG_OID:
                out.append(decode_oid(content))
        return tuple(out)

    def extended_key_usages(self) -> tuple[str, ...]:
        """The OIDs of a requested extendedKeyUsage extension (empty if none)."""
        hit = self.extensions.get(x509.ExtensionOID.EXTENDED_KEY_USAGE.dotted_string)
        if hit is None:
            return ()
        tag, content, end = read_tlv(hit[1])
        if tag != TAG_SEQUENCE or end != len(hit[1]):
            raise ParseError("extendedKeyUsage is not a SEQUENCE OF OID")
        out = []
        for t, c, _ in _items(content):
            if t != TAG_OID:
                raise ParseError("extendedKeyUsage holds a non-OID")
            out.append(decode_oid(c))
        return tuple(out)


def attribute(type_oid: x509.ObjectIdentifier | str, values: Sequence[bytes]) -> bytes:
    """``Attribute ::= SEQUENCE { type, values SET OF }`` with the given value TLVs."""
    if not values:
        raise ValueError("an Attribute needs at least one value")
    return tlv(TAG_SEQUENCE, encode_oid(type_oid) + _der_set(values))


def csrattrs(*items: bytes) -> bytes:
    """``CsrAttrs`` of already encoded AttrOrOID items, in the order given."""
    return tlv(TAG_SEQUENCE, b"".join(items))


def encode_csrattrs(oids: Sequence[x509.ObjectIdentifier | str] = (),
                    attributes: Sequence[tuple[x509.ObjectIdentifier | str, Sequence[bytes]]] = (),
                    extensions: Sequence[tuple[x509.ExtensionType, bool]] = ()) -> bytes:
    """DER CsrAttrs: the bare ``oids``, then ``attributes`` (type, value TLVs), then one
    extensionRequest attribute carrying ``extensions`` (value, critical) if any."""
    items = [encode_oid(o) for o in oids]
    items += [attribute(t, v) for t, v in attributes]
    if extensions:
        exts = tlv(TAG_SEQUENCE, b"".join(extension_der(e, c) for e, c in extensions))
        items.append(attribute(OID_EXTENSION_REQUEST, [exts]))
    return csrattrs(*items)


def decode_csrattrs(der: bytes) -> CsrAttrs:
    """Parse DER CsrAttrs strictly (ParseError, 4000, on anything malformed)."""
    tag, content, end = read_tlv(der)
    if tag != TAG_SEQUENCE or end != len(der):
        raise ParseError("CsrAttrs is not one DER SEQUENCE")
    oids: list[str] = []
    attrs: dict[str, tuple[bytes, ...]] = {}
    exts: dict[str, tuple[bool, bytes]] = {}
    ext_oids: list[str] = []
    for t, c, _ in _items(content):
        if t == TAG_OID:
            oids.append(decode_oid(c))
            continue
        if t != TAG_SEQUENCE:
            raise ParseError("CsrAttrs element is neither an OID nor an Attribute")
        parts = list(_items(c))
        if len(parts) != 2 or parts[0][0] != TAG_OID or parts[1][0] != TAG_SET:
            raise ParseError("malformed Attribute in CsrAttrs")
        type_oid = decode_oid(parts[0][1])
        values = tuple(v for _, _, v in _items(parts[1][1]))
        if not values:
            raise ParseError("Attribute without values in CsrAttrs")
        attrs[type_oid] = values
        if type_oid == OID_EXTENSION_REQUEST.dotted_string:
            for v in values:
                vt, vc, _ = read_tlv(v)
                if vt == TAG_OID:
                    ext_oids.append(decode_oid(vc))
                    continue
                if vt != TAG_SEQUENCE:
                    raise ParseError("extensionRequest value is not Extensions")
                for et, ec, _ in _items(vc):
                    fields = list(_items(ec))
                    if et != TAG_SEQUENCE or not 2 <= len(fields) <= 3 or fields[0][0] != TAG_OID:
                        raise ParseError("malformed Extension in extensionRequest")
                    critical = False
                    if len(fields) == 3:
                        if fields[1][0] != TAG_BOOLEAN or fields[1][1] != b"\xff":
                            raise ParseError("Extension critical flag is not DER TRUE")
                        critical = True
                    if fields[-1][0] != TAG_OCTET_STRING:
                        raise ParseError("Extension extnValue is not an OCTET STRING")
                    exts[decode_oid(fields[0][1])] = (critical, fields[-1][1])
    return CsrAttrs(tuple(oids), attrs, exts, tuple(ext_oids))
