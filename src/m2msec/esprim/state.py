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

Accepted request objects (replay detection, beyond the freshness bound of TS-0003 8.4.1):
:meth:`ReceiverState.record_object` records each ESPrim request Object the Receiver accepts,
after it authenticated, under :func:`object_record_id` = SHA-256 over (kid, ori, rri, JWE IV)
— identifiers and the public IV only, never key material — until no object of its session
can open any more (:attr:`CachedSession.objects_expire_at`).  A second call with the same
values answers False (a replay).  The IV is taken after base64url decoding, so a re-encoded
copy of the same object is the same record.  :class:`StoreReceiverState` inserts one record
in namespace ``esprim.recv.seen`` with ``if_absent`` (a DuplicateError means seen), so every
instance on one database detects a replay accepted by another; it purges the store's expired
rows (:meth:`~m2msec.store.Store.purge_expired`) at most once per ``purge_interval``, which is
what removes expired ESPrim rows (rand objects, sessions, seen records) from the database.
:class:`MemoryReceiverState` keeps at most ``max_objects`` live records: at the bound it
drops the expired ones, and if all are live it refuses the new object
(:class:`~m2msec.esprim.errors.ReplayCacheFull`) — it never forgets a live record.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from m2msec.esprim.common import SessionRef, is_shared_rand_id
from m2msec.esprim.errors import ReplayCacheFull
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
NS_SEEN = "esprim.recv.seen"
_CURRENT = "current"

DEFAULT_MAX_OBJECTS = 1 << 18
"""Live accepted-object records a :class:`MemoryReceiverState` keeps (about 30 MB)."""
DEFAULT_PURGE_INTERVAL = timedelta(minutes=1)
"""How often a :class:`StoreReceiverState` deletes the store's expired rows."""
_SEEN_LABEL = b"m2msec esprim accepted object v1\x00"


def orig_rand_storage_id(kid: str, ori: str) -> str:
    return f"{len(kid)}:{kid}:{ori}"


_PREFIXES: dict[SessionRef, bytes] = {}  # per-session part of object_digest (bounded below)


def _digest_prefix(ref: SessionRef) -> bytes:
    p = _PREFIXES.get(ref)
    if p is None:
        out = bytearray(_SEEN_LABEL)
        for value in ref:
            part = value.encode("utf-8", "surrogatepass")
            out += len(part).to_bytes(4, "big") + part
        p = bytes(out)
        if len(_PREFIXES) >= 4096:
            _PREFIXES.clear()
        _PREFIXES[ref] = p
    return p


def object_digest(ref: SessionRef, iv: bytes) -> bytes:
    """SHA-256("m2msec esprim accepted object v1" || 0x00 || L(kid) || kid || L(ori) || ori
    || L(rri) || rri || L(iv) || iv), L = 4-octet big-endian length, strings UTF-8: names
    one ESPrim Object of one session (the AES-GCM IV is unique per object under a key).
    The part before the IV is computed once per session (cached)."""
    h = hashlib.sha256(_digest_prefix(ref))
    h.update(len(iv).to_bytes(4, "big"))
    h.update(iv)
    return h.digest()


def object_record_id(ref: SessionRef, iv: bytes) -> str:
    """The store id of an accepted object: :func:`object_digest` in lowercase hex (64 characters)."""
    return object_digest(ref, iv).hex()


