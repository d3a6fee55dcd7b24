"""Certificate status with CRLs (TS-0003 8.1.2.2 "Certificate status verification"; RFC 5280 5 and 6.3,
delta CRLs 5.2.4, 5.2.6, 5.3.1 and 6.3.3).

TS-0003 8.1.2.2 says an entity shall verify the status of a certificate with a
Certificate Revocation List as described in RFC 5280 (OCSP is optional: held OCSP
responses, :mod:`m2msec.pki.ocsp`, are a second source here).  This module holds both sides:

* :func:`build_crl` - the CRL profile of the development CA (:mod:`m2msec.pki.ca`):
  version 2, issuer = the CA's subject, thisUpdate = issue time, nextUpdate =
  thisUpdate + the configured validity, non-critical authorityKeyIdentifier and
  cRLNumber, entries with the revocation date and (unless unspecified) a
  non-critical reasonCode; signed by the CA key with the certificate profile's
  hash (SHA-256; SHA-384 for a P-384 CA).  Optionally a non-critical
  freshestCRL (one URI), or a delta CRL (critical deltaCRLIndicator).
* :class:`CRLStore` - a sans-I/O holder of CRLs by issuer name that can be
  refreshed (:meth:`CRLStore.add` keeps the newest CRL per issuer and key,
  :meth:`CRLStore.replace` swaps the whole set); :func:`load_crls` /
  :func:`load_crl_files` parse PEM/DER.
* :func:`check_path_revocation` - the RFC 5280 6.3 checks run by
  :func:`m2msec.pki.verify_peer_certificate` over a validated path, under a
  :class:`RevocationPolicy`:

  ``off``           no status checking (behaviour before CRL support).
  ``if-available``  every certificate of the path whose issuer has a CRL in the
                    store is checked; no applicable CRL, or only a CRL that is not
                    current (thisUpdate in the future, nextUpdate passed or
                    absent), leaves the status *undetermined*, which is accepted.
  ``require``       every certificate below the trust anchor must be checked
                    against a current CRL of its issuer; undetermined status fails
                    with REVOCATION_UNKNOWN.

  Under both checking policies a certificate listed on any CRL of its issuer
  whose signature verifies fails with REVOKED (also when that CRL is no longer
  current: a stale CRL cannot prove good status but does prove revocation), and
  a CRL for the issuer that is present but unusable fails with CRL_INVALID when
  no other usable CRL for that issuer is present: signature not by the issuer
  key from the validated path, issuer keyUsage without cRLSign, signature hash
  outside SHA-2, an unrecognised critical CRL or entry extension, a
  deltaCRLIndicator that is not critical or a delta CRL without cRLNumber, an
  indirect CRL (issuingDistributionPoint indirectCRL or a certificateIssuer
  entry extension) or a CRL partitioned by reasons (onlySomeReasons).  A CRL
  whose issuingDistributionPoint scope excludes the certificate
  (onlyContainsUserCerts/CACerts/AttributeCerts, or a distribution point name
  that none of the certificate's cRLDistributionPoints names) does not apply to
  it.  Entries with reason removeFromCRL do not revoke.

Delta CRLs (RFC 5280 5.2.4, 5.2.6, 5.3.1, 6.3.3): a CRL with a (critical)
deltaCRLIndicator is held by :class:`CRLStore` beside the complete CRLs, never in
their place, and is checked like them (issuer name, signature with the issuer key
of the validated path, SHA-2, cRLSign, extensions).  It is *applied* to a usable
complete CRL of the same issuer name, authorityKeyIdentifier and scope
(issuingDistributionPoint) when BaseCRLNumber <= the base's cRLNumber < the
delta's cRLNumber; of several, the highest cRLNumber.  Then (6.3.3 (i)-(k)):

* a certificate the delta lists (other than removeFromCRL) is REVOKED;
* a delta entry removeFromCRL releases a certificateHold of the base; any other
  reason in the base stands (5.3.1 allows removeFromCRL only for a released hold
  or an expired certificate, which path validation refuses anyway);
* otherwise the base's entries decide;
* the status is current when the delta is (thisUpdate <= now < its nextUpdate,
  6.3.3 (a)(2)) - the base's nextUpdate no longer matters, and a stale delta
  makes the status not current even beside a current base (``require``:
  REVOCATION_UNKNOWN, ``if-available``: undetermined).  Without an applicable
  delta the base alone decides, as before (also when it names a freshestCRL).

A delta that applies to no usable base (none held, or the base held is older
than its BaseCRLNumber) never gives a GOOD status, but the certificates it lists
(other than removeFromCRL) are REVOKED: it is a signed statement of the issuer
later than every base held (deltas not newer than the base are dropped by the
store).  A delta only (no complete CRL) is therefore REVOCATION_UNKNOWN under
``require``.  Such a delta also proves that the base is superseded: when its
BaseCRLNumber is above the cRLNumber the status is built from (the applied
delta's, else the base's), the issuer has since issued a complete CRL that is not
held, and what was revoked between the two is unknown - that status is not
current (``require``: REVOCATION_UNKNOWN "is superseded", ``if-available``:
undetermined).

The store holds no keys, so a CRL from a file may be forged.  An unusable delta
of a usable base's own stream (issuer name, authorityKeyIdentifier, scope) may
have displaced that base's genuine deltas, so it makes that base give no status:
unless another source is current, CRL_INVALID (under every policy, before a GOOD
OCSP response; revocations still come first); with no current source any
unusable delta of the issuer does so (it may have displaced a delta whose
revocations count on their own).  Likewise an unusable complete CRL
with no usable one is CRL_INVALID even when deltas are held (it may have
replaced the genuine base in the store).  A forged CRL can thus refuse
certificates (as a forged base always could) but never turn a revocation into
an accepted status.
"""

