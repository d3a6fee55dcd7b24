"""The established pairwiseE2EKey and where it is cached (TS-0003 8.7.2.2 C.2, 10.3.1, 8.4.2 A).

C.2: after a successful handshake both end-points export 48 octets with the label
``EXPORTER-oneM2M-ESCertKE`` and split them (:func:`m2msec.keys.split_exported`) into
pairwiseE2EKey (32 least significant octets) and pairwiseE2EKeyID (16 most significant),
and cache the key together with the identity of the other end-point.

Profile decisions (filling TS-0003 8.4.2 A, 8.5 and 8.7, which name no derivation):

* key identifier (``kid`` of ESPrim Objects and of ESData recipients/signers) =
  hexBinary(pairwiseE2EKeyID), 32 lowercase hexadecimal digits, no ``@fqdn`` suffix (an
  AE need not have an FQDN, and both end-points compute the same value without talking);
* ESPrim (8.4.2 A, "provisioned via ESCertKE"): pairwiseESPrimKey = pairwiseE2EKey,
  pairwiseESPrimKeyID = the kid above, SUID 43, bound to the peer's identity (the
  impersonation check of TS-0004 table 7.6.2-1 compares inner ``fr`` with it);
* ESData: the same 32-octet key is a symmetric key of the pair under SUID 44
  ("certificate"-class, Encryption-only/Nested: ``dir`` A256GCM or A256KW); a MIC use
  (SUID 45, HS256) must be asked for explicitly (``esdata_suid=45``) - one key is never
  registered for both;
* key lifetime: none by default (8.4.2 A: no pairwiseESPrimKeyLifetime = never expires);
  ``key_lifetime`` sets one for both uses.  A newer procedure with the same peer replaces
  the peer's previous key (the old kid is forgotten, also in the store).

Certificate status of established keys (8.7.2.2 C.2 with 8.1.2.2): a key is only as good as
the peer certificate path that authenticated the procedure, so each key keeps that path
(leaf ... trust anchor; public certificates only) with the CRL store and revocation policy
of the procedure, in memory and - as metadata ``{"escertke": {"path": [base64 DER, ...],
"revocation": policy}}`` beside the encrypted key - in the shared store.  Every use
(:meth:`ESCertKEKeys.resolve`, ``.esdata.resolve``, :meth:`ESCertKEKeys.for_peer`) compares
the CRL store's :attr:`~m2msec.pki.crl.CRLStore.generation` with the one the key was last
checked at (under ``require`` also the clock with the earliest nextUpdate of the CRLs
used); only when it changed is the path re-checked
(:func:`~m2msec.pki.crl.check_path_revocation`).  Outcome per policy:

* ``off``: never checked, the key stays;
* ``if-available``: REVOKED drops the key; CRL_INVALID (the issuer's only CRL unusable)
  keeps it (logged) - a broken CRL proves nothing about the peer; stale or missing CRLs
  leave the status undetermined, accepted as at the handshake;
* ``require``: REVOKED, REVOCATION_UNKNOWN (no current CRL, e.g. past nextUpdate) and
  CRL_INVALID all drop the key.

A dropped key is removed from memory and from the store (so every instance sharing it
loses it) and is from then on an unknown key identifier (ESPrim ESPRIM_UNKNOWN_KEY_ID 4112,
ESData unknown kid); a warning on the ``m2msec.escertke.keys`` logger names the peer, the
kid and the serial number of the certificate that failed (never key bytes), and
``on_drop`` (e.g. an audit writer) receives a :class:`DroppedKey`.  With a store, a kid
unknown in memory is read through the store (keys of other instances, SUID 43 only) and
its stored path re-checked with this instance's ``crls`` under the stored policy.
:meth:`ESCertKEKeys.sweep` checks all keys in memory at once (after a CRL reload).

Keys held in memory by other instances (DESIGN 3 scale-out): a key is deleted from the store by
whichever instance drops it (its own CRL change, or a newer key for the peer), and every
deletion notifies :data:`ESCERTKE_CHANNEL` in the same transaction (:mod:`m2msec.store.notify`,
payload the kid).  Every use of a key held in memory first confirms that it is still in the
store, cheaply: it remembers the channel's state at the last confirmation and looks the kid up
again only when that changed - on SQLite the notification sequence number (one primary-key
SELECT per use), on PostgreSQL a counter bumped by a ``LISTEN`` session on the channel (no
database access per use; while that session is not connected, e.g. at start or after a lost
connection, every use looks the kid up).  A kid no longer in the store is forgotten (logged,
``on_drop`` is not called: the instance that dropped it reported it) and is an unknown key
identifier at once on every instance.  Keys deleted from the store by other means (expiry
aside) are seen at the next change on the channel.  :meth:`ESCertKEKeys.close` stops the
listener.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from m2msec.esdata.credentials import ResolvedKey, SymmetricRecipient, SymmetricSigner, default_symmetric_algorithms
from m2msec.esdata.credentials import SUID_USAGE
from m2msec.esdata.errors import UnknownKidError
from m2msec.esprim.errors import UnknownKeyID
from m2msec.esprim.keysource import PairwiseKey
from m2msec.keys import split_exported
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.timestamps import Clock, ensure_utc
from m2msec.pki.crl import CRLSource, CRLStore, RevocationPolicy, as_store, check_path_revocation
from m2msec.pki.errors import CertificateVerificationError
from m2msec.pki.errors import VerificationReason as VR

if TYPE_CHECKING:
    from m2msec.esprim.keysource import StoreKeySource as ESPrimStoreKeySource
    from m2msec.pki import VerifiedPeer

__all__ = ["ESCERTKE_CHANNEL", "DroppedKey", "ESCertKEKeys", "ESCertKEResult", "kid_for"]

log = logging.getLogger(__name__)

#: metadata key of the ESCertKE status information of a stored key
STORE_METADATA_KEY = "escertke"
#: store notification channel of ESCertKE key deletions (payload: the kid)
ESCERTKE_CHANNEL = "m2msec_escertke_keys"
_REMOTE_MAX = 4096  # status entries kept for keys read through the store


def kid_for(key_id: bytes) -> str:
    """The key identifier used for an ESCertKE key: lowercase hexBinary(pairwiseE2EKeyID)."""
    return bytes(key_id).hex()


@dataclass(frozen=True, repr=False)
class ESCertKEResult:
    """A successful ESCertKE Procedure, as one end-point sees it."""

    peer_id: str  # the identity the key is associated with (the other end-point's)
    key: bytes = field(compare=False)  # pairwiseE2EKey, 32 octets
    key_id: bytes  # pairwiseE2EKeyID, 16 octets
    role: str  # "initiator" | "terminator"
    established_at: datetime
    expires_at: datetime | None = None
    peer: VerifiedPeer | None = field(default=None, compare=False)

    @classmethod
    def from_exported(cls, material: bytes, **kw: object) -> ESCertKEResult:
        key, key_id = split_exported(material)
        return cls(key=key, key_id=key_id, **kw)  # type: ignore[arg-type]

    @property
    def kid(self) -> str:
        return kid_for(self.key_id)

    @property
    def peer_path(self) -> tuple[x509.Certificate, ...]:
        """The peer's validated certificate path, leaf first, trust anchor last (empty: no path)."""
        p = self.peer
        if p is None or p.trust_anchor is None:
            return ()
        return (*p.path, p.trust_anchor)

    def pairwise_esprim_key(self) -> PairwiseKey:
        """This key as an ESPrim pairwise key entry (SUID 43)."""
        return PairwiseKey(kid=self.kid, key=self.key, peer_id=self.peer_id, suid=SUID.CERTIFICATE_ESPRIM,
                           expires_at=self.expires_at)

    def esdata_recipient(self, alg: str = "A256KW") -> SymmetricRecipient:
        """Source side of ESData: encrypt for the peer with this key (SUID 44)."""
        return SymmetricRecipient(kid=self.kid, key=self.key, alg=alg, suid=int(SUID.CERTIFICATE_ESDATA_ENCRYPT))

    def esdata_signer(self, alg: str = "HS256") -> SymmetricSigner:
        """Source side of ESData MIC with this key (SUID 45) - only if the peer registered it so."""
        return SymmetricSigner(kid=self.kid, key=self.key, alg=alg, suid=int(SUID.CERTIFICATE_ESDATA_SIGN))

    def __repr__(self) -> str:
        return (f"ESCertKEResult(role={self.role}, peer_id={self.peer_id!r}, kid={self.kid!r}, "
                f"key=<{len(self.key)} bytes hidden>)")

    __str__ = __repr__


