"""ESPrim Receiver state (TS-0003 8.4.2 B.1, B.2e, C.6b, NOTE 4): issued receiverESPrimRandObjects,
cached originatorESPrimRandObjects and sessionESPrimKeys while valid.

The Receiver keeps this state behind :class:`ReceiverState` so that several instances behind
one address can share it (DESIGN.md section 3):

* :class:`MemoryReceiverState` — one process;
* :class:`StoreReceiverState` — :mod:`m2msec.store` (SQLite or PostgreSQL).  Rand values and
  session keys are credentials (encrypted at rest under the store KEK) whose ``expires_at``
  is the rand object's esprimRandExpiry (for a session: the earliest expiry of its inputs);
  the other members of a rand object are kept in the credential metadata.  Namespaces:
  ``esprim.recv.rand`` (id = esprimRandID), ``esprim.recv.shared`` (record ``current``:
  the published shared rand ID), ``esprim.orig.rand`` (id = ``len(kid):kid:ori``) and
  ``esprim.session`` (id = :meth:`SessionRef.storage_id`), ``esprim.recv.randkey`` (the
  K_rand of unique rand objects, id = ``"<period>:<epoch>"``, see
  :mod:`m2msec.esprim.unique_rand`).  Publishing a shared rand ID uses
  ``put_credential(if_absent=True)``, so two instances never issue the same ID while it is
  valid; a K_rand is created the same way, so racing instances end with one key.

Unique (on-request, B.2e) receiverESPrimRandObjects are *not* recorded: the Receiver
recomputes them from their esprimRandID and the K_rand (:mod:`m2msec.esprim.unique_rand`),
so answering a type-3 request writes nothing (at most one K_rand per key period).
:class:`StoreReceiverState` caches K_rand values in memory in front of the store.

Originator rand objects are cached per pairwiseESPrimKeyID: esprimRandIDs are chosen by
each Originator and are only unique per Originator (B.2g), so ``(kid, ori)`` is the key.

The AES-GCM seal counter of a session (nonce bound, see
:data:`m2msec.esprim.common.DEFAULT_MAX_SEALS`) is counted per process in both
implementations; the bound on the Originator side is the authoritative one.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from m2msec.esprim.common import SessionRef, is_shared_rand_id
from m2msec.esprim.jwe import ENC_BY_PROTOCOL_AND_ALG_ID, ContentCipher
from m2msec.esprim.unique_rand import RAND_KEY_OCTETS, RandKey
from m2msec.onem2m.security import (
    OriginatorESPrimRandObject,
    ReceiverESPrimRandObject,
    encode_rand_value,
)
from m2msec.onem2m.timestamps import Clock, ensure_utc

if TYPE_CHECKING:
    from m2msec.store import Store

NS_RECV_RAND = "esprim.recv.rand"
NS_SHARED = "esprim.recv.shared"
NS_ORIG_RAND = "esprim.orig.rand"
NS_SESSION = "esprim.session"
NS_RAND_KEY = "esprim.recv.randkey"
_CURRENT = "current"


def orig_rand_storage_id(kid: str, ori: str) -> str:
    return f"{len(kid)}:{kid}:{ori}"


@dataclass(frozen=True, repr=False)
class CachedSession:
    """A cached sessionESPrimKey with the expiry of the session and its allowed AEAD IDs."""

    key: bytes
    expires_at: datetime
    protocol_and_alg_ids: tuple[int, ...]
    _ciphers: dict[int, ContentCipher] = field(default_factory=dict, compare=False)

    def cipher(self, protocol_and_alg_id: int) -> ContentCipher:
        """The AES-GCM content cipher for one esprimProtocolAndAlgID, built once per session
        (an in-memory state hands out the same CachedSession for every object)."""
        c = self._ciphers.get(protocol_and_alg_id)
        if c is None:
            from m2msec.keys import esprim_content_key  # noqa: PLC0415 - keys imports nothing of ours

            c = ContentCipher(ENC_BY_PROTOCOL_AND_ALG_ID[protocol_and_alg_id], esprim_content_key(self.key, protocol_and_alg_id))
            self._ciphers[protocol_and_alg_id] = c
        return c

    def __repr__(self) -> str:
        return f"CachedSession(key=<hidden>, expires_at={self.expires_at.isoformat()}, espa={self.protocol_and_alg_ids})"


@runtime_checkable
class ReceiverState(Protocol):
    def add_receiver_rand(self, obj: ReceiverESPrimRandObject) -> bool:
        """Record an issued rand object; False if a valid one with this ID exists (nothing stored)."""

    def get_receiver_rand(self, rand_id: str) -> ReceiverESPrimRandObject | None:
        """The issued, unexpired rand object with this ID, or None."""

    def current_shared(self) -> ReceiverESPrimRandObject | None:
        """The published shared rand object (possibly expired or about to), or None."""

    def publish_shared(self, obj: ReceiverESPrimRandObject, *, replacing: str | None) -> ReceiverESPrimRandObject:
        """Store ``obj`` and make it the published shared one, unless another instance already
        replaced ``replacing``: then return the winner (``obj`` is withdrawn)."""

    def rand_key(self, name: str, *, create_expires_at: datetime | None = None) -> RandKey | None:
        """The live K_rand called ``name``, or None.  With ``create_expires_at``: create it
        (32 random octets, expiring then) if absent, atomically, so racing instances end
        with one key; the existing key wins."""

    def get_originator_rand(self, kid: str, ori: str) -> OriginatorESPrimRandObject | None: ...

    def add_originator_rand(self, kid: str, obj: OriginatorESPrimRandObject) -> OriginatorESPrimRandObject:
        """Cache ``obj``; if a valid one with the same ID is cached already, return that one instead."""

    def get_session(self, ref: SessionRef) -> CachedSession | None: ...

    def put_session(self, ref: SessionRef, session: CachedSession) -> None: ...

    def count_seal(self, ref: SessionRef, expires_at: datetime) -> int:
        """Count one AES-GCM invocation with this session key; returns the new count."""


class _SealCounter:
    """Per-process seal counts, dropped once their session expired."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._counts: dict[SessionRef, tuple[int, datetime]] = {}
        self._lock = threading.Lock()
        self._ops = 0

    def count(self, ref: SessionRef, expires_at: datetime) -> int:
        with self._lock:
            prev = self._counts.get(ref)
            n = 1 if prev is None else prev[0] + 1
            self._counts[ref] = (n, expires_at)
            self._ops += 1
            if self._ops % 1024 == 0:
                now = self._clock()
                self._counts = {r: v for r, v in self._counts.items() if v[1] > now}
            return n


