"""The durable store: credentials (encrypted at rest), versioned JSON records, audit trail.

This is the persistence adapter behind the sans-I/O frameworks: the MEF key
store (TS-0003 clauses 8.3.4, 8.3.5, 10.3.4 - enrolment keys, single-use
Enrolment-Tokens), the MAF key store (clauses 8.8.2, 8.8.3, 10.3.5 - client
registrations, key registrations with expiry) and the ESPrim receiver state
(clause 8.4.2 - rand objects with esprimRandExpiry, session keys while valid).
Several service instances may share one PostgreSQL database (DESIGN.md section 3),
so every operation is a single atomic statement or runs inside one database
transaction; nothing relies on in-process locks.

Semantics shared by every collection:

* an item whose ``expires_at`` is at or before ``clock()`` is invisible: ``get`` /
  ``take`` / ``update`` treat it as absent and ``put(if_absent=True)`` may replace it;
* ``put(if_absent=True)`` and ``take`` are atomic across processes (``INSERT … ON
  CONFLICT … WHERE`` and ``DELETE … RETURNING``), so "identifier never reused" and
  "single use" need no extra locking;
* record versions only grow (a replaced record continues its version sequence), so a
  compare-and-set never succeeds against a record that was deleted and re-created.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from m2msec.onem2m.rsc import ResponseStatusCode
from m2msec.store._backends import SCHEMA_COMPONENT, SCHEMA_VERSION, Backend, backend_from_url
from m2msec.store.errors import (
    DuplicateError,
    InvalidValue,
    KekMismatch,
    NotFound,
    StoreError,
    VersionConflict,
)
from m2msec.store.kek import KeyEncryptionKey, blob_kek_id, open_secret, seal_secret
from m2msec.store.notify import Listener, PgListener, check_channel, check_payload

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from m2msec.store.audit_seal import AuditSealResult, AuditVerification

__all__ = [
    "AuditDraft",
    "AuditEntry",
    "Clock",
    "Credential",
    "Record",
    "Store",
    "Transaction",
    "UNCHANGED",
    "audit_draft",
    "open_store",
]

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


#: Sentinel for ``update_record(expires_at=UNCHANGED)``.
UNCHANGED: Final = _Unchanged()


@dataclass(frozen=True, repr=False)
class Credential:
    """A stored secret and its (non-secret) metadata.  ``repr`` never shows the secret."""

    namespace: str
    cred_id: str
    secret: bytes = field(compare=False)
    metadata: dict[str, Any]
    created_at: datetime
    expires_at: datetime | None

    def __repr__(self) -> str:
        return (
            f"Credential(namespace={self.namespace!r}, cred_id={self.cred_id!r}, "
            f"secret=<{len(self.secret)} bytes hidden>, metadata={self.metadata!r}, "
            f"created_at={self.created_at.isoformat()}, "
            f"expires_at={self.expires_at.isoformat() if self.expires_at else None})"
        )

    __str__ = __repr__


@dataclass(frozen=True)
class Record:
    """A JSON document with a version for compare-and-set."""

    namespace: str
    rec_id: str
    doc: Any
    version: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    ts: datetime
    actor: str
    action: str
    subject: str
    outcome: str
    details: dict[str, Any]


# ---------------------------------------------------------------------------------------
# value checks


def _check_id(kind: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidValue(f"{kind} must be a non-empty string", rsc=ResponseStatusCode.BAD_REQUEST)
    if "\x00" in value:
        raise InvalidValue(f"{kind} must not contain NUL", rsc=ResponseStatusCode.BAD_REQUEST)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValue(f"{kind} is not valid Unicode", rsc=ResponseStatusCode.BAD_REQUEST) from None
    return value


def _check_ts(name: str, dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    if not isinstance(dt, datetime) or dt.tzinfo is None or dt.utcoffset() is None:
        raise InvalidValue(f"{name} must be an aware datetime")
    return dt.astimezone(UTC)


def _no_bytes(value: Any, where: str) -> None:
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidValue(f"{where} holds a bytes value; audit records never carry secrets or raw bytes")
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidValue(f"{where} has a non-string key")
            _no_bytes(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _no_bytes(v, f"{where}[{i}]")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise InvalidValue(f"{where} holds a {type(value).__name__}; only JSON values are allowed")


def _json_text(value: Any, what: str) -> str:
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidValue(f"{what} is not JSON-serialisable: {type(exc).__name__}") from None
    if "\\u0000" in text:
        raise InvalidValue(f"{what} contains a NUL character")
    return text


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _matches(doc: Any, where: Mapping[str, Any] | None) -> bool:
    if not where:
        return True
    if not isinstance(doc, Mapping):
        return False
    return all(k in doc and _canon(doc[k]) == _canon(v) for k, v in where.items())


@dataclass(frozen=True)
class AuditDraft:
    """A checked audit record not yet written (see :func:`audit_draft`)."""

    actor: str
    action: str
    subject: str
    outcome: str
    details: dict[str, Any]
    text: str


def audit_draft(
    actor: str, action: str, subject: str, outcome: str, details: Mapping[str, Any] | None = None
) -> AuditDraft:
    """Check an audit record (strings without NUL, JSON details without bytes) before it is queued/written."""
    for name, v in (("actor", actor), ("action", action), ("subject", subject), ("outcome", outcome)):
        if not isinstance(v, str):
            raise InvalidValue(f"audit {name} must be a string")
        if "\x00" in v:
            raise InvalidValue(f"audit {name} must not contain NUL")
    d = dict(details or {})
    _no_bytes(d, "audit details")
    return AuditDraft(actor, action, subject, outcome, d, _json_text(d, "audit details"))


_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_CRED_COLS = "namespace, cred_id, secret, metadata, created_at, expires_at"
_REC_COLS = "namespace, rec_id, doc, version, created_at, updated_at, expires_at"
_REC_CRED_COLS = ", ".join([*(f"r.{c}" for c in _REC_COLS.split(", ")), *(f"c.{c}" for c in _CRED_COLS.split(", "))])


class _Operations(ABC):
    """Every store operation; runs on ``self._conn(write)``: its own transaction or a shared one."""

    _store: Store

    @abstractmethod
    def _conn(self, write: bool) -> AbstractContextManager[Any]:
        """A connection inside a transaction: the caller's own, or one opened for this call."""

    def _read1(self) -> AbstractContextManager[Any]:
        """A connection for a read that is one statement (atomic by itself)."""
        return self._conn(write=False)

    # helpers -----------------------------------------------------------------------------
    def _x(self, conn: Any, sql: str, *params: Any) -> Any:
        return self._store._backend.execute(conn, sql, params)

    def _now(self) -> datetime:
        now = self._store._clock()
        if not isinstance(now, datetime) or now.tzinfo is None:
            raise StoreError("store clock must return an aware datetime")
        return now.astimezone(UTC)

    def _cred(self, row: Any) -> Credential:
        b = self._store._backend
        ns, cid = row[0], row[1]
        secret = open_secret(self._store._require_kek(), ns, cid, b.blob_out(row[2]))
        return Credential(ns, cid, secret, b.json_out(row[3]), b.ts_out(row[4]), b.ts_out(row[5]))  # type: ignore[arg-type]

    def _rec(self, row: Any) -> Record:
        b = self._store._backend
        return Record(
            row[0], row[1], b.json_out(row[2]), int(row[3]),
            b.ts_out(row[4]), b.ts_out(row[5]), b.ts_out(row[6]),  # type: ignore[arg-type]
        )

    # credentials -------------------------------------------------------------------------
    def put_credential(
        self,
        namespace: str,
        cred_id: str,
        secret: bytes,
        *,
        metadata: Mapping[str, Any] | None = None,
        expires_at: datetime | None = None,
        if_absent: bool = False,
    ) -> Credential:
        """Store ``secret`` (encrypted) under (namespace, cred_id).

        ``if_absent=True``: raise :class:`DuplicateError` if a live credential exists
        (atomic across processes); otherwise an existing one is replaced.
        """
        _check_id("namespace", namespace)
        _check_id("cred_id", cred_id)
        if not isinstance(secret, (bytes, bytearray, memoryview)):
            raise InvalidValue("a credential secret must be bytes")
        md = dict(metadata or {})
        md_text = _json_text(md, "credential metadata")
        expires_at = _check_ts("expires_at", expires_at)
        kek = self._store._require_kek()
        blob = seal_secret(kek, namespace, cred_id, bytes(secret))
        now = self._now()
        b = self._store._backend
        sql = (
            "INSERT INTO m2msec_credentials (namespace, cred_id, secret, kek_id, metadata, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (namespace, cred_id) DO UPDATE SET "
            "secret = excluded.secret, kek_id = excluded.kek_id, metadata = excluded.metadata, "
            "created_at = excluded.created_at, expires_at = excluded.expires_at"
        )
        params: list[Any] = [namespace, cred_id, blob, kek.kek_id.hex(), b.json_in(md_text, md), b.ts_in(now), b.ts_in(expires_at)]
        if if_absent:
            sql += " WHERE m2msec_credentials.expires_at IS NOT NULL AND m2msec_credentials.expires_at <= ?"
            params.append(b.ts_in(now))
        sql += " RETURNING cred_id"
        with self._conn(write=True) as conn:
            rows = self._x(conn, sql, *params).fetchall()
        if not rows:
            raise DuplicateError(f"credential {namespace}/{cred_id} already exists")
        return Credential(namespace, cred_id, bytes(secret), md, now, expires_at)

    def get_credential(self, namespace: str, cred_id: str) -> Credential:
        """The live credential or :class:`NotFound`."""
        b = self._store._backend
        with self._read1() as conn:
            row = self._x(
                conn,
                f"SELECT {_CRED_COLS} FROM m2msec_credentials WHERE namespace = ? AND cred_id = ? AND {_LIVE}",
                namespace, cred_id, b.ts_in(self._now()),
            ).fetchone()
            if row is None:
                raise NotFound(f"no credential {namespace}/{cred_id}")
            return self._cred(row)

    def find_credential(self, namespace: str, cred_id: str) -> Credential | None:
        try:
            return self.get_credential(namespace, cred_id)
        except NotFound:
            return None

    def take_credential(self, namespace: str, cred_id: str) -> Credential:
        """Atomically return and delete a live credential (single use); :class:`NotFound` if none."""
        b = self._store._backend
        with self._conn(write=True) as conn:
            rows = self._x(
                conn,
                f"DELETE FROM m2msec_credentials WHERE namespace = ? AND cred_id = ? AND {_LIVE} "
                f"RETURNING {_CRED_COLS}",
                namespace, cred_id, b.ts_in(self._now()),
            ).fetchall()
            if not rows:
                raise NotFound(f"no credential {namespace}/{cred_id}")
            return self._cred(rows[0])  # a decryption failure rolls the delete back

    def delete_credential(self, namespace: str, cred_id: str) -> bool:
        """Delete; True if a live credential was deleted (an expired one is removed silently)."""
        now = self._now()
        b = self._store._backend
        with self._conn(write=True) as conn:
            rows = self._x(
                conn,
                "DELETE FROM m2msec_credentials WHERE namespace = ? AND cred_id = ? RETURNING expires_at",
                namespace, cred_id,
            ).fetchall()
        return any(b.ts_out(r[0]) is None or b.ts_out(r[0]) > now for r in rows)  # type: ignore[operator]

    def list_credentials(
        self, namespace: str, *, where: Mapping[str, Any] | None = None, limit: int | None = None
    ) -> list[Credential]:
        """Live credentials of a namespace ordered by id; ``where`` = top-level metadata equality."""
        b = self._store._backend
        out: list[Credential] = []
        with self._read1() as conn:
            rows = self._x(
                conn,
                f"SELECT {_CRED_COLS} FROM m2msec_credentials WHERE namespace = ? AND {_LIVE} ORDER BY cred_id",
                namespace, b.ts_in(self._now()),
            ).fetchall()
            for row in rows:
                if _matches(b.json_out(row[3]), where):
                    out.append(self._cred(row))
                    if limit is not None and len(out) >= limit:
                        break
        return out

    # records -----------------------------------------------------------------------------
    def put_record(
        self,
        namespace: str,
        rec_id: str,
        doc: Any,
        *,
        expires_at: datetime | None = None,
        if_absent: bool = False,
    ) -> Record:
        """Insert (version 1) or replace (version + 1) a JSON document.

        ``if_absent=True``: :class:`DuplicateError` if a live record exists (atomic).
        """
        _check_id("namespace", namespace)
        _check_id("rec_id", rec_id)
        text = _json_text(doc, "record document")
        expires_at = _check_ts("expires_at", expires_at)
        now = self._now()
        b = self._store._backend
        nowp = b.ts_in(now)
        expired_old = "(m2msec_records.expires_at IS NOT NULL AND m2msec_records.expires_at <= ?)"
        sql = (
            "INSERT INTO m2msec_records (namespace, rec_id, doc, version, created_at, updated_at, expires_at) "
            "VALUES (?, ?, ?, 1, ?, ?, ?) ON CONFLICT (namespace, rec_id) DO UPDATE SET "
            "doc = excluded.doc, version = m2msec_records.version + 1, "
            f"created_at = CASE WHEN {expired_old} THEN excluded.created_at ELSE m2msec_records.created_at END, "
            "updated_at = excluded.updated_at, expires_at = excluded.expires_at"
        )
        params: list[Any] = [namespace, rec_id, b.json_in(text, doc), nowp, nowp, b.ts_in(expires_at), nowp]
        if if_absent:
            sql += f" WHERE {expired_old}"
            params.append(nowp)
        sql += " RETURNING version, created_at"
        with self._conn(write=True) as conn:
            rows = self._x(conn, sql, *params).fetchall()
        if not rows:
            raise DuplicateError(f"record {namespace}/{rec_id} already exists")
        version, created = rows[0]
        return Record(namespace, rec_id, json.loads(text), int(version), b.ts_out(created), now, expires_at)  # type: ignore[arg-type]

    def get_record(self, namespace: str, rec_id: str) -> Record:
        b = self._store._backend
        with self._read1() as conn:
            row = self._x(
                conn,
                f"SELECT {_REC_COLS} FROM m2msec_records WHERE namespace = ? AND rec_id = ? AND {_LIVE}",
                namespace, rec_id, b.ts_in(self._now()),
            ).fetchone()
        if row is None:
            raise NotFound(f"no record {namespace}/{rec_id}")
        return self._rec(row)

    def find_record(self, namespace: str, rec_id: str) -> Record | None:
        try:
            return self.get_record(namespace, rec_id)
        except NotFound:
            return None

    def find_record_with_credential(
        self, rec_namespace: str, cred_namespace: str, item_id: str
    ) -> tuple[Record, Credential] | None:
        """The live record ``(rec_namespace, item_id)`` and the live credential
        ``(cred_namespace, item_id)`` it describes, read by one statement (one consistent
        snapshot on both backends); None if either is missing or expired."""
        b = self._store._backend
        nowp = b.ts_in(self._now())
        with self._read1() as conn:
            row = self._x(
                conn,
                f"SELECT {_REC_CRED_COLS} FROM m2msec_records r JOIN m2msec_credentials c "
                "ON c.namespace = ? AND c.cred_id = r.rec_id "
                "WHERE r.namespace = ? AND r.rec_id = ? "
                "AND (r.expires_at IS NULL OR r.expires_at > ?) AND (c.expires_at IS NULL OR c.expires_at > ?)",
                cred_namespace, rec_namespace, item_id, nowp, nowp,
            ).fetchone()
        if row is None:
            return None
        return self._rec(row[:7]), self._cred(row[7:])

    def update_record(
        self,
        namespace: str,
        rec_id: str,
        doc: Any,
        *,
        expected_version: int,
        expires_at: datetime | None | _Unchanged = UNCHANGED,
    ) -> Record:
        """Compare-and-set: replace ``doc`` only if the live record has ``expected_version``.

        :class:`VersionConflict` if it has another version, :class:`NotFound` if absent.
        """
        text = _json_text(doc, "record document")
        now = self._now()
        b = self._store._backend
        nowp = b.ts_in(now)
        sets = "doc = ?, version = version + 1, updated_at = ?"
        params: list[Any] = [b.json_in(text, doc), nowp]
        if not isinstance(expires_at, _Unchanged):
            sets += ", expires_at = ?"
            params.append(b.ts_in(_check_ts("expires_at", expires_at)))
        params += [namespace, rec_id, int(expected_version), nowp]
        with self._conn(write=True) as conn:
            rows = self._x(
                conn,
                f"UPDATE m2msec_records SET {sets} WHERE namespace = ? AND rec_id = ? AND version = ? "
                f"AND {_LIVE} RETURNING {_REC_COLS}",
                *params,
            ).fetchall()
            if rows:
                return self._rec(rows[0])
            cur = self._x(
                conn,
                f"SELECT version FROM m2msec_records WHERE namespace = ? AND rec_id = ? AND {_LIVE}",
                namespace, rec_id, nowp,
            ).fetchone()
        if cur is None:
            raise NotFound(f"no record {namespace}/{rec_id}")
        raise VersionConflict(
            f"record {namespace}/{rec_id} is at version {int(cur[0])}, expected {int(expected_version)}"
        )

    def take_record(self, namespace: str, rec_id: str) -> Record:
        """Atomically return and delete a live record (single-use tokens); :class:`NotFound` if none."""
        b = self._store._backend
        with self._conn(write=True) as conn:
            rows = self._x(
                conn,
                f"DELETE FROM m2msec_records WHERE namespace = ? AND rec_id = ? AND {_LIVE} RETURNING {_REC_COLS}",
                namespace, rec_id, b.ts_in(self._now()),
            ).fetchall()
        if not rows:
            raise NotFound(f"no record {namespace}/{rec_id}")
        return self._rec(rows[0])

    def delete_record(self, namespace: str, rec_id: str, *, expected_version: int | None = None) -> bool:
        """Delete; True if a live record was deleted.  With ``expected_version``: compare-and-delete."""
        now = self._now()
        b = self._store._backend
        nowp = b.ts_in(now)
        with self._conn(write=True) as conn:
            if expected_version is None:
                rows = self._x(
                    conn,
                    "DELETE FROM m2msec_records WHERE namespace = ? AND rec_id = ? RETURNING expires_at",
                    namespace, rec_id,
                ).fetchall()
                return any(b.ts_out(r[0]) is None or b.ts_out(r[0]) > now for r in rows)  # type: ignore[operator]
            rows = self._x(
                conn,
                f"DELETE FROM m2msec_records WHERE namespace = ? AND rec_id = ? AND version = ? AND {_LIVE} "
                "RETURNING version",
                namespace, rec_id, int(expected_version), nowp,
            ).fetchall()
            if rows:
                return True
            cur = self._x(
                conn,
                f"SELECT version FROM m2msec_records WHERE namespace = ? AND rec_id = ? AND {_LIVE}",
                namespace, rec_id, nowp,
            ).fetchone()
        if cur is None:
            return False
        raise VersionConflict(
            f"record {namespace}/{rec_id} is at version {int(cur[0])}, expected {int(expected_version)}"
        )

    def list_records(
        self, namespace: str, *, where: Mapping[str, Any] | None = None, limit: int | None = None
    ) -> list[Record]:
        """Live records of a namespace ordered by id; ``where`` = top-level field equality."""
        b = self._store._backend
        out: list[Record] = []
        with self._read1() as conn:
            rows = self._x(
                conn,
                f"SELECT {_REC_COLS} FROM m2msec_records WHERE namespace = ? AND {_LIVE} ORDER BY rec_id",
                namespace, b.ts_in(self._now()),
            ).fetchall()
        for row in rows:
            rec = self._rec(row)
            if _matches(rec.doc, where):
                out.append(rec)
                if limit is not None and len(out) >= limit:
                    break
        return out

    # housekeeping ------------------------------------------------------------------------
    def purge_expired(self) -> int:
        """Delete every expired credential and record; returns how many rows went."""
        nowp = self._store._backend.ts_in(self._now())
        with self._conn(write=True) as conn:
            n = 0
            for table in ("m2msec_credentials", "m2msec_records"):
                rows = self._x(
                    conn, f"DELETE FROM {table} WHERE expires_at IS NOT NULL AND expires_at <= ? RETURNING 1", nowp
                ).fetchall()
                n += len(rows)
        return n

    # notifications (m2msec.store.notify) ---------------------------------------------------
    def notify(self, channel: str, payload: str = "") -> None:
        """Notify other instances of a change, as part of this transaction (effective on commit).

        PostgreSQL: ``pg_notify(channel, payload)``, delivered on commit to every
        :meth:`Store.listen` session on ``channel``.  SQLite: bumps the channel's sequence
        number (:meth:`Store.notify_seq`); the payload is not kept."""
        check_channel(channel)
        check_payload(payload)
        b = self._store._backend
        nowp = b.ts_in(self._now())
        with self._conn(write=True) as conn:
            b.notify(conn, channel, payload, nowp)

    # audit -------------------------------------------------------------------------------
    def append_audit(
        self,
        actor: str,
        action: str,
        subject: str,
        outcome: str,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append an audit record.  ``details`` must be JSON without any bytes value."""
        return self._append_draft(audit_draft(actor, action, subject, outcome, details), self._now())

    def _append_draft(self, draft: AuditDraft, ts: datetime) -> AuditEntry:
        return self._append_drafts([(draft, ts)])[0]

    #: rows per INSERT statement of :meth:`_append_drafts` (6 parameters each, far below
    #: SQLite's and PostgreSQL's limits on bound parameters)
    _AUDIT_ROWS_PER_STATEMENT = 256

    def _append_drafts(self, items: Sequence[tuple[AuditDraft, datetime]]) -> list[AuditEntry]:
        """Insert checked records in order, as few multi-row INSERTs as possible.

        ``seq`` values are assigned in VALUES order within one statement (SQLite: the rows are
        inserted in order under the write lock; PostgreSQL: the identity sequence is drawn row by
        row), so the returned values, sorted, belong to the items in order."""
        b = self._store._backend
        out: list[AuditEntry] = []
        step = self._AUDIT_ROWS_PER_STATEMENT
        with self._conn(write=True) as conn:
            for i in range(0, len(items), step):
                chunk = items[i : i + step]
                params: list[Any] = []
                for draft, ts in chunk:
                    params += (b.ts_in(ts), draft.actor, draft.action, draft.subject, draft.outcome,
                               b.json_in(draft.text, draft.details))
                rows = self._x(
                    conn,
                    "INSERT INTO m2msec_audit (ts, actor, action, subject, outcome, details) VALUES "
                    + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk)) + " RETURNING seq",
                    *params,
                ).fetchall()
                if len(rows) != len(chunk):  # pragma: no cover - a driver contract violation
                    raise StoreError(f"audit insert returned {len(rows)} rows for {len(chunk)} records")
                for (draft, ts), seq in zip(chunk, sorted(int(r[0]) for r in rows)):
                    out.append(AuditEntry(seq, ts, draft.actor, draft.action, draft.subject, draft.outcome,
                                          json.loads(draft.text)))
        return out

    def list_audit(
        self,
        *,
        limit: int | None = 100,
        after_seq: int | None = None,
        actor: str | None = None,
        subject: str | None = None,
        newest_first: bool = True,
    ) -> list[AuditEntry]:
        b = self._store._backend
        conds, params = [], []
        for col, val in (("actor", actor), ("subject", subject)):
            if val is not None:
                conds.append(f"{col} = ?")
                params.append(val)
        if after_seq is not None:
            conds.append("seq > ?")
            params.append(int(after_seq))
        sql = "SELECT seq, ts, actor, action, subject, outcome, details FROM m2msec_audit"
        if conds:
            sql += " WHERE " + " AND ".join(conds)
        sql += " ORDER BY seq " + ("DESC" if newest_first else "ASC")
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._read1() as conn:
            rows = self._x(conn, sql, *params).fetchall()
        return [
            AuditEntry(int(r[0]), b.ts_out(r[1]), r[2], r[3], r[4], r[5], b.json_out(r[6]))  # type: ignore[arg-type]
            for r in rows
        ]


class _Pool:
    """A small thread-safe pool of idle connections (one in use per operation/transaction)."""

    def __init__(self, backend: Backend, max_idle: int) -> None:
        self._backend = backend
        self._max_idle = max_idle
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.closed = False

    def acquire(self) -> Any:
        if self.closed:
            raise StoreError("store is closed")
        with self._lock:
            if self._pid != os.getpid():  # forked: never touch the parent's connections
                self._idle = []
                self._pid = os.getpid()
            if self._idle:
                return self._idle.pop()
        return self._backend.connect()

    def release(self, conn: Any, healthy: bool) -> None:
        if healthy and not self.closed and self._pid == os.getpid() and self._backend.reusable(conn):
            with self._lock:
                if len(self._idle) < self._max_idle:
                    self._idle.append(conn)
                    return
        self._backend.close(conn)

    def close(self) -> None:
        self.closed = True
        with self._lock:
            idle, self._idle = self._idle, []
        if self._pid == os.getpid():
            for c in idle:
                self._backend.close(c)


class Transaction(_Operations):
    """Operations inside one database transaction (from :meth:`Store.transaction`)."""

    def __init__(self, store: Store, conn: Any, *, read_only: bool = False) -> None:
        self._store = store
        self._connection = conn
        self._open = True
        self._read_only = read_only

    @contextmanager
    def _conn(self, write: bool) -> Iterator[Any]:
        if not self._open:
            raise StoreError("transaction is finished")
        if write and self._read_only:
            raise StoreError("this is a read-only snapshot (Store.snapshot): use Store.transaction to write")
        yield self._connection

    def __repr__(self) -> str:
        return f"Transaction(store={self._store!r}, open={self._open})"


class Store(_Operations):
    """Durable state shared by service instances.  Thread-safe; see :func:`open_store`."""

    def __init__(
        self,
        backend: Backend,
        kek: KeyEncryptionKey | None,
        *,
        clock: Clock | None = None,
        max_idle_connections: int = 8,
    ) -> None:
        if kek is not None and not isinstance(kek, KeyEncryptionKey):
            raise StoreError("kek must be a KeyEncryptionKey")
        self._store = self
        self._backend = backend
        self._kek = kek
        self._clock: Clock = clock or utc_now
        self._pool = _Pool(backend, max_idle_connections)
        self._local = threading.local()
        self._listeners: list[Listener] = []
        self._listeners_lock = threading.Lock()
        #: a durable=False transaction committed since the last sync_committed (close syncs it)
        self._unsynced = False

    # -- plumbing ----------------------------------------------------------------------
    @property
    def backend_name(self) -> str:
        return self._backend.name

    @property
    def kek_id(self) -> bytes | None:
        return None if self._kek is None else self._kek.kek_id

    def _require_kek(self) -> KeyEncryptionKey:
        if self._kek is None:
            raise StoreError("this store was opened without a key-encryption key; credentials are unavailable")
        return self._kek

    @contextmanager
    def _conn(self, write: bool, durable: bool = True) -> Iterator[Any]:
        if getattr(self._local, "tx", None) is not None:
            raise StoreError(
                "this thread has an open transaction on this store: call the operation on the transaction object"
            )
        b = self._backend
        conn = self._pool.acquire()
        healthy = False
        try:
            if durable:
                b.begin(conn, write)
            else:  # a failure here drops the connection (healthy stays False), whatever it was set to
                b.begin_deferred_sync(conn)
            try:
                yield conn
            except BaseException:
                try:
                    b.rollback(conn)
                    healthy = True
                except StoreError:
                    pass  # connection unusable: dropped by release()
                raise
            b.commit(conn)
            healthy = True
        finally:
            if not durable and healthy:
                self._unsynced = True
                try:
                    b.end_deferred_sync(conn)
                except StoreError:
                    healthy = False  # never hand out a connection that commits without syncing
            self._pool.release(conn, healthy)

    @contextmanager
    def _read1(self) -> Iterator[Any]:
        """One-statement reads on a backend in autocommit mode (SQLite) skip BEGIN/COMMIT: the
        statement is its own read transaction, as consistent as inside one."""
        b = self._backend
        if not b.autocommit_reads:
            with self._conn(write=False) as conn:
                yield conn
            return
        if getattr(self._local, "tx", None) is not None:
            raise StoreError(
                "this thread has an open transaction on this store: call the operation on the transaction object"
            )
        conn = self._pool.acquire()
        healthy = True
        try:
            yield conn
        except StoreError:
            healthy = False  # a driver error: do not reuse the connection
            raise
        finally:
            self._pool.release(conn, healthy)

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[Transaction]:
        """Group operations atomically: commit at the end of the block, roll back on exception.

        ``durable=False`` (deferred sync): the commit returns once the transaction is committed
        to the database (SQLite: its WAL frames written to the OS, so it survives a crash of this
        process; PostgreSQL: ``synchronous_commit = off``, in the server's WAL buffers) without
        waiting for the disk; it is on disk after the next :meth:`sync_committed` (or the
        server's WAL writer, or any later durable commit).  Only a crash of the operating
        system or a power failure before then can lose it.  For records whose loss in that
        window is acceptable (the MAF's retrieval audit records, see
        :class:`~m2msec.store.AuditBatcher` ``sync_interval``), never for state."""
        with self._conn(write=True, durable=durable) as conn:
            tx = Transaction(self, conn)
            self._local.tx = tx
            try:
                yield tx
            finally:
                tx._open = False
                self._local.tx = None

    def sync_committed(self) -> None:
        """Put every transaction committed so far (``durable=False`` ones included) on disk:
        SQLite fsyncs the WAL file; PostgreSQL commits a transaction that waits for the WAL flush."""
        if getattr(self._local, "tx", None) is not None:
            raise StoreError("this thread has an open transaction on this store")
        self._unsynced = False
        b = self._backend
        conn = self._pool.acquire()
        healthy = False
        try:
            b.sync_committed(conn)
            healthy = True
        finally:
            if not healthy:
                self._unsynced = True
            self._pool.release(conn, healthy)

    @contextmanager
    def snapshot(self) -> Iterator[Transaction]:
        """Read-only group of reads on one connection and one (non-locking) database transaction.

        SQLite: a deferred ``BEGIN`` - every read sees one consistent snapshot and takes no
        write lock, so it never waits for (or blocks) a writer.  PostgreSQL: one transaction at
        the default isolation level (each statement sees what was committed before it).
        Any write through the returned object raises :class:`StoreError`.
        """
        with self._conn(write=False) as conn:
            tx = Transaction(self, conn, read_only=True)
            self._local.tx = tx
            try:
                yield tx
            finally:
                tx._open = False
                self._local.tx = None

    def init_schema(self) -> None:
        """Create the schema if missing (idempotent, safe against concurrent openers)."""
        b = self._backend
        with self._conn(write=True) as conn:
            b.schema_lock(conn)
            b.execute(
                conn,
                "CREATE TABLE IF NOT EXISTS m2msec_schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)",
            )
            row = b.execute(
                conn, "SELECT version FROM m2msec_schema_version WHERE component = ?", (SCHEMA_COMPONENT,)
            ).fetchone()
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"database schema version {int(row[0])} is newer than this m2msec supports ({SCHEMA_VERSION})"
                )
            if row is None or int(row[0]) < SCHEMA_VERSION:
                for stmt in b.ddl():
                    b.execute(conn, stmt)
                b.execute(
                    conn,
                    "INSERT INTO m2msec_schema_version (component, version) VALUES (?, ?) "
                    "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                    (SCHEMA_COMPONENT, SCHEMA_VERSION),
                )
                return
            missing = b.audit_guard_missing(conn)
            if missing:  # someone with write access to the database removed, disabled or replaced it
                log.warning("the append-only guard of the audit trail was missing or disabled (%s): "
                            "re-created; rows may have been changed while it was off (m2msec store audit "
                            "verify checks sealed rows)", ", ".join(missing))
                for stmt in b.audit_guard_ddl():
                    b.execute(conn, stmt)

    def schema_version(self) -> int:
        """Schema version in the database, 0 if the store schema is absent."""
        with self._conn(write=False) as conn:
            if not self._backend.table_exists(conn, "m2msec_schema_version"):
                return 0
            row = self._backend.execute(
                conn, "SELECT version FROM m2msec_schema_version WHERE component = ?", (SCHEMA_COMPONENT,)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def rekey(self, old_kek: KeyEncryptionKey, new_kek: KeyEncryptionKey) -> int:
        """Re-encrypt every credential from ``old_kek`` to ``new_kek`` in one transaction.

        Rows already under ``new_kek`` are left alone (a rekey can be re-run); a row under
        any other KEK aborts the whole rekey.  Returns the number of rows re-encrypted.
        Afterwards this store object uses ``new_kek``.
        """
        if old_kek == new_kek:
            raise StoreError("old and new key-encryption keys are the same")
        b = self._backend
        count = 0
        with self.transaction() as tx:
            conn = tx._connection
            b.lock_credentials(conn)
            rows = b.execute(conn, "SELECT namespace, cred_id, secret FROM m2msec_credentials ORDER BY namespace, cred_id").fetchall()
            for ns, cid, blob in rows:
                blob = b.blob_out(blob)
                kid = blob_kek_id(blob)
                if kid == new_kek.kek_id:
                    open_secret(new_kek, ns, cid, blob)  # must authenticate under the new KEK
                    continue
                if kid != old_kek.kek_id:
                    raise KekMismatch(
                        f"credential {ns}/{cid} is sealed under KEK id {kid.hex()}, "
                        f"neither the old ({old_kek.kek_id.hex()}) nor the new KEK"
                    )
                secret = open_secret(old_kek, ns, cid, blob)
                b.execute(
                    conn,
                    "UPDATE m2msec_credentials SET secret = ?, kek_id = ? WHERE namespace = ? AND cred_id = ?",
                    (seal_secret(new_kek, ns, cid, secret), new_kek.kek_id.hex(), ns, cid),
                )
                count += 1
        self._kek = new_kek
        return count

    # -- audit seal (m2msec.store.audit_seal) ------------------------------------------------
    def seal_audit(self, kek: KeyEncryptionKey | None = None, *, max_rows: int | None = None,
                   batch_rows: int = 10000, writer_timeout: float = 30.0) -> AuditSealResult:
        """Extend the audit trail's HMAC chain over the rows committed since the last seal and
        write a MACed checkpoint per batch (:func:`m2msec.store.audit_seal.seal`).  ``kek``
        defaults to this store's KEK.  Safe with concurrent sealers; appends never wait for it."""
        from m2msec.store.audit_seal import seal

        return seal(self, kek if kek is not None else self._require_kek(), max_rows=max_rows,
                    batch_rows=batch_rows, writer_timeout=writer_timeout)

    def reseal_audit(self, old_kek: KeyEncryptionKey, new_kek: KeyEncryptionKey | None = None) -> AuditSealResult:
        """After a KEK rotation: verify the trail under ``old_kek``, then rebuild its seal under
        ``new_kek`` (default: this store's KEK) in one transaction
        (:func:`m2msec.store.audit_seal.reseal`)."""
        from m2msec.store.audit_seal import reseal

        return reseal(self, old_kek, new_kek if new_kek is not None else self._require_kek())

    def verify_audit(self, kek: KeyEncryptionKey | None = None, *, anchor: str | None = None,
                     max_findings: int = 1000) -> AuditVerification:
        """Recompute the chain over the sealed rows and report every modified, deleted or inserted
        row, forged or missing checkpoint and rollback (:func:`m2msec.store.audit_seal.verify`)."""
        from m2msec.store.audit_seal import verify

        return verify(self, kek if kek is not None else self._require_kek(), anchor=anchor,
                      max_findings=max_findings)

    # -- notifications (m2msec.store.notify) -----------------------------------------------
    @property
    def can_listen(self) -> bool:
        """True if :meth:`listen` works (PostgreSQL); else use :meth:`notify_seq` (SQLite)."""
        return self._backend.can_listen

    def listen(self, channel: str, callback: Callable[[str], None],
               on_state: Callable[[bool], None] | None = None, *, min_backoff: float = 0.05,
               max_backoff: float = 5.0) -> Listener:
        """Receive the notifications committed on ``channel`` by any instance (PostgreSQL).

        A daemon thread holds its own ``LISTEN`` connection; ``callback(payload)`` runs on that
        thread per notification, ``on_state(True)`` once listening and ``on_state(False)`` when
        the connection is lost (notifications may then be missed; it reconnects with backoff).
        The handle's ``close()`` stops it; :meth:`close` of the store stops every listener.
        :class:`StoreError` on SQLite (no notification channel: see :meth:`notify_seq`)."""
        check_channel(channel)
        if self._pool.closed:
            raise StoreError("store is closed")
        if not self._backend.can_listen:
            raise StoreError(f"{self._backend.name}: no notification channel (use notify_seq)")
        listener = PgListener(self._backend.connect_listener, channel, callback, on_state,
                              min_backoff=min_backoff, max_backoff=max_backoff)
        with self._listeners_lock:
            self._listeners = [li for li in self._listeners if not li.closed]
            self._listeners.append(listener)
        return listener

    def notify_seq(self, channel: str) -> int:
        """SQLite: the number of committed :meth:`notify` calls on ``channel`` (one primary-key
        SELECT); a value that did not change means no notification was committed since.
        :class:`StoreError` on PostgreSQL (notifications are delivered, not counted)."""
        b = self._backend
        if b.can_listen:
            raise StoreError(f"{b.name}: notifications are delivered to listeners, not counted")
        if getattr(self._local, "tx", None) is not None:
            raise StoreError(
                "this thread has an open transaction on this store: call the operation on the transaction object"
            )
        # the body of _read1 without the generator context manager: this read runs on every
        # SQLite retrieval-cache hit (one autocommit SELECT is its own read transaction)
        conn = self._pool.acquire()
        healthy = False
        try:
            seq = b.notify_seq(conn, channel)
            healthy = True
            return seq
        finally:
            self._pool.release(conn, healthy)

    @property
    def closed(self) -> bool:
        return self._pool.closed

    def close(self) -> None:
        """Stop the listeners, sync any ``durable=False`` commit not yet on disk, close the connections."""
        with self._listeners_lock:
            listeners, self._listeners = self._listeners, []
        for li in listeners:
            li.close()
        if self._unsynced and not self._pool.closed:
            try:
                self.sync_committed()
            except StoreError as exc:
                log.error("store closed with commits not yet on disk: %s", exc)
        self._pool.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        kid = self._kek.kek_id.hex() if self._kek else None
        return f"Store(backend={self._backend.name}, kek_id={kid})"


def open_store(
    url: str,
    kek: KeyEncryptionKey | None = None,
    *,
    clock: Clock | None = None,
    create_schema: bool = True,
    max_idle_connections: int = 8,
) -> Store:
    """Open ``sqlite:///path.db`` (default, embedded) or ``postgresql://…`` and create the schema.

    ``kek`` may be None for a store used only for records/audit (credential calls then fail).
    """
    store = Store(backend_from_url(url), kek, clock=clock, max_idle_connections=max_idle_connections)
    try:
        if create_schema:
            store.init_schema()
        elif store.schema_version() == 0:
            raise StoreError("store schema is missing (run `m2msec store init`)")
    except BaseException:
        store.close()
        raise
    return store