from __future__ import annotations

import enum
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes

from m2msec.pki.errors import CertificateVerificationError, CRLError
from m2msec.pki.errors import VerificationReason as R
from m2msec.pki.keypolicy import PrivateKey, signature_hash_for
from m2msec.pki.ocsp import OCSPStore, ocsp_evidence

__all__ = [
    "DEFAULT_CRL_VALIDITY",
    "MAX_DELTAS_PER_BASE",
    "CRLStore",
    "RevocationEntry",
    "RevocationPolicy",
    "RevocationStatus",
    "build_crl",
    "check_path_revocation",
    "crl_number",
    "delta_base_number",
    "is_delta_crl",
    "load_crl_files",
    "load_crls",
]

DEFAULT_CRL_VALIDITY = timedelta(days=7)
_ALLOWED_SIG_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----\r?\n?", re.S)


class RevocationPolicy(str, enum.Enum):
    """How certificate status is checked (see the module docstring)."""

    OFF = "off"
    IF_AVAILABLE = "if-available"
    REQUIRE = "require"


class RevocationStatus(str, enum.Enum):
    """Status of one certificate of a verified path."""

    GOOD = "good"  # not listed on a current CRL of its issuer, or a current OCSP response says good
    UNDETERMINED = "undetermined"  # no applicable current CRL (accepted under if-available)
    NOT_CHECKED = "not-checked"  # policy off


@dataclass(frozen=True)
class RevocationEntry:
    """One revoked certificate as the CA records it."""

    serial_number: int
    revocation_date: datetime
    reason: x509.ReasonFlags | None = None

    def to_json(self) -> dict[str, object]:
        return {"serial": format(self.serial_number, "x"), "date": self.revocation_date.isoformat(),
                "reason": self.reason.value if self.reason is not None else None}

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> RevocationEntry:
        reason = doc.get("reason")
        return cls(int(str(doc["serial"]), 16), datetime.fromisoformat(str(doc["date"])),
                   x509.ReasonFlags(reason) if reason else None)


# ------------------------------------------------------------------ CA side


