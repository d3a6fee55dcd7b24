"""The MAF's procedures over the durable store (TS-0003 8.8.2.2-8.8.2.10, 10.3.1, 10.3.5, 10.6).

:class:`MAFService` is the M2M Authentication Function without sockets: it resolves the MAF
Handshake credentials (Km by KmID, Km from a MEF by KeID, MAF Client certificates), binds a
finished handshake to a :class:`MAFPeer` (the authenticated identity of every request of the
session), and runs each procedure in one store transaction together with its audit record.
Every state another instance needs lives in the store (DESIGN.md section 3), so several MAF
instances on one database answer any request.

Store layout (namespaces):

* ``maf.km``        credentials: Km by KmID; metadata ``client_id``, ``origin`` (``provisioned``/``mef``),
  ``keid``; ``expires_at`` = Km lifetime.
* ``maf.certclient`` records: MAF Client Certificate Information (8.1.2.4) by client ID:
  ``{"flavour", "identifier"}``.
* ``maf.reg``       records: MAF Client Registration records by mafClientRegID.
* ``maf.regidx``    records: ``<adminFQDN>|<client ID>`` -> mafClientRegID (one registration per
  client and administrating stakeholder, inserted with ``if_absent``).
* ``maf.keyreg``    records: Key Registration metadata by RelativeKeyID.
* ``maf.key``       credentials: the key value by RelativeKeyID (sealed under the store KEK).
* ``maf.keidgone``  records: KeIDs (lowercase) de-provisioned at this MAF by ``remove_client``,
  ``{"clientID", "removedAt"}``, expiring with the Km the MEF gave for them: no MAF Handshake
  with that KeID until then, and its open sessions end.
* ``maf.removed``   records without expiry: per removed MAF Client ID, ``{"removedAt",
  "removedAtUs"}``: a KeID session of that client that began before that time ends.
* ``maf.keyid``     records without expiry: every RelativeKeyID ever assigned (``if_absent``),
  so that a RelativeKeyID is never reused (8.8.2.7).
* ``maf.quota``     records without expiry: per Source MAF Client ID, ``{"slots": "…"}`` — the
  client's Key Registrations that count against ``max_keys_per_client``, 46 characters each
  (``%014x`` expiry in microseconds since the Unix epoch + RelativeKeyID), sorted (see
  *Per-client quota* below).
* ``maf.quotameta`` one record ``tracked``: present once every Key Registration of the store
  is in a ``maf.quota`` record (written by the first Key Registration of a store, which
  builds the ``maf.quota`` records of the keys registered before quotas existed); record
  ``tracked-total``: the same for the ``maf.quotatotal`` shards.
* ``maf.quotatotal`` records without expiry, ids ``0`` to ``255``: the MAF-wide count of live Key
  Registrations split over :data:`TOTAL_SHARDS` shards, ``{"exp": "…"}`` the sorted expiries
  (``%014x`` µs) of the registrations a shard counts, 14 characters each (see *MAF-wide quota*).

Audit: actor ``maf``, action = procedure name, subject = client ID, outcome ``ok`` or
``refused <RSC>``; details never contain key bytes.

Key Retrieval (8.8.2.8) is the hot path and is split in two:

1. *read* — the Key Registration (live = unexpired) and its key value, read by one statement
   (one snapshot, no write lock); the authorisation (the peer is one of its targetIDs); the
   peer's live MAF Client Registration with the key's administrating stakeholder, read by a
   second statement or taken from the retrieval cache when it was read within the TTL; or
   the whole result from the in-memory retrieval cache (below);
2. *audit* — the disclosure record is appended through the service's
   :class:`~m2msec.store.AuditBatcher` (group commit: one transaction for all retrievals that
   are waiting), and the response is released only after the commit that holds the record
   returned.  A failed audit commit fails the retrieval (RSC 5000, no key).  The commit does
   not wait for the disk (``audit_sync_interval``, default 1 s; ``maf.toml``
   ``audit_sync_interval_s``): the record is in the database before the key leaves, so any
   crash or restart of the MAF keeps it, and it is synced to disk at most that long after;
   only an operating-system crash or power failure in that window can lose it.  ``0`` syncs
   every batch before its callers are released.

A Key De-registration/Update or a Client De-registration that commits between the read and
the audit commit does not stop the answer: the retrieval is ordered before it (it read a live
registration), and the disclosure is in the audit trail — the race is the same as a retrieval
answered just before the de-registration arrived.

Retrieval cache (``key_cache_ttl``, default 1 s; 0 disables it): the result of step 1 (the
Key Registration document, its expiry, the decrypted key and the peer's registration expiry)
is kept in memory for at most ``key_cache_ttl`` after it was read from the store; the
expiry times are checked against the clock on every use, so an expired key or registration
is never served from the cache.  Every answer from the cache is audited like any other.
Refusals are never cached.

Invalidation (every procedure that can change what a retrieval returns: 8.8.2.5 Registration
Update, 8.8.2.6 De-Registration, 8.8.2.9 Key Registration Update, 8.8.2.10 Key De-Registration,
and :meth:`MAFService.revoke_key`): the procedure's transaction also calls
``tx.notify(CACHE_CHANNEL, …)`` (:mod:`m2msec.store.notify`), and the instance that ran it
empties its own cache at once.  Other instances on the same database:

* PostgreSQL: the notification is delivered on commit to each instance's listener session
  (:meth:`Store.listen`, a daemon thread), which empties that instance's cache; while the
  listener is not connected (start-up, lost connection, reconnect backoff) the cache serves
  no hits, and it is emptied when the listener is back (notifications may have been missed).
  A cache hit costs no store round trip.
* SQLite (several processes or ``--workers`` on one file): the notification bumps a change
  sequence number in the database; every entry remembers the number read before its store
  read, and a hit is served only if one primary-key SELECT of the number still returns it.

So a de-registered, revoked or re-targeted key, or a de-registered client, stops being
served by every instance as soon as the change has committed (PostgreSQL: plus the
notification's delivery time); ``key_cache_ttl`` stays as the upper bound if a PostgreSQL
listener connection dies silently (until TCP keepalive notices it).

Per-client quota (8.8.2.7 step 5, "the MAF shall authorize establishing a Key Value, based on
the authenticated identity"; NOTE 2 leaves the authorization to the MAF): a Source MAF Client
holds at most ``max_keys_per_client`` live Key Registrations (default 1000).  A Key
Registration over the quota is refused with ORIGINATOR_HAS_NO_PRIVILEGE (4103, HTTP 403:
an originator error, the same request fails until the client frees a slot) and audited.
The count is the client's ``maf.quota`` record with its expired entries dropped: Key
De-Registration (8.8.2.10) and ``revoke_key`` remove the entry in their transaction (the
slot is free at once), an expired registration stops counting at its expiry, a Key
Registration Update (8.8.2.9) moves its entry's expiry.  The record is read and written with
a compare-and-set in the procedure's transaction: SQLite serialises writers (``BEGIN
IMMEDIATE``); on PostgreSQL a concurrent transaction's compare-and-set waits for the row
lock and then fails (READ COMMITTED re-checks the version), and the procedure re-reads the
committed record and tries again - so two instances never both take the last slot.  The
record holds 46 characters per live key of the client.

MAF-wide quota (the same authorization, against storage exhaustion by many clients together):
the MAF holds at most ``max_keys_total`` live Key Registrations (default 1 000 000, 1 to
10 000 000; no "unlimited").  One more is refused like a per-client refusal (4103, audited,
nothing written; :class:`KeyTotalExceeded`, checked after the client's own quota).  A single
counter row would make every Key Registration of every instance wait for the previous one's
commit (PostgreSQL row lock), so the limit is split over :data:`TOTAL_SHARDS` ``maf.quotatotal``
records whose capacities add up to ``max_keys_total`` exactly (``max_keys_total // 256``, the
first ``max_keys_total % 256`` shards one more; below 256 only the first ``max_keys_total``
shards have a slot).  A Key Registration takes a slot in the first shard with room, searching
from one chosen by its (random) RelativeKeyID, with the same compare-and-set as the per-client
record (a conflict re-reads that shard; a full shard is only read) and records the shard in
its ``maf.keyreg`` document (``quotaShard``); concurrent registrations thus lock different rows
(1 in 256 collide), and the total can never pass the limit because no shard passes its own
capacity.  When the first shard tried is full, all shards are read in one statement and the
next ones with room are tried; a refusal means every shard was full when read.
A shard holds the expiries of its entries: an expired registration stops counting at its
expiry; Key De-Registration and ``revoke_key`` remove one entry with the key's expiry from its
shard (entries with one expiry are interchangeable), a Key Registration Update moves it; a
key removed by two procedures at once frees its slot once (the second finds it gone).  Each
transaction writes at most one client record and then one shard, in that order (see *Lock
order*).  A shard holds 14 characters per counted key (at the default, full: 3 907 entries,
55 KiB).  The first Key Registration on a store without shards (``maf.quotameta/tracked-total``
absent) counts the live keys once, filling the shards to their capacity; such keys carry no
``quotaShard`` and their de-registration removes an entry with their expiry from the first
shard holding one.  A de-registration or revoke of such a key on another instance while the
count is being taken cannot leave its entry behind: it needs the marker too (every change of a
key first makes sure the count exists), so on PostgreSQL it waits for the counting transaction
(the marker's uncommitted insert) and then finds and removes the entry; on SQLite writers are
serialised anyway.  Lowering ``max_keys_total`` is exact only once every shard is at or below
its new capacity: until the keys counted under the old value expire or are de-registered, a
shard still below its new capacity may accept keys while another holds more than its own
(below 256 the shards from ``max_keys_total`` on are no longer searched at all).

Refusals at the limit (``total_full_hold``, default 1 s, a constructor argument; 0 turns it
off): a refusal has read every shard (at 1 000 000 keys about 14 MB, tens of milliseconds, on
SQLite under the write lock), so a client retrying at the limit would cost the store ~30
registrations' work per attempt.  When a Key Registration finds every shard full, the instance
notes it, valid until the earliest expiry any shard held (no slot frees itself before it) and
at most ``total_full_hold`` (monotonic); while the note holds, Key Registrations that pass the
client's own quota are refused 4103 at once (audited like any refusal; :attr:`MAFService.
total_full_hits` counts them) without reading a shard.  Any Key De-Registration, ``revoke_key``
or Key Registration Update this instance runs ends the note once it has finished (committed or
not), and a note is not taken by a read that began before such a change finished.  The note
never admits a key, so the limit still holds exactly; it may refuse for at most
``total_full_hold`` after another instance freed a slot (its change is seen by the first
registration after the note ends).  The first refusal of each period still reads every shard:
at most one full read per instance per ``total_full_hold`` (plus one per local removal).

Lock order (PostgreSQL row locks; SQLite has one writer at a time): every procedure that
changes a Key Registration takes its rows in one order - the ``maf.keyreg`` record (Key
De-Registration: compare-and-delete; Key Registration Update: compare-and-set, before anything
else; ``revoke_key``: ``DELETE ... RETURNING``, which waits for a concurrent change of the row
and then works on its result), then its ``maf.key`` value, then the ``maf.quotameta`` marker
(only until it exists), then the client's ``maf.quota`` record, then one ``maf.quotatotal``
shard.  A Key Registration writes new rows only (``maf.keyid``, then the same client record and
shard order).  Two procedures on one key therefore wait for each other instead of deadlocking:
the later one then finds the registration gone (4004) or changed (compare-and-set, 4105
"concurrent change").  Should the database still abort a transaction for a deadlock or a
serialization failure (SQLSTATE 40P01/40001, :class:`~m2msec.store.TransactionConflict`), the
procedure is answered like a compare-and-set conflict: 4105 "concurrent change", audited,
nothing written; the client may retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509

from m2msec.errors import IdentifierError, M2MSecError, ParseError
from m2msec.keys import make_key_id, maf_key_id, parse_key_id
from m2msec.maf.mef import KmStatus, MEFClient
from m2msec.maf.protocol import (
    ClientRegistrationRequest,
    ClientRegistrationResponse,
    ConfigurationRetrievalRequest,
    ConfigurationRetrievalResponse,
    DeregistrationRequest,
    DeregistrationResponse,
    KeyDeregistrationRequest,
    KeyDeregistrationResponse,
    KeyRegistrationRequest,
    KeyRegistrationResponse,
    KeyRegistrationUpdateRequest,
    KeyRegistrationUpdateResponse,
    KeyRetrievalRequest,
    KeyRetrievalResponse,
    MAFError,
    Procedure,
    RegistrationUpdateRequest,
    RegistrationUpdateResponse,
    check_relative_key_id,
    check_suid_targets,
)
from m2msec.osuser import admin_details
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.onem2m.timestamps import Clock, ensure_utc, format_timestamp
from m2msec.pki import CertificateFlavour, CertificateVerificationError, PeerCertInfo, VerificationReason, VerifiedPeer
from m2msec.pki import CRLStore, RevocationPolicy
from m2msec.pki.ocsp_check import PeerOCSPChecker
from m2msec.pki.session_status import SessionStatus, SessionStatusGuard
from m2msec.store import (
    AuditBatcher,
    DuplicateError,
    Listener,
    NotFound,
    Store,
    StoreError,
    Transaction,
    TransactionConflict,
    VersionConflict,
)
from m2msec.tls.engine import TLSEngine
from m2msec.tls.pkiverify import PKIVerifyHook

__all__ = ["AUDIT_SYNC_INTERVAL_DEFAULT", "CACHE_CHANNEL", "MAX_KEYS_PER_CLIENT_DEFAULT", "MAX_KEYS_PER_CLIENT_LIMIT", "MAX_KEYS_TOTAL_DEFAULT",
           "MAX_KEYS_TOTAL_LIMIT", "NS", "TOTAL_FULL_HOLD_DEFAULT", "TOTAL_FULL_HOLD_LIMIT", "TOTAL_SHARDS", "AdminConfig", "KeyQuotaExceeded", "KeyTotalExceeded",
           "MAFPeer", "MAFService", "SessionEnded"]

log = logging.getLogger(__name__)


class NS:
    KM = "maf.km"
    CERT_CLIENT = "maf.certclient"
    REG = "maf.reg"
    REG_IDX = "maf.regidx"
    KEY_REG = "maf.keyreg"
    KEY = "maf.key"
    KEY_ID = "maf.keyid"
    QUOTA = "maf.quota"
    QUOTA_META = "maf.quotameta"
    QUOTA_TOTAL = "maf.quotatotal"
    KEID_GONE = "maf.keidgone"
    REMOVED = "maf.removed"


#: ``maf.quotameta`` record id: the ``maf.quota`` records cover every Key Registration
_QUOTA_TRACKED = "tracked"
#: ``maf.quotameta`` record id: the ``maf.quotatotal`` shards cover every Key Registration
_TOTAL_TRACKED = "tracked-total"
#: compare-and-set attempts on a client's quota record before the procedure gives up (4105):
#: each failed attempt means another transaction of the same client committed meanwhile
_QUOTA_ATTEMPTS = 64
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_EXP_HEX = 14  # hex digits of an expiry in microseconds (to the year 4253)
_SLOT = _EXP_HEX + 32
#: bounds of ``max_keys_per_client`` (the quota record grows by 46 characters per live key)
MAX_KEYS_PER_CLIENT_DEFAULT = 1000
MAX_KEYS_PER_CLIENT_LIMIT = 100_000
#: bounds of ``max_keys_total``, the MAF-wide limit on live Key Registrations: the default is a
#: thousand clients at the per-client default (about 1 GB of rows in the store); the upper
#: bound keeps a shard record below 40 000 entries (547 KiB) when the MAF is full
MAX_KEYS_TOTAL_DEFAULT = 1_000_000
MAX_KEYS_TOTAL_LIMIT = 10_000_000
#: ``maf.quotatotal`` records (the MAF-wide count is split over them, see *MAF-wide quota*)
TOTAL_SHARDS = 256
#: ``total_full_hold``: how long after a Key Registration found every shard full the next ones
#: are refused without reading them again (see *Refusals at the limit*), and its upper bound
TOTAL_FULL_HOLD_DEFAULT = timedelta(seconds=1)
TOTAL_FULL_HOLD_LIMIT = timedelta(seconds=60)
#: seconds a committed retrieval/refusal audit record may wait for its disk sync (maf.toml
#: ``audit_sync_interval_s``; 0 = sync every audit commit before answering)
AUDIT_SYNC_INTERVAL_DEFAULT = 1.0
#: MEF fetches (KeID -> Km, 8.3.2.1) one MAF event loop runs at a time; more wait their turn
MEF_FETCH_CONCURRENCY = 8
#: seconds a prefetched Km (or a MEF's "unknown") stays for its handshake's PSK callback
PREFETCH_KEEP_S = 15.0
#: at most this many prefetch results are held (the oldest go first)
PREFETCH_MAX = 10_000
#: seconds between two passes asking the MEF about every Km the MAF got from it
#: (``[mef] recheck_interval_s``; 0 = never): how long a MEF revocation takes to reach the MAF
MEF_RECHECK_INTERVAL_DEFAULT = 300.0
MEF_RECHECK_INTERVAL_LIMIT = 86_400.0
#: MEF requests of one re-check pass at a time (besides the handshakes' MEF_FETCH_CONCURRENCY)
MEF_RECHECK_CONCURRENCY = 4


def _epoch_us(dt: datetime) -> int:
    return (dt - _EPOCH) // _US


class KeyQuotaExceeded(MAFError):
    """A Key Registration (8.8.2.7) over the Source MAF Client's ``max_keys_per_client``."""

    default_rsc = RSC.ORIGINATOR_HAS_NO_PRIVILEGE


