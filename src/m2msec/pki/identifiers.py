"""Certificate flavours and how each one carries its identifier (TS-0003 8.1.2.1, 8.1.2.4, 10.1.1).

SAN forms (m2msec profile; see the module constants):

* CSE-ID certificate (10.1.1.7): ``dNSName`` = public domain name of the CSE
  (TS-0001 6.5.1.1), e.g. ``cse1.in.m2m.example.com``.  No wildcards.
* FQDN certificate (10.1.1.6): ``dNSName`` = FQDN of the MEF/MAF.  No wildcards.
  Verification also accepts a URI whose host is exactly the FQDN (8.1.2.5).
* AE-ID certificate (10.1.1.5): ``uniformResourceIdentifier`` = the full URI
  representation of the Absolute-AE-ID (TS-0001 table 7.2-1,
  ``//{M2M-SP-FQDN}/{SP-relative-AE-ID}``), formed by prefixing the scheme
  :data:`AE_ID_URI_SCHEME`: ``https://m2m.prov.com/CSE3219/C9886``.  The host
  part is the M2M-SP FQDN, which is what the issuing CA's URI name constraint
  constrains (10.1.1.5).
* Node-ID certificate (10.1.1.8): ``uniformResourceIdentifier`` = the
  m2m:nodeID value, a URN (TS-0004 table 6.3.3-1 example
  ``urn:gsma:imei:90420156-025763-0;svn=42``).  A dotted OID Node-ID is
  written ``urn:oid:<dotted>`` (RFC 3061).
* Device certificate (10.1.1.4.1): ``otherName`` with type-id = M2M Device
  Indication ID arc and value = DER RELATIVE-OID of the remaining arcs
  (manufacturer, model, serial[, expanded]); see :mod:`m2msec.pki.der`.  The
  textual identifier is the full dotted OID; an explicit split is written
  ``<indication>/<remaining arcs>`` (e.g. ``0.2.481.1/100.3030.10011``); a
  full dotted OID without ``/`` is split before its last three arcs.
* Raw public key (10.1.2): the ni URI public key identifier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from m2msec.errors import IdentifierError
from m2msec.pki.der import decode_relative_oid, encode_relative_oid
from m2msec.pki.errors import CertificateParseError

AE_ID_URI_SCHEME = "https"
DEVICE_ID_DEFAULT_REMAINDER_ARCS = 3


class CertificateFlavour(str, Enum):
    RAW_PUBLIC_KEY = "raw"
    DEVICE = "device"
    NODE_ID = "node-id"
    CSE_ID = "cse-id"
    AE_ID = "ae-id"
    FQDN = "fqdn"


_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


def validate_fqdn(name: str) -> str:
    """A hostname without wildcard, trailing dot or non-LDH characters (lower-cased)."""
    if not name or len(name) > 253 or "*" in name or name.endswith("."):
        raise IdentifierError(f"not a valid FQDN (wildcards are not allowed): {name!r}")
    labels = name.split(".")
    if len(labels) < 2 or not all(_LABEL.match(lbl) for lbl in labels):
        raise IdentifierError(f"not a valid FQDN: {name!r}")
    return name.lower()


# ---------------------------------------------------------------- device IDs

@dataclass(frozen=True)
class DeviceId:
    """An OID-based M2M Device ID (TS-0001 annex H) split as 10.1.1.4.1 requires."""

    indication: x509.ObjectIdentifier  # M2M Device Indication ID (higher arc)
    arcs: tuple[int, ...]  # manufacturer, model, serial[, expanded]

    @classmethod
    def parse(cls, text: str) -> DeviceId:
        text = text.strip()
        if "/" in text:
            ind, _, rest = text.partition("/")
            if not _OID.match(ind) or not re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*", rest):
                raise IdentifierError(f"malformed M2M Device ID {text!r}")
            arcs = tuple(int(a) for a in rest.split("."))
        else:
            if not _OID.match(text):
                raise IdentifierError(f"malformed M2M Device ID {text!r}")
            parts = text.split(".")
            n = DEVICE_ID_DEFAULT_REMAINDER_ARCS
            if len(parts) < n + 2:
                raise IdentifierError(f"M2M Device ID {text!r} is too short")
            ind, arcs = ".".join(parts[:-n]), tuple(int(a) for a in parts[-n:])
        try:
            oid = x509.ObjectIdentifier(ind)
        except ValueError as exc:
            raise IdentifierError(f"malformed M2M Device Indication ID {ind!r}") from exc
        return cls(oid, arcs)

    @property
    def dotted(self) -> str:
        """The canonical textual identifier: the full dotted OID."""
        return self.indication.dotted_string + "".join(f".{a}" for a in self.arcs)

    @property
    def split_form(self) -> str:
        return self.indication.dotted_string + "/" + ".".join(str(a) for a in self.arcs)

    @property
    def full_arcs(self) -> tuple[int, ...]:
        return tuple(int(a) for a in self.indication.dotted_string.split(".")) + self.arcs

    def to_general_name(self) -> x509.OtherName:
        return x509.OtherName(self.indication, encode_relative_oid(self.arcs))

    @classmethod
    def from_general_name(cls, name: x509.OtherName) -> DeviceId:
        return cls(name.type_id, decode_relative_oid(name.value))


def device_id_of(name: x509.GeneralName) -> DeviceId | None:
    if isinstance(name, x509.OtherName):
        try:
            return DeviceId.from_general_name(name)
        except CertificateParseError:
            return None
    return None


# ---------------------------------------------------------------- AE-IDs / Node-IDs

def ae_id_to_uri(ae_id: str) -> str:
    """Absolute-AE-ID ``//sp-fqdn/...`` (or an already full URI) -> SAN URI."""
    if ae_id.startswith("//"):
        uri = f"{AE_ID_URI_SCHEME}:{ae_id}"
    elif ae_id.startswith(f"{AE_ID_URI_SCHEME}://"):
        uri = ae_id
    else:
        raise IdentifierError(
            f"an AE-ID certificate needs the Absolute-AE-ID (//SP-FQDN/SP-relative-AE-ID), got {ae_id!r}"
        )
    parts = urlsplit(uri)
    host = parts.hostname or ""
    validate_fqdn(host)
    if "*" in uri or parts.port is not None or parts.query or parts.fragment or parts.username:
        raise IdentifierError(f"AE-ID URI must be //FQDN/path without wildcard/port/query: {ae_id!r}")
    segs = parts.path.split("/")
    if len(segs) < 2 or not all(segs[1:]) or segs[0] != "":
        raise IdentifierError(f"AE-ID has no SP-relative part: {ae_id!r}")
    if host != parts.netloc:
        raise IdentifierError(f"AE-ID host must be lower-case FQDN: {ae_id!r}")
    return uri


