"""ESPrim phase A: where a pairwiseESPrimKey comes from (TS-0003 8.4.2 A and C.6a).

A :class:`PairwiseKeySource` maps a pairwiseESPrimKeyID (the JWE ``kid``) to a
:class:`PairwiseKey`: the key, the identity of the peer the key is associated with (the
AE-ID/CSE-ID used for the impersonation check of TS-0004 table 7.6.2-1 / TS-0003 7.2.2),
the optional pairwiseESPrimKeyLifetime (absent: the key never expires) and the SUID that
says how it was established (13 pre-provisioned, 23 RSPF, 33 MAF, 43 ESCertKE).  Unknown
and expired identifiers both raise :class:`~m2msec.esprim.errors.UnknownKeyID`
(ESPRIM_UNKNOWN_KEY_ID, 4112).

Implementations:

* :class:`ProvisionedKeySource` — in memory, for pre-provisioned (SUID 13) and
  RSPF-provisioned (SUID 23) keys;
* :class:`StoreKeySource` — credentials in :mod:`m2msec.store` (namespace
  ``esprim.pairwise``, metadata ``{"peer": <AE-ID/CSE-ID>, "suid": <int>}``, ``expires_at`` =
  the lifetime), so that every Receiver instance sees the same keys.  The ESCertKE
  Terminator (SUID 43) and a MAF retrieval (SUID 33) only have to :meth:`~StoreKeySource.provision`
  into it;
* :class:`ChainKeySource` — tries several sources in order.

The MAF option (C.6a.1-6: on first sight of a KcID, fetch Kc and its lifetime from the MAF,
derive pairwiseESPrimKey, cache it) plugs in without changing the Receiver: either a source
whose ``resolve`` performs the (blocking) retrieval and provisions the result into a
:class:`StoreKeySource` placed before it in a :class:`ChainKeySource`; or, sans-I/O, the
transport layer calls :meth:`m2msec.esprim.receiver.Receiver.peek` to learn the ``kid``,
awaits the MAF retrieval itself, provisions the key and then calls ``open_request``.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from m2msec.esprim.common import ESPRIM_SUIDS
from m2msec.esprim.errors import UnknownKeyID
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.timestamps import Clock, ensure_utc

if TYPE_CHECKING:
    from m2msec.store import Store

DEFAULT_NAMESPACE = "esprim.pairwise"
MIN_KEY_LENGTH = 16  # as m2msec.keys.derive_session_esprim_key requires (profile K9)


@dataclass(frozen=True, repr=False)
class PairwiseKey:
    """A pairwiseESPrimKey with its identifier, bound peer identity, SUID and optional expiry."""

    kid: str
    key: bytes = field(compare=False)
    peer_id: str
    suid: SUID = SUID.PRE_PROVISIONED_ESPRIM
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kid, str) or not self.kid:
            raise ValueError("kid must be a non-empty string")
        if not isinstance(self.key, (bytes, bytearray)) or len(self.key) < MIN_KEY_LENGTH:
            raise ValueError(f"pairwiseESPrimKey must be at least {MIN_KEY_LENGTH} octets")
        object.__setattr__(self, "key", bytes(self.key))
        if not isinstance(self.peer_id, str) or not self.peer_id:
            raise ValueError("peer_id (the identity bound to the key) must be a non-empty string")
        suid = SUID(self.suid)
        if suid not in ESPRIM_SUIDS:
            raise ValueError(f"SUID {int(suid)} is not an ESPrim SUID (13, 23, 33, 43)")
        object.__setattr__(self, "suid", suid)
        if self.expires_at is not None:
            object.__setattr__(self, "expires_at", ensure_utc(self.expires_at, what="expires_at"))

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def __repr__(self) -> str:
        exp = self.expires_at.isoformat() if self.expires_at else None
        return (
            f"PairwiseKey(kid={self.kid!r}, key=<{len(self.key)} bytes hidden>, peer_id={self.peer_id!r}, "
            f"suid={int(self.suid)}, expires_at={exp})"
        )

    __str__ = __repr__


@runtime_checkable
class PairwiseKeySource(Protocol):
    """Resolves a pairwiseESPrimKeyID; raises UnknownKeyID for unknown or expired ones."""

    def resolve(self, kid: str) -> PairwiseKey: ...


class ProvisionedKeySource:
    """In-memory provisioned pairwiseESPrimKeys (pre-provisioned SUID 13, RSPF SUID 23)."""

    def __init__(
        self,
        keys: Iterable[PairwiseKey] = (),
        *,
        clock: Clock,
        allowed_suids: Iterable[SUID | int] = (SUID.PRE_PROVISIONED_ESPRIM, SUID.RSPF_ESPRIM),
    ) -> None:
        self._clock = clock
        self._allowed = frozenset(SUID(s) for s in allowed_suids)
        self._keys: dict[str, PairwiseKey] = {}
        for k in keys:
            self.add(k)

    def add(self, key: PairwiseKey) -> None:
        if key.suid not in self._allowed:
            raise ValueError(f"SUID {int(key.suid)} is not accepted by this key source")
        self._keys[key.kid] = key

    def remove(self, kid: str) -> bool:
        return self._keys.pop(kid, None) is not None

    def keys(self) -> list[PairwiseKey]:
        """Every key held (expired ones too)."""
        return list(self._keys.values())

    def resolve(self, kid: str) -> PairwiseKey:
        key = self._keys.get(kid)
        if key is None:
            raise UnknownKeyID(f"pairwiseESPrimKeyID {kid!r} is not known")
        if key.is_expired(ensure_utc(self._clock(), what="clock()")):
            raise UnknownKeyID(f"pairwiseESPrimKeyID {kid!r} has expired")
        return key

    def __repr__(self) -> str:
        return f"ProvisionedKeySource({len(self._keys)} keys)"


class StoreKeySource:
    """pairwiseESPrimKeys as encrypted credentials in :mod:`m2msec.store` (shared by instances).

    The store hides expired credentials, so a key past its lifetime is an unknown kid.
    """

    def __init__(self, store: Store, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._store = store
        self._namespace = namespace

    def provision(
        self,
        kid: str,
        key: bytes,
        *,
        peer_id: str,
        suid: SUID | int = SUID.PRE_PROVISIONED_ESPRIM,
        expires_at: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> PairwiseKey:
        """Store the key; ``metadata`` adds further (non-secret, JSON) entries beside
        ``peer`` and ``suid`` (e.g. what ESCertKE needs to re-check the peer's certificate status)."""
        pk = PairwiseKey(kid=kid, key=key, peer_id=peer_id, suid=SUID(suid), expires_at=expires_at)
        self._store.put_credential(
            self._namespace,
            pk.kid,
            pk.key,
            metadata={**(metadata or {}), "peer": pk.peer_id, "suid": int(pk.suid)},
            expires_at=pk.expires_at,
        )
        return pk

    @property
    def store(self) -> Store:
        """The store the keys live in (e.g. for its change notifications)."""
        return self._store

    @property
    def namespace(self) -> str:
        """The store namespace of the keys (a caller's own transaction on them)."""
        return self._namespace

    def revoke(self, kid: str, *, notify: str | None = None) -> bool:
        """Delete the key; with ``notify`` also, in the same transaction, notify that channel
        (payload: the kid; :mod:`m2msec.store.notify`) so that other instances learn of it."""
        if notify is None:
            return self._store.delete_credential(self._namespace, kid)
        with self._store.transaction() as tx:
            gone = tx.delete_credential(self._namespace, kid)
            tx.notify(notify, kid)
        return gone

    def revoke_audited(self, pk: PairwiseKey, *, actor: str, action: str, reason: str) -> bool:
        """Delete ``pk`` unless the stored key changed meanwhile (gone, or another value: not what
        was checked), with the audit record (``actor``, ``action``, subject = its peer, details =
        kid and ``reason``) in the same transaction.  True if it was deleted."""
        with self._store.transaction() as tx:
            now = tx.find_credential(self._namespace, pk.kid)
            if now is None or not hmac.compare_digest(now.secret, pk.key):
                return False
            tx.delete_credential(self._namespace, pk.kid)
            tx.append_audit(actor, action, pk.peer_id, "ok", {"kid": pk.kid, "reason": reason})
        return True

    def resolve(self, kid: str) -> PairwiseKey:
        return self.lookup(kid)[0]

    def keys(self, *, suid: SUID | int | None = None) -> list[PairwiseKey]:
        """The live keys (ordered by kid), only those of ``suid`` when given; entries with
        unusable metadata are left out (``resolve`` refuses them too)."""
        where = None if suid is None else {"suid": int(suid)}
        out = []
        for cred in self._store.list_credentials(self._namespace, where=where):
            md = cred.metadata
            try:
                out.append(PairwiseKey(kid=cred.cred_id, key=cred.secret, peer_id=md["peer"], suid=SUID(md["suid"]),
                                       expires_at=cred.expires_at))
            except (KeyError, ValueError, TypeError):
                continue
        return out

    def lookup(self, kid: str) -> tuple[PairwiseKey, dict[str, Any]]:
        """The key and all its stored metadata (UnknownKeyID as :meth:`resolve`)."""
        from m2msec.store import NotFound  # noqa: PLC0415 - store is optional for callers

        if not isinstance(kid, str) or not kid or "\x00" in kid:
            raise UnknownKeyID("pairwiseESPrimKeyID is not a usable identifier")
        try:
            cred = self._store.get_credential(self._namespace, kid)
        except NotFound:
            raise UnknownKeyID(f"pairwiseESPrimKeyID {kid!r} is not known or has expired") from None
        md: dict[str, Any] = cred.metadata
        try:
            return PairwiseKey(
                kid=kid, key=cred.secret, peer_id=md["peer"], suid=SUID(md["suid"]), expires_at=cred.expires_at
            ), md
        except (KeyError, ValueError, TypeError):
            raise UnknownKeyID(f"stored pairwiseESPrimKey {kid!r} has unusable metadata") from None

    def __repr__(self) -> str:
        return f"StoreKeySource(namespace={self._namespace!r})"


class ChainKeySource:
    """Asks each source in turn; the first one that knows the kid answers."""

    def __init__(self, *sources: PairwiseKeySource) -> None:
        if not sources:
            raise ValueError("ChainKeySource needs at least one source")
        self._sources = sources

    def resolve(self, kid: str) -> PairwiseKey:
        for source in self._sources:
            try:
                return source.resolve(kid)
            except UnknownKeyID:
                continue
        raise UnknownKeyID(f"pairwiseESPrimKeyID {kid!r} is not known or has expired")

    def __repr__(self) -> str:
        return f"ChainKeySource({', '.join(map(repr, self._sources))})"