class KeyTotalExceeded(KeyQuotaExceeded):
    """A Key Registration (8.8.2.7) over the MAF-wide ``max_keys_total``."""


class _Expiries:
    """A ``maf.quotatotal`` shard: the multiset of the expiries of the Key Registrations it
    counts, ``%014x`` microseconds since the Unix epoch each, sorted, in one string (``exp``).

    Entries with one expiry are interchangeable (only how many are live matters), so a shard
    keeps no RelativeKeyID: 14 characters per counted key."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    @classmethod
    def of(cls, doc: Mapping[str, Any] | None) -> _Expiries:
        text = "" if doc is None else doc.get("exp")
        if not isinstance(text, str) or len(text) % _EXP_HEX:
            raise StoreError("malformed maf.quotatotal record")
        return cls(text)

    def doc(self) -> dict[str, Any]:
        return {"exp": self.text}

    def __len__(self) -> int:
        return len(self.text) // _EXP_HEX

    def _index(self, key: str) -> int:
        lo, hi, t = 0, len(self), self.text
        while lo < hi:
            mid = (lo + hi) // 2
            if t[mid * _EXP_HEX:(mid + 1) * _EXP_HEX] < key:
                lo = mid + 1
            else:
                hi = mid
        return lo

    @staticmethod
    def _entry(exp_us: int) -> str:
        entry = f"{exp_us:0{_EXP_HEX}x}"
        if len(entry) != _EXP_HEX or exp_us < 0:
            raise ValueError("an expiry between 1970 and 4253")
        return entry

    def drop_expired(self, now_us: int) -> None:
        i = self._index(f"{now_us:0{_EXP_HEX}x}g")  # "g" sorts after every hex digit: expiry <= now
        self.text = self.text[i * _EXP_HEX:]

    def put(self, exp_us: int) -> None:
        entry = self._entry(exp_us)
        i = self._index(entry)
        self.text = self.text[:i * _EXP_HEX] + entry + self.text[i * _EXP_HEX:]

    def remove(self, exp_us: int) -> bool:
        """Drop one entry with this expiry; False if there is none (it expired and was dropped)."""
        entry = self._entry(exp_us)
        i = self._index(entry)
        if self.text[i * _EXP_HEX:(i + 1) * _EXP_HEX] != entry:
            return False
        self.text = self.text[:i * _EXP_HEX] + self.text[(i + 1) * _EXP_HEX:]
        return True


class _Slots:
    """A client's counted Key Registrations: the ``maf.quota`` record's ``slots`` string.

    Fixed-width entries of 46 characters, ``%014x`` of the expiry in microseconds since the
    Unix epoch followed by the 32 hex digits of the RelativeKeyID, sorted (so by expiry):
    dropping the expired ones is one binary search and one slice, the count is a length, and
    parsing the record is one JSON string: the Python work per registration is a few string
    copies however many keys the client holds (the row written still grows with them)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    @classmethod
    def of(cls, doc: Mapping[str, Any] | None) -> _Slots:
        text = "" if doc is None else doc.get("slots")
        if not isinstance(text, str) or len(text) % _SLOT:
            raise StoreError("malformed maf.quota record")
        return cls(text)

    def doc(self) -> dict[str, Any]:
        return {"slots": self.text}

    def __len__(self) -> int:
        return len(self.text) // _SLOT

    def _index(self, key: str) -> int:
        """Number of entries that sort before ``key``."""
        lo, hi, t = 0, len(self), self.text
        while lo < hi:
            mid = (lo + hi) // 2
            if t[mid * _SLOT:(mid + 1) * _SLOT] < key:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def drop_expired(self, now_us: int) -> None:
        i = self._index(f"{now_us:0{_EXP_HEX}x}g")  # "g" sorts after every hex digit: expiry <= now
        self.text = self.text[i * _SLOT:]

    def remove(self, rel: str) -> None:
        t = self.text
        pos = t.find(rel, _EXP_HEX)
        while pos != -1 and (pos - _EXP_HEX) % _SLOT:
            pos = t.find(rel, pos + 1)
        if pos != -1:
            self.text = t[:pos - _EXP_HEX] + t[pos - _EXP_HEX + _SLOT:]

    def put(self, rel: str, exp_us: int) -> None:
        entry = f"{exp_us:0{_EXP_HEX}x}{rel}"
        if len(entry) != _SLOT:
            raise ValueError("a RelativeKeyID is 32 hex digits and an expiry between 1970 and 4253")
        i = self._index(entry)
        self.text = self.text[:i * _SLOT] + entry + self.text[i * _SLOT:]


#: store notification channel (PostgreSQL NOTIFY / SQLite sequence) of changes a Key Retrieval
#: may have cached; the payload (JSON: procedure, subject, relativeKeyID/mafClientRegID) is
#: informational, a receiver empties its whole retrieval cache
CACHE_CHANNEL = "m2msec_maf_retrieval"

#: sec:credIDTypeID 11: symmetric key used to authenticate to a MAF (KmID), TS-0003 table 12.3.2.1-1.
CRED_TYPE_KM = 11
_CERT_CRED_TYPE = {CertificateFlavour.RAW_PUBLIC_KEY: 30, CertificateFlavour.DEVICE: 31,
                   CertificateFlavour.CSE_ID: 32, CertificateFlavour.AE_ID: 33, CertificateFlavour.NODE_ID: 34}


@dataclass(frozen=True)
class AdminConfig:
    """An administrating stakeholder on whose behalf the MAF serves (8.8.1).

    ``client_config``: the MAF Client Configuration it provides for its clients (8.8.2.4);
    None = none provisioned (the retrieval then fails with NOT_FOUND).
    """

    fqdn: str
    client_config: Mapping[str, Any] | None = None


