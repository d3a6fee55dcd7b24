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
  the peer's previous key (the old kid is forgotten).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from m2msec.esdata.credentials import ResolvedKey, SymmetricRecipient, SymmetricSigner, default_symmetric_algorithms
from m2msec.esdata.credentials import SUID_USAGE
from m2msec.esdata.errors import UnknownKidError
from m2msec.esprim.errors import UnknownKeyID
from m2msec.esprim.keysource import PairwiseKey
from m2msec.keys import split_exported
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.timestamps import Clock, ensure_utc

if TYPE_CHECKING:
    from m2msec.esprim.keysource import StoreKeySource as ESPrimStoreKeySource
    from m2msec.pki import VerifiedPeer

__all__ = ["ESCertKEKeys", "ESCertKEResult", "kid_for"]


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


class ESCertKEKeys:
    """The cache of established pairwiseE2EKeys of one end-point (thread-safe).

    It is at the same time an ESPrim :class:`~m2msec.esprim.keysource.PairwiseKeySource`
    (:meth:`resolve`) and, through :attr:`esdata`, an ESData ``KeySource``.  With
    ``esprim_store`` (an :class:`m2msec.esprim.StoreKeySource`) each new key is also
    provisioned there, so that every instance sharing the store resolves it.
    """

    def __init__(self, *, clock: Clock, esdata_suid: int = int(SUID.CERTIFICATE_ESDATA_ENCRYPT),
                 key_lifetime: timedelta | None = None, esprim_store: ESPrimStoreKeySource | None = None) -> None:
        if esdata_suid not in (44, 45):
            raise ValueError("an ESCertKE key is an ESData key of SUID 44 (encryption) or 45 (MIC)")
        self._clock = clock
        self.esdata_suid = esdata_suid
        self.key_lifetime = key_lifetime
        self._store = esprim_store
        self._lock = threading.Lock()
        self._by_kid: dict[str, ESCertKEResult] = {}
        self._by_peer: dict[str, str] = {}
        self._esdata: dict[str, ResolvedKey] = {}
        self._algs: dict[int, frozenset[str]] = {}
        self.esdata = _ESDataView(self)

    def __repr__(self) -> str:
        return f"ESCertKEKeys({len(self._by_kid)} keys, esdata_suid={self.esdata_suid})"

    def _algorithms(self, key_len: int) -> frozenset[str]:
        algs = self._algs.get(key_len)
        if algs is None:
            algs = self._algs[key_len] = default_symmetric_algorithms(SUID_USAGE[self.esdata_suid], key_len)
        return algs

    def expiry_from(self, now: datetime) -> datetime | None:
        return now + self.key_lifetime if self.key_lifetime is not None else None

    def add(self, result: ESCertKEResult) -> None:
        """Cache ``result`` (replacing the peer's previous key)."""
        kid = result.kid
        if self._store is not None:
            self._store.provision(kid, result.key, peer_id=result.peer_id, suid=SUID.CERTIFICATE_ESPRIM,
                                  expires_at=result.expires_at)
        entry = ResolvedKey(kid=kid, key=result.key, algorithms=self._algorithms(len(result.key)),
                            suid=self.esdata_suid)
        with self._lock:
            old = self._by_peer.get(result.peer_id)
            if old is not None and old != kid:
                self._by_kid.pop(old, None)
                self._esdata.pop(old, None)
            self._by_kid[kid] = result
            self._by_peer[result.peer_id] = kid
            self._esdata[kid] = entry

    def for_peer(self, peer_id: str) -> ESCertKEResult | None:
        with self._lock:
            kid = self._by_peer.get(peer_id)
            res = self._by_kid.get(kid) if kid is not None else None
        if res is not None and self._expired(res):
            return None
        return res

    def _expired(self, res: ESCertKEResult) -> bool:
        return res.expires_at is not None and ensure_utc(self._clock(), what="clock()") >= res.expires_at

    def __len__(self) -> int:
        return len(self._by_kid)

    # -- ESPrim PairwiseKeySource --------------------------------------------------
    def resolve(self, kid: str) -> PairwiseKey:
        with self._lock:
            res = self._by_kid.get(kid) if isinstance(kid, str) else None
        if res is None:
            raise UnknownKeyID(f"pairwiseESPrimKeyID {kid!r} is not an ESCertKE key")
        if self._expired(res):
            raise UnknownKeyID(f"pairwiseESPrimKeyID {kid!r} has expired")
        return res.pairwise_esprim_key()

    # -- ESData ----------------------------------------------------------------------
    def _resolve_esdata(self, kid: str) -> ResolvedKey:
        with self._lock:
            entry = self._esdata.get(kid) if isinstance(kid, str) else None
            res = self._by_kid.get(kid) if entry is not None else None
        if entry is None or res is None or self._expired(res):
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