def build_crl(
    *,
    issuer_cert: x509.Certificate,
    issuer_key: PrivateKey,
    entries: Iterable[RevocationEntry],
    number: int,
    this_update: datetime,
    validity: timedelta = DEFAULT_CRL_VALIDITY,
    delta_of: int | None = None,
    freshest_urls: Sequence[str] = (),
) -> x509.CertificateRevocationList:
    """Sign a CRL of ``issuer_cert`` listing ``entries`` (profile: module docstring).

    Complete (base) CRL by default.  ``freshest_urls``: a non-critical freshestCRL (RFC 5280
    5.2.6) with one distribution point naming these URIs, where the delta CRLs of this base are
    published.  ``delta_of``: a delta CRL instead (RFC 5280 5.2.4): a critical
    deltaCRLIndicator with this BaseCRLNumber (< ``number``: base and delta CRLs share the
    cRLNumber sequence); its entries may have reason removeFromCRL (a released hold, 5.3.1).
    """
    if this_update.tzinfo is None:
        raise ValueError("this_update must be timezone-aware")
    if validity <= timedelta(0):
        raise CRLError("the CRL validity (nextUpdate - thisUpdate) must be positive")
    if number < 0 or number.bit_length() > 159:  # RFC 5280 5.2.3: at most 20 octets
        raise CRLError("cRLNumber out of range")
    if delta_of is not None and not 0 <= delta_of < number:
        raise CRLError("a delta CRL's BaseCRLNumber must be below its own cRLNumber")
    if delta_of is not None and freshest_urls:
        raise CRLError("freshestCRL belongs in complete CRLs, not in delta CRLs (RFC 5280 5.2.6)")
    entries = list(entries)
    if delta_of is None and any(e.reason is x509.ReasonFlags.remove_from_crl for e in entries):
        raise CRLError("removeFromCRL entries belong in delta CRLs (RFC 5280 5.3.1)")
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())  # type: ignore[arg-type]
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(this_update)
        .next_update(this_update + validity)
        .add_extension(aki, critical=False)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    if delta_of is not None:
        builder = builder.add_extension(x509.DeltaCRLIndicator(delta_of), critical=True)
    if freshest_urls:
        builder = builder.add_extension(x509.FreshestCRL([x509.DistributionPoint(
            [x509.UniformResourceIdentifier(u) for u in freshest_urls], None, None, None)]), critical=False)
    for e in sorted(entries, key=lambda e: e.serial_number):
        rb = x509.RevokedCertificateBuilder().serial_number(e.serial_number).revocation_date(e.revocation_date)
        if e.reason is not None and e.reason is not x509.ReasonFlags.unspecified:
            rb = rb.add_extension(x509.CRLReason(e.reason), critical=False)
        builder = builder.add_revoked_certificate(rb.build())
    return builder.sign(issuer_key, signature_hash_for(issuer_key))


# ------------------------------------------------------------------ store


def crl_number(crl: x509.CertificateRevocationList) -> int | None:
    """The cRLNumber, or None when absent (or unparsable)."""
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (x509.ExtensionNotFound, ValueError):
        return None


def _aki_key_id(crl: x509.CertificateRevocationList) -> bytes | None:
    try:
        return crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except (x509.ExtensionNotFound, ValueError):
        return None


def _newer(a: x509.CertificateRevocationList, b: x509.CertificateRevocationList) -> bool:
    """Is ``a`` a later issue than ``b`` (higher cRLNumber; thisUpdate breaks ties / replaces a missing number)."""
    na, nb = crl_number(a), crl_number(b)
    if na is not None and nb is not None and na != nb:
        return na > nb
    return a.last_update_utc > b.last_update_utc


def delta_base_number(crl: x509.CertificateRevocationList) -> int | None:
    """The BaseCRLNumber of a delta CRL (its deltaCRLIndicator, RFC 5280 5.2.4); None for a
    complete CRL (or extensions that cannot be parsed)."""
    try:
        return crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number
    except (x509.ExtensionNotFound, ValueError):
        return None


def is_delta_crl(crl: x509.CertificateRevocationList) -> bool:
    """Does ``crl`` carry a deltaCRLIndicator (RFC 5280 5.2.4)?"""
    return delta_base_number(crl) is not None


def _scope(crl: x509.CertificateRevocationList) -> x509.IssuingDistributionPoint | None:
    try:
        return crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except (x509.ExtensionNotFound, ValueError):
        return None


def _same_stream(a: x509.CertificateRevocationList, b: x509.CertificateRevocationList) -> bool:
    """Same issuer name, authorityKeyIdentifier key id and scope (issuingDistributionPoint):
    a delta of one applies to the other (RFC 5280 5.2.4, 6.3.3 (c)(1)-(3))."""
    return a.issuer == b.issuer and _aki_key_id(a) == _aki_key_id(b) and _scope(a) == _scope(b)


def _supersedes(a: x509.CertificateRevocationList, b: x509.CertificateRevocationList) -> bool:
    """Delta ``a`` makes delta ``b`` useless: later, and applicable to every base ``b`` applies to."""
    na, nb, ba, bb = crl_number(a), crl_number(b), delta_base_number(a), delta_base_number(b)
    if None in (na, nb, ba, bb):
        return False
    return na >= nb and ba <= bb  # type: ignore[operator]


#: at most this many delta CRLs are held per issuer, key and scope (the newest ones)
MAX_DELTAS_PER_BASE = 4