@dataclass(frozen=True)
class DroppedKey:
    """A key dropped because its peer's certificate path failed a later status check."""

    peer_id: str
    kid: str
    reason: str  # VerificationReason value: REVOKED, REVOCATION_UNKNOWN, CRL_INVALID
    serial: int | None  # serial number of the certificate that failed (None: not identified)
    detail: str


@dataclass(eq=False)
class _Status:
    """What a key needs to re-check its peer's certificate status (no secret in here)."""

    path: tuple[x509.Certificate, ...]  # leaf ... trust anchor
    crls: CRLStore | None
    policy: RevocationPolicy
    generation: int  # ``crls.generation`` when last checked (-1: check on next use)
    recheck_at: datetime | None = None  # require: earliest nextUpdate of the CRLs used

    @property
    def checked(self) -> bool:
        return self.policy is not RevocationPolicy.OFF and len(self.path) > 1


def _generation(crls: CRLStore | None) -> int:
    return crls.generation if crls is not None else 0


def _require_deadline(path: Sequence[x509.Certificate], crls: CRLStore | None, now: datetime) -> datetime | None:
    """When a GOOD status under ``require`` must be looked at again: the earliest nextUpdate of
    the current CRLs of the path's issuers (``now``: at once, when an issuer has none)."""
    if crls is None:
        return now
    deadline: datetime | None = None
    for cert in path[:-1]:
        current = [c.next_update_utc for c in crls.for_issuer(cert.issuer)
                   if c.next_update_utc is not None and c.last_update_utc <= now < c.next_update_utc]
        if not current:
            return now
        first = min(current)
        deadline = first if deadline is None or first < deadline else deadline
    return deadline