def uri_to_ae_id(uri: str) -> str | None:
    prefix = f"{AE_ID_URI_SCHEME}://"
    if not uri.startswith(prefix):
        return None
    try:
        ae_id_to_uri(uri)
    except IdentifierError:
        return None
    return uri[len(AE_ID_URI_SCHEME) + 1 :]


def node_id_to_uri(node_id: str) -> str:
    """m2m:nodeID -> SAN URI (URNs verbatim, dotted OIDs as ``urn:oid:``)."""
    node_id = node_id.strip()
    if _OID.match(node_id):
        return f"urn:oid:{node_id}"
    if not re.fullmatch(r"urn:[A-Za-z0-9][A-Za-z0-9-]{0,31}:\S+", node_id, flags=re.IGNORECASE) or "*" in node_id:
        raise IdentifierError(f"Node-ID must be a URN (e.g. urn:gsma:imei:...) or a dotted OID: {node_id!r}")
    return node_id


# ---------------------------------------------------------------- per-flavour mapping

def canonical_identifier(flavour: CertificateFlavour, identifier: str) -> str:
    """The configured identifier in the form :func:`identifiers_of` returns."""
    if flavour in (CertificateFlavour.CSE_ID, CertificateFlavour.FQDN):
        return validate_fqdn(identifier)
    if flavour is CertificateFlavour.AE_ID:
        return ae_id_to_uri(identifier)[len(AE_ID_URI_SCHEME) + 1 :]
    if flavour is CertificateFlavour.NODE_ID:
        return node_id_to_uri(identifier)
    if flavour is CertificateFlavour.DEVICE:
        return DeviceId.parse(identifier).dotted
    if flavour is CertificateFlavour.RAW_PUBLIC_KEY:
        from m2msec.pki.pkid import parse_ni

        parse_ni(identifier)
        return identifier
    raise IdentifierError(f"unknown flavour {flavour!r}")