@dataclass(frozen=True, repr=False)
class CachedSession:
    """A cached sessionESPrimKey with the expiry of the session and its allowed AEAD IDs."""

    key: bytes
    expires_at: datetime
    protocol_and_alg_ids: tuple[int, ...]
    objects_expire_at: datetime | None = None
    """The earlier expiry of the two rand objects: after it no object of this session opens,
    whatever the key's lifetime (a key renewed under the same kid would otherwise revive the
    session); accepted-object records live until then.  None (sessions stored by older
    versions): :attr:`expires_at`."""
    _ciphers: dict[int, ContentCipher] = field(default_factory=dict, compare=False)
    replay_window_end: datetime = field(init=False, compare=False)
    """Until when an accepted object of this session must be remembered: the later of
    :attr:`objects_expire_at` and :attr:`expires_at`."""

    def __post_init__(self) -> None:
        end = self.expires_at if self.objects_expire_at is None else max(self.expires_at, self.objects_expire_at)
        object.__setattr__(self, "replay_window_end", end)

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

    def record_object(self, ref: SessionRef, iv: bytes, expires_at: datetime) -> bool:
        """Record an accepted (authenticated) ESPrim request Object of session ``ref`` with
        JWE IV ``iv`` until ``expires_at``; True if new, False if it was recorded already (a
        replay).  May raise :class:`~m2msec.esprim.errors.ReplayCacheFull` (nothing recorded)."""


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
    """Receiver state in one process (thread-safe).  Expired entries vanish lazily.

    ``max_objects``: bound on the live accepted-object records (replay detection).  Records
    are only added for objects that authenticated, so only a key holder can grow the table;
    at the bound the expired records are dropped (at most once until the earliest live one
    expires), and if none has expired the new object is refused with
    :class:`~m2msec.esprim.errors.ReplayCacheFull` — a live record is never forgotten."""

    _SEEN_SWEEP_EVERY = 4096

    def __init__(self, *, clock: Clock, max_objects: int = DEFAULT_MAX_OBJECTS) -> None:
        if not isinstance(max_objects, int) or isinstance(max_objects, bool) or max_objects < 1:
            raise ValueError("max_objects must be a positive integer")
        self._clock = clock
        self._lock = threading.Lock()
        self._recv: dict[str, ReceiverESPrimRandObject] = {}
        self._current: str | None = None
        self._orig: dict[tuple[str, str], OriginatorESPrimRandObject] = {}
        self._sessions: dict[SessionRef, CachedSession] = {}
        self._rand_keys: dict[str, RandKey] = {}
        self._seals = _SealCounter(clock)
        self._seen: dict[bytes, datetime] = {}
        self._max_objects = max_objects
        self._seen_adds = 0
        self._seen_next_expiry: datetime | None = None  # earliest live record after the last sweep

    @property
    def max_objects(self) -> int:
        return self._max_objects

    def _sweep_seen(self, now: datetime) -> int:
        """Drop expired accepted-object records (lock held); returns how many went.  Nothing to
        scan until the earliest record (``_seen_next_expiry``, a lower bound) has expired."""
        before = len(self._seen)
        self._seen_adds = 0
        if self._seen_next_expiry is not None and self._seen_next_expiry > now:
            return 0  # nothing has expired yet
        self._seen = {d: t for d, t in self._seen.items() if t > now}
        self._seen_next_expiry = min(self._seen.values(), default=None)
        return before - len(self._seen)

    def record_object(self, ref: SessionRef, iv: bytes, expires_at: datetime) -> bool:
        now = self._now()
        digest = object_digest(ref, iv)
        with self._lock:
            old = self._seen.get(digest)
            if old is not None and old > now:
                return False
            if old is None and len(self._seen) >= self._max_objects:
                self._sweep_seen(now)  # scans only once the earliest record has expired
                if len(self._seen) >= self._max_objects:
                    raise ReplayCacheFull(
                        f"the Receiver remembers {self._max_objects} accepted objects, none expired yet; "
                        "the object is refused"
                    )
            self._seen[digest] = expires_at
            nxt = self._seen_next_expiry
            if nxt is None or expires_at < nxt:
                self._seen_next_expiry = expires_at
            self._seen_adds += 1
            if self._seen_adds >= self._SEEN_SWEEP_EVERY and self._seen_adds >= len(self._seen) // 2:
                self._sweep_seen(now)  # amortised O(1): at most one sweep per len/2 additions
            return True

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
            seen = self._sweep_seen(now)
            return before - (len(self._recv) + len(self._orig) + len(self._sessions)) + seen

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
        return (f"MemoryReceiverState(recv={len(self._recv)}, orig={len(self._orig)}, sessions={len(self._sessions)}, "
                f"seen={len(self._seen)}/{self._max_objects})")


class StoreReceiverState:
    """Receiver state in :mod:`m2msec.store`, shared by every instance that opens the same store."""

    def __init__(
        self, store: Store, *, clock: Clock | None = None, purge_interval: timedelta | None = DEFAULT_PURGE_INTERVAL
    ) -> None:
        """``purge_interval``: delete the store's expired rows at most this often (from
        :meth:`record_object`, the first time at the first accepted object); None: never
        (another component calls :meth:`purge_expired`)."""
        if purge_interval is not None and purge_interval <= timedelta(0):
            raise ValueError("purge_interval must be positive or None")
        self._store = store
        self._clock = clock or store._clock
        self._seals = _SealCounter(self._clock)
        self._rand_keys: dict[str, RandKey] = {}  # cache in front of NS_RAND_KEY
        self._rand_keys_lock = threading.Lock()
        self._purge_interval = purge_interval
        self._next_purge: datetime | None = None
        self._purge_lock = threading.Lock()

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
        rx = cred.metadata.get("rx")
        try:
            objects_expire_at = None if not isinstance(rx, str) else ensure_utc(datetime.fromisoformat(rx), what="rx")
        except ValueError:
            objects_expire_at = None
        return CachedSession(cred.secret, cred.expires_at, tuple(int(v) for v in cred.metadata["espa"]), objects_expire_at)

    def put_session(self, ref: SessionRef, session: CachedSession) -> None:
        md: dict[str, Any] = {"espa": list(session.protocol_and_alg_ids)}
        if session.objects_expire_at is not None:
            md["rx"] = session.objects_expire_at.isoformat()
        self._store.put_credential(NS_SESSION, ref.storage_id(), session.key, metadata=md, expires_at=session.expires_at)

    def count_seal(self, ref: SessionRef, expires_at: datetime) -> int:
        return self._seals.count(ref, expires_at)

    # -- accepted objects (replay detection) --------------------------------------------------
    def record_object(self, ref: SessionRef, iv: bytes, expires_at: datetime) -> bool:
        from m2msec.store import DuplicateError  # noqa: PLC0415

        try:
            self._store.put_record(NS_SEEN, object_record_id(ref, iv), {}, expires_at=expires_at, if_absent=True)
        except DuplicateError:
            return False
        if self._purge_interval is not None:
            self._maybe_purge()
        return True

    def _maybe_purge(self) -> None:
        now = ensure_utc(self._clock(), what="clock()")
        nxt = self._next_purge
        if nxt is not None and now < nxt:
            return
        if not self._purge_lock.acquire(blocking=False):
            return  # another thread of this instance is purging
        try:
            assert self._purge_interval is not None
            self._next_purge = now + self._purge_interval
            self._store.purge_expired()
        finally:
            self._purge_lock.release()

    def purge_expired(self) -> int:
        """Delete every expired row of the store (ESPrim rand objects, sessions, K_rand,
        accepted-object records, and any other expired credential or record: the store never
        returns an expired row, so this changes nothing a reader can see).  Returns the count."""
        return self._store.purge_expired()

    def __repr__(self) -> str:
        return f"StoreReceiverState({self._store!r})"