class SessionEnded(MAFError):
    """The credential of this MAF session was de-provisioned since its handshake: 4106, and the
    server closes the connection after the answer."""

    def __init__(self, message: str) -> None:
        super().__init__(message, rsc=RSC.ORIGINATOR_NOT_AUTHENTICATED)


@dataclass(frozen=True)
class MAFPeer:
    """The authenticated identity of a MAF Handshake (8.8.2.2).

    ``kind``: ``km`` (TLS-PSK with a KmID known to the MAF), ``keid`` (TLS-PSK with a KeID
    whose Km came from the MEF; ``pending_km`` holds it until Client Registration assigns a
    KmID) or ``cert`` (certificate TLS).  ``client_id`` is None only for a KeID session
    whose MEF did not name the Enrolee (it is assigned at Client Registration).
    """

    kind: str
    client_id: str | None
    credential_id: str
    kmid: str | None = None
    keid: str | None = None
    pending_km: bytes | None = field(default=None, repr=False)
    km_expires_at: datetime | None = None
    verified: VerifiedPeer | None = field(default=None, repr=False)
    #: made by :meth:`MAFService.bind` from a MAF Handshake: each procedure re-checks that the
    #: credential it used is still provisioned (a peer an embedding application builds is not)
    handshake: bool = field(default=False, repr=False)
    #: when the MAF Handshake completed (service clock): a KeID session of a client removed
    #: after that ends (:meth:`MAFService.remove_client`)
    since: datetime | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"MAFPeer(kind={self.kind}, client_id={self.client_id!r}, credential_id={self.credential_id!r})"


def _iso(dt: datetime) -> str:
    return format_timestamp(dt)


class _ClientCertVerifier:
    """``verify_peer`` hook: the chain must verify against one configured MAF Client's
    Certificate Information (8.8.2.2, 8.1.2.5); returns ``(client_id, VerifiedPeer)``."""

    authoritative = True

    def __init__(self, service: MAFService) -> None:
        self.service = service

    def __call__(self, chain: list[x509.Certificate]) -> tuple[str, VerifiedPeer]:
        svc = self.service
        errors: list[CertificateVerificationError] = []
        for rec in svc.store.list_records(NS.CERT_CLIENT):
            info = PeerCertInfo(CertificateFlavour(rec.doc["flavour"]), rec.doc["identifier"])
            ocsp = svc.client_ocsp
            hook = PKIVerifyHook(info, svc.client_trust_anchors, svc.clock, crls=svc.client_crls,
                                 revocation=ocsp.hook_policy() if ocsp is not None else svc.revocation,
                                 ocsp=ocsp.store if ocsp is not None else None)
            try:
                return rec.rec_id, hook(chain)
            except CertificateVerificationError as exc:
                errors.append(exc)
        if not errors:
            raise CertificateVerificationError(VerificationReason.IDENTIFIER_MISMATCH,
                                               "no MAF Client certificate information is configured")
        generic = (VerificationReason.IDENTIFIER_MISMATCH, VerificationReason.WRONG_FLAVOUR)
        specific = [e for e in errors if e.reason_code not in generic]
        raise (specific or errors)[0]


class _RetrievalCache:
    """Key Retrieval read results for at most ``ttl`` seconds (monotonic), at most ``max_entries``.

    ``keys``: RelativeKeyID -> (loaded, Key Registration doc, its expiry, key value, seq);
    ``regs``: (adminFQDN, client ID) -> (loaded, registration expiry, seq).  ``seq`` is the
    store's change sequence number read before the entry's store read (SQLite; 0 otherwise).
    ``gen`` grows with every :meth:`clear`: a read that started before a clear is not cached
    after it.  ``valid`` False: no hits (the change listener is not connected).
    """

    def __init__(self, ttl: float, max_entries: int = 10_000, *, valid: bool = True) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.keys: dict[str, tuple[float, dict[str, Any], datetime, bytes, int]] = {}
        self.regs: dict[tuple[str, str], tuple[float, datetime | None, int]] = {}
        self.gen = 0
        self.valid = valid
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"_RetrievalCache(ttl={self.ttl}, keys={len(self.keys)}, valid={self.valid})"

    def clear(self) -> None:
        with self._lock:
            self.gen += 1
            self.keys.clear()
            self.regs.clear()

    def set_valid(self, valid: bool) -> None:
        """Stop serving hits and forget everything, or forget everything and serve hits again."""
        with self._lock:
            self.valid = False
            self.gen += 1
            self.keys.clear()
            self.regs.clear()
            self.valid = valid

    def put(self, gen: int, rel: str, doc: dict[str, Any], expires: datetime, secret: bytes, loaded: float,
            seq: int, reg_key: tuple[str, str], reg: tuple[float, datetime | None, int]) -> None:
        """Cache a key read at ``loaded`` (monotonic) after change sequence ``seq`` and the
        registration entry ``reg`` (loaded, expiry, seq) it was checked against; an entry taken
        from the cache keeps its age."""
        if self.ttl <= 0:
            return
        with self._lock:
            if gen != self.gen or not self.valid:
                return
            for table in (self.keys, self.regs):
                while len(table) >= self.max_entries:
                    del table[next(iter(table))]  # oldest first (insertion order)
            self.keys.pop(rel, None)
            self.keys[rel] = (loaded, doc, expires, secret, seq)
            if self.regs.get(reg_key) is not reg:
                self.regs.pop(reg_key, None)
                self.regs[reg_key] = reg


#: procedures that may free a slot of the MAF-wide quota (they end the "full" note)
_FREES_SLOTS = frozenset({Procedure.KEY_DEREGISTRATION, Procedure.KEY_REGISTRATION_UPDATE})

#: procedures that change nothing a Key Retrieval reads, or only add to it
_CACHE_NEUTRAL = frozenset({Procedure.KEY_RETRIEVAL, Procedure.CONFIGURATION_RETRIEVAL,
                            Procedure.KEY_REGISTRATION, Procedure.CLIENT_REGISTRATION})