def san_entry(flavour: CertificateFlavour, identifier: str) -> x509.GeneralName:
    """The subjectAltName entry that asserts ``identifier`` for ``flavour``."""
    if flavour in (CertificateFlavour.CSE_ID, CertificateFlavour.FQDN):
        return x509.DNSName(validate_fqdn(identifier))
    if flavour is CertificateFlavour.AE_ID:
        return x509.UniformResourceIdentifier(ae_id_to_uri(identifier))
    if flavour is CertificateFlavour.NODE_ID:
        return x509.UniformResourceIdentifier(node_id_to_uri(identifier))
    if flavour is CertificateFlavour.DEVICE:
        return DeviceId.parse(identifier).to_general_name()
    raise IdentifierError(f"flavour {flavour.value} has no subjectAltName form")


def subject_alt_names(cert: x509.Certificate | x509.CertificateSigningRequest) -> list[x509.GeneralName]:
    try:
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value)  # type: ignore[attr-defined]


def identifiers_in_names(names: list[x509.GeneralName], flavour: CertificateFlavour) -> list[str]:
    out: list[str] = []
    for n in names:
        if flavour in (CertificateFlavour.CSE_ID, CertificateFlavour.FQDN):
            if isinstance(n, x509.DNSName) and "*" not in n.value:
                out.append(n.value.lower())
        elif flavour is CertificateFlavour.AE_ID:
            if isinstance(n, x509.UniformResourceIdentifier):
                ae = uri_to_ae_id(n.value)
                if ae is not None:
                    out.append(ae)
        elif flavour is CertificateFlavour.NODE_ID:
            if isinstance(n, x509.UniformResourceIdentifier) and n.value.lower().startswith("urn:"):
                out.append(n.value)
        elif flavour is CertificateFlavour.DEVICE:
            dev = device_id_of(n)
            if dev is not None:
                out.append(dev.dotted)
    return out


def identifiers_of(cert: x509.Certificate, flavour: CertificateFlavour) -> list[str]:
    """The identifiers ``cert`` asserts for ``flavour`` (canonical textual forms)."""
    if flavour is CertificateFlavour.RAW_PUBLIC_KEY:
        from m2msec.pki.pkid import public_key_identifier

        return [public_key_identifier(cert.public_key())]
    return identifiers_in_names(subject_alt_names(cert), flavour)


def describe_general_name(n: x509.GeneralName) -> str:
    """``kind:value`` text for a SAN entry (used by ``m2msec pki show``)."""
    if isinstance(n, x509.DNSName):
        return f"DNS:{n.value}"
    if isinstance(n, x509.UniformResourceIdentifier):
        return f"URI:{n.value}"
    if isinstance(n, x509.OtherName):
        dev = device_id_of(n)
        if dev is not None:
            return f"otherName:{n.type_id.dotted_string};RELATIVE-OID:{'.'.join(map(str, dev.arcs))}"
        return f"otherName:{n.type_id.dotted_string};DER:{n.value.hex()}"
    if isinstance(n, x509.IPAddress):
        return f"IP:{n.value}"
    if isinstance(n, x509.RFC822Name):
        return f"email:{n.value}"
    if isinstance(n, x509.RegisteredID):
        return f"RID:{n.value.dotted_string}"
    if isinstance(n, x509.DirectoryName):
        return f"DirName:{n.value.rfc4514_string()}"
    return repr(n)