class CRLStore:
    """CRLs by issuer name, refreshed by the caller (sans-I/O; thread-safe).

    Complete (base) CRLs: at most one per (issuer name, authorityKeyIdentifier key id);
    :meth:`add` keeps the later issue (higher cRLNumber, else later thisUpdate).

    Delta CRLs (deltaCRLIndicator, RFC 5280 5.2.4) are held beside them, never in a base's
    place: per (issuer, key id, issuingDistributionPoint scope) the newest ones, at most
    :data:`MAX_DELTAS_PER_BASE`, but the newest delta that applies to the held complete CRL of
    that stream is never evicted by the cap (deltas against bases not held go first).  A delta
    is not added (``add`` returns False) and a held one is
    dropped when a complete CRL of the same issuer, key and scope with a cRLNumber >= the
    delta's own is held (the base already contains it), or when another delta supersedes it
    (higher or equal cRLNumber and a BaseCRLNumber <= its own); a delta that the cap would
    evict at once is not added.  A delta whose base is not held
    is kept: :func:`check_path_revocation` uses it only beside a matching base (for revocations
    it lists it counts on its own, see the module docstring).

    CRLs are *not* validated here - that needs the issuer certificate of the path being
    verified - so a forged CRL with a high cRLNumber displaces genuine ones; the status check
    makes that fail closed: an unusable CRL of a stream makes the verification of a
    certificate of that issuer fail with CRL_INVALID unless a source of another stream is
    current (see the module docstring).

    :attr:`generation` grows by one at every change of the content (an
    :meth:`add` that keeps the CRL, every :meth:`replace`): a cache of
    verification results (e.g. ESCertKE's) keyed on it never outlives a refresh.
    """

    def __init__(self, crls: Iterable[x509.CertificateRevocationList] = ()) -> None:
        self._lock = threading.Lock()
        self._by_issuer: dict[x509.Name, tuple[x509.CertificateRevocationList, ...]] = {}
        self._deltas: dict[x509.Name, tuple[x509.CertificateRevocationList, ...]] = {}
        self._generation = 0
        for c in crls:
            self.add(c)

    @property
    def generation(self) -> int:
        """Monotonically increasing content version (bumped by :meth:`add` and :meth:`replace`)."""
        return self._generation

    def __repr__(self) -> str:
        return f"CRLStore(issuers={len(self._by_issuer)}, crls={len(self)})"

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_issuer.values()) + sum(len(v) for v in self._deltas.values())

    def __iter__(self) -> Iterator[x509.CertificateRevocationList]:
        for v in list(self._by_issuer.values()):
            yield from v
        for v in list(self._deltas.values()):
            yield from v

    def add(self, crl: x509.CertificateRevocationList) -> bool:
        """Add ``crl``; False (store unchanged) when an equal or later issue of it is already held."""
        if not isinstance(crl, x509.CertificateRevocationList):
            raise CRLError(f"not a CRL: {type(crl).__name__}")
        if is_delta_crl(crl):
            return self._add_delta(crl)
        key_id = _aki_key_id(crl)
        with self._lock:
            held = self._by_issuer.get(crl.issuer, ())
            same = [c for c in held if _aki_key_id(c) == key_id]
            if same and not _newer(crl, same[0]):
                return False
            self._by_issuer[crl.issuer] = (*[c for c in held if _aki_key_id(c) != key_id], crl)
            n = crl_number(crl)
            if n is not None:  # deltas the new base contains are of no more use
                deltas = self._deltas.get(crl.issuer, ())
                keep = tuple(d for d in deltas if not (_same_stream(d, crl) and (crl_number(d) or 0) <= n))
                if keep != deltas:
                    self._set_deltas(crl.issuer, keep)
            self._generation += 1
            return True

    def _set_deltas(self, issuer: x509.Name, deltas: tuple[x509.CertificateRevocationList, ...]) -> None:
        if deltas:
            self._deltas[issuer] = deltas
        else:
            self._deltas.pop(issuer, None)

    def _add_delta(self, crl: x509.CertificateRevocationList) -> bool:
        n = crl_number(crl)
        with self._lock:
            for base in self._by_issuer.get(crl.issuer, ()):
                nb = crl_number(base)
                if _same_stream(base, crl) and nb is not None and (n is None or n <= nb):
                    return False  # older than (or as old as) the base held
            held = self._deltas.get(crl.issuer, ())
            stream = [d for d in held if _same_stream(d, crl)]
            if any(_supersedes(d, crl) for d in stream):
                return False
            stream = [d for d in stream if not _supersedes(crl, d)] + [crl]
            stream.sort(key=lambda d: crl_number(d) or 0, reverse=True)
            if len(stream) > MAX_DELTAS_PER_BASE:
                # The cap never evicts the newest delta that applies to the held base of this
                # stream (BaseCRLNumber <= the base's cRLNumber < its own): without it the base
                # would decide alone, and a revocation only that delta lists would be lost.
                # Deltas against bases not held apply to nothing and go first (oldest first).
                # (The store holds no keys, so the protected delta may be forged: then it is
                # unusable and the status check refuses, see _status_of.)
                keep = self._applicable_to_held_base(stream)
                rest = [d for d in stream if d is not keep][:MAX_DELTAS_PER_BASE - (keep is not None)]
                kept = [d for d in stream if d is keep or any(d is r for r in rest)]
                if not any(d is crl for d in kept):
                    return False  # older than every delta it could evict: store unchanged
                stream = kept
            others = [d for d in held if not _same_stream(d, crl)]
            self._set_deltas(crl.issuer, (*others, *stream))
            self._generation += 1
            return True

    def _applicable_to_held_base(
        self, stream: Sequence[x509.CertificateRevocationList],
    ) -> x509.CertificateRevocationList | None:
        """The newest delta of ``stream`` (one issuer, key and scope) that applies to the complete
        CRL held for that stream, if any (caller holds the lock)."""
        if not stream:
            return None
        for base in self._by_issuer.get(stream[0].issuer, ()):
            if _same_stream(base, stream[0]):
                return _delta_for(base, stream)
        return None

    def replace(self, crls: Iterable[x509.CertificateRevocationList]) -> None:
        """Swap the whole content for ``crls`` (one atomic refresh)."""
        fresh = CRLStore(crls)
        with self._lock:
            self._by_issuer = fresh._by_issuer
            self._deltas = fresh._deltas
            self._generation += 1

    def complete_for(self, issuer: x509.Name) -> tuple[x509.CertificateRevocationList, ...]:
        """The complete (base) CRLs held for ``issuer``."""
        return self._by_issuer.get(issuer, ())

    def deltas_for(self, issuer: x509.Name) -> tuple[x509.CertificateRevocationList, ...]:
        """The delta CRLs held for ``issuer`` (newest first per issuer key and scope)."""
        return self._deltas.get(issuer, ())

    def for_issuer(self, issuer: x509.Name) -> tuple[x509.CertificateRevocationList, ...]:
        """Every CRL held for ``issuer``: the complete ones, then the deltas."""
        return (*self._by_issuer.get(issuer, ()), *self._deltas.get(issuer, ()))