class MAFService:
    """Store-backed MAF procedures.  Thread-safe: each call uses its own store transaction."""

    def __init__(
        self,
        store: Store,
        fqdn: str,
        *,
        admins: Sequence[AdminConfig],
        clock: Clock,
        mef: MEFClient | None = None,
        client_trust_anchors: Sequence[x509.Certificate] = (),
        client_crls: CRLStore | None = None,
        revocation: RevocationPolicy | str = RevocationPolicy.IF_AVAILABLE,
        max_registration_lifetime: timedelta = timedelta(days=365),
        max_key_lifetime: timedelta = timedelta(days=30),
        key_cache_ttl: timedelta = timedelta(seconds=1),
        inline_sqlite_reads: bool = True,
        max_keys_per_client: int = MAX_KEYS_PER_CLIENT_DEFAULT,
        client_ocsp: PeerOCSPChecker | None = None,
        max_keys_total: int = MAX_KEYS_TOTAL_DEFAULT,
        total_full_hold: timedelta = TOTAL_FULL_HOLD_DEFAULT,
        audit_sync_interval: float = AUDIT_SYNC_INTERVAL_DEFAULT,
    ) -> None:
        if (isinstance(max_keys_per_client, bool) or not isinstance(max_keys_per_client, int)
                or not 1 <= max_keys_per_client <= MAX_KEYS_PER_CLIENT_LIMIT):
            raise ValueError(f"max_keys_per_client must be an integer from 1 to {MAX_KEYS_PER_CLIENT_LIMIT}")
        #: live Key Registrations a Source MAF Client may hold (8.8.2.7 authorization)
        self.max_keys_per_client = max_keys_per_client
        if (isinstance(max_keys_total, bool) or not isinstance(max_keys_total, int)
                or not 1 <= max_keys_total <= MAX_KEYS_TOTAL_LIMIT):
            raise ValueError(f"max_keys_total must be an integer from 1 to {MAX_KEYS_TOTAL_LIMIT}")
        #: live Key Registrations of all MAF Clients together (MAF-wide; storage exhaustion)
        self.max_keys_total = max_keys_total
        if not isinstance(total_full_hold, timedelta) or not timedelta(0) <= total_full_hold <= TOTAL_FULL_HOLD_LIMIT:
            raise ValueError(f"total_full_hold must be a timedelta from 0 to {TOTAL_FULL_HOLD_LIMIT.total_seconds():g} s")
        #: how long a refusal at ``max_keys_total`` lets this instance refuse the next Key
        #: Registrations without reading every shard (see *Refusals at the limit*); 0: never
        self.total_full_hold = total_full_hold
        #: the note: (monotonic deadline, earliest expiry in µs) or None; ``_full_gen`` grows
        #: with every de-registration, revoke or update this instance committed
        self._total_full: tuple[float, int] | None = None
        self._full_gen = 0
        self._full_lock = threading.Lock()
        #: refusals at the limit answered from the note (observability, tests, bench)
        self.total_full_hits = 0
        #: the store's ``maf.quotameta`` records have been seen (they are never deleted)
        self._quota_tracked = False
        self._total_tracked = False
        self.store = store
        #: retrieval and refusal audit records: group commit, disk sync deferred by at most this
        #: many seconds (0: every batch synced before its callers are released); see step 2 above
        self.audit = AuditBatcher(store, sync_interval=audit_sync_interval)
        self.key_cache_ttl = key_cache_ttl
        ttl = max(0.0, key_cache_ttl.total_seconds())
        #: how other instances' changes reach the cache: "listen" (PostgreSQL notifications),
        #: "seq" (SQLite change sequence checked on every hit) or "off" (no cache)
        self.cache_invalidation = "off" if ttl <= 0 else ("listen" if store.can_listen else "seq")
        self._cache = _RetrievalCache(ttl, valid=self.cache_invalidation != "listen")
        self._listener: Listener | None = None
        self._closed = False
        #: notifications received by the cache listener (observability)
        self.cache_notifications = 0
        #: run_async reads a Key Retrieval's rows on the event loop when the store is a local
        #: SQLite file (WAL readers never wait for a lock; three primary-key look-ups cost less
        #: CPU than the hop to a worker thread and its GIL hand-offs); PostgreSQL reads are
        #: network round trips and always run in a worker thread.
        self._inline_reads = inline_sqlite_reads and store.backend_name == "sqlite"
        self.fqdn = parse_key_id(f"x@{fqdn}").fqdn.lower()
        self.admins = {a.fqdn.lower(): a for a in admins}
        self.clock = clock
        self.mef = mef
        self.client_trust_anchors = tuple(client_trust_anchors)
        self.client_crls = client_crls  # CRLs of the MAF Clients' PKI (TS-0003 8.1.2.2), refreshed by the owner
        self.revocation = RevocationPolicy(revocation)
        # OCSP queries about client certificates (8.1.2.2): its store is the hook's second source,
        # its status_check runs after the handshake while the engine holds the final flight
        self.client_ocsp = client_ocsp
        #: the current status of established certificate sessions (the same CRL and OCSP stores,
        #: re-checked only when one of them changed; m2msec.pki.session_status)
        self.session_guard = SessionStatusGuard(crls=client_crls, ocsp=client_ocsp.store if client_ocsp else None,
                                                clock=clock)
        self.max_registration_lifetime = max_registration_lifetime
        self.max_key_lifetime = max_key_lifetime
        self._pending: dict[str, tuple[bytes, datetime | None, str | None, datetime]] = {}
        self._lock = threading.Lock()
        #: results of :meth:`psk_prefetch` by KeID: (monotonic time, what the MEF returned)
        self._prefetched: dict[str, tuple[float, Any]] = {}
        self._mef_fetch_slots: dict[tuple[asyncio.AbstractEventLoop, bool], asyncio.Semaphore] = {}
        #: set by the MAF's listener, which installs :meth:`psk_prefetch`: the PSK callback then
        #: never fetches from the MEF itself (it would block the event loop)
        self.prefetch_only = False

    def __repr__(self) -> str:
        return f"MAFService(fqdn={self.fqdn!r}, admins={sorted(self.admins)}, store={self.store!r})"

    # ------------------------------------------------------------------ retrieval cache invalidation

    def start_cache_listener(self) -> None:
        """Start listening for other instances' changes (PostgreSQL with a cache; idempotent).

        Called by :class:`~m2msec.maf.server.MAFServer` on start and by the first Key
        Retrieval; until the listener is connected the cache serves no hits."""
        if self.cache_invalidation != "listen" or self._listener is not None:
            return
        with self._lock:
            if self._listener is not None or self._closed:
                return
            try:
                self._listener = self.store.listen(CACHE_CHANNEL, self._on_cache_notification,
                                                   self._on_cache_listener_state)
            except StoreError as exc:  # a closed store: no hits, the store path reports the error
                log.warning("cannot start the retrieval cache listener: %s", exc)

    def wait_cache_ready(self, timeout: float = 5.0) -> bool:
        """True once the cache may serve hits ("seq": at once; "listen": when the listener is
        connected, waiting up to ``timeout`` s; "off": never)."""
        if self.cache_invalidation == "off":
            return False
        self.start_cache_listener()
        if self._listener is not None:
            self._listener.wait_connected(timeout)
        return self._cache.valid

    def close(self) -> None:
        """Stop the cache listener and put the audit records committed so far on disk (the
        store stays open; closing the store stops the listener too)."""
        with self._lock:
            self._closed = True
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self.audit.sync()
        self._cache.set_valid(self.cache_invalidation == "seq")

    def _on_cache_notification(self, _payload: str) -> None:
        self.cache_notifications += 1
        self._cache.clear()

    def _on_cache_listener_state(self, connected: bool) -> None:
        self._cache.set_valid(connected)
        listener = self._listener
        if connected:
            log.debug("retrieval cache listener connected")
        elif listener is not None and not listener.closed:
            log.warning("retrieval cache listener disconnected: no cache hits until it is back")

    @staticmethod
    def _change_payload(procedure: str, subject: str, details: Mapping[str, Any]) -> str:
        ids = {k: details[k] for k in ("relativeKeyID", "mafClientRegID") if k in details}
        text = json.dumps({"procedure": procedure, "subject": subject, **ids}, separators=(",", ":"))
        if len(text) > 2000:  # far below pg_notify's 8000 bytes even for an absurd client ID
            text = json.dumps({"procedure": procedure, **ids}, separators=(",", ":"))
        return text

    def now(self) -> datetime:
        return ensure_utc(self.clock(), what="clock()")

    # ------------------------------------------------------------------ provisioning (admin)

    def add_km_client(self, kmid: str, km: bytes, *, client_id: str | None = None,
                      expires_at: datetime | None = None) -> str:
        """Pre-provision Km/KmID for a MAF Client (8.8.3.1 PPSK); returns the MAF Client ID."""
        kid = parse_key_id(kmid)
        if kid.fqdn.lower() != self.fqdn:
            raise IdentifierError(f"KmID {kmid!r} does not end in this MAF's FQDN {self.fqdn!r} (10.6)")
        if not isinstance(km, (bytes, bytearray)) or len(km) < 16:
            raise ParseError("Km must be at least 16 octets")
        cid = client_id or f"{CRED_TYPE_KM}-{kmid}"
        with self.store.transaction() as tx:
            tx.put_credential(NS.KM, self._kmid_key(kmid), bytes(km),
                              metadata={"client_id": cid, "origin": "provisioned", "kmid": kmid},
                              expires_at=expires_at, if_absent=True)
            tx.append_audit("maf-admin", "add-client", cid, "ok", admin_details({"kmid": kmid, "auth": "psk"}))
        return cid

    def add_cert_client(self, client_id: str, info: PeerCertInfo) -> None:
        """Configure a MAF Client's Certificate Information (8.8.3.2 pre-conditions)."""
        if not client_id:
            raise ParseError("client ID must not be empty")
        with self.store.transaction() as tx:
            tx.put_record(NS.CERT_CLIENT, client_id, {"flavour": info.flavour.value, "identifier": info.identifier})
            tx.append_audit("maf-admin", "add-client", client_id, "ok",
                            admin_details({"auth": "cert", "flavour": info.flavour.value,
                                           "identifier": info.identifier}))

    def _drop_key(self, tx: Transaction, rel: str) -> bool:
        """Delete Key Registration ``rel`` and its key value, free its quota slots; True if it was live."""
        # the row as deleted (DELETE ... RETURNING: PostgreSQL waits for a concurrent update or
        # de-registration of it and then sees its result), so the slot freed is the one it
        # counts now, and a key removed meanwhile frees nothing twice
        try:
            rec: Any = tx.take_record(NS.KEY_REG, rel)
        except NotFound:
            rec = None
            tx.delete_record(NS.KEY_REG, rel)  # an expired one, if any (it counts nowhere)
        tx.delete_credential(NS.KEY, rel)
        if rec is not None:
            self._quota_change(tx, rec.doc["sourceMAFClientID"], rel, None, take=False)
            self._total_move(tx, rec, None)
        return rec is not None

    def revoke_key(self, key_id_or_relative: str, *, actor: str = "maf-admin") -> bool:
        """Delete a Key Registration (admin action); True if one was live."""
        rel = self._relative_from(key_id_or_relative)
        try:
            with self.store.transaction() as tx:
                live = self._drop_key(tx, rel)
                tx.append_audit(actor, "revoke-key", rel, "ok" if live else "absent",
                                admin_details({"relativeKeyID": rel}))
                tx.notify(CACHE_CHANNEL, self._change_payload("revoke-key", rel, {"relativeKeyID": rel}))
        finally:
            self._cache.clear()
            self._total_full_clear()
        return live

    def remove_client(self, client_id: str, *, actor: str = "maf-admin") -> dict[str, int]:
        """De-provision a MAF Client (admin action, e.g. a compromised device), in one transaction:
        its Km credentials (every KmID) or Certificate Information, its MAF Client Registrations
        and the Key Registrations it is the Source of (no Target can retrieve them any more).
        New MAF Handshakes with its credential fail; an open session's next procedure is refused
        with 4106 and the connection closed (:meth:`run`), its next Key Retrieval finds no
        registration.  A remotely provisioned client (its Km came from the MEF for a KeID) is
        also refused with every KeID the MAF assigned it a KmID for (``maf.keidgone``, until that
        Km's lifetime ends: the MEF would hand the same Km out again), and its KeID sessions end
        too (``maf.removed``); re-enrolling with the MEF (a new KeID) brings it back.  Returns
        how many of each were removed; :class:`MAFError` 4004 if the MAF knows nothing of
        ``client_id``."""
        try:
            with self.store.transaction() as tx:
                now = self.now()
                creds = tx.list_credentials(NS.KM, where={"client_id": client_id})
                kms = [c.cred_id for c in creds]
                for cred_id in kms:
                    tx.delete_credential(NS.KM, cred_id)
                keids = sorted({str(c.metadata["keid"]).lower() for c in creds if c.metadata.get("keid")})
                for c in creds:
                    keid = str(c.metadata.get("keid") or "").lower()
                    if keid:
                        tx.put_record(NS.KEID_GONE, keid, {"clientID": client_id, "removedAt": _iso(now)},
                                      expires_at=c.expires_at)
                cert = tx.delete_record(NS.CERT_CLIENT, client_id)
                regs = tx.list_records(NS.REG, where={"clientID": client_id})
                for r in regs:
                    tx.delete_record(NS.REG, r.rec_id)
                    tx.delete_record(NS.REG_IDX, self._idx(r.doc["adminFQDN"], client_id))
                keys = [r.rec_id for r in tx.list_records(NS.KEY_REG, where={"sourceMAFClientID": client_id})]
                dropped = sum(self._drop_key(tx, rel) for rel in keys)
                counts = {"km_credentials": len(kms), "certificate_client": int(cert),
                          "registrations": len(regs), "keys": dropped, "keids": len(keids)}
                if not (kms or cert or regs or keys):
                    raise MAFError(f"no MAF Client {client_id!r} is provisioned or registered", rsc=RSC.NOT_FOUND)
                tx.put_record(NS.REMOVED, client_id, {"removedAt": _iso(now), "removedAtUs": _epoch_us(now)})
                tx.append_audit(actor, "remove-client", client_id, "ok", admin_details(dict(counts)))
                tx.notify(CACHE_CHANNEL, self._change_payload("remove-client", client_id, {}))
        finally:
            self._cache.clear()
            self._total_full_clear()
        return counts

    def _credential_gone(self, ops: Any, peer: MAFPeer) -> str | None:
        """Why the credential a session authenticated with is no longer provisioned
        (``remove_client``, a Km retired by Registration Update), else None; ``ops``: the
        procedure's transaction or the store.  Only for peers of a MAF Handshake."""
        if not peer.handshake:
            return None
        if peer.kind == "km":
            cred = ops.find_credential(NS.KM, self._kmid_key(peer.kmid or ""))
            if cred is None or cred.metadata.get("client_id", peer.client_id) != peer.client_id:
                return "the Km of this session is no longer provisioned"
        elif peer.kind == "cert" and peer.client_id is not None:
            if ops.find_record(NS.CERT_CLIENT, peer.client_id) is None:
                return "the Certificate Information of this MAF Client is no longer configured"
        elif peer.kind == "keid":
            if peer.keid and ops.find_record(NS.KEID_GONE, peer.keid.lower()) is not None:
                return "the KeID of this session was de-provisioned at this MAF"
            if peer.client_id is not None and peer.since is not None:
                removed = ops.find_record(NS.REMOVED, peer.client_id)
                if removed is not None and int(removed.doc["removedAtUs"]) >= _epoch_us(peer.since):
                    return "this MAF Client was removed after the session began"
        return None

    async def recheck_mef_credentials(self) -> dict[str, int]:
        """One pass over the Km credentials this MAF got from its MEF (``origin = "mef"``): ask
        the MEF about each KeID again (never from a cache, at most :data:`MEF_RECHECK_CONCURRENCY`
        at a time).  A KeID the MEF now refuses (its Enrolee revoked, its enrolment expired: 4004
        or 4103) or whose Km changed loses its KmID at once, on every instance (the credential
        is deleted, the KeID refused until the Km would have expired, audited as ``maf``
        ``mef-revoked``; its open sessions end at their next procedure, F15); its registrations
        stay, for a Registration Update after re-enrolment (8.8.2.5).  A MEF that does not
        answer changes nothing (logged at WARNING; the next pass asks again).  Returns counts:
        ``checked``, ``valid``, ``revoked``, ``unreachable``."""
        counts = {"checked": 0, "valid": 0, "revoked": 0, "unreachable": 0}
        mef = self.mef
        if mef is None:
            return counts
        recheck_async = getattr(mef, "recheck_km_async", None)
        recheck = getattr(mef, "recheck_km", None)
        if recheck_async is None and recheck is None:
            log.warning("the MEF client %r cannot re-check Km: MEF revocations do not reach this MAF", mef)
            return counts
        creds = await asyncio.to_thread(self.store.list_credentials, NS.KM, where={"origin": "mef"})
        sem = self._fetch_slots(recheck=True)

        async def one(cred: Any) -> None:
            keid = str(cred.metadata.get("keid") or "")
            if not keid:
                return
            async with sem:
                try:
                    status = (await recheck_async(keid, cred.secret) if recheck_async is not None
                              else await asyncio.to_thread(recheck, keid, cred.secret))  # type: ignore[arg-type]
                except Exception:  # noqa: BLE001 - a broken MEF client keeps the Km, like no answer
                    log.exception("re-checking a KeID with the MEF failed")
                    status = KmStatus.UNREACHABLE
            counts["checked"] += 1
            counts[status.value] += 1
            if status is KmStatus.REVOKED:
                await asyncio.to_thread(self._drop_mef_km, cred, keid)

        await asyncio.gather(*(one(c) for c in creds))
        if counts["unreachable"]:
            log.warning("MEF re-check: %d of %d KeID(s) not answered; their Km stay until the next pass",
                        counts["unreachable"], counts["checked"])
        if counts["revoked"]:
            log.info("MEF re-check: %d KmID(s) removed (the MEF no longer serves their KeID)", counts["revoked"])
        return counts

    def _drop_mef_km(self, cred: Any, keid: str) -> None:
        client_id = str(cred.metadata.get("client_id") or "")
        try:
            with self.store.transaction() as tx:
                if tx.find_credential(NS.KM, cred.cred_id) is None:
                    return  # removed meanwhile (another instance's pass, remove-client, an update)
                tx.delete_credential(NS.KM, cred.cred_id)
                tx.put_record(NS.KEID_GONE, keid.lower(), {"clientID": client_id, "removedAt": _iso(self.now())},
                              expires_at=cred.expires_at)
                tx.append_audit("maf", "mef-revoked", client_id or cred.cred_id, "ok",
                                {"kmID": cred.metadata.get("kmid", cred.cred_id), "keID": keid})
                tx.notify(CACHE_CHANNEL, self._change_payload("mef-revoked", client_id, {}))
        finally:
            self._cache.clear()

    def _keid_gone(self, keid: str) -> bool:
        """The KeID was de-provisioned at this MAF (``remove_client``) and its Km has not expired."""
        return self.store.find_record(NS.KEID_GONE, keid.lower()) is not None

    def _require_credential(self, tx: Transaction, peer: MAFPeer) -> None:
        """Every procedure but Key Retrieval (whose refusals check it): 4106 and the session ends
        (:class:`SessionEnded`) when the session's credential is gone."""
        if (why := self._credential_gone(tx, peer)) is not None:
            raise SessionEnded(why)

    def list_clients(self) -> list[dict[str, Any]]:
        """Configured clients (Km and certificate) with their live registrations and the number of
        live Key Registrations counted against their quota (``live_keys``) — no key bytes."""
        regs: dict[str, list[dict[str, Any]]] = {}
        for r in self.store.list_records(NS.REG):
            regs.setdefault(r.doc["clientID"], []).append({"mafClientRegID": r.rec_id, **r.doc})
        now_us = _epoch_us(self.now())
        counts: dict[str, int] = {}
        for r in self.store.list_records(NS.QUOTA):
            slots = _Slots.of(r.doc)
            slots.drop_expired(now_us)
            counts[r.rec_id] = len(slots)
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for c in self.store.list_credentials(NS.KM):
            cid = c.metadata.get("client_id", "?")
            out.append({"client_id": cid, "auth": "psk", "credential": c.metadata.get("kmid", c.cred_id),
                        "origin": c.metadata.get("origin"), "expires_at": c.expires_at,
                        "registrations": regs.get(cid, [])})
            seen.add(cid)
        for r in self.store.list_records(NS.CERT_CLIENT):
            out.append({"client_id": r.rec_id, "auth": "cert",
                        "credential": f"{r.doc['flavour']}:{r.doc['identifier']}", "origin": "provisioned",
                        "expires_at": None, "registrations": regs.get(r.rec_id, [])})
            seen.add(r.rec_id)
        for cid, rl in regs.items():
            if cid not in seen:
                out.append({"client_id": cid, "auth": "?", "credential": "", "origin": None, "expires_at": None,
                            "registrations": rl})
        for row in out:
            row["live_keys"] = counts.get(row["client_id"], 0)  # counted against max_keys_per_client
        return out

    def list_keys(self) -> list[dict[str, Any]]:
        """Live Key Registrations (metadata only)."""
        return [{"relativeKeyID": r.rec_id, "expires_at": r.expires_at, **r.doc}
                for r in self.store.list_records(NS.KEY_REG)]

    # ------------------------------------------------------------------ MAF Handshake (8.8.2.2)

    @staticmethod
    def _kmid_key(kmid: str) -> str:
        # MAF_RELATIVE_KmID is not case sensitive (10.6); FQDNs are not either.
        return kmid.lower()

    def _decode_identity(self, identity: bytes) -> str | None:
        try:
            text = identity.decode("utf-8")
            parse_key_id(text)
        except (UnicodeDecodeError, ParseError):
            return None
        return text

    def _mef_keid(self, identity: bytes) -> str | None:
        """``identity`` as a KeID the MAF would ask its MEF about (not a KmID of this MAF), or None."""
        if self.mef is None:
            return None
        text = self._decode_identity(identity)
        if text is None:
            return None
        try:
            if parse_key_id(text).fqdn.lower() == self.fqdn:
                return None  # a KmID of this MAF: the store has it
            parse_key_id(text, hex_length=16)
        except ParseError:
            return None
        return text

    def _fetch_slots(self, recheck: bool = False) -> asyncio.Semaphore:
        """The running loop's bound on concurrent MEF requests: :data:`MEF_FETCH_CONCURRENCY` for
        handshakes, :data:`MEF_RECHECK_CONCURRENCY` (apart, so a long re-check pass never makes
        a KeID handshake wait) for :meth:`recheck_mef_credentials`."""
        key = (asyncio.get_running_loop(), recheck)
        with self._lock:
            sem = self._mef_fetch_slots.get(key)
            if sem is None:
                sem = self._mef_fetch_slots[key] = asyncio.Semaphore(
                    MEF_RECHECK_CONCURRENCY if recheck else MEF_FETCH_CONCURRENCY)
            return sem

    def psk_prefetch(self, identity: bytes) -> Awaitable[None] | None:
        """``TLSConfig.psk_prefetch`` of the MAF's listener: for a KeID, fetch Km from the MEF
        on the event loop before the PSK callback runs (see *MEF fetches* in :meth:`psk_lookup`);
        None for a KmID (the callback reads the store)."""
        text = self._mef_keid(identity)
        return None if text is None else self._prefetch_km(text)

    async def _prefetch_km(self, text: str) -> None:
        if await asyncio.to_thread(self._keid_gone, text):
            return  # refused in the PSK callback: no need to ask the MEF
        async with self._fetch_slots():
            fetched: Any = None
            try:
                fetch_async = getattr(self.mef, "fetch_km_async", None)
                if fetch_async is not None:
                    fetched = await fetch_async(text)
                else:
                    fetched = await asyncio.to_thread(self.mef.fetch_km, text)  # type: ignore[union-attr]
            except M2MSecError:  # UnknownKeyError or a MEF refusal: the handshake fails
                fetched = None
        now = time.monotonic()
        with self._lock:
            for k in [k for k, v in self._prefetched.items() if v[0] < now - PREFETCH_KEEP_S]:
                del self._prefetched[k]
            self._prefetched.pop(text, None)  # re-inserted last: the dict stays oldest first
            while len(self._prefetched) >= PREFETCH_MAX:  # a flood of made-up KeIDs: drop the oldest
                del self._prefetched[next(iter(self._prefetched))]
            self._prefetched[text] = (now, fetched)

    def psk_lookup(self, identity: bytes, _sni: str | None) -> bytes | None:
        """TLS-PSK server callback: Km for a KmID, or Km fetched from the MEF for a KeID.

        *MEF fetches.*  The callback runs inside the handshake on the listener's event loop,
        and a MEF round trip there would stop every other session of the MAF for as long as
        the MEF takes (up to its timeout when it is down).  So :class:`~m2msec.maf.server.MAFServer`
        installs :meth:`psk_prefetch`: the fetch runs on the loop (or in a worker thread for a
        synchronous :class:`~m2msec.maf.mef.MEFClient`) while the handshake's bytes are held,
        at most :data:`MEF_FETCH_CONCURRENCY` fetches at a time per loop (a flood of made-up
        KeIDs costs the MEF no more concurrent requests than that), and this callback only
        reads the result.  Without the prefetch (``prefetch_only`` False: an engine driven
        outside the asyncio listener) the callback fetches itself."""
        text = self._decode_identity(identity)
        if text is None:
            return None
        kid = parse_key_id(text)
        if kid.fqdn.lower() == self.fqdn:
            cred = self.store.find_credential(NS.KM, self._kmid_key(text))
            return cred.secret if cred is not None else None
        if self._mef_keid(identity) is None or self._keid_gone(text):
            return None
        with self._lock:
            prefetched = self._prefetched.get(text)
        if prefetched is not None and prefetched[0] >= time.monotonic() - PREFETCH_KEEP_S:
            fetched = prefetched[1]
        elif self.prefetch_only:
            return None  # the prefetch did not finish (or was not run): never block the loop
        else:
            try:
                fetched = self.mef.fetch_km(text)  # type: ignore[union-attr]
            except M2MSecError:  # UnknownKeyError or a MEF refusal: the handshake fails
                return None
        if fetched is None:
            return None
        km, lifetime = fetched[0], fetched[1]
        enrolee = fetched[2] if len(fetched) > 2 else None  # type: ignore[misc]
        now = self.now()
        if isinstance(lifetime, timedelta):
            expires: datetime | None = now + lifetime
        elif isinstance(lifetime, datetime):
            expires = ensure_utc(lifetime, what="Km lifetime")
        else:
            expires = None
        if expires is not None and expires <= now:
            return None
        with self._lock:
            # drop stale entries (handshakes that never completed)
            for k in [k for k, v in self._pending.items() if v[3] < now - timedelta(minutes=2)]:
                del self._pending[k]
            self._pending[text] = (bytes(km), expires, enrolee, now)  # type: ignore[arg-type]
        return bytes(km)

    def tls_verify_hook(self) -> _ClientCertVerifier:
        return _ClientCertVerifier(self)

    def bind(self, engine: TLSEngine) -> MAFPeer:
        """The authenticated identity of an established MAF Handshake (never from a header)."""
        ident = engine.psk_identity
        if ident:
            text = self._decode_identity(ident)
            if text is None:
                raise MAFError("PSK identity is not a KmID/KeID", rsc=RSC.ORIGINATOR_NOT_AUTHENTICATED)
            if parse_key_id(text).fqdn.lower() == self.fqdn:
                cred = self.store.find_credential(NS.KM, self._kmid_key(text))
                if cred is None:
                    raise MAFError("the KmID of this session is no longer provisioned",
                                   rsc=RSC.ORIGINATOR_NOT_AUTHENTICATED)
                cid = cred.metadata.get("client_id") or f"{CRED_TYPE_KM}-{text}"
                return MAFPeer("km", cid, f"{CRED_TYPE_KM}-{cred.metadata.get('kmid', text)}",
                               kmid=cred.metadata.get("kmid", text), km_expires_at=cred.expires_at, handshake=True)
            with self._lock:
                # not popped: concurrent handshakes with one KeID each bind (stale entries are
                # dropped by psk_lookup after 2 minutes); the entry must hold this session's key
                pending = self._pending.get(text)
            if pending is None or (engine.psk_digest is not None
                                   and hashlib.sha256(pending[0]).digest() != engine.psk_digest):
                raise MAFError("no Km was fetched for this KeID", rsc=RSC.ORIGINATOR_NOT_AUTHENTICATED)
            km, expires, enrolee, _ = pending
            return MAFPeer("keid", enrolee, f"10-{text}", keid=text, pending_km=km, km_expires_at=expires,
                           handshake=True, since=self.now())
        result = engine.peer_verification
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], VerifiedPeer):
            cid, vp = result
            cred_type = _CERT_CRED_TYPE.get(vp.flavour, 0)
            return MAFPeer("cert", cid, f"{cred_type}-{vp.identifier}", verified=vp, handshake=True)
        raise MAFError("the MAF Handshake did not authenticate the client", rsc=RSC.ORIGINATOR_NOT_AUTHENTICATED)

    def session_status(self, peer: MAFPeer) -> SessionStatus | None:
        """What the server asks before each request of a certificate session whether its client
        certificate has been revoked since the handshake (None: PSK session or no status source)."""
        return self.session_guard.session(peer.verified) if peer.verified is not None else None

    async def refuse_revoked_session(self, peer: MAFPeer, reason: str) -> MAFError:
        """The refusal (4106, audited) of a request on a session whose certificate is now revoked."""
        exc = MAFError(f"the client certificate of this session has been revoked: {reason}",
                       rsc=RSC.ORIGINATOR_NOT_AUTHENTICATED)
        log.info("MAF session of %s refused and closed: %s", peer.client_id, reason)
        try:
            await self.audit.append_async("maf", "session", peer.client_id or peer.credential_id,
                                          f"refused {int(exc.rsc)}", {"reason": exc.args[0]})
        except M2MSecError:  # pragma: no cover - the refusal is what matters
            log.exception("could not audit a refusal")
        return exc

    # ------------------------------------------------------------------ helpers

    def _check_maf(self, maf_fqdn: str) -> None:
        if maf_fqdn != self.fqdn:
            raise MAFError(f"mafFQDN {maf_fqdn!r} names another MAF (this is {self.fqdn!r})", rsc=RSC.BAD_REQUEST)

    def _admin(self, admin_fqdn: str) -> AdminConfig:
        admin = self.admins.get(admin_fqdn)
        if admin is None:
            raise MAFError(f"administrating stakeholder {admin_fqdn!r} has not authorised this MAF",
                           rsc=RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        return admin

    def _expiry(self, proposed: datetime, limit: timedelta) -> datetime:
        now = self.now()
        if proposed <= now:
            raise MAFError(f"expirationTime {_iso(proposed)} is not in the future", rsc=RSC.CONTENTS_UNACCEPTABLE)
        return min(proposed, now + limit)

    @staticmethod
    def _idx(admin: str, client_id: str) -> str:
        return f"{admin}|{client_id}"

    def _own_registration(self, tx: Transaction, peer: MAFPeer, reg_id: str) -> Any:
        rec = tx.find_record(NS.REG, reg_id)
        if rec is None:
            raise MAFError(f"no live MAF Client Registration {reg_id}", rsc=RSC.NOT_FOUND)
        if peer.client_id is None or rec.doc["clientID"] != peer.client_id:
            raise MAFError(f"MAF Client Registration {reg_id} belongs to another MAF Client",
                           rsc=RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        return rec

    def _require_registered(self, tx: Transaction, peer: MAFPeer, admin: str) -> None:
        if peer.client_id is None or tx.find_record(NS.REG_IDX, self._idx(admin, peer.client_id)) is None:
            raise MAFError(f"the MAF Client is not registered with this MAF for {admin!r} (8.8.2.3)",
                           rsc=RSC.SERVICE_SUBSCRIPTION_NOT_ESTABLISHED)

    def _own_key(self, tx: Transaction, peer: MAFPeer, rel: str) -> Any:
        rec = tx.find_record(NS.KEY_REG, rel)
        if rec is None:
            raise MAFError(f"no live Key Registration {rel}", rsc=RSC.NOT_FOUND)
        if peer.client_id is None or rec.doc["sourceMAFClientID"] != peer.client_id:
            raise MAFError(f"Key Registration {rel} belongs to another Source MAF Client",
                           rsc=RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        return rec

    def _assign_kmid(self, tx: Transaction, peer: MAFPeer, client_id: str) -> str:
        assert peer.pending_km is not None
        for _ in range(4):
            kmid = make_key_id(secrets.token_hex(16), self.fqdn)
            try:
                tx.put_credential(NS.KM, self._kmid_key(kmid), peer.pending_km,
                                  metadata={"client_id": client_id, "origin": "mef", "kmid": kmid,
                                            "keid": peer.keid or ""},
                                  expires_at=peer.km_expires_at, if_absent=True)
                return kmid
            except DuplicateError:
                continue
        raise MAFError("could not assign a fresh KmID", rsc=RSC.INTERNAL_SERVER_ERROR)

    def run(self, procedure: Procedure, peer: MAFPeer, request: Any,
            exporter: Callable[[], tuple[bytes, bytes]]) -> Any:
        """Run one procedure for ``peer``; ``exporter()`` gives (Kc, KcID) of the session (10.3.1)."""
        if procedure is Procedure.KEY_RETRIEVAL:
            return self._run_key_retrieval(peer, request)
        handler = getattr(self, "_" + procedure.name.lower())
        try:
            with self.store.transaction() as tx:
                self._require_credential(tx, peer)
                response, subject, details = handler(tx, peer, request, exporter)
                tx.append_audit("maf", procedure.name.lower(), subject, "ok", details)
                if procedure not in _CACHE_NEUTRAL:  # other instances drop their retrieval caches
                    tx.notify(CACHE_CHANNEL, self._change_payload(procedure.name.lower(), subject, details))
            return response
        except MAFError as exc:
            self._audit_refusal(procedure, peer, exc)
            raise
        except (DuplicateError, VersionConflict, TransactionConflict) as exc:
            err = MAFError(f"concurrent change: {exc.args[0]}", rsc=RSC.CONFLICT)
            self._audit_refusal(procedure, peer, err)
            raise err from None
        except M2MSecError as exc:
            self._audit_refusal(procedure, peer, exc)
            raise
        finally:
            if procedure not in _CACHE_NEUTRAL:
                self._cache.clear()
            if procedure in _FREES_SLOTS:
                self._total_full_clear()

    async def run_async(self, procedure: Procedure, peer: MAFPeer, request: Any,
                        exporter: Callable[[], tuple[bytes, bytes]]) -> Any:
        """:meth:`run` for an event loop: store work in a worker thread; a Key Retrieval answered
        from the cache runs inline, and its audit commit is awaited without holding a thread."""
        if procedure is not Procedure.KEY_RETRIEVAL:
            return await asyncio.to_thread(self.run, procedure, peer, request, exporter)
        try:
            found = self._key_retrieval_cached(peer, request)
            if found is None:
                if self._inline_reads:
                    found = self._key_retrieval_read(peer, request)
                else:
                    found = await asyncio.to_thread(self._key_retrieval_read, peer, request)
        except M2MSecError as exc:
            # a refusal (only then: no extra read on the hot path) of a session whose credential
            # was removed meanwhile ends that session
            why = (self._credential_gone(self.store, peer) if self._inline_reads
                   else await asyncio.to_thread(self._credential_gone, self.store, peer))
            err = exc if why is None else SessionEnded(why)
            try:
                await self.audit.append_async(*self._refusal_record(procedure, peer, err))
            except M2MSecError:  # pragma: no cover - the refusal is what matters
                log.exception("could not audit a refusal")
            if err is exc:
                raise
            raise err from None
        response, subject, details = found
        await self.audit.append_async("maf", "key_retrieval", subject, "ok", details)
        return response

    def _run_key_retrieval(self, peer: MAFPeer, request: KeyRetrievalRequest) -> Any:
        try:
            found = self._key_retrieval_cached(peer, request) or self._key_retrieval_read(peer, request)
        except M2MSecError as exc:
            why = self._credential_gone(self.store, peer)
            err = exc if why is None else SessionEnded(why)
            self._audit_refusal(Procedure.KEY_RETRIEVAL, peer, err)
            if err is exc:
                raise
            raise err from None
        response, subject, details = found
        self.audit.append("maf", "key_retrieval", subject, "ok", details)  # before the key leaves
        return response

    @staticmethod
    def _refusal_record(procedure: Procedure, peer: MAFPeer,
                        exc: M2MSecError) -> tuple[str, str, str, str, dict[str, Any]]:
        return ("maf", procedure.name.lower(), peer.client_id or peer.credential_id,
                f"refused {int(exc.rsc)}", {"reason": exc.args[0] if exc.args else ""})

    def _audit_refusal(self, procedure: Procedure, peer: MAFPeer, exc: M2MSecError) -> None:
        try:
            self.audit.append(*self._refusal_record(procedure, peer, exc))
        except M2MSecError:  # pragma: no cover - the refusal is what matters
            log.exception("could not audit a refusal")

    # ------------------------------------------------------------------ 8.8.2.3 - 8.8.2.6

    def _client_registration(self, tx: Transaction, peer: MAFPeer, req: ClientRegistrationRequest,
                             _exp: Any) -> tuple[Any, str, dict[str, Any]]:
        self._check_maf(req.maf_fqdn)
        self._admin(req.admin_fqdn)
        expires = self._expiry(req.expiration_time, self.max_registration_lifetime)
        assigned: str | None = None
        client_id = peer.client_id
        if peer.kind == "keid":
            if client_id is None:
                # no Enrolee identity from the MEF: the client is known by its new KmID's Credential-ID
                kmid = make_key_id(secrets.token_hex(16), self.fqdn)
                client_id = f"{CRED_TYPE_KM}-{kmid}"
                tx.put_credential(NS.KM, self._kmid_key(kmid), peer.pending_km or b"",
                                  metadata={"client_id": client_id, "origin": "mef", "kmid": kmid,
                                            "keid": peer.keid or ""},
                                  expires_at=peer.km_expires_at, if_absent=True)
                assigned = kmid
            else:
                assigned = self._assign_kmid(tx, peer, client_id)
        assert client_id is not None
        reg_id = secrets.token_hex(16)
        try:
            tx.put_record(NS.REG_IDX, self._idx(req.admin_fqdn, client_id), {"mafClientRegID": reg_id},
                          expires_at=expires, if_absent=True)
        except DuplicateError:
            raise MAFError(f"MAF Client {client_id!r} is already registered for {req.admin_fqdn!r}",
                           rsc=RSC.ORIGINATOR_HAS_ALREADY_REGISTERED) from None
        doc = {"clientID": client_id, "adminFQDN": req.admin_fqdn, "labels": list(req.labels or []),
               "expirationTime": _iso(expires), "credentialID": peer.credential_id, "kmID": assigned or peer.kmid}
        tx.put_record(NS.REG, reg_id, doc, expires_at=expires, if_absent=True)
        rsp = ClientRegistrationResponse(maf_client_reg_id=reg_id, expiration_time=expires, maf_client_id=client_id,
                                         admin_fqdn=req.admin_fqdn, labels=req.labels, assigned_symm_key_id=assigned)
        return rsp, client_id, {"mafClientRegID": reg_id, "adminFQDN": req.admin_fqdn,
                                "assignedSymmKeyID": assigned, "credentialID": peer.credential_id}

    def _configuration_retrieval(self, tx: Transaction, peer: MAFPeer, req: ConfigurationRetrievalRequest,
                                 _exp: Any) -> tuple[Any, str, dict[str, Any]]:
        self._check_maf(req.maf_fqdn)
        rec = self._own_registration(tx, peer, req.maf_client_reg_id)
        admin = self.admins.get(rec.doc["adminFQDN"])
        if admin is None or admin.client_config is None:
            raise MAFError("no MAF Client Configuration is associated with this registration", rsc=RSC.NOT_FOUND)
        cfg = {"fqdn": self.fqdn, "adminFQDN": admin.fqdn, **dict(admin.client_config)}
        return (ConfigurationRetrievalResponse(maf_client_cfg=cfg), rec.doc["clientID"],
                {"mafClientRegID": req.maf_client_reg_id})

    def _registration_update(self, tx: Transaction, peer: MAFPeer, req: RegistrationUpdateRequest,
                             _exp: Any) -> tuple[Any, str, dict[str, Any]]:
        self._check_maf(req.maf_fqdn)
        rec = self._own_registration(tx, peer, req.maf_client_reg_id)
        doc = dict(rec.doc)
        expires = rec.expires_at
        if req.expiration_time is not None:
            expires = self._expiry(req.expiration_time, self.max_registration_lifetime)
            doc["expirationTime"] = _iso(expires)
        if req.labels is not None:
            doc["labels"] = list(req.labels)
        assigned: str | None = None
        if peer.kind == "keid":
            # a fresh remotely provisioned Km: assign a new KmID, retire the old one (8.8.2.5)
            assigned = self._assign_kmid(tx, peer, doc["clientID"])
            old = doc.get("kmID")
            if old:
                tx.delete_credential(NS.KM, self._kmid_key(old))
            doc["kmID"] = assigned
            doc["credentialID"] = peer.credential_id
        tx.update_record(NS.REG, rec.rec_id, doc, expected_version=rec.version, expires_at=expires)
        idx = tx.find_record(NS.REG_IDX, self._idx(doc["adminFQDN"], doc["clientID"]))
        if idx is not None:
            tx.update_record(NS.REG_IDX, idx.rec_id, idx.doc, expected_version=idx.version, expires_at=expires)
        rsp = RegistrationUpdateResponse(expiration_time=expires if req.expiration_time is not None else None,
                                         labels=req.labels, assigned_symm_key_id=assigned)
        return rsp, doc["clientID"], {"mafClientRegID": rec.rec_id, "assignedSymmKeyID": assigned}

    def _deregistration(self, tx: Transaction, peer: MAFPeer, req: DeregistrationRequest,
                        _exp: Any) -> tuple[Any, str, dict[str, Any]]:
        self._check_maf(req.maf_fqdn)
        rec = self._own_registration(tx, peer, req.maf_client_reg_id)
        tx.delete_record(NS.REG, rec.rec_id, expected_version=rec.version)
        tx.delete_record(NS.REG_IDX, self._idx(rec.doc["adminFQDN"], rec.doc["clientID"]))
        return DeregistrationResponse(), rec.doc["clientID"], {"mafClientRegID": rec.rec_id}

    # ------------------------------------------------------------------ per-client quota (8.8.2.7)

    def _quota_ready(self, tx: Transaction) -> None:
        """Make sure every Key Registration of the store is in a ``maf.quota`` record.

        The first call on a store inserts the ``maf.quotameta`` marker (``if_absent``: on
        PostgreSQL a concurrent inserter waits for this transaction and then finds it) and
        builds the records of the keys registered before quotas existed (one scan, once per
        store); later calls find the marker, and once seen it is not looked up again."""
        self._total_ready(tx)
        if self._quota_tracked:
            return
        if tx.find_record(NS.QUOTA_META, _QUOTA_TRACKED) is not None:
            self._quota_tracked = True  # committed: it stays
            return
        try:
            tx.put_record(NS.QUOTA_META, _QUOTA_TRACKED, {"since": _iso(self.now())}, if_absent=True)
        except DuplicateError:
            self._quota_tracked = True  # another instance built the records and committed
            return
        # built in this transaction: the flag is set by a later call that finds the marker
        # committed (a refusal rolls the marker and the records back)
        per_client: dict[str, _Slots] = {}
        for rec in tx.list_records(NS.KEY_REG):
            if rec.expires_at is not None:
                per_client.setdefault(rec.doc["sourceMAFClientID"], _Slots("")).put(rec.rec_id,
                                                                                   _epoch_us(rec.expires_at))
        for client_id, slots in per_client.items():
            tx.put_record(NS.QUOTA, client_id, slots.doc())

    def _quota_change(self, tx: Transaction, client_id: str, rel: str, expires: datetime | None,
                      *, take: bool) -> None:
        """Set (``expires``) or drop (None) ``rel`` in ``client_id``'s quota record with a
        compare-and-set, dropping expired entries; ``take``: a new registration, refused with
        :class:`KeyQuotaExceeded` when the client already holds ``max_keys_per_client`` live ones."""
        self._quota_ready(tx)
        for _ in range(_QUOTA_ATTEMPTS):
            now_us = _epoch_us(self.now())
            rec = tx.find_record(NS.QUOTA, client_id)
            if rec is None and not take:
                return
            slots = _Slots.of(rec.doc if rec is not None else None)
            old = slots.text
            slots.drop_expired(now_us)
            slots.remove(rel)
            if take and len(slots) >= self.max_keys_per_client:
                raise KeyQuotaExceeded(
                    f"the Source MAF Client holds {len(slots)} live Key Registrations, the most this MAF allows "
                    f"(max_keys_per_client = {self.max_keys_per_client}); de-register a key first")
            if expires is not None:
                slots.put(rel, _epoch_us(expires))
            if rec is not None and slots.text == old:
                return  # nothing counted changed: nothing to write
            try:
                if rec is None:
                    tx.put_record(NS.QUOTA, client_id, slots.doc(), if_absent=True)
                else:
                    tx.update_record(NS.QUOTA, client_id, slots.doc(), expected_version=rec.version)
                return
            except (DuplicateError, VersionConflict):
                continue  # PostgreSQL: another transaction committed the record meanwhile; re-read it
        raise MAFError(f"the quota record of {client_id!r} kept changing", rsc=RSC.CONFLICT)

    # ------------------------------------------------------------------ MAF-wide quota (8.8.2.7)

    def _total_ready(self, tx: Transaction) -> None:
        """Make sure every Key Registration of the store is counted in a ``maf.quotatotal``
        shard: the first call on a store inserts the ``tracked-total`` marker and counts the
        live keys registered before the MAF-wide quota existed (filling the shards searched
        up to their capacity, any excess spread over them: they are full until it is gone);
        as :meth:`_quota_ready` otherwise."""
        if self._total_tracked:
            return
        if tx.find_record(NS.QUOTA_META, _TOTAL_TRACKED) is not None:
            self._total_tracked = True
            return
        try:
            tx.put_record(NS.QUOTA_META, _TOTAL_TRACKED, {"since": _iso(self.now())}, if_absent=True)
        except DuplicateError:
            self._total_tracked = True
            return
        shards: dict[int, _Expiries] = {}
        used = min(TOTAL_SHARDS, self.max_keys_total)
        live = sorted(_epoch_us(r.expires_at) for r in tx.list_records(NS.KEY_REG) if r.expires_at is not None)
        pos = 0
        for i in range(used):
            take = live[pos:pos + self._shard_capacity(i)]
            pos += len(take)
            if take:
                shards[i] = _Expiries("".join(_Expiries._entry(t) for t in take))
        for k, exp_us in enumerate(live[pos:]):  # more live keys than the limit
            shards.setdefault(k % used, _Expiries("")).put(exp_us)
        for old in tx.list_records(NS.QUOTA_TOTAL):  # left over from an earlier count: replaced
            if int(old.rec_id) not in shards:
                tx.delete_record(NS.QUOTA_TOTAL, old.rec_id)
        for i, ex in shards.items():
            tx.put_record(NS.QUOTA_TOTAL, str(i), ex.doc())

    def _shard_capacity(self, i: int) -> int:
        """Slots of shard ``i``: ``max_keys_total`` split over the shards (they add up to it exactly)."""
        q, r = divmod(self.max_keys_total, TOTAL_SHARDS)
        return q + (1 if i < r else 0)

    def _total_write(self, tx: Transaction, rec: Any, i: int, ex: _Expiries) -> bool:
        """Compare-and-set of shard ``i``; False if another transaction committed it meanwhile."""
        try:
            if rec is None:
                tx.put_record(NS.QUOTA_TOTAL, str(i), ex.doc(), if_absent=True)
            else:
                tx.update_record(NS.QUOTA_TOTAL, str(i), ex.doc(), expected_version=rec.version)
            return True
        except (DuplicateError, VersionConflict):
            return False

    def _total_try(self, tx: Transaction, i: int, exp_us: int) -> bool:
        """Take a slot of shard ``i`` (compare-and-set, re-read on a conflict); False if it is full."""
        cap = self._shard_capacity(i)
        for _ in range(_QUOTA_ATTEMPTS):
            rec = tx.find_record(NS.QUOTA_TOTAL, str(i))
            ex = _Expiries.of(rec.doc if rec is not None else None)
            ex.drop_expired(_epoch_us(self.now()))
            if len(ex) >= cap:
                return False
            ex.put(exp_us)
            if self._total_write(tx, rec, i, ex):
                return True
        raise MAFError(f"the MAF-wide quota record {i} kept changing", rsc=RSC.CONFLICT)

    def _total_take(self, tx: Transaction, rel: str, expires: datetime) -> int:
        """Count a new Key Registration in a shard with a free slot and return the shard;
        :class:`KeyTotalExceeded` when every shard is full (the MAF holds ``max_keys_total``).

        The shard chosen by the RelativeKeyID (random) first, so concurrent registrations write
        different rows; if it is full, every shard is read in one statement and the first ones
        with room after it are tried in turn (a full shard is only read)."""
        if self._total_full_holds():
            self.total_full_hits += 1
            raise KeyTotalExceeded(
                f"this MAF holds {self.max_keys_total} live Key Registrations, the most it allows "
                f"(max_keys_total = {self.max_keys_total}; every shard was full at most "
                f"{self.total_full_hold.total_seconds():g} s ago); try again when keys have expired or been "
                "de-registered")
        gen = self._full_gen  # before the reads: a removal committed after them voids the note
        used = min(TOTAL_SHARDS, self.max_keys_total)  # shards with at least one slot
        start = int(rel[:8], 16) % used
        exp_us = _epoch_us(expires)
        if self._total_try(tx, start, exp_us):
            return start
        current = {r.rec_id: r for r in tx.list_records(NS.QUOTA_TOTAL)}
        now_us = _epoch_us(self.now())
        live = self._shard_capacity(start)
        earliest: int | None = None  # the first expiry of any shard: no room appears before it
        for k in range(used):
            i = (start + k) % used
            cap = self._shard_capacity(i)
            rec = current.get(str(i))
            ex = _Expiries.of(rec.doc if rec is not None else None)
            ex.drop_expired(now_us)
            if len(ex):
                first = int(ex.text[:_EXP_HEX], 16)
                earliest = first if earliest is None else min(earliest, first)
            if k == 0:
                continue  # the shard tried first (full when _total_try read it)
            if len(ex) < cap and self._total_try(tx, i, exp_us):
                return i
            live += max(len(ex), cap)
        self._total_full_note(gen, earliest)
        raise KeyTotalExceeded(
            f"this MAF holds {live} live Key Registrations, the most it allows (max_keys_total = "
            f"{self.max_keys_total}); try again when keys have expired or been de-registered")

    def _total_full_holds(self) -> bool:
        """The note says every shard is full: taken within ``total_full_hold`` (monotonic) and
        before the earliest expiry any shard held (the injected clock)."""
        note = self._total_full
        if note is None:
            return False
        until_mono, until_us = note
        return time.monotonic() < until_mono and _epoch_us(self.now()) < until_us

    def _total_full_note(self, gen: int, earliest_us: int | None) -> None:
        """Remember that a read of every shard found no room, unless a removal in this instance
        committed since ``gen`` was read (it may have freed a slot the read did not see)."""
        if earliest_us is None or self.total_full_hold <= timedelta(0):
            return
        with self._full_lock:
            if self._full_gen == gen:
                self._total_full = (time.monotonic() + self.total_full_hold.total_seconds(), earliest_us)

    def _total_full_clear(self) -> None:
        """A Key De-Registration, revoke or Key Registration Update finished (after its commit):
        a slot may be free, the next Key Registration reads the shards again."""
        with self._full_lock:
            self._full_gen += 1
            self._total_full = None

    def _total_move(self, tx: Transaction, rec: Any, new_expires: datetime | None) -> None:
        """The Key Registration ``rec`` (its ``maf.keyreg`` record) stops counting (``new_expires``
        None: de-registered) or counts until ``new_expires`` (8.8.2.9), in the shard it was
        counted in.  An entry that already expired (and was dropped) is not put back."""
        if rec.expires_at is None:
            return
        shard = rec.doc.get("quotaShard")
        # a key counted by the one-time build has no quotaShard: the shard holding its expiry
        candidates = [shard] if isinstance(shard, int) and 0 <= shard < TOTAL_SHARDS else range(TOTAL_SHARDS)
        for i in candidates:
            for _ in range(_QUOTA_ATTEMPTS):
                found = tx.find_record(NS.QUOTA_TOTAL, str(i))
                if found is None:
                    break
                ex = _Expiries.of(found.doc)
                ex.drop_expired(_epoch_us(self.now()))
                if not ex.remove(_epoch_us(rec.expires_at)):
                    break  # not counted here (any more)
                if new_expires is not None:
                    ex.put(_epoch_us(new_expires))
                if self._total_write(tx, found, i, ex):
                    return
            else:
                raise MAFError(f"the MAF-wide quota record {i} kept changing", rsc=RSC.CONFLICT)

    def key_total(self) -> int:
        """Live Key Registrations counted against ``max_keys_total`` (admin/observability)."""
        now_us = _epoch_us(self.now())
        n = 0
        for rec in self.store.list_records(NS.QUOTA_TOTAL):
            ex = _Expiries.of(rec.doc)
            ex.drop_expired(now_us)
            n += len(ex)
        return n

    def key_count(self, client_id: str) -> int:
        """Live Key Registrations counted against ``client_id``'s quota (admin/observability)."""
        rec = self.store.find_record(NS.QUOTA, client_id)
        slots = _Slots.of(rec.doc if rec is not None else None)
        slots.drop_expired(_epoch_us(self.now()))
        return len(slots)

    # ------------------------------------------------------------------ 8.8.2.7 - 8.8.2.10

    def _key_registration(self, tx: Transaction, peer: MAFPeer, req: KeyRegistrationRequest,
                          exporter: Callable[[], tuple[bytes, bytes]]) -> tuple[Any, str, dict[str, Any]]:
        self._check_maf(req.maf_fqdn)
        self._admin(req.admin_fqdn)
        self._require_registered(tx, peer, req.admin_fqdn)
        assert peer.client_id is not None
        check_suid_targets(req.suid, req.target_ids, required=True)
        assert req.target_ids is not None
        expires = self._expiry(req.expiration_time, self.max_key_lifetime)
        if req.key_value is not None:
            key, rel, origin = req.key_value, secrets.token_bytes(16).hex(), "client"
        else:
            kc, kcid = exporter()  # 10.3.1, EXPORTER-oneM2M-Connection
            key, rel, origin = kc, kcid.hex(), "exporter"
        check_relative_key_id(rel)
        try:
            tx.put_record(NS.KEY_ID, rel, {"sourceMAFClientID": peer.client_id}, if_absent=True)
        except DuplicateError:
            raise MAFError(f"RelativeKeyID {rel} has been used before (one exporter key per MAF Handshake)",
                           rsc=RSC.CONFLICT) from None
        self._quota_change(tx, peer.client_id, rel, expires, take=True)
        shard = self._total_take(tx, rel, expires)  # after the client's own quota: its refusal comes first
        key_id = maf_key_id(bytes.fromhex(rel), self.fqdn)
        doc = {"keyID": key_id, "sourceMAFClientID": peer.client_id, "adminFQDN": req.admin_fqdn,
               "suid": int(req.suid), "targetIDs": list(req.target_ids), "labels": list(req.labels or []),
               "origin": origin, "expirationTime": _iso(expires), "quotaShard": shard}
        tx.put_record(NS.KEY_REG, rel, doc, expires_at=expires, if_absent=True)
        tx.put_credential(NS.KEY, rel, key, metadata={"suid": int(req.suid)}, expires_at=expires, if_absent=True)
        rsp = KeyRegistrationResponse(relative_key_id=rel, expiration_time=expires,
                                      source_maf_client_id=peer.client_id, admin_fqdn=req.admin_fqdn,
                                      suid=req.suid, target_ids=req.target_ids, labels=req.labels)
        return rsp, peer.client_id, {"relativeKeyID": rel, "suid": int(req.suid),
                                     "targetIDs": list(req.target_ids), "origin": origin}

    def _key_retrieval_read(self, peer: MAFPeer,
                            req: KeyRetrievalRequest) -> tuple[KeyRetrievalResponse, str, dict[str, Any]]:
        """The read part of 8.8.2.8 from the store; fills the retrieval cache.

        The Key Registration and its key value come from one statement (one snapshot); the
        Target's MAF Client registration (8.8.2.3) from the cache when it was read within the
        TTL, else from the store."""
        rel = req.relative_key_id
        cache = self._cache
        gen = cache.gen
        # SQLite: the change sequence before the reads (a change committed after this read
        # makes the entries stale, and the next hit sees a larger number)
        seq = self.store.notify_seq(CACHE_CHANNEL) if self.cache_invalidation == "seq" else 0
        found = self.store.find_record_with_credential(NS.KEY_REG, NS.KEY, rel)
        if found is None:
            raise MAFError(f"no live Key Registration {rel}", rsc=RSC.NOT_FOUND)
        loaded = time.monotonic()
        rec, cred = found
        doc = rec.doc
        if peer.client_id is None or peer.client_id not in doc["targetIDs"]:
            raise MAFError(f"the MAF Client is not an authorised Target of key {rel}",
                           rsc=RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        reg_key = (doc["adminFQDN"], peer.client_id)
        reg_entry = cache.regs.get(reg_key)
        if (reg_entry is None or not cache.valid or reg_entry[2] != seq or loaded - reg_entry[0] >= cache.ttl
                or (reg_entry[1] is not None and reg_entry[1] <= self.now())):
            reg_loaded = time.monotonic()
            reg = self.store.find_record(NS.REG_IDX, self._idx(*reg_key))
            if reg is None:
                raise MAFError(f"the MAF Client is not registered with this MAF for {doc['adminFQDN']!r} (8.8.2.3)",
                               rsc=RSC.SERVICE_SUBSCRIPTION_NOT_ESTABLISHED)
            reg_entry = (reg_loaded, reg.expires_at, seq)
        assert rec.expires_at is not None
        cache.put(gen, rel, doc, rec.expires_at, cred.secret, loaded, seq, reg_key, reg_entry)
        return self._key_retrieval_answer(peer.client_id, rel, doc, rec.expires_at, cred.secret)

    def _key_retrieval_cached(self, peer: MAFPeer,
                              req: KeyRetrievalRequest) -> tuple[KeyRetrievalResponse, str, dict[str, Any]] | None:
        """The read part from the cache, or None (absent, older than the TTL, expired, refused,
        changed since it was read, or the change listener is not connected)."""
        cache = self._cache
        if not cache.valid:
            if self._listener is None:
                self.start_cache_listener()
            return None
        hit = cache.keys.get(req.relative_key_id)
        if hit is None or peer.client_id is None:
            return None
        mono = time.monotonic()
        loaded, doc, expires, secret, seq = hit
        if mono - loaded >= cache.ttl or peer.client_id not in doc["targetIDs"]:
            return None  # stale, or a refusal: the store path decides (and refusals are not cached)
        reg = cache.regs.get((doc["adminFQDN"], peer.client_id))
        if reg is None or mono - reg[0] >= cache.ttl:
            return None
        now = self.now()
        if expires <= now or (reg[1] is not None and reg[1] <= now):
            return None
        if self.cache_invalidation == "seq" and not (seq == reg[2] == self.store.notify_seq(CACHE_CHANNEL)):
            return None  # another instance committed a change since this was read
        return self._key_retrieval_answer(peer.client_id, req.relative_key_id, doc, expires, secret)

    @staticmethod
    def _key_retrieval_answer(client_id: str, rel: str, doc: dict[str, Any], expires: datetime,
                              secret: bytes) -> tuple[KeyRetrievalResponse, str, dict[str, Any]]:
        rsp = KeyRetrievalResponse(expiration_time=expires, source_maf_client_id=doc["sourceMAFClientID"],
                                   admin_fqdn=doc["adminFQDN"], suid=SUID(doc["suid"]), key_value=secret,
                                   labels=tuple(doc["labels"]) or None)
        return rsp, client_id, {"relativeKeyID": rel, "suid": doc["suid"]}

    def _key_registration_update(self, tx: Transaction, peer: MAFPeer, req: KeyRegistrationUpdateRequest,
                                 _exp: Any) -> tuple[Any, str, dict[str, Any]]:
        self._check_maf(req.maf_fqdn)
        rec = self._own_key(tx, peer, req.relative_key_id)
        doc = dict(rec.doc)
        expires = rec.expires_at
        if req.target_ids is not None:
            check_suid_targets(SUID(doc["suid"]), req.target_ids, required=True)
            doc["targetIDs"] = list(req.target_ids)
        if req.labels is not None:
            doc["labels"] = list(req.labels)
        if req.expiration_time is not None:
            expires = self._expiry(req.expiration_time, self.max_key_lifetime)
            doc["expirationTime"] = _iso(expires)
        # the Key Registration first (compare-and-set: its row lock, then the rows it counts in),
        # the lock order of every procedure on a key (see *Lock order*)
        tx.update_record(NS.KEY_REG, rec.rec_id, doc, expected_version=rec.version, expires_at=expires)
        if req.expiration_time is not None:
            cred = tx.get_credential(NS.KEY, rec.rec_id)
            tx.put_credential(NS.KEY, rec.rec_id, cred.secret, metadata=cred.metadata, expires_at=expires)
            self._quota_change(tx, doc["sourceMAFClientID"], rec.rec_id, expires, take=False)
            self._total_move(tx, rec, expires)
        rsp = KeyRegistrationUpdateResponse(
            expiration_time=expires if req.expiration_time is not None else None,
            labels=req.labels, target_ids=req.target_ids)
        return rsp, doc["sourceMAFClientID"], {"relativeKeyID": rec.rec_id, "targetIDs": doc["targetIDs"]}

    def _key_deregistration(self, tx: Transaction, peer: MAFPeer, req: KeyDeregistrationRequest,
                            _exp: Any) -> tuple[Any, str, dict[str, Any]]:
        self._check_maf(req.maf_fqdn)
        rec = self._own_key(tx, peer, req.relative_key_id)
        if not tx.delete_record(NS.KEY_REG, rec.rec_id, expected_version=rec.version):
            # removed by a concurrent transaction after it was read (PostgreSQL): its slots are free
            raise MAFError(f"no live Key Registration {rec.rec_id}", rsc=RSC.NOT_FOUND)
        tx.delete_credential(NS.KEY, rec.rec_id)
        self._quota_change(tx, rec.doc["sourceMAFClientID"], rec.rec_id, None, take=False)  # the slot is free
        self._total_move(tx, rec, None)
        return KeyDeregistrationResponse(), rec.doc["sourceMAFClientID"], {"relativeKeyID": rec.rec_id}

    # ------------------------------------------------------------------ misc

    def _relative_from(self, value: str) -> str:
        if "@" in value:
            kid = parse_key_id(value, hex_length=16)
            if kid.fqdn.lower() != self.fqdn:
                raise IdentifierError(f"key identifier {value!r} belongs to another MAF")
            return kid.relative.lower()
        return check_relative_key_id(value.lower())



