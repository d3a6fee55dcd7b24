"""RFC 5280 clause 4.2.1.10 name constraints as TS-0003 clause 8.1.2.2 uses them.

Supported name forms: dNSName, uniformResourceIdentifier (host part, RFC 5280),
iPAddress, directoryName (RDN prefix) and the OID-based M2M Device ID otherName
of TS-0003 10.1.1.4.2 (subtree = OID arc prefix over indication + remaining
arcs).  m2msec extension: a URI constraint whose base starts with ``urn:`` is
a case-insensitive prefix over URNs (Node-IDs, TS-0003 8.1.2.2 requires CAs to
constrain them but RFC 5280 defines no URN form).  Any other constrained name
form that appears in a certificate is a violation (RFC 5280: "process the
constraint or reject the certificate").
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from cryptography import x509

from m2msec.pki.identifiers import DeviceId, device_id_of


def _kind(n: x509.GeneralName) -> str:
    if isinstance(n, x509.OtherName):
        return "device" if device_id_of(n) is not None else f"otherName:{n.type_id.dotted_string}"
    return type(n).__name__


def dns_in_subtree(name: str, base: str) -> bool:
    name, base = name.lower().rstrip("."), base.lower()
    if base == "":
        return True
    if base.startswith("."):
        return name.endswith(base)
    return name == base or name.endswith("." + base)


def uri_in_subtree(uri: str, base: str) -> bool:
    if base.lower().startswith("urn:"):
        return uri.lower().startswith(base.lower())
    try:
        host = urlsplit(uri).hostname
    except ValueError:
        return False
    if not host or "://" not in uri:
        return False
    base = base.lower()
    if base.startswith("."):
        return host.endswith(base)
    return host == base


def device_in_subtree(dev: DeviceId, base: DeviceId) -> bool:
    b = base.full_arcs
    return dev.full_arcs[: len(b)] == b


def _matches(n: x509.GeneralName, base: x509.GeneralName) -> bool | None:
    """True/False if the form is supported, None if m2msec cannot evaluate it."""
    if isinstance(n, x509.DNSName) and isinstance(base, x509.DNSName):
        return dns_in_subtree(n.value, base.value)
    if isinstance(n, x509.UniformResourceIdentifier) and isinstance(base, x509.UniformResourceIdentifier):
        return uri_in_subtree(n.value, base.value)
    if isinstance(n, x509.IPAddress) and isinstance(base, x509.IPAddress):
        if not isinstance(base.value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            return None
        return isinstance(n.value, (ipaddress.IPv4Address, ipaddress.IPv6Address)) and n.value in base.value
    if isinstance(n, x509.DirectoryName) and isinstance(base, x509.DirectoryName):
        rb = base.value.rdns
        return n.value.rdns[: len(rb)] == rb
    if isinstance(n, x509.OtherName) and isinstance(base, x509.OtherName):
        dn, db = device_id_of(n), device_id_of(base)
        if dn is not None and db is not None:
            return device_in_subtree(dn, db)
    return None


def names_subject_to_constraints(cert: x509.Certificate) -> list[x509.GeneralName]:
    """SAN entries plus the subject DN (if non-empty) as a directoryName."""
    from m2msec.pki.identifiers import subject_alt_names

    names = subject_alt_names(cert)
    if len(cert.subject) > 0:
        names.append(x509.DirectoryName(cert.subject))
    return names


def first_violation(names: list[x509.GeneralName], nc: x509.NameConstraints) -> str | None:
    """A message describing the first name ``nc`` forbids, or None if all are allowed."""
    permitted = list(nc.permitted_subtrees or [])
    excluded = list(nc.excluded_subtrees or [])
    for n in names:
        k = _kind(n)
        for base in excluded:
            if _kind(base) != k:
                continue
            m = _matches(n, base)
            if m is None:
                return f"cannot evaluate excluded {k} constraint; name refused"
            if m:
                return f"{k} name is in an excluded subtree"
        same = [b for b in permitted if _kind(b) == k]
        if same:
            results = [_matches(n, b) for b in same]
            if any(r is True for r in results):
                continue
            if any(r is None for r in results):
                return f"cannot evaluate permitted {k} constraint; name refused"
            return f"{k} name is outside the permitted subtrees"
    return None
