"""Database adapters for :mod:`m2msec.store`: SQLite (stdlib) and PostgreSQL (psycopg 3).

Both hold the same logical schema (schema version 1).  This module is the only
place that knows SQL dialect details: parameter style, column types, how a
timestamp/JSON/BLOB value travels, how a transaction begins, and how driver
errors become :class:`~m2msec.store.errors.StoreError`.  The store itself is the
persistence adapter required by the scale-out rule (DESIGN.md section 3) for the
state of TS-0003 clauses 8.3 (MEF), 8.4 (ESPrim) and 8.8 (MAF).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import json
import logging
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from m2msec.store.errors import StoreError, TransactionConflict

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SCHEMA_COMPONENT = "store"
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

# Tables common to both dialects; {placeholders} are filled per dialect.
_DDL = [
    """CREATE TABLE IF NOT EXISTS m2msec_credentials (
        namespace  TEXT NOT NULL,
        cred_id    TEXT NOT NULL,
        secret     {blob} NOT NULL,
        kek_id     TEXT NOT NULL,
        metadata   {json} NOT NULL,
        created_at {ts} NOT NULL,
        expires_at {ts},
        PRIMARY KEY (namespace, cred_id))""",
    "CREATE INDEX IF NOT EXISTS m2msec_credentials_expiry ON m2msec_credentials (expires_at)",
    "CREATE INDEX IF NOT EXISTS m2msec_credentials_kek ON m2msec_credentials (kek_id)",
    """CREATE TABLE IF NOT EXISTS m2msec_records (
        namespace  TEXT NOT NULL,
        rec_id     TEXT NOT NULL,
        doc        {json} NOT NULL,
        version    BIGINT NOT NULL,
        created_at {ts} NOT NULL,
        updated_at {ts} NOT NULL,
        expires_at {ts},
        PRIMARY KEY (namespace, rec_id))""",
    "CREATE INDEX IF NOT EXISTS m2msec_records_expiry ON m2msec_records (expires_at)",
    """CREATE TABLE IF NOT EXISTS m2msec_audit (
        seq     {serial},
        ts      {ts} NOT NULL,
        actor   TEXT NOT NULL,
        action  TEXT NOT NULL,
        subject TEXT NOT NULL,
        outcome TEXT NOT NULL,
        details {json} NOT NULL)""",
]

# Audit seal tables (m2msec.store.audit_seal): created by the first seal, never by the services.
_SEAL_DDL = [
    """CREATE TABLE IF NOT EXISTS m2msec_audit_seal (
        seal_no   {pk},
        last_seq  BIGINT NOT NULL,
        row_count BIGINT NOT NULL,
        chain     {blob} NOT NULL,
        sealed_at {ts} NOT NULL,
        kek_id    TEXT NOT NULL,
        mac       {blob} NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS m2msec_audit_mac (
        seq   {pk},
        tag   {blob} NOT NULL,
        chain {blob} NOT NULL)""",
]


class Result:
    """Rows of one statement, fetched eagerly."""

    __slots__ = ("rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def fetchall(self) -> list[Any]:
        return self.rows

    def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None


class Backend(ABC):
    """Dialect + connection factory.  Subclasses implement the abstract methods."""

    name = "abstract"
    driver_errors: tuple[type[BaseException], ...] = ()
    #: a lone SELECT needs no BEGIN/COMMIT around it (the connection is in autocommit mode)
    autocommit_reads = False

    # -- connections ------------------------------------------------------------------
    @abstractmethod
    def connect(self) -> Any:
        """A new DB-API connection."""

    @abstractmethod
    def begin(self, conn: Any, write: bool) -> None:
        """Start a transaction (a write transaction takes the write lock at once)."""

    def begin_deferred_sync(self, conn: Any) -> None:
        """Start a write transaction whose commit does not wait for the disk (see
        :meth:`Store.transaction` ``durable=False``); :meth:`end_deferred_sync` after it ends."""
        self.begin(conn, True)

    def end_deferred_sync(self, conn: Any) -> None:
        """Restore the connection's full durability after a :meth:`begin_deferred_sync` transaction."""

    def sync_committed(self, conn: Any) -> None:
        """Make every transaction committed so far on this database durable (on disk); ``conn``
        is an idle connection the backend may use."""

    def commit(self, conn: Any) -> None:
        conn.commit()

    def rollback(self, conn: Any) -> None:
        conn.rollback()

    def close(self, conn: Any) -> None:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass

    def reusable(self, conn: Any) -> bool:
        return True

    # -- statements -------------------------------------------------------------------
    def sql(self, text: str) -> str:
        return text

    def execute(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> Result:
        """Run one statement and fetch all its rows inside the error mapping (SQLite reports
        some errors, e.g. from triggers or RETURNING rows, only while rows are stepped)."""
        try:
            cur = conn.execute(self.sql(sql), tuple(params))
            rows = list(cur.fetchall()) if cur.description is not None else []
            return Result(rows, cur.rowcount)
        except self.driver_errors as exc:
            raise self.wrap(exc) from None

    def wrap(self, exc: BaseException) -> StoreError:
        return StoreError(f"{self.name}: {exc}")

    # -- values -----------------------------------------------------------------------
    def ts_in(self, dt: datetime | None) -> Any:
        return dt

    def ts_out(self, v: Any) -> datetime | None:
        return v

    def json_in(self, text: str, obj: Any) -> Any:
        return text

    def json_out(self, v: Any) -> Any:
        return v

    def blob_out(self, v: Any) -> bytes:
        return bytes(v)

    # -- schema -----------------------------------------------------------------------
    @abstractmethod
    def ddl(self) -> list[str]:
        """The schema's CREATE statements in this dialect."""

    @abstractmethod
    def table_exists(self, conn: Any, name: str) -> bool:
        """Whether table ``name`` exists."""

    @abstractmethod
    def audit_guard_missing(self, conn: Any) -> list[str]:
        """The parts of the append-only guard of ``m2msec_audit`` (S7) that are absent or
        disabled (trigger and, on PostgreSQL, function names); empty when intact."""

    @abstractmethod
    def audit_guard_ddl(self) -> list[str]:
        """Statements that (re-)create the append-only guard (idempotent)."""

    def schema_lock(self, conn: Any) -> None:
        """Serialise concurrent schema creation (inside the schema transaction)."""

    def lock_credentials(self, conn: Any) -> None:
        """Block concurrent credential writers for the rest of the transaction (rekey)."""

    # -- audit seal (m2msec.store.audit_seal) ------------------------------------------
    @abstractmethod
    def audit_seal_ddl(self) -> list[str]:
        """CREATE statements of the audit seal tables in this dialect."""

    def seal_lock(self, conn: Any) -> None:
        """Serialise audit sealers for the rest of the (write) transaction."""

    def repeatable_read(self, conn: Any) -> None:
        """Make the transaction just begun on ``conn`` read one snapshot for all its statements."""

    def wait_for_audit_writers(self, conn: Any, timeout: float) -> None:
        """Return once every transaction that could hold a drawn but uncommitted audit ``seq``
        when this was called has ended (:class:`StoreError` after ``timeout`` seconds)."""

    # -- notifications (m2msec.store.notify) -------------------------------------------
    #: the backend delivers notifications to listeners (else: a sequence number is bumped)
    can_listen = False

    @abstractmethod
    def notify(self, conn: Any, channel: str, payload: str, now: Any) -> None:
        """Record a notification inside the transaction on ``conn`` (effective on commit)."""

    def notify_seq(self, conn: Any, channel: str) -> int:
        """How many notifications were committed on ``channel`` (sequence backends only)."""
        raise StoreError(f"{self.name}: notifications are delivered to listeners, not counted")

    def connect_listener(self) -> Any:
        """A connection for a LISTEN session (listening backends only)."""
        raise StoreError(f"{self.name}: no notification channel (use notify_seq)")


#: SQLite notifications: the version of record (m2msec.notify, channel) is the sequence number
_NOTIFY_BUMP = (
    "INSERT INTO m2msec_records (namespace, rec_id, doc, version, created_at, updated_at, expires_at) "
    "VALUES ('m2msec.notify', ?, '{}', 1, ?, ?, NULL) ON CONFLICT (namespace, rec_id) DO UPDATE SET "
    "version = m2msec_records.version + 1, updated_at = excluded.updated_at"
)
_NOTIFY_SEQ = "SELECT version FROM m2msec_records WHERE namespace = 'm2msec.notify' AND rec_id = ?"


_warned_paths: set[str] = set()
_warned_lock = threading.Lock()


def _warn_if_open_mode(path: str) -> None:
    """Log one WARNING per path and process when an existing store file is group/other accessible."""
    if os.name == "nt":
        return
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return  # SQLite reports the problem when it opens the file
    if not mode & 0o077:
        return
    key = os.path.abspath(path)
    with _warned_lock:
        if key in _warned_paths:
            return
        _warned_paths.add(key)
    log.warning("sqlite store file %s has mode %04o: group or others can access it (chmod 600 %s)",
                key, mode, key)


class SQLiteBackend(Backend):
    name = "sqlite"
    driver_errors = (sqlite3.Error,)
    #: connections run in autocommit mode (``isolation_level=None``): a lone SELECT is its own
    #: read transaction and needs no BEGIN/COMMIT around it
    autocommit_reads = True

    def __init__(self, path: str, *, busy_timeout: float = 10.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._wal_lock = threading.Lock()
        self._file_checked = False

    def _prepare_file(self) -> None:
        """Create a new database file with mode 0600 whatever the umask, before SQLite opens it
        (SQLite gives its ``-wal`` and ``-shm`` files the main file's permissions); an existing
        file keeps its mode, but one that group or others can access is reported once."""
        with self._wal_lock:
            if self._file_checked:
                return
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                _warn_if_open_mode(self.path)
            except OSError as exc:
                raise StoreError(f"sqlite: cannot create {self.path}: {exc.strerror}") from None
            else:
                try:
                    if os.name != "nt":
                        os.fchmod(fd, 0o600)
                finally:
                    os.close(fd)
            self._file_checked = True

    def connect(self) -> sqlite3.Connection:
        self._prepare_file()
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            with self._wal_lock:
                mode = self._switch_to_wal(conn)
            if str(mode).lower() != "wal":
                raise StoreError(f"sqlite: cannot switch {self.path} to WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA secure_delete = ON")
        except sqlite3.Error as exc:
            raise self.wrap(exc) from None
        return conn

    def _switch_to_wal(self, conn: sqlite3.Connection) -> str:
        """``PRAGMA journal_mode = WAL``, retried within the busy timeout: on a new database
        file several connections opening at once (other stores, other processes) may get
        SQLITE_BUSY at once, without SQLite calling the busy handler, while one of them
        converts the file to WAL."""
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.002
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def begin(self, conn: Any, write: bool) -> None:
        # IMMEDIATE takes the write lock up front: no lock-upgrade deadlocks between processes.
        self.execute(conn, "BEGIN IMMEDIATE" if write else "BEGIN")

    def begin_deferred_sync(self, conn: Any) -> None:
        # WAL + synchronous=NORMAL: the commit appends its frames to the WAL file (written to the
        # OS before COMMIT returns, so a crash of this process loses nothing) without an fsync
        self.execute(conn, "PRAGMA synchronous = NORMAL")
        self.begin(conn, True)

    def end_deferred_sync(self, conn: Any) -> None:
        self.execute(conn, "PRAGMA synchronous = FULL")

    def sync_committed(self, conn: Any) -> None:
        """fsync the WAL file: every frame committed so far is on disk.  A frame no longer in
        the WAL was copied into the database file by a checkpoint, which syncs the database
        file before the WAL may be reused; no WAL file means no connection has one open
        (the last one to close checkpointed it away)."""
        try:
            fd = os.open(self.path + "-wal", os.O_RDONLY)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"sqlite: cannot open the WAL of {self.path}: {exc.strerror}") from None
        try:
            os.fsync(fd)
        except OSError as exc:
            raise StoreError(f"sqlite: cannot sync the WAL of {self.path}: {exc.strerror}") from None
        finally:
            os.close(fd)

    def commit(self, conn: Any) -> None:
        self.execute(conn, "COMMIT")

    def rollback(self, conn: Any) -> None:
        if conn.in_transaction:
            self.execute(conn, "ROLLBACK")

    def reusable(self, conn: Any) -> bool:
        return not conn.in_transaction

    def wrap(self, exc: BaseException) -> StoreError:
        msg = str(exc)
        if "locked" in msg or "busy" in msg:
            return StoreError(f"sqlite: database {self.path} is locked (busy timeout expired)")
        return StoreError(f"sqlite: {msg}")

    def ts_in(self, dt: datetime | None) -> str | None:
        # the _TS_FORMAT text (fixed width, so text order is time order) by isoformat, which
        # costs a fifth of strftime and zero-pads the year
        if dt is None:
            return None
        return dt.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"

    def ts_out(self, v: Any) -> datetime | None:
        # datetime.fromisoformat (C, accepts the trailing "Z" since 3.11) parses every value
        # ts_in writes exactly as strptime(_TS_FORMAT) would, at a tenth of the cost.
        if v is None:
            return None
        if len(v) == 27 and v[-1] == "Z":
            return datetime.fromisoformat(v)
        return datetime.strptime(v, _TS_FORMAT).replace(tzinfo=UTC)

    def json_out(self, v: Any) -> Any:
        return json.loads(v)

    def table_exists(self, conn: Any, name: str) -> bool:
        row = self.execute(conn, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
        return row is not None

    def ddl(self) -> list[str]:
        types = {
            "blob": "BLOB",
            "json": "TEXT",
            "ts": "TEXT",
            "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
        }
        return [s.format(**types) for s in _DDL] + self.audit_guard_ddl()

    _GUARD = ("m2msec_audit_no_update", "m2msec_audit_no_delete")

    def audit_guard_ddl(self) -> list[str]:
        out = []
        for op in ("UPDATE", "DELETE"):
            out += [f"DROP TRIGGER IF EXISTS m2msec_audit_no_{op.lower()}",
                    f"CREATE TRIGGER m2msec_audit_no_{op.lower()} BEFORE {op} ON m2msec_audit "
                    "BEGIN SELECT RAISE(ABORT, 'm2msec_audit is append-only'); END"]
        return out

    def audit_guard_missing(self, conn: Any) -> list[str]:
        # exactly the statement the guard was created with (SQLite keeps the CREATE text, minus
        # IF NOT EXISTS): a WHEN clause, another body or a renamed table is not the guard
        rows = self.execute(conn, "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'm2msec_audit'",
                            ()).fetchall()
        have = {str(r[0]): str(r[1]) for r in rows}
        want = {stmt.split()[2]: stmt for stmt in self.audit_guard_ddl() if stmt.startswith("CREATE TRIGGER ")}
        return [name for name in self._GUARD if have.get(name) != want[name]]

    def audit_seal_ddl(self) -> list[str]:
        return [s.format(pk="INTEGER PRIMARY KEY", blob="BLOB", ts="TEXT") for s in _SEAL_DDL]

    # seal_lock: the sealer's BEGIN IMMEDIATE already holds the only write lock.
    # repeatable_read: a deferred BEGIN reads one snapshot (taken at its first read).
    # wait_for_audit_writers: one writer at a time assigns seq and commits under the write lock,
    # so every uncommitted row has a higher seq than every committed one: nothing to wait for.

    def notify(self, conn: Any, channel: str, payload: str, now: Any) -> None:
        self.execute(conn, _NOTIFY_BUMP, (channel, now, now))

    def notify_seq(self, conn: Any, channel: str) -> int:
        row = self.execute(conn, _NOTIFY_SEQ, (channel,)).fetchone()
        return 0 if row is None else int(row[0])


#: SQLSTATEs of a transaction aborted because of a concurrent one (deadlock detected,
#: serialization failure): :class:`TransactionConflict` (4105), the request may be retried
_CONFLICT_STATES = frozenset({"40P01", "40001"})


class PostgresBackend(Backend):
    name = "postgresql"

    def __init__(self, dsn: str, *, connect_timeout: int = 10) -> None:
        import psycopg  # imported lazily: SQLite users do not need a libpq

        self._psycopg = psycopg
        from psycopg.types.json import Jsonb

        self._jsonb = Jsonb
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.driver_errors = (psycopg.Error,)

    def connect(self) -> Any:
        try:
            return self._psycopg.connect(
                self.dsn, autocommit=False, connect_timeout=self.connect_timeout
            )
        except self._psycopg.Error as exc:
            # libpq messages name host/port/user, never the password
            raise StoreError(f"postgresql: cannot connect: {str(exc).strip()}") from None

    def begin(self, conn: Any, write: bool) -> None:
        # psycopg (autocommit off) opens the transaction implicitly on the first statement.
        return None

    def begin_deferred_sync(self, conn: Any) -> None:
        # the commit returns once its WAL record is in the server's WAL buffers; the server's WAL
        # writer flushes them within 3 x wal_writer_delay (600 ms by default)
        self.execute(conn, "SET LOCAL synchronous_commit = off")

    def sync_committed(self, conn: Any) -> None:
        # a transaction that has a transaction ID commits synchronously (synchronous_commit is
        # on outside begin_deferred_sync): its commit waits for the WAL flush up to its own
        # record, which covers every commit before it
        self.execute(conn, "SELECT pg_catalog.txid_current()")
        self.commit(conn)

    def commit(self, conn: Any) -> None:
        try:
            conn.commit()
        except self._psycopg.Error as exc:
            raise self.wrap(exc) from None

    def rollback(self, conn: Any) -> None:
        try:
            conn.rollback()
        except self._psycopg.Error as exc:
            raise self.wrap(exc) from None

    def reusable(self, conn: Any) -> bool:
        from psycopg.pq import TransactionStatus

        return (
            not conn.closed
            and not conn.broken
            and conn.info.transaction_status == TransactionStatus.IDLE
        )

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def wrap(self, exc: BaseException) -> StoreError:
        diag = getattr(exc, "diag", None)
        primary = getattr(diag, "message_primary", None) if diag is not None else None
        state = getattr(exc, "sqlstate", None)
        # Only the primary message: DETAIL lines may quote row values.
        text = primary or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        cls = TransactionConflict if state in _CONFLICT_STATES else StoreError
        return cls(f"postgresql: {text}" + (f" (SQLSTATE {state})" if state else ""))

    def ts_out(self, v: Any) -> datetime | None:
        return None if v is None else v.astimezone(UTC)

    def json_in(self, text: str, obj: Any) -> Any:
        return self._jsonb(obj, dumps=lambda _o: text)

    def table_exists(self, conn: Any, name: str) -> bool:
        return self.execute(conn, "SELECT to_regclass(?)", (name,)).fetchone()[0] is not None

    def ddl(self) -> list[str]:
        types = {
            "blob": "BYTEA",
            "json": "JSONB",
            "ts": "TIMESTAMPTZ",
            "serial": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        }
        return [s.format(**types) for s in _DDL] + self.audit_guard_ddl()

    _GUARD_BODY = " BEGIN RAISE EXCEPTION 'm2msec_audit is append-only'; END "

    def audit_guard_ddl(self) -> list[str]:
        return [
            "CREATE OR REPLACE FUNCTION m2msec_audit_append_only() RETURNS trigger "
            f"LANGUAGE plpgsql AS $${self._GUARD_BODY}$$",
            "DROP TRIGGER IF EXISTS m2msec_audit_append_only ON m2msec_audit",
            "CREATE TRIGGER m2msec_audit_append_only BEFORE UPDATE OR DELETE ON m2msec_audit "
            "FOR EACH ROW EXECUTE FUNCTION m2msec_audit_append_only()",
        ]

    def audit_guard_missing(self, conn: Any) -> list[str]:
        missing = []
        fn = self.execute(conn, "SELECT prosrc, l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
                          "WHERE p.oid = to_regprocedure('m2msec_audit_append_only()')", ()).fetchone()
        if fn is None or str(fn[0]) != self._GUARD_BODY or str(fn[1]) != "plpgsql":
            missing.append("m2msec_audit_append_only()")
        tg = self.execute(conn, "SELECT tgenabled, tgtype, tgqual IS NULL, tgfoid = to_regprocedure('m2msec_audit_append_only()') "
                          "FROM pg_trigger WHERE tgrelid = to_regclass('m2msec_audit') "
                          "AND tgname = 'm2msec_audit_append_only' AND NOT tgisinternal", ()).fetchone()
        # enabled ('O' origin, 'A' always); exactly BEFORE (2) ROW (1) UPDATE (16) DELETE (8); no
        # WHEN clause; runs the guard function
        if tg is None or str(tg[0]) not in ("O", "A") or int(tg[1]) != 27 or not tg[2] or not tg[3]:
            missing.append("m2msec_audit_append_only")
        return missing

    def schema_lock(self, conn: Any) -> None:
        # constant = int.from_bytes(b"m2msec-s", "big") & 0x7fff...: any fixed bigint works
        self.execute(conn, "SELECT pg_advisory_xact_lock(7885651200433632115)")

    def lock_credentials(self, conn: Any) -> None:
        self.execute(conn, "LOCK TABLE m2msec_credentials IN SHARE ROW EXCLUSIVE MODE")

    def audit_seal_ddl(self) -> list[str]:
        return [s.format(pk="BIGINT PRIMARY KEY", blob="BYTEA", ts="TIMESTAMPTZ") for s in _SEAL_DDL]

    def seal_lock(self, conn: Any) -> None:
        # int.from_bytes(b"m2msec-a", "big"): the audit sealers' transaction-level advisory lock
        self.execute(conn, "SELECT pg_advisory_xact_lock(7885651200433632097)")

    def repeatable_read(self, conn: Any) -> None:
        self.execute(conn, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")

    #: lock modes that allow their holder to INSERT into m2msec_audit
    _AUDIT_WRITE_MODES = ("RowExclusiveLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock")

    def wait_for_audit_writers(self, conn: Any, timeout: float) -> None:
        # An INSERT takes ROW EXCLUSIVE on the table before its identity default draws a seq and
        # holds it until commit/rollback.  Waiting for the transactions that hold such a lock now
        # (without blocking new ones: the CREATE INDEX CONCURRENTLY pattern) means every seq drawn
        # before this call is committed or rolled back when it returns.
        import time

        modes = ", ".join(f"'{m}'" for m in self._AUDIT_WRITE_MODES)
        rows = self.execute(
            conn,
            "SELECT DISTINCT virtualtransaction FROM pg_locks WHERE locktype = 'relation' "
            f"AND relation = 'm2msec_audit'::regclass AND granted AND mode IN ({modes}) "
            "AND pid IS DISTINCT FROM pg_backend_pid()",
        ).fetchall()
        waiting = [str(r[0]) for r in rows if r[0] is not None]
        deadline = time.monotonic() + timeout
        pause = 0.002
        while waiting:
            rows = self.execute(
                conn, "SELECT DISTINCT virtualtransaction FROM pg_locks WHERE virtualtransaction = ANY(?)", (waiting,)
            ).fetchall()
            waiting = [str(r[0]) for r in rows]
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"postgresql: {len(waiting)} transaction(s) writing m2msec_audit still open after "
                    f"{timeout:g} s (idle in transaction?): nothing sealed"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    can_listen = True
    #: TCP keepalives of a LISTEN session: a silently dead peer is noticed within about
    #: idle + interval * count seconds (ignored on Unix-socket connections)
    listener_keepalives = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                           "keepalives_count": 3}

    def notify(self, conn: Any, channel: str, payload: str, now: Any) -> None:
        self.execute(conn, "SELECT pg_notify(?, ?)", (channel, payload))

    def connect_listener(self) -> Any:
        try:
            return self._psycopg.connect(self.dsn, autocommit=True, connect_timeout=self.connect_timeout,
                                         application_name="m2msec-listen", **self.listener_keepalives)
        except self._psycopg.Error as exc:
            raise StoreError(f"postgresql: cannot connect: {str(exc).strip()}") from None


def backend_from_url(url: str) -> Backend:
    """``sqlite:///abs/path.db`` / ``sqlite://relative.db`` or ``postgresql://…`` (libpq URI)."""
    if url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
        if not path or path in (":memory:", "/:memory:") or path.startswith("file:"):
            raise StoreError("sqlite store needs a file path (in-memory databases are not shared)")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise StoreError(f"sqlite: directory {parent} does not exist")
        return SQLiteBackend(path)
    if re.match(r"^postgres(ql)?://", url):
        return PostgresBackend(url)
    scheme = url.split(":", 1)[0] if ":" in url else url[:16]
    raise StoreError(f"unsupported store URL scheme {scheme!r} (use sqlite:// or postgresql://)")
