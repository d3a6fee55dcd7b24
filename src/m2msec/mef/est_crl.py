"""CRLs of the MEF's EST CA (TS-0003 8.1.2.2 certificate status, 8.3.6 Certificate Enrolment;
RFC 5280 section 5).

TS-0003 8.1.2.2 makes relying parties check the status of the certificates they verify; a
certificate the MEF provisioned with EST must therefore become visibly revoked when the
operator revokes its enrolee (``m2msec mef enrolee revoke``) or the single certificate
(``m2msec mef est-revoke``, e.g. after a key compromise).  Both write an ``mef.est.revoked``
record in the store (:func:`m2msec.mef.state.revoke_issued`), so every MEF instance on the
database agrees; this module turns those records into signed complete CRLs:

* :class:`ESTCRLPublisher` keeps one current CRL per CA certificate of the MEF CA - the
  issuing CA (which signs every EST certificate: the intermediate if there is one) lists the
  revoked EST certificates; the root, when there is an intermediate, issues an empty CRL
  (this MEF never revokes its own intermediate), so that a relying party with the
  ``require`` policy finds a current CRL for every certificate of the path.
* A CRL is re-signed only when the set of revoked certificates changed or half of its
  validity (``nextUpdate - thisUpdate``, default one day) has passed; otherwise the stored
  one is served.  cRLNumber grows by one per issue; the current CRL of each signer is kept
  in the store (``mef.est.crl``, id = ``root`` / ``intermediate``) and replaced by
  compare-and-set, so two instances never publish two different CRLs under one number.
* Entries expire with their certificate (RFC 5280 5.1.2.6 allows removing an entry once
  the certificate has expired), so the CRL does not grow for ever.
* Distribution: ``m2msec mef serve`` with ``crl_port`` serves them over plain HTTP
  (:mod:`m2msec.pki.crl_http`; RFC 5280 4.2.1.13: CRLs are signed objects and are
  fetched over http), at ``/crl/root.crl`` and ``/crl/intermediate.crl``; with
  ``crl_base_url`` the EST CA writes the cRLDistributionPoints URL of its issuing CA's CRL
  into every certificate it issues.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from m2msec.mef.state import NS_EST_REVOKED
from m2msec.onem2m.timestamps import Clock
from m2msec.pki import DevCA
from m2msec.pki.crl import RevocationEntry, build_crl
from m2msec.store import DuplicateError, Store, VersionConflict

__all__ = ["DEFAULT_VALIDITY", "NS_EST_CRL", "ESTCRLPublisher", "crl_url_for"]

NS_EST_CRL: Final = "mef.est.crl"  # record per signer ("root" / "intermediate"): the current CRL
DEFAULT_VALIDITY: Final = timedelta(days=1)
_ATTEMPTS: Final = 5


def crl_url_for(base_url: str, signer: str) -> str:
    """``<base_url>/<signer>.crl`` (one slash between)."""
    return base_url.rstrip("/") + f"/{signer}.crl"


def _entries(store: Store) -> list[RevocationEntry]:
    out = []
    for rec in store.list_records(NS_EST_REVOKED):
        doc = rec.doc
        reason = doc.get("reason")
        out.append(RevocationEntry(int(rec.rec_id, 16), datetime.fromisoformat(doc["revoked_at"]),
                                   x509.ReasonFlags(reason) if reason else None))
    return out


def _digest(entries: list[RevocationEntry]) -> str:
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e.serial_number):
        h.update(f"{e.serial_number:x}|{e.revocation_date.isoformat()}|{e.reason.value if e.reason else ''}\n".encode())
    return h.hexdigest()


class ESTCRLPublisher:
    """The current CRLs of the MEF CA ``ca`` (keys from the store, see :func:`m2msec.mef.est.load_dev_ca`).

    Thread-safe; :meth:`crl_der` does blocking store I/O (call it from a worker thread in
    an event loop)."""

    def __init__(self, store: Store, ca: DevCA, clock: Clock, *, validity: timedelta = DEFAULT_VALIDITY) -> None:
        if validity <= timedelta(0):
            raise ValueError("the CRL validity must be positive")
        self.store = store
        self.ca = ca
        self.clock = clock
        self.validity = validity
        self._lock = threading.Lock()
        self._parsed: dict[tuple[str, int], x509.CertificateRevocationList] = {}

    def __repr__(self) -> str:
        return f"ESTCRLPublisher(ca={self.ca.name!r}, validity={self.validity})"

    @property
    def signers(self) -> tuple[str, ...]:
        """``("root", "intermediate")`` or ``("root",)``."""
        return ("root", "intermediate") if self.ca.intermediate_cert is not None else ("root",)

    def crl(self, signer: str | None = None) -> x509.CertificateRevocationList:
        """The current CRL of ``signer`` (default: the issuing CA), issuing a new one if needed."""
        which = signer or self.ca.issuing_signer
        if which not in self.signers:
            raise KeyError(which)
        with self._lock:
            for _ in range(_ATTEMPTS):
                got = self._current_or_issue(which)
                if got is not None:
                    return got
        raise RuntimeError(f"could not publish the {which} CRL: {_ATTEMPTS} concurrent updates in a row")

    def sources(self) -> dict[str, Callable[[], x509.CertificateRevocationList]]:
        """``{signer: () -> current CRL}`` for :class:`m2msec.pki.CRLHTTPServer`."""
        return {s: (lambda s=s: self.crl(s)) for s in self.signers}  # type: ignore[misc]

    def crl_der(self, signer: str | None = None) -> bytes:
        return self.crl(signer).public_bytes(serialization.Encoding.DER)

    def crls(self) -> list[x509.CertificateRevocationList]:
        """The current CRL of every CA certificate (root first)."""
        return [self.crl(s) for s in self.signers]

    def _current_or_issue(self, which: str) -> x509.CertificateRevocationList | None:
        now = self.clock()
        entries = _entries(self.store) if which == self.ca.issuing_signer else []
        digest = _digest(entries)
        rec = self.store.find_record(NS_EST_CRL, which)
        if rec is not None:
            doc = rec.doc
            this_update = datetime.fromisoformat(doc["this_update"])
            next_update = datetime.fromisoformat(doc["next_update"])
            fresh = now < this_update + (next_update - this_update) / 2 and this_update <= now
            if doc["digest"] == digest and fresh:
                return self._parse(which, rec.version, doc["der_hex"])
        number = int(rec.doc["number"]) + 1 if rec is not None else 1
        cert, key = self.ca._signer(which)  # noqa: SLF001 - the CA's own signing key
        crl = build_crl(issuer_cert=cert, issuer_key=key, entries=entries, number=number, this_update=now,
                        validity=self.validity)
        der = crl.public_bytes(serialization.Encoding.DER)
        doc = {"number": number, "digest": digest, "der_hex": der.hex(), "this_update": now.isoformat(),
               "next_update": (now + self.validity).isoformat(), "revoked": len(entries)}
        try:
            with self.store.transaction() as tx:
                if rec is None:
                    new = tx.put_record(NS_EST_CRL, which, doc, if_absent=True)
                else:
                    new = tx.update_record(NS_EST_CRL, which, doc, expected_version=rec.version)
                tx.append_audit("mef", "est-crl", which, "ok", {"crl_number": number, "revoked": len(entries)})
        except (DuplicateError, VersionConflict):
            return None  # another instance published meanwhile: look again
        self._remember(which, new.version, crl)
        return crl

    def _parse(self, which: str, version: int, der_hex: str) -> x509.CertificateRevocationList:
        crl = self._parsed.get((which, version))
        if crl is None:
            crl = x509.load_der_x509_crl(bytes.fromhex(der_hex))
            self._remember(which, version, crl)
        return crl

    def _remember(self, which: str, version: int, crl: x509.CertificateRevocationList) -> None:
        """Keep only the newest parsed CRL per signer."""
        self._parsed = {k: v for k, v in self._parsed.items() if k[0] != which}
        self._parsed[(which, version)] = crl