def _path_to_json(path: Sequence[x509.Certificate]) -> list[str]:
    return [base64.b64encode(c.public_bytes(Encoding.DER)).decode("ascii") for c in path]


def _path_from_json(doc: object) -> tuple[x509.Certificate, ...]:
    if not isinstance(doc, list):
        raise ValueError("path is not a list")
    return tuple(x509.load_der_x509_certificate(base64.b64decode(str(d), validate=True)) for d in doc)


class ESCertKEKeys:
    """The cache of established pairwiseE2EKeys of one end-point (thread-safe).

    It is at the same time an ESPrim :class:`~m2msec.esprim.keysource.PairwiseKeySource`
    (:meth:`resolve`) and, through :attr:`esdata`, an ESData ``KeySource``.  With
    ``esprim_store`` (an :class:`m2msec.esprim.StoreKeySource`) each new key is also
    provisioned there, so that every instance sharing the store resolves it, and kids this
    instance does not hold in memory are read through the store.

    ``crls`` / ``revocation``: the CRL store and policy for keys added without their own
    (the procedures pass their peer configuration's) and the CRL store for keys read
    through the store (their policy is the stored one).  ``on_drop`` is called (outside
    the lock) for every key dropped by a status check.  :attr:`status_checks` counts the
    path re-checks made (each one is CRL work).
    """

    def __init__(self, *, clock: Clock, esdata_suid: int = int(SUID.CERTIFICATE_ESDATA_ENCRYPT),
                 key_lifetime: timedelta | None = None, esprim_store: ESPrimStoreKeySource | None = None,
                 crls: CRLSource = None, revocation: RevocationPolicy | str = RevocationPolicy.IF_AVAILABLE,
                 on_drop: Callable[[DroppedKey], None] | None = None) -> None:
        if esdata_suid not in (44, 45):
            raise ValueError("an ESCertKE key is an ESData key of SUID 44 (encryption) or 45 (MIC)")
        self._clock = clock
        self.esdata_suid = esdata_suid
        self.key_lifetime = key_lifetime
        self._store = esprim_store
        self.crls = as_store(crls)
        self.revocation = RevocationPolicy(revocation)
        self.on_drop = on_drop
        self.status_checks = 0
        self._lock = threading.Lock()
        self._by_kid: dict[str, ESCertKEResult] = {}
        self._by_peer: dict[str, str] = {}
        self._esdata: dict[str, ResolvedKey] = {}
        self._status: dict[str, _Status] = {}
        self._remote: OrderedDict[str, _Status] = OrderedDict()  # kids read through the store
        self._algs: dict[int, frozenset[str]] = {}
        self.esdata = _ESDataView(self)
        # presence of in-memory keys in the store (see the module docstring)
        self._confirmed: dict[str, int] = {}  # kid -> change epoch at its last confirmation
        self._listener: Any = None
        self._listen_epoch = 0
        self._listen_failed = False
        #: store look-ups made to confirm that a key held in memory is still stored
        self.presence_checks = 0

    def __repr__(self) -> str:
        return f"ESCertKEKeys({len(self._by_kid)} keys, esdata_suid={self.esdata_suid})"

    def close(self) -> None:
        """Stop the store change listener (PostgreSQL), if one was started; idempotent.  Later
        uses of keys held in memory look each one up in the store."""
        with self._lock:
            listener, self._listener = self._listener, None
            self._listen_failed = True  # no new listener after close
        if listener is not None:
            listener.close()

    # -- presence in the store of keys held in memory ---------------------------------
    def _epoch(self) -> int | None:
        """The state of :data:`ESCERTKE_CHANNEL`: equal values mean no deletion was committed in
        between; None when that cannot be known (PostgreSQL listener not connected)."""
        assert self._store is not None
        store = self._store.store
        if not store.can_listen:
            return store.notify_seq(ESCERTKE_CHANNEL)
        listener = self._listener
        if listener is None and not self._listen_failed:
            listener = self._start_listener()
        if listener is None or not listener.connected:
            return None
        return self._listen_epoch

    def _start_listener(self) -> Any:
        assert self._store is not None
        with self._lock:
            if self._listener is not None or self._listen_failed:
                return self._listener
            try:
                self._listener = self._store.store.listen(ESCERTKE_CHANNEL, self._on_notification,
                                                          self._on_listener_state)
            except Exception as exc:  # noqa: BLE001 - without a listener every use looks the kid up
                self._listen_failed = True
                log.warning("ESCertKE key change listener not started (every use reads the store): %s", exc)
            return self._listener

    def _on_notification(self, _payload: str) -> None:
        with self._lock:
            self._listen_epoch += 1

    def _on_listener_state(self, connected: bool) -> None:
        with self._lock:
            self._listen_epoch += 1  # notifications may have been missed: confirm every key again

    def _still_stored(self, kid: str, peer_id: str) -> bool:
        """True if the in-memory key ``kid`` is still in the shared store (always, without one);
        otherwise it is forgotten here."""
        if self._store is None:
            return True
        epoch = self._epoch()
        if epoch is not None and self._confirmed.get(kid) == epoch:
            return True
        self.presence_checks += 1
        try:
            self._store.lookup(kid)
        except UnknownKeyID:
            with self._lock:
                known = self._by_kid.get(kid)
                if known is not None:
                    self._forget_locked(kid, known.peer_id)
            if known is not None:
                log.warning("ESCertKE key %s of peer %r is no longer in the store (dropped by another "
                            "instance or replaced): forgotten", kid, peer_id)
            return False
        if epoch is not None:
            with self._lock:
                if kid in self._by_kid:
                    self._confirmed[kid] = epoch
        return True

    def _forget_locked(self, kid: str, peer_id: str) -> None:
        self._by_kid.pop(kid, None)
        self._esdata.pop(kid, None)
        self._status.pop(kid, None)
        self._remote.pop(kid, None)
        self._confirmed.pop(kid, None)
        if self._by_peer.get(peer_id) == kid:
            del self._by_peer[peer_id]

    def _algorithms(self, key_len: int) -> frozenset[str]:
        algs = self._algs.get(key_len)
        if algs is None:
            algs = self._algs[key_len] = default_symmetric_algorithms(SUID_USAGE[self.esdata_suid], key_len)
        return algs

    def expiry_from(self, now: datetime) -> datetime | None:
        return now + self.key_lifetime if self.key_lifetime is not None else None

    def add(self, result: ESCertKEResult, *, crls: CRLStore | None = None,
            revocation: RevocationPolicy | str | None = None, checked_generation: int | None = None) -> None:
        """Cache ``result`` (replacing the peer's previous key).

        ``crls``/``revocation``: the certificate status settings the procedure verified the
        peer with (default: this cache's); ``checked_generation``: ``crls.generation`` read
        before that verification (absent: the status is re-checked on first use)."""
        kid = result.kid
        store = crls if crls is not None else self.crls
        policy = RevocationPolicy(revocation) if revocation is not None else self.revocation
        path = result.peer_path
        if checked_generation is not None and crls is not None:
            generation = checked_generation
        elif store is None and policy is not RevocationPolicy.REQUIRE:
            generation = 0  # nothing to check against, nothing can change
        else:
            generation = -1
        status = _Status(path, store, policy, generation)
        if status.checked and policy is RevocationPolicy.REQUIRE:
            status.recheck_at = _require_deadline(path, store, ensure_utc(self._clock(), what="clock()"))
        epoch = None
        if self._store is not None:
            epoch = self._epoch()  # before the write: a deletion committed after it changes the epoch
            md = {STORE_METADATA_KEY: {"path": _path_to_json(path), "revocation": policy.value}} if path else None
            self._store.provision(kid, result.key, peer_id=result.peer_id, suid=SUID.CERTIFICATE_ESPRIM,
                                  expires_at=result.expires_at, metadata=md)
        entry = ResolvedKey(kid=kid, key=result.key, algorithms=self._algorithms(len(result.key)),
                            suid=self.esdata_suid)
        with self._lock:
            old = self._by_peer.get(result.peer_id)
            if old is not None and old != kid:
                self._by_kid.pop(old, None)
                self._esdata.pop(old, None)
                self._status.pop(old, None)
                self._confirmed.pop(old, None)
            else:
                old = None
            self._by_kid[kid] = result
            self._by_peer[result.peer_id] = kid
            self._esdata[kid] = entry
            self._status[kid] = status
            self._remote.pop(kid, None)
            if epoch is not None:
                self._confirmed[kid] = epoch
            else:
                self._confirmed.pop(kid, None)
        if old is not None and self._store is not None:
            # the replaced kid is forgotten by every instance (read-through and in-memory copies)
            self._store.revoke(old, notify=ESCERTKE_CHANNEL)

    def for_peer(self, peer_id: str) -> ESCertKEResult | None:
        with self._lock:
            kid = self._by_peer.get(peer_id)
            res = self._by_kid.get(kid) if kid is not None else None
            status = self._status.get(kid) if kid is not None else None
        if res is None or self._expired(res):
            return None
        if status is not None and not self._status_ok(res.kid, res.peer_id, status, remote=False):
            return None
        if not self._still_stored(res.kid, res.peer_id):
            return None
        return res

    def _expired(self, res: ESCertKEResult) -> bool:
        return res.expires_at is not None and ensure_utc(self._clock(), what="clock()") >= res.expires_at

    def __len__(self) -> int:
        return len(self._by_kid)

    # -- certificate status of established keys (8.1.2.2) ---------------------------
    def _status_ok(self, kid: str, peer_id: str, st: _Status, *, remote: bool,
                   sink: list[DroppedKey] | None = None) -> bool:
        """The hot path: True while nothing changed since the last check (an int compare, and under
        ``require`` a time compare); otherwise re-check and drop the key if its path fails."""
        if not st.checked:
            return True
        generation = _generation(st.crls)
        if generation == st.generation and (
                st.recheck_at is None or ensure_utc(self._clock(), what="clock()") < st.recheck_at):
            return True
        return self._recheck(kid, peer_id, st, generation, remote=remote, sink=sink)

    def _recheck(self, kid: str, peer_id: str, st: _Status, generation: int, *, remote: bool,
                 sink: list[DroppedKey] | None) -> bool:
        now = ensure_utc(self._clock(), what="clock()")
        self.status_checks += 1
        try:
            check_path_revocation(st.path, crls=st.crls, policy=st.policy, now=now)
        except CertificateVerificationError as exc:
            reason = exc.reason_code
            if reason is VR.REVOKED or st.policy is RevocationPolicy.REQUIRE:
                dropped = self._drop(kid, peer_id, st, exc, now, remote=remote)
                if sink is not None and dropped is not None:
                    sink.append(dropped)
                return False
            log.warning("ESCertKE key %s of peer %r kept: certificate status not determinable (%s): %s",
                        kid, peer_id, reason.value, exc)
            st.generation, st.recheck_at = generation, None  # if-available: CRL_INVALID keeps the key
            return True
        st.generation = generation  # read before the check: a change meanwhile triggers another
        st.recheck_at = _require_deadline(st.path, st.crls, now) if st.policy is RevocationPolicy.REQUIRE else None
        return True

    def _culprit(self, st: _Status, reason: VR, now: datetime) -> int | None:
        """Serial number of the first certificate of the path failing with ``reason``."""
        for i in range(len(st.path) - 1):
            try:
                check_path_revocation(st.path[i:i + 2], crls=st.crls, policy=st.policy, now=now)
            except CertificateVerificationError as exc:
                if exc.reason_code is reason:
                    return st.path[i].serial_number
        return None

    def _drop(self, kid: str, peer_id: str, st: _Status, exc: CertificateVerificationError, now: datetime,
              *, remote: bool) -> DroppedKey | None:
        """Forget the key everywhere; None when a concurrent check already dropped this very entry."""
        serial = self._culprit(st, exc.reason_code, now)
        with self._lock:
            if self._status.get(kid) is not st and self._remote.get(kid) is not st:
                return None
            self._forget_locked(kid, peer_id)
        if self._store is not None:
            self._store.revoke(kid, notify=ESCERTKE_CHANNEL)
        dropped = DroppedKey(peer_id=peer_id, kid=kid, reason=exc.reason_code.value, serial=serial, detail=str(exc))
        log.warning("ESCertKE key %s of peer %r dropped%s: certificate serial %s: %s: %s", kid, peer_id,
                    " (read through the store)" if remote else "",
                    format(serial, "x") if serial is not None else "?", dropped.reason, exc)
        if self.on_drop is not None:
            self.on_drop(dropped)
        return dropped

    def sweep(self) -> list[DroppedKey]:
        """Check every key held in memory against its CRL store now (e.g. right after a CRL
        reload), so that keys of revoked peers go even if never used again.  Keys whose store's
        generation did not change are not re-checked.  Returns the keys dropped."""
        dropped: list[DroppedKey] = []
        with self._lock:
            items = [(kid, self._by_kid[kid].peer_id, st) for kid, st in self._status.items() if kid in self._by_kid]
        for kid, peer_id, st in items:
            self._status_ok(kid, peer_id, st, remote=False, sink=dropped)
        return dropped

    def _from_store(self, kid: str) -> PairwiseKey | None:
        """A SUID 43 key another instance (or this one, earlier) put into the store, its status
        re-checked like a key in memory; None when unknown there or dropped now."""
        if self._store is None or not isinstance(kid, str):
            return None
        try:
            pk, md = self._store.lookup(kid)
        except UnknownKeyID:
            return None
        if pk.suid is not SUID.CERTIFICATE_ESPRIM:
            return None  # another kind of key sharing the namespace: not ours to answer for
        with self._lock:
            st = self._remote.get(kid)
            if st is not None:
                self._remote.move_to_end(kid)
        if st is None:
            st = self._remote_status(kid, md.get(STORE_METADATA_KEY))
            if st is None:
                return None
            with self._lock:
                self._remote[kid] = st
                while len(self._remote) > _REMOTE_MAX:
                    self._remote.popitem(last=False)
        if not self._status_ok(kid, pk.peer_id, st, remote=True):
            return None
        return pk

    def _remote_status(self, kid: str, doc: Any) -> _Status | None:
        if doc is None:  # stored without a path (no certificate status to follow)
            return _Status((), self.crls, RevocationPolicy.OFF, 0)
        try:
            path = _path_from_json(doc["path"])
            policy = RevocationPolicy(doc["revocation"])
        except (KeyError, TypeError, ValueError):
            log.warning("stored ESCertKE key %s has unusable status metadata: refused", kid)
            return None
        return _Status(path, self.crls, policy, -1)

    # -- ESPrim PairwiseKeySource --------------------------------------------------
    def resolve(self, kid: str) -> PairwiseKey:
        with self._lock:
            res = self._by_kid.get(kid) if isinstance(kid, str) else None
            status = self._status.get(kid) if res is not None else None
        if res is None:
            pk = self._from_store(kid)
            if pk is None:
                raise UnknownKeyID(f"pairwiseESPrimKeyID {kid!r} is not an ESCertKE key")
            return pk
        if self._expired(res):
            raise UnknownKeyID(f"pairwiseESPrimKeyID {kid!r} has expired")
        if status is not None and not self._status_ok(kid, res.peer_id, status, remote=False):
            raise UnknownKeyID(f"pairwiseESPrimKeyID {kid!r} is not an ESCertKE key")
        if not self._still_stored(kid, res.peer_id):
            raise UnknownKeyID(f"pairwiseESPrimKeyID {kid!r} is not an ESCertKE key")
        return res.pairwise_esprim_key()

    # -- ESData ----------------------------------------------------------------------
    def _resolve_esdata(self, kid: str) -> ResolvedKey:
        with self._lock:
            entry = self._esdata.get(kid) if isinstance(kid, str) else None
            res = self._by_kid.get(kid) if entry is not None else None
            status = self._status.get(kid) if res is not None else None
        if entry is None or res is None:
            pk = self._from_store(kid)
            if pk is None:
                raise UnknownKidError(f"unknown key identifier {kid!r}")
            return ResolvedKey(kid=kid, key=pk.key, algorithms=self._algorithms(len(pk.key)), suid=self.esdata_suid)
        if self._expired(res) or (status is not None and not self._status_ok(kid, res.peer_id, status, remote=False)):
            raise UnknownKidError(f"unknown key identifier {kid!r}")
        if not self._still_stored(kid, res.peer_id):
            raise UnknownKidError(f"unknown key identifier {kid!r}")
        return entry


class _ESDataView:
    """ESData ``KeySource`` view of :class:`ESCertKEKeys`."""

    def __init__(self, keys: ESCertKEKeys) -> None:
        self._keys = keys

    def resolve(self, kid: str) -> ResolvedKey:
        return self._keys._resolve_esdata(kid)

    def __repr__(self) -> str:
        return f"ESCertKEKeys.esdata({len(self._keys)} keys)"