class MemoryReceiverState:
    """Receiver state in one process (thread-safe).  Expired entries vanish lazily."""

    def __init__(self, *, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._recv: dict[str, ReceiverESPrimRandObject] = {}
        self._current: str | None = None
        self._orig: dict[tuple[str, str], OriginatorESPrimRandObject] = {}
        self._sessions: dict[SessionRef, CachedSession] = {}
        self._rand_keys: dict[str, RandKey] = {}
        self._seals = _SealCounter(clock)

    def _now(self) -> datetime:
        now = self._clock()
        if type(now) is datetime and now.tzinfo is timezone.utc:  # the usual clock: nothing to convert
            return now
        return ensure_utc(now, what="clock()")

    def purge_expired(self) -> int:
        now = self._now()
        with self._lock:
            before = len(self._recv) + len(self._orig) + len(self._sessions)
            self._recv = {k: v for k, v in self._recv.items() if v.expiry > now}
            self._orig = {k: v for k, v in self._orig.items() if v.expiry > now}
            self._sessions = {k: v for k, v in self._sessions.items() if v.expires_at > now}
            self._rand_keys = {k: v for k, v in self._rand_keys.items() if v.expires_at > now}
            return before - (len(self._recv) + len(self._orig) + len(self._sessions))

    def add_receiver_rand(self, obj: ReceiverESPrimRandObject) -> bool:
        now = self._now()
        with self._lock:
            old = self._recv.get(obj.rand_id)
            if old is not None and old.expiry > now:
                return False
            self._recv[obj.rand_id] = obj
            return True

    def get_receiver_rand(self, rand_id: str) -> ReceiverESPrimRandObject | None:
        with self._lock:
            obj = self._recv.get(rand_id)
        return obj if obj is not None and obj.expiry > self._now() else None

    def current_shared(self) -> ReceiverESPrimRandObject | None:
        with self._lock:
            return None if self._current is None else self._recv.get(self._current)

    def publish_shared(self, obj: ReceiverESPrimRandObject, *, replacing: str | None) -> ReceiverESPrimRandObject:
        with self._lock:
            if self._current != replacing and self._current in self._recv:
                return self._recv[self._current]
            self._recv[obj.rand_id] = obj
            self._current = obj.rand_id
            return obj

    def rand_key(self, name: str, *, create_expires_at: datetime | None = None) -> RandKey | None:
        now = self._now()
        with self._lock:
            k = self._rand_keys.get(name)
            if k is not None and k.expires_at > now:
                return k
            if create_expires_at is None:
                return None
            if len(self._rand_keys) > 8:
                self._rand_keys = {n: v for n, v in self._rand_keys.items() if v.expires_at > now}
            k = RandKey(name, secrets.token_bytes(RAND_KEY_OCTETS), ensure_utc(create_expires_at, what="expires_at"))
            self._rand_keys[name] = k
            return k

    def get_originator_rand(self, kid: str, ori: str) -> OriginatorESPrimRandObject | None:
        with self._lock:
            obj = self._orig.get((kid, ori))
        return obj if obj is not None and obj.expiry > self._now() else None

    def add_originator_rand(self, kid: str, obj: OriginatorESPrimRandObject) -> OriginatorESPrimRandObject:
        now = self._now()
        with self._lock:
            old = self._orig.get((kid, obj.rand_id))
            if old is not None and old.expiry > now:
                return old
            self._orig[(kid, obj.rand_id)] = obj
            return obj

    def get_session(self, ref: SessionRef) -> CachedSession | None:
        s = self._sessions.get(ref)  # one dict read is atomic: no lock, no copy
        return s if s is not None and s.expires_at > self._now() else None

    def put_session(self, ref: SessionRef, session: CachedSession) -> None:
        with self._lock:
            self._sessions[ref] = session

    def count_seal(self, ref: SessionRef, expires_at: datetime) -> int:
        return self._seals.count(ref, expires_at)

    def __repr__(self) -> str:
        return f"MemoryReceiverState(recv={len(self._recv)}, orig={len(self._orig)}, sessions={len(self._sessions)})"


class StoreReceiverState:
    """Receiver state in :mod:`m2msec.store`, shared by every instance that opens the same store."""

    def __init__(self, store: Store, *, clock: Clock | None = None) -> None:
        self._store = store
        self._clock = clock or store._clock
        self._seals = _SealCounter(self._clock)
        self._rand_keys: dict[str, RandKey] = {}  # cache in front of NS_RAND_KEY
        self._rand_keys_lock = threading.Lock()

    # -- helpers ----------------------------------------------------------------------
    @staticmethod
    def _usable_id(value: str) -> bool:
        return isinstance(value, str) and bool(value) and "\x00" not in value

    def _find(self, ns: str, cred_id: str) -> Any:
        from m2msec.store import NotFound  # noqa: PLC0415

        try:
            return self._store.get_credential(ns, cred_id)
        except NotFound:
            return None

    @staticmethod
    def _recv_from(cred: Any) -> ReceiverESPrimRandObject:
        doc = dict(cred.metadata["ero"])
        doc["esrv"] = encode_rand_value(cred.secret)
        return ReceiverESPrimRandObject.from_json(doc)

    @staticmethod
    def _orig_from(cred: Any) -> OriginatorESPrimRandObject:
        doc = dict(cred.metadata["oro"])
        doc["esrv"] = encode_rand_value(cred.secret)
        return OriginatorESPrimRandObject.from_json(doc)

    @staticmethod
    def _public(obj: ReceiverESPrimRandObject | OriginatorESPrimRandObject) -> dict[str, Any]:
        doc = obj.to_json()
        del doc["esrv"]  # the rand value is the (encrypted) secret, not metadata
        return doc

    # -- receiver rand objects ----------------------------------------------------------
    def add_receiver_rand(self, obj: ReceiverESPrimRandObject) -> bool:
        from m2msec.store import DuplicateError  # noqa: PLC0415

        try:
            self._store.put_credential(
                NS_RECV_RAND,
                obj.rand_id,
                obj.rand_value,
                metadata={"ero": self._public(obj), "shared": is_shared_rand_id(obj.rand_id)},
                expires_at=obj.expiry,
                if_absent=True,
            )
        except DuplicateError:
            return False
        return True

    def get_receiver_rand(self, rand_id: str) -> ReceiverESPrimRandObject | None:
        if not self._usable_id(rand_id):
            return None
        cred = self._find(NS_RECV_RAND, rand_id)
        return None if cred is None else self._recv_from(cred)

    def current_shared(self) -> ReceiverESPrimRandObject | None:
        from m2msec.store import NotFound  # noqa: PLC0415

        try:
            rec = self._store.get_record(NS_SHARED, _CURRENT)
        except NotFound:
            return None
        return self.get_receiver_rand(rec.doc["esri"])

    def publish_shared(self, obj: ReceiverESPrimRandObject, *, replacing: str | None) -> ReceiverESPrimRandObject:
        from m2msec.store import DuplicateError, NotFound, VersionConflict  # noqa: PLC0415

        if not self.add_receiver_rand(obj):
            raise ValueError(f"esprimRandID {obj.rand_id!r} is already issued")
        doc = {"esri": obj.rand_id}
        try:
            try:
                rec = self._store.get_record(NS_SHARED, _CURRENT)
            except NotFound:
                rec = None
            if rec is None:
                self._store.put_record(NS_SHARED, _CURRENT, doc, expires_at=obj.expiry, if_absent=True)
                return obj
            if rec.doc.get("esri") == replacing:
                self._store.update_record(NS_SHARED, _CURRENT, doc, expected_version=rec.version, expires_at=obj.expiry)
                return obj
        except (DuplicateError, VersionConflict):
            pass
        # Another instance rotated first: withdraw ours and use theirs.
        self._store.delete_credential(NS_RECV_RAND, obj.rand_id)
        winner = self.current_shared()
        return winner if winner is not None else obj

    # -- K_rand of unique rand objects ---------------------------------------------------------
    def rand_key(self, name: str, *, create_expires_at: datetime | None = None) -> RandKey | None:
        from m2msec.store import DuplicateError  # noqa: PLC0415

        now = ensure_utc(self._clock(), what="clock()")
        cached = self._rand_keys.get(name)
        if cached is not None and cached.expires_at > now:
            return cached
        if not self._usable_id(name):
            return None
        cred = self._find(NS_RAND_KEY, name)
        if cred is None and create_expires_at is not None:
            try:
                cred = self._store.put_credential(
                    NS_RAND_KEY, name, secrets.token_bytes(RAND_KEY_OCTETS),
                    metadata={"use": "esprim unique rand"}, expires_at=create_expires_at, if_absent=True,
                )
            except DuplicateError:  # another instance created it first: theirs is the key
                cred = self._find(NS_RAND_KEY, name)
        if cred is None or cred.expires_at is None or len(cred.secret) != RAND_KEY_OCTETS:
            return None
        key = RandKey(name, cred.secret, cred.expires_at)
        with self._rand_keys_lock:
            if len(self._rand_keys) > 8:
                self._rand_keys = {n: v for n, v in self._rand_keys.items() if v.expires_at > now}
            self._rand_keys[name] = key
        return key

    # -- originator rand objects ----------------------------------------------------------
    def get_originator_rand(self, kid: str, ori: str) -> OriginatorESPrimRandObject | None:
        if not self._usable_id(kid) or not self._usable_id(ori):
            return None
        cred = self._find(NS_ORIG_RAND, orig_rand_storage_id(kid, ori))
        return None if cred is None else self._orig_from(cred)

    def add_originator_rand(self, kid: str, obj: OriginatorESPrimRandObject) -> OriginatorESPrimRandObject:
        from m2msec.store import DuplicateError  # noqa: PLC0415

        cred_id = orig_rand_storage_id(kid, obj.rand_id)
        try:
            self._store.put_credential(
                NS_ORIG_RAND, cred_id, obj.rand_value, metadata={"oro": self._public(obj)},
                expires_at=obj.expiry, if_absent=True,
            )
            return obj
        except DuplicateError:
            cached = self.get_originator_rand(kid, obj.rand_id)
            return cached if cached is not None else obj

    # -- sessions ---------------------------------------------------------------------------
    def get_session(self, ref: SessionRef) -> CachedSession | None:
        if not all(self._usable_id(v) for v in (ref.kid, ref.ori, ref.rri)):
            return None
        cred = self._find(NS_SESSION, ref.storage_id())
        if cred is None or cred.expires_at is None:
            return None
        return CachedSession(cred.secret, cred.expires_at, tuple(int(v) for v in cred.metadata["espa"]))

    def put_session(self, ref: SessionRef, session: CachedSession) -> None:
        self._store.put_credential(
            NS_SESSION, ref.storage_id(), session.key,
            metadata={"espa": list(session.protocol_and_alg_ids)}, expires_at=session.expires_at,
        )

    def count_seal(self, ref: SessionRef, expires_at: datetime) -> int:
        return self._seals.count(ref, expires_at)

    def __repr__(self) -> str:
        return f"StoreReceiverState({self._store!r})"