CRLSource = CRLStore | Iterable[x509.CertificateRevocationList] | None


def as_store(crls: CRLSource) -> CRLStore | None:
    if crls is None or isinstance(crls, CRLStore):
        return crls
    return CRLStore(crls)


def load_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    """Parse one DER CRL or any number of PEM CRLs; CRLError when nothing parses."""
    try:
        if b"-----BEGIN" in data:
            out = [x509.load_pem_x509_crl(m.group(0)) for m in _PEM_CRL.finditer(data)]
        else:
            out = [x509.load_der_x509_crl(data)]
    except ValueError:
        raise CRLError("malformed CRL") from None
    if not out:
        raise CRLError("no X509 CRL PEM block found")
    return out


def load_crl_files(paths: Iterable[Path | str]) -> list[x509.CertificateRevocationList]:
    """Read and parse CRL files (an I/O helper for :meth:`CRLStore.replace`)."""
    out: list[x509.CertificateRevocationList] = []
    for p in paths:
        try:
            data = Path(p).read_bytes()
        except OSError as exc:
            raise CRLError(f"cannot read CRL file {p}: {type(exc).__name__}") from None
        try:
            out += load_crls(data)
        except CRLError as exc:
            raise CRLError(f"{p}: {exc.args[0]}") from None
    return out


# ------------------------------------------------------------------ verification (RFC 5280 6.3)


def _fail(reason: R, message: str) -> CertificateVerificationError:
    return CertificateVerificationError(reason, message)


def _name(n: x509.Name) -> str:
    try:
        return n.rfc4514_string() or "<empty name>"
    except ValueError:
        return "<unparsable name>"


