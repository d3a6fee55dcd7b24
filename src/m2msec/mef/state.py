"""MEF state in the durable store (TS-0003 8.3.2.1/8.3.2.2 Bootstrap Instruction Configuration, 8.3.4, 10.7).

Everything an MEF instance needs lives in :mod:`m2msec.store`, so several instances
behind one address share it (DESIGN.md section 3):

=====================  ============  ==============================================
namespace              kind          content
=====================  ============  ==============================================
``mef.enrolee``        record        Bootstrap Instruction Configuration of one enrolee
                                     (id = Enrolee-ID): authentication, Enrolment
                                     Targets + SUIDs, MAFs, URIs, Enrolment Expiry,
                                     token requirement, revoked flag
``mef.kpm``            credential    Kpm (id = KpmID), metadata ``enrolee_id``
``mef.certidx``        record        ``<flavour>|<identifier>`` -> enrolee or target
``mef.target``         record        Enrolment Target authentication (id = target id)
``mef.target_psk``     credential    a target's pre-configured PSK (id = PSK identity)
``mef.token``          record        single-use Enrolment-Token (id = SHA-256 of it)
``mef.ke``             credential    Ke (id = KeID), metadata enrolee + grants, expiry
``mef.kre``            credential    Kre (id = KreID), metadata enrolee + KeID, expiry
=====================  ============  ==============================================

:meth:`MEFState.commit_enrolment` writes Ke, Kre, the token consumption and the audit
entry in one store transaction: an enrolment is either wholly present or absent.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from cryptography import x509

from m2msec.errors import M2MSecError
from m2msec.mef.protocol import EnroleePreferences, MAFPreference, TargetGrant
from m2msec.onem2m.rsc import ResponseStatusCode
from m2msec.osuser import admin_details
from m2msec.pki import CertificateFlavour, CRLStore, PeerCertInfo, RevocationPolicy, canonical_identifier
from m2msec.pki.ocsp_check import PeerOCSPChecker
from m2msec.store import DuplicateError, NotFound, Store

__all__ = ["EnroleeConfig", "MEFError", "MEFState", "SessionPeer", "TargetConfig", "hash_token"]

NS_ENROLEE: Final = "mef.enrolee"
NS_KPM: Final = "mef.kpm"
NS_CERTIDX: Final = "mef.certidx"
NS_TARGET: Final = "mef.target"
NS_TARGET_PSK: Final = "mef.target_psk"
NS_TOKEN: Final = "mef.token"
NS_KE: Final = "mef.ke"
NS_KRE: Final = "mef.kre"
NS_EST_ISSUED: Final = "mef.est.issued"  # record per certificate the EST CA issued, id = serial (hex)
NS_EST_REVOKED: Final = "mef.est.revoked"  # record per revoked one, id = serial (hex); see m2msec.mef.est_crl
#: store notification channel of EST certificate revocations (payload: the serial); every MEF
#: instance's established sessions re-check their certificate (m2msec.mef.revocation_watch)
EST_REVOKED_CHANNEL: Final = "m2msec_mef_est_revoked"

Clock = Callable[[], datetime]


class MEFError(M2MSecError):
    """An MEF refusal; ``rsc`` is the oneM2M status sent back (message has no key bytes)."""


def revoke_issued(tx: Any, issued: Any, *, now: datetime, reason: x509.ReasonFlags | None) -> dict[str, Any]:
    """Inside ``tx``: record the revocation of the EST-issued certificate ``issued`` (its
    ``mef.est.issued`` record) and mark that record; the revocation record expires with the
    certificate (RFC 5280 5.1.2.6: an entry may leave the CRL once the certificate has expired).
    The transaction also notifies :data:`EST_REVOKED_CHANNEL`: established sessions of every
    MEF instance on the store re-check their certificate (:mod:`m2msec.mef.revocation_watch`)."""
    doc = {"serial": issued.rec_id, "revoked_at": now.isoformat(), "reason": reason.value if reason else None,
           "enrolee_id": issued.doc.get("enrolee_id"), "issuer": issued.doc.get("issuer")}
    try:
        tx.put_record(NS_EST_REVOKED, issued.rec_id, doc, expires_at=issued.expires_at, if_absent=True)
    except DuplicateError:
        raise MEFError(f"certificate {issued.rec_id} is already revoked", rsc=ResponseStatusCode.CONFLICT) from None
    mark = dict(issued.doc)
    mark["revoked"] = True
    tx.update_record(NS_EST_ISSUED, issued.rec_id, mark, expected_version=issued.version)
    tx.notify(EST_REVOKED_CHANNEL, issued.rec_id[:200])
    return doc


_COUNT_LOCK = threading.Lock()

#: hex digits of the token hash an audit record carries (48 bits: correlation, not recovery)
TOKEN_AUDIT_PREFIX: Final = 12


def hash_token(token: str) -> str:
    """Store id of an Enrolment-Token: the token itself is never stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class EnroleeConfig:
    """Bootstrap Instruction Configuration of one enrolee (tables 9.2.2.3-1/-2 of seed 004)."""

    enrolee_id: str
    kpm_id: str | None = None  # Pre-Provisioned Symmetric Key RSPF
    cert: PeerCertInfo | None = None  # Certificate-Based RSPF (8.1.2.4 information)
    cert_anchors_pem: tuple[str, ...] = ()  # empty: the MEF's configured enrolee trust anchors
    targets: tuple[TargetGrant, ...] = ()
    mafs: tuple[MAFPreference, ...] = ()
    certificate_enrolment_uri: str | None = None
    remote_management_uri: str | None = None
    expiry_seconds: int = 86400  # Enrolment Expiry (10.7)
    token_required: bool = False
    revoked: bool = False

    def to_doc(self) -> dict[str, Any]:
        return {
            "enrolee_id": self.enrolee_id, "kpm_id": self.kpm_id,
            "cert": None if self.cert is None else {"flavour": self.cert.flavour.value,
                                                      "identifier": self.cert.identifier},
            "cert_anchors_pem": list(self.cert_anchors_pem),
            "targets": [t.to_doc() for t in self.targets], "mafs": [m.to_doc() for m in self.mafs],
            "certificate_enrolment_uri": self.certificate_enrolment_uri,
            "remote_management_uri": self.remote_management_uri,
            "expiry_seconds": self.expiry_seconds, "token_required": self.token_required, "revoked": self.revoked,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> EnroleeConfig:
        c = doc.get("cert")
        return cls(
            doc["enrolee_id"], doc.get("kpm_id"),
            None if c is None else PeerCertInfo(CertificateFlavour(c["flavour"]), c["identifier"]),
            tuple(doc.get("cert_anchors_pem", ())), tuple(TargetGrant.from_doc(t) for t in doc.get("targets", ())),
            tuple(MAFPreference.from_doc(m) for m in doc.get("mafs", ())), doc.get("certificate_enrolment_uri"),
            doc.get("remote_management_uri"), int(doc.get("expiry_seconds", 86400)),
            bool(doc.get("token_required", False)), bool(doc.get("revoked", False)),
        )

    @property
    def preferences(self) -> EnroleePreferences:
        return EnroleePreferences(self.targets, self.mafs, self.certificate_enrolment_uri, self.remote_management_uri)


@dataclass(frozen=True)
class TargetConfig:
    """How an Enrolment Target authenticates to the MEF for MEF Key Retrieval."""

    target_id: str
    psk_id: str | None = None
    cert: PeerCertInfo | None = None
    cert_anchors_pem: tuple[str, ...] = ()

    def to_doc(self) -> dict[str, Any]:
        return {"target_id": self.target_id, "psk_id": self.psk_id,
                "cert": None if self.cert is None else {"flavour": self.cert.flavour.value,
                                                          "identifier": self.cert.identifier},
                "cert_anchors_pem": list(self.cert_anchors_pem)}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> TargetConfig:
        c = doc.get("cert")
        return cls(doc["target_id"], doc.get("psk_id"),
                   None if c is None else PeerCertInfo(CertificateFlavour(c["flavour"]), c["identifier"]),
                   tuple(doc.get("cert_anchors_pem", ())))


@dataclass(frozen=True)
class SessionPeer:
    """Who a MEF TLS session authenticated.

    ``kind``: ``"enrolee"`` (Kpm or enrolee certificate: may run the Enrolment Exchange),
    ``"reauth"`` (Kre: an enrolled entity; may re-enrol and may fetch as an Enrolment
    Target under its Enrolee-ID), ``"target"`` (pre-configured target PSK or certificate).
    """

    kind: str
    identity: str  # Enrolee-ID or target id
    credential: str  # "kpm:<KpmID>", "kre:<KreID>", "psk:<id>", "cert:<flavour>|<id>"


def _cert_key(info: PeerCertInfo) -> str:
    return f"{info.flavour.value}|{canonical_identifier(info.flavour, info.identifier)}"


@dataclass
class MEFState:
    """Store-backed MEF state; ``fqdn`` is the MEF-FQDN of KeID/KreID (10.3.4)."""

    store: Store
    fqdn: str
    clock: Clock
    enrolee_anchors: tuple[x509.Certificate, ...] = ()
    #: certificate status check (TS-0003 8.1.2.2) of enrolee/target certificates in the certificate RSPF
    enrolee_crls: CRLStore | None = None
    revocation: RevocationPolicy = RevocationPolicy.IF_AVAILABLE
    #: OCSP queries about enrolee/target certificates (``[mef] enrolee_ocsp``; None: CRLs only)
    enrolee_ocsp: PeerOCSPChecker | None = None
    #: EST certificate revocations committed through this object (only grows; sessions of
    #: this process re-check at once, m2msec.mef.revocation_watch)
    est_revocations: int = 0

    # -- administration ("m2msec mef enrolee add|list|revoke", "target add") ----------------
    def add_enrolee(self, cfg: EnroleeConfig, *, kpm: bytes | None = None) -> None:
        if (cfg.kpm_id is None) == (cfg.cert is None):
            raise MEFError("configure exactly one of a KpmID (PSK RSPF) or certificate information (certificate RSPF)",
                           rsc=ResponseStatusCode.BAD_REQUEST)
        if cfg.kpm_id is not None and not kpm:
            raise MEFError("the PSK RSPF needs Kpm", rsc=ResponseStatusCode.BAD_REQUEST)
        if cfg.expiry_seconds <= 0:
            raise MEFError("Enrolment Expiry must be positive", rsc=ResponseStatusCode.BAD_REQUEST)
        with self.store.transaction() as tx:
            tx.put_record(NS_ENROLEE, cfg.enrolee_id, cfg.to_doc())
            if cfg.kpm_id is not None:
                assert kpm is not None
                if tx.find_credential(NS_TARGET_PSK, cfg.kpm_id) or tx.find_credential(NS_KRE, cfg.kpm_id):
                    raise MEFError(f"PSK identity {cfg.kpm_id!r} is already used", rsc=ResponseStatusCode.CONFLICT)
                tx.put_credential(NS_KPM, cfg.kpm_id, kpm, metadata={"enrolee_id": cfg.enrolee_id})
            if cfg.cert is not None:
                tx.put_record(NS_CERTIDX, _cert_key(cfg.cert), {"kind": "enrolee", "id": cfg.enrolee_id})
            tx.append_audit("mef-admin", "enrolee-add", cfg.enrolee_id, "ok",
                            admin_details({"rspf": "psk" if cfg.kpm_id else "certificate"}))

    def issue_token(self, enrolee_id: str, *, valid_for: timedelta | None = None) -> str:
        """A fresh single-use Enrolment-Token for ``enrolee_id`` (returned once, stored hashed).

        Audited as ``token-issue`` with the first 12 hex digits of the token's SHA-256 (the
        prefix of its record id, for correlation), never the token."""
        self.get_enrolee(enrolee_id)
        token = secrets.token_urlsafe(24)
        digest = hash_token(token)
        expires = self.clock() + valid_for if valid_for is not None else None
        with self.store.transaction() as tx:
            tx.put_record(NS_TOKEN, digest, {"enrolee_id": enrolee_id}, expires_at=expires, if_absent=True)
            tx.append_audit("mef-admin", "token-issue", enrolee_id, "ok",
                            admin_details({"token_sha256_prefix": digest[:TOKEN_AUDIT_PREFIX],
                                           "expires": expires.isoformat() if expires is not None else None}))
        return token

    def get_enrolee(self, enrolee_id: str) -> EnroleeConfig:
        rec = self.store.find_record(NS_ENROLEE, enrolee_id)
        if rec is None:
            raise MEFError(f"enrolee {enrolee_id!r} is not configured", rsc=ResponseStatusCode.NOT_FOUND)
        return EnroleeConfig.from_doc(rec.doc)

    def list_enrolees(self) -> list[EnroleeConfig]:
        return [EnroleeConfig.from_doc(r.doc) for r in self.store.list_records(NS_ENROLEE)]

    def revoke_enrolee(self, enrolee_id: str) -> int:
        """Mark revoked, delete its Ke/Kre (targets can no longer fetch) and revoke every live
        certificate the EST CA issued to it (reason privilegeWithdrawn; they go on the next CRL,
        :mod:`m2msec.mef.est_crl`), all in one transaction; returns keys removed."""
        return self.revoke_enrolee_report(enrolee_id)[0]

    def revoke_enrolee_report(self, enrolee_id: str) -> tuple[int, list[str]]:
        """:meth:`revoke_enrolee`, returning (keys removed, serials of the certificates revoked)."""
        n = 0
        now = self.clock()
        with self.store.transaction() as tx:
            rec = tx.find_record(NS_ENROLEE, enrolee_id)
            if rec is None:
                raise MEFError(f"enrolee {enrolee_id!r} is not configured", rsc=ResponseStatusCode.NOT_FOUND)
            doc = dict(rec.doc)
            doc["revoked"] = True
            tx.update_record(NS_ENROLEE, enrolee_id, doc, expected_version=rec.version)
            for ns in (NS_KE, NS_KRE):
                for c in tx.list_credentials(ns, where={"enrolee_id": enrolee_id}):
                    n += int(tx.delete_credential(ns, c.cred_id))
            certs = [r for r in tx.list_records(NS_EST_ISSUED, where={"enrolee_id": enrolee_id})
                     if tx.find_record(NS_EST_REVOKED, r.rec_id) is None]
            for r in certs:
                revoke_issued(tx, r, now=now, reason=x509.ReasonFlags.privilege_withdrawn)
            tx.append_audit("mef-admin", "enrolee-revoke", enrolee_id, "ok",
                            admin_details({"keys_removed": n, "certificates_revoked": [r.rec_id for r in certs]}))
        if certs:
            self.note_est_revocation()
        return n, [r.rec_id for r in certs]

    def note_est_revocation(self) -> None:
        """Count a committed EST certificate revocation (:attr:`est_revocations`)."""
        with _COUNT_LOCK:
            self.est_revocations += 1

    def revoked_certificate(self, cert: x509.Certificate) -> dict[str, Any] | None:
        """The revocation record of ``cert`` if the EST CA issued and then revoked it, else None.

        Authoritative and immediate for every MEF instance on the store (no CRL round trip)."""
        rec = self.store.find_record(NS_EST_REVOKED, format(cert.serial_number, "x"))
        if rec is None:
            return None
        issuer = rec.doc.get("issuer")
        if issuer is not None and issuer != cert.issuer.rfc4514_string():
            return None  # same serial from another CA
        return dict(rec.doc)

    def add_target(self, cfg: TargetConfig, *, psk: bytes | None = None) -> None:
        if (cfg.psk_id is None) == (cfg.cert is None):
            raise MEFError("configure exactly one of a PSK identity or certificate information for the target",
                           rsc=ResponseStatusCode.BAD_REQUEST)
        with self.store.transaction() as tx:
            tx.put_record(NS_TARGET, cfg.target_id, cfg.to_doc())
            if cfg.psk_id is not None:
                if not psk:
                    raise MEFError("the target PSK is missing", rsc=ResponseStatusCode.BAD_REQUEST)
                if tx.find_credential(NS_KPM, cfg.psk_id) or tx.find_credential(NS_KRE, cfg.psk_id):
                    raise MEFError(f"PSK identity {cfg.psk_id!r} is already used", rsc=ResponseStatusCode.CONFLICT)
                tx.put_credential(NS_TARGET_PSK, cfg.psk_id, psk, metadata={"target_id": cfg.target_id})
            if cfg.cert is not None:
                tx.put_record(NS_CERTIDX, _cert_key(cfg.cert), {"kind": "target", "id": cfg.target_id})
            tx.append_audit("mef-admin", "target-add", cfg.target_id, "ok",
                            admin_details({"auth": "psk" if cfg.psk_id is not None else "certificate"}))

    # -- handshake-time lookups (run inside the TLS callbacks) -----------------------------
    def psk_lookup(self, identity: str) -> tuple[bytes, SessionPeer] | None:
        """Kpm (enrolee), target PSK, or Kre (re-authentication) for a PSK identity."""
        c = self.store.find_credential(NS_KPM, identity)
        if c is not None:
            return c.secret, SessionPeer("enrolee", c.metadata["enrolee_id"], f"kpm:{identity}")
        c = self.store.find_credential(NS_TARGET_PSK, identity)
        if c is not None:
            return c.secret, SessionPeer("target", c.metadata["target_id"], f"psk:{identity}")
        c = self.store.find_credential(NS_KRE, identity)
        if c is not None:
            return c.secret, SessionPeer("reauth", c.metadata["enrolee_id"], f"kre:{identity}")
        return None

    def cert_candidates(self, leaf: x509.Certificate) -> list[tuple[SessionPeer, PeerCertInfo, tuple[x509.Certificate, ...]]]:
        """Configured enrolees/targets whose certificate information names this leaf."""
        from m2msec.pki import identifiers_of

        out = []
        for flavour in CertificateFlavour:
            try:
                ids = identifiers_of(leaf, flavour)
            except Exception:  # noqa: BLE001 - a leaf without that name form
                continue
            for ident in ids:
                rec = self.store.find_record(NS_CERTIDX, f"{flavour.value}|{ident}")
                if rec is None:
                    continue
                kind, pid = rec.doc["kind"], rec.doc["id"]
                src = self.store.find_record(NS_ENROLEE if kind == "enrolee" else NS_TARGET, pid)
                if src is None:
                    continue
                info = PeerCertInfo(flavour, ident)
                pems = tuple(src.doc.get("cert_anchors_pem", ()))
                anchors = tuple(x509.load_pem_x509_certificate(p.encode()) for p in pems) or self.enrolee_anchors
                # certificates provisioned by this MEF's EST CA (m2msec.mef.est) verify against that CA too
                extra = tuple(x509.load_pem_x509_certificate(p.encode()) for p in rec.doc.get("extra_anchors_pem", ()))
                anchors = anchors + tuple(a for a in extra if a not in anchors)
                out.append((SessionPeer(kind, pid, f"cert:{flavour.value}|{ident}"), info, anchors))
        return out

    # -- Enrolment Exchange --------------------------------------------------------------
    def commit_enrolment(self, *, enrolee_id: str, ke_id: str, ke: bytes, kre_id: str, kre: bytes,
                         token: str | None, token_required: bool, grants: Sequence[TargetGrant],
                         expires_at: datetime, credential: str,
                         also: Callable[[Any], None] | None = None) -> None:
        """One transaction: consume the token (if any), store Ke and Kre, ``also(tx)``, audit.  Raises MEFError.

        ``also`` writes what an instruction needs in the same transaction (e.g. the EST
        challengePassword of :mod:`m2msec.mef.est`).
        """
        with self.store.transaction() as tx:
            if token is not None:
                try:
                    rec = tx.take_record(NS_TOKEN, hash_token(token))
                except NotFound:
                    raise MEFError("Enrolment-Token invalid or already used",
                                   rsc=ResponseStatusCode.ORIGINATOR_HAS_NO_PRIVILEGE) from None
                if rec.doc.get("enrolee_id") != enrolee_id:
                    raise MEFError("Enrolment-Token was not issued for this enrolee",
                                   rsc=ResponseStatusCode.ORIGINATOR_HAS_NO_PRIVILEGE)
            elif token_required:
                raise MEFError("this enrolee must present an Enrolment-Token",
                               rsc=ResponseStatusCode.ORIGINATOR_HAS_NO_PRIVILEGE)
            md = {"enrolee_id": enrolee_id, "grants": [g.to_doc() for g in grants], "kre_id": kre_id,
                  "credential": credential}
            try:
                tx.put_credential(NS_KE, ke_id, ke, metadata=md, expires_at=expires_at, if_absent=True)
                tx.put_credential(NS_KRE, kre_id, kre, metadata={"enrolee_id": enrolee_id, "ke_id": ke_id},
                                  expires_at=expires_at, if_absent=True)
            except DuplicateError:
                raise MEFError("KeID collision", rsc=ResponseStatusCode.CONFLICT) from None
            if also is not None:
                also(tx)
            tx.append_audit("mef", "enrol", enrolee_id, "ok",
                            {"ke_id": ke_id, "kre_id": kre_id, "via": credential, "token": token is not None})

    def enrolment_key(self, ke_id: str) -> tuple[bytes, dict[str, Any], datetime | None] | None:
        c = self.store.find_credential(NS_KE, ke_id)
        if c is None:
            return None
        return c.secret, c.metadata, c.expires_at

    def audit(self, action: str, subject: str, outcome: str, details: dict[str, Any] | None = None) -> None:
        try:
            self.store.append_audit("mef", action, subject, outcome, details or {})
        except M2MSecError:
            pass
