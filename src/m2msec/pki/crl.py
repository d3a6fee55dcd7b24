"""Certificate status with CRLs (TS-0003 8.1.2.2 "Certificate status verification"; RFC 5280 5 and 6.3).

TS-0003 8.1.2.2 says an entity shall verify the status of a certificate with a
Certificate Revocation List as described in RFC 5280 (OCSP is optional: held OCSP
responses, :mod:`m2msec.pki.ocsp`, are a second source here).  This module holds both sides:

* :func:`build_crl` - the CRL profile of the development CA (:mod:`m2msec.pki.ca`):
  version 2, issuer = the CA's subject, thisUpdate = issue time, nextUpdate =
  thisUpdate + the configured validity, non-critical authorityKeyIdentifier and
  cRLNumber, entries with the revocation date and (unless unspecified) a
  non-critical reasonCode; signed by the CA key with the certificate profile's
  hash (SHA-256; SHA-384 for a P-384 CA).
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
  outside SHA-2, an unrecognised critical CRL or entry extension, a delta CRL
  (deltaCRLIndicator), an indirect CRL (issuingDistributionPoint indirectCRL or
  a certificateIssuer entry extension) or a CRL partitioned by reasons
  (onlySomeReasons).  A CRL whose issuingDistributionPoint scope excludes the
  certificate (onlyContainsUserCerts/CACerts/AttributeCerts, or a distribution
  point name that none of the certificate's cRLDistributionPoints names) does
  not apply to it.  Entries with reason removeFromCRL do not revoke.
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
    "CRLStore",
    "RevocationEntry",
    "RevocationPolicy",
    "RevocationStatus",
    "build_crl",
    "check_path_revocation",
    "crl_number",
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
) -> x509.CertificateRevocationList:
    """Sign a complete (base) CRL of ``issuer_cert`` listing ``entries`` (profile: module docstring)."""
    if this_update.tzinfo is None:
        raise ValueError("this_update must be timezone-aware")
    if validity <= timedelta(0):
        raise CRLError("the CRL validity (nextUpdate - thisUpdate) must be positive")
    if number < 0 or number.bit_length() > 159:  # RFC 5280 5.2.3: at most 20 octets
        raise CRLError("cRLNumber out of range")
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


class CRLStore:
    """CRLs by issuer name, refreshed by the caller (sans-I/O; thread-safe).

    At most one CRL is kept per (issuer name, authorityKeyIdentifier key id):
    :meth:`add` keeps the later issue (higher cRLNumber, else later thisUpdate).
    CRLs are *not* validated here - that needs the issuer certificate of the
    path being verified; an unusable CRL makes the verification of a
    certificate of that issuer fail with CRL_INVALID.

    :attr:`generation` grows by one at every change of the content (an
    :meth:`add` that keeps the CRL, every :meth:`replace`): a cache of
    verification results (e.g. ESCertKE's) keyed on it never outlives a refresh.
    """

    def __init__(self, crls: Iterable[x509.CertificateRevocationList] = ()) -> None:
        self._lock = threading.Lock()
        self._by_issuer: dict[x509.Name, tuple[x509.CertificateRevocationList, ...]] = {}
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
        return sum(len(v) for v in self._by_issuer.values())

    def __iter__(self) -> Iterator[x509.CertificateRevocationList]:
        for v in list(self._by_issuer.values()):
            yield from v

    def add(self, crl: x509.CertificateRevocationList) -> bool:
        """Add ``crl``; False (store unchanged) when an equal or later issue of it is already held."""
        if not isinstance(crl, x509.CertificateRevocationList):
            raise CRLError(f"not a CRL: {type(crl).__name__}")
        key_id = _aki_key_id(crl)
        with self._lock:
            held = self._by_issuer.get(crl.issuer, ())
            same = [c for c in held if _aki_key_id(c) == key_id]
            if same and not _newer(crl, same[0]):
                return False
            self._by_issuer[crl.issuer] = (*[c for c in held if _aki_key_id(c) != key_id], crl)
            self._generation += 1
            return True

    def replace(self, crls: Iterable[x509.CertificateRevocationList]) -> None:
        """Swap the whole content for ``crls`` (one atomic refresh)."""
        fresh = CRLStore(crls)
        with self._lock:
            self._by_issuer = fresh._by_issuer
            self._generation += 1

    def for_issuer(self, issuer: x509.Name) -> tuple[x509.CertificateRevocationList, ...]:
        return self._by_issuer.get(issuer, ())


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
            return "delta CRLs are not supported"
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
    candidates = store.for_issuer(cert.issuer) if store is not None else ()
    usable: list[x509.CertificateRevocationList] = []
    problem: str | None = None
    for crl in candidates:
        why = _crl_problem(crl, issuer)
        if why is not None:
            problem = problem or why
        elif _covers(crl, cert):
            usable.append(crl)
    if not usable and problem is not None:
        raise _fail(R.CRL_INVALID, f"CRL of {_name(cert.issuer)!r}: {problem}")
    for crl in usable:
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None and _entry_revokes(crl, entry):
            raise _fail(R.REVOKED, f"{what} was revoked at {entry.revocation_date_utc.isoformat()} "
                                   f"(reason {_reason_text(entry)}, CRL of {_name(crl.issuer)!r})")
    current = [c for c in usable
               if c.last_update_utc <= now and c.next_update_utc is not None and now < c.next_update_utc]
    if current or (ev is not None and ev.good is not None):
        return RevocationStatus.GOOD
    if policy is RevocationPolicy.REQUIRE:
        if not usable:
            extra = f" (OCSP: {ev.problems[0]})" if ev is not None and ev.problems else ""
            raise _fail(R.REVOCATION_UNKNOWN, f"no CRL of {_name(cert.issuer)!r} covers {what}{extra}")
        c = max(usable, key=lambda c: c.last_update_utc)
        if c.last_update_utc > now:
            why = f"is not valid before {c.last_update_utc.isoformat()}"
        elif c.next_update_utc is None:
            why = "has no nextUpdate"
        else:
            why = f"is stale (nextUpdate {c.next_update_utc.isoformat()})"
        raise _fail(R.REVOCATION_UNKNOWN, f"status of {what} is unknown: the CRL of {_name(cert.issuer)!r} {why}")
    return RevocationStatus.UNDETERMINED


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