def _crl_problem(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> str | None:
    """Why ``crl`` cannot be used for certificates issued by ``issuer`` (None: usable)."""
    try:
        h = crl.signature_hash_algorithm
    except UnsupportedAlgorithm:
        h = None
    if not isinstance(h, _ALLOWED_SIG_HASHES):
        return "the CRL is signed with a disallowed algorithm"
    try:
        valid = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (UnsupportedAlgorithm, TypeError, ValueError):
        valid = False
    if not valid:
        return "the CRL signature does not verify with the issuer's key"
    try:
        ku = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.crl_sign:
            return "the issuer's keyUsage lacks cRLSign"
    except x509.ExtensionNotFound:
        pass
    try:
        exts = list(crl.extensions)
    except ValueError:
        return "the CRL extensions cannot be parsed"
    for e in exts:
        if isinstance(e.value, x509.DeltaCRLIndicator):
            if not e.critical:  # RFC 5280 5.2.4: MUST be critical
                return "the deltaCRLIndicator of a delta CRL must be critical"
            if crl_number(crl) is None:  # RFC 5280 5.2.4: a delta MUST carry a cRLNumber
                return "a delta CRL must have a cRLNumber"
        if isinstance(e.value, x509.IssuingDistributionPoint):
            if e.value.indirect_crl:
                return "indirect CRLs are not supported"
            if e.value.only_some_reasons:
                return "CRLs partitioned by reason (onlySomeReasons) are not supported"
        if e.critical and isinstance(e.value, x509.UnrecognizedExtension):
            return f"the CRL has an unsupported critical extension {e.oid.dotted_string}"
    return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _covers(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    """The CRL's issuingDistributionPoint scope includes ``cert`` (RFC 5280 6.3.3 (b)(2))."""
    try:
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except x509.ExtensionNotFound:
        return True
    if idp.only_contains_attribute_certs:
        return False
    if idp.only_contains_user_certs and _is_ca(cert):
        return False
    if idp.only_contains_ca_certs and not _is_ca(cert):
        return False
    if idp.full_name:
        try:
            cdps = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        except x509.ExtensionNotFound:
            return False
        names = {n for dp in cdps if dp.full_name for n in dp.full_name}
        return any(n in names for n in idp.full_name)
    return not idp.relative_name  # relative names are not supported: does not apply


def _entry_revokes(crl: x509.CertificateRevocationList, entry: x509.RevokedCertificate) -> bool:
    try:
        exts = list(entry.extensions)
    except ValueError:
        raise _fail(R.CRL_INVALID, f"an entry of the CRL of {_name(crl.issuer)!r} cannot be parsed") from None
    for e in exts:
        if isinstance(e.value, x509.CertificateIssuer):
            raise _fail(R.CRL_INVALID, f"CRL of {_name(crl.issuer)!r}: indirect CRLs are not supported")
        if e.critical and isinstance(e.value, x509.UnrecognizedExtension):
            raise _fail(R.CRL_INVALID, f"CRL of {_name(crl.issuer)!r}: unsupported critical entry extension "
                                       f"{e.oid.dotted_string}")
        if isinstance(e.value, x509.CRLReason) and e.value.reason is x509.ReasonFlags.remove_from_crl:
            return False
    return True


def _reason_text(entry: x509.RevokedCertificate) -> str:
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value
    except (x509.ExtensionNotFound, ValueError):
        return "unspecified"


@dataclass(frozen=True)
class _StatusSource:
    """One complete CRL and the delta CRL that brings it up to date (None: no usable delta)."""

    base: x509.CertificateRevocationList
    delta: x509.CertificateRevocationList | None

    @property
    def freshness(self) -> x509.CertificateRevocationList:
        """The CRL whose thisUpdate/nextUpdate say whether the status is current (RFC 5280 6.3.3 (a)(2))."""
        return self.delta if self.delta is not None else self.base


def _delta_for(base: x509.CertificateRevocationList,
               deltas: Sequence[x509.CertificateRevocationList]) -> x509.CertificateRevocationList | None:
    """The newest of the (verified) ``deltas`` that applies to ``base``: same issuer, key and
    scope, BaseCRLNumber <= the base's cRLNumber < the delta's cRLNumber (RFC 5280 5.2.4)."""
    nb = crl_number(base)
    if nb is None:
        return None
    fit = [d for d in deltas if _same_stream(d, base)
           and (delta_base_number(d) or 0) <= nb < (crl_number(d) or 0)]
    return max(fit, key=lambda d: crl_number(d) or 0, default=None)


def _listing(crl: x509.CertificateRevocationList, serial: int) -> x509.RevokedCertificate | None:
    return crl.get_revoked_certificate_by_serial_number(serial)


def _reason(entry: x509.RevokedCertificate) -> x509.ReasonFlags | None:
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except (x509.ExtensionNotFound, ValueError):
        return None


def _revoked_by(source: _StatusSource, serial: int) -> tuple[x509.CertificateRevocationList,
                                                              x509.RevokedCertificate] | None:
    """The CRL and entry that revoke ``serial`` by a base and its delta (RFC 5280 6.3.3 (i)-(k)):
    a delta entry revokes (whatever the base says); a delta entry removeFromCRL releases a
    certificateHold of the base (any other base reason stands: RFC 5280 5.3.1 allows removeFromCRL
    only for a released hold, or a certificate that expired, which path validation refuses anyway);
    otherwise the base entry revokes."""
    base_entry = _listing(source.base, serial)
    if source.delta is not None:
        d_entry = _listing(source.delta, serial)
        if d_entry is not None:
            if _entry_revokes(source.delta, d_entry):
                return source.delta, d_entry
            if base_entry is not None and _reason(base_entry) is x509.ReasonFlags.certificate_hold:
                _entry_revokes(source.base, base_entry)  # its extensions must still be acceptable
                return None
    if base_entry is not None and _entry_revokes(source.base, base_entry):
        return source.base, base_entry
    return None


def _status_of(
    cert: x509.Certificate, issuer: x509.Certificate, store: CRLStore | None, policy: RevocationPolicy,
    now: datetime, ocsp_store: OCSPStore | None = None,
) -> RevocationStatus:
    what = f"{_name(cert.subject)!r} (serial {cert.serial_number:x})"
    ev = ocsp_evidence(ocsp_store, cert, issuer, now=now) if ocsp_store is not None else None
    if ev is not None and ev.revoked is not None:
        r = ev.revoked
        reason = r.revocation_reason.value if r.revocation_reason is not None else "unspecified"
        when = r.revocation_time.isoformat() if r.revocation_time is not None else "?"
        raise _fail(R.REVOKED, f"{what} was revoked at {when} (reason {reason}, OCSP response)")
    bases = store.complete_for(cert.issuer) if store is not None else ()
    deltas = store.deltas_for(cert.issuer) if store is not None else ()
    usable: list[x509.CertificateRevocationList] = []
    problem: str | None = None  # of a complete CRL
    for crl in bases:
        why = _crl_problem(crl, issuer)
        if why is not None:
            problem = problem or why
        elif _covers(crl, cert):
            usable.append(crl)
    good_deltas: list[x509.CertificateRevocationList] = []
    bad_deltas: list[tuple[x509.CertificateRevocationList, str]] = []
    for crl in deltas:
        why = _crl_problem(crl, issuer)
        if why is not None:
            bad_deltas.append((crl, why))
        elif _covers(crl, cert):
            good_deltas.append(crl)
    if not usable and not good_deltas and (problem or bad_deltas):
        raise _fail(R.CRL_INVALID, f"CRL of {_name(cert.issuer)!r}: {problem or bad_deltas[0][1]}")
    sources = [_StatusSource(b, _delta_for(b, good_deltas)) for b in usable]
    # deltas not applied to a base (no base held, or one older than the delta's BaseCRLNumber):
    # never a GOOD status, but what they list as revoked is revoked (a signed statement of the
    # issuer, later than every base held: deltas older than a held base are not kept)
    applied = {id(s.delta) for s in sources if s.delta is not None}
    loose = [d for d in good_deltas
             if id(d) not in applied and not any(_same_stream(d, b) and (crl_number(d) or 0) <= (crl_number(b) or -1)
                                                 for b in usable)]
    hits = [h for s in sources if (h := _revoked_by(s, cert.serial_number)) is not None]
    for d in loose:
        entry = _listing(d, cert.serial_number)
        if entry is not None and _entry_revokes(d, entry):
            hits.append((d, entry))
    if hits:
        crl, entry = hits[0]
        kind = "delta CRL" if is_delta_crl(crl) else "CRL"
        raise _fail(R.REVOKED, f"{what} was revoked at {entry.revocation_date_utc.isoformat()} "
                               f"(reason {_reason_text(entry)}, {kind} of {_name(crl.issuer)!r})")
    if not usable and problem is not None:
        # an unusable complete CRL and no usable one: deltas alone cannot decide, and the unusable
        # (e.g. forged) base may have replaced the genuine one in the store (CRLStore keeps one
        # per key id): CRL_INVALID, as when it is the issuer's only CRL
        raise _fail(R.CRL_INVALID, f"CRL of {_name(cert.issuer)!r}: {problem}")
    # An unusable delta of a usable base's own stream (issuer, key id, scope) may have displaced
    # the genuine deltas of that base in the store (CRLStore holds no keys: a forged delta with a
    # high cRLNumber supersedes or out-ranks them), so that base no longer gives a status: when
    # no other source is current, CRL_INVALID (under every policy and before OCSP, as for an
    # unusable base: a forged delta never turns a revocation into an accepted status).  Without a
    # current source any unusable delta does so: it may have displaced a delta whose revocations
    # count on their own (no base held) that would have refused the certificate.
    tainted = [(s, why) for s in sources
               for d, why in bad_deltas if _same_stream(d, s.base)]
    # A verified delta of a base's stream whose BaseCRLNumber is above what the status is built
    # from (the applied delta's cRLNumber, else the base's) proves that the issuer has since issued
    # a complete CRL that is not held: revocations between the two are unknown, so that status is
    # not current (policy decides; RFC 5280 5.2.4: a delta lists the changes since its base only).
    behind = {id(s): max(ahead, key=delta_base_number) for s in sources
              if (ahead := [d for d in good_deltas if _same_stream(d, s.base)
                            and (delta_base_number(d) or 0) > (crl_number(s.freshness) or 0)])}
    spoilt = {id(s) for s, _ in tainted}
    current = [s for s in sources if id(s) not in spoilt and id(s) not in behind
               and s.base.last_update_utc <= now and _current(s.freshness, now)]
    if current:
        return RevocationStatus.GOOD
    if bad_deltas:  # tainted sources, or deltas that count on their own (no base) next to a forged one
        why = tainted[0][1] if tainted else bad_deltas[0][1]
        raise _fail(R.CRL_INVALID, f"delta CRL of {_name(cert.issuer)!r}: {why} "
                                   "(it may have displaced genuine delta CRLs)")
    if ev is not None and ev.good is not None:
        return RevocationStatus.GOOD
    if policy is RevocationPolicy.REQUIRE:
        if not usable:
            extra = f" (OCSP: {ev.problems[0]})" if ev is not None and ev.problems else ""
            only = " (only a delta CRL, which needs its complete CRL)" if good_deltas else ""
            raise _fail(R.REVOCATION_UNKNOWN, f"no CRL of {_name(cert.issuer)!r} covers {what}{only}{extra}")
        s = max(sources, key=lambda s: s.freshness.last_update_utc)
        c = s.freshness
        kind = "delta CRL" if s.delta is not None else "CRL"
        if s.base.last_update_utc > now:
            why = f"is not valid before {s.base.last_update_utc.isoformat()}"
            kind = "CRL"
        elif c.last_update_utc > now:
            why = f"is not valid before {c.last_update_utc.isoformat()}"
        elif c.next_update_utc is None:
            why = "has no nextUpdate"
        elif now >= c.next_update_utc:
            why = f"is stale (nextUpdate {c.next_update_utc.isoformat()})"
        else:  # current, but behind a newer complete CRL (a spoilt source raised CRL_INVALID above)
            ahead = behind.get(id(s))
            newer = delta_base_number(ahead) if ahead is not None else "?"
            why = (f"is superseded (a delta CRL names complete CRL {newer}, "
                   f"newer than cRLNumber {crl_number(c)} held; the complete CRL is needed)")
        raise _fail(R.REVOCATION_UNKNOWN, f"status of {what} is unknown: the {kind} of {_name(cert.issuer)!r} {why}")
    return RevocationStatus.UNDETERMINED


def _current(crl: x509.CertificateRevocationList, now: datetime) -> bool:
    return crl.last_update_utc <= now and crl.next_update_utc is not None and now < crl.next_update_utc


def check_path_revocation(
    certs: Sequence[x509.Certificate],
    *,
    crls: CRLSource,
    policy: RevocationPolicy | str,
    now: datetime,
    ocsp: OCSPStore | None = None,
) -> tuple[RevocationStatus, ...]:
    """Status of every certificate of a *validated* path ``certs`` (leaf first, trust anchor last).

    Each certificate below the anchor is checked with its issuer's CRLs (the
    issuer is the next certificate of the path, so its key, already validated,
    verifies the CRL).  Returns one status per certificate below the anchor or
    raises :class:`CertificateVerificationError` (REVOKED, REVOCATION_UNKNOWN,
    CRL_INVALID).  ``ocsp``: held OCSP responses (:class:`m2msec.pki.ocsp.OCSPStore`),
    a second status source: a verified REVOKED response revokes (like a CRL entry), a
    verified current GOOD response makes the status GOOD where the CRLs leave it
    undetermined (it satisfies ``require``); CRL results are otherwise unchanged.
    """
    policy = RevocationPolicy(policy)
    below = list(certs[:-1])
    if policy is RevocationPolicy.OFF:
        return tuple(RevocationStatus.NOT_CHECKED for _ in below)
    store = as_store(crls)
    out: list[RevocationStatus] = []
    errors: list[CertificateVerificationError] = []
    for i, c in enumerate(below):
        try:
            out.append(_status_of(c, certs[i + 1], store, policy, now, ocsp))
        except CertificateVerificationError as exc:
            errors.append(exc)
    for reason in _PRIORITY:  # a revocation anywhere on the path is reported before an unusable/missing CRL
        for exc in errors:
            if exc.reason_code is reason:
                raise exc
    return tuple(out)


_PRIORITY = (R.REVOKED, R.CRL_INVALID, R.REVOCATION_UNKNOWN)
