"""Tamper-evident seal of the audit trail: an HMAC chain over ``m2msec_audit`` and MACed checkpoints.

TS-0003 clause 6.2.5.2 (Sensitive Data Handling) asks that security-relevant data be protected
in storage; the audit trail of the MEF/MAF/ESPrim services (clauses 8.3, 8.8.2.8, 8.4) is
append-only against the services' own SQL (triggers), but whoever can write the database (the
threat model's AT6) could drop the trigger and change history.  Sealing makes such changes
evident to anyone holding the store's key-encryption key, at no cost to the services: they keep
appending rows exactly as before; an operator (``m2msec store audit seal``, e.g. from cron)
extends the chain over what was appended since the last seal.  The format is an m2msec profile
decision (``docs/profile.md``, S10):

* ``k = HKDF-SHA-256(IKM=KEK, salt=none, info="m2msec.store.audit-seal v1", L=32)`` (in
  :mod:`m2msec.store.kek`; the KEK never leaves that module);
* ``enc(row) = "m2msec.store.audit-row v1" || 0x00 || i64(seq) || lp(ts) || lp(actor) ||
  lp(action) || lp(subject) || lp(outcome) || lp(details)`` where ``i64`` is 8-octet big-endian
  two's complement, ``lp(x)`` = 4-octet big-endian length of the UTF-8 of ``x`` then those octets,
  ``ts`` = ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC) and ``details`` = the JSON value as read back,
  re-encoded with sorted keys, no whitespace, ASCII-only escapes (Python
  ``json.dumps(sort_keys=True, separators=(",", ":"))``);
* per row ``tag_i = HMAC(k, 0x01 || enc(row_i))`` and the chain
  ``chain_i = HMAC(k, 0x02 || chain_{i-1} || tag_i)``, ``chain_0`` = 32 zero octets, over the
  rows in ``seq`` order (``tag_i`` lets :func:`verify` name the modified row; the chain orders
  them and covers deletions);
* checkpoint ``n``: ``mac_n = HMAC(k, 0x03 || i64(n) || mac_{n-1} || i64(last_seq) ||
  i64(row_count) || chain_last || lp(sealed_at) || kek_id)``, ``mac_0`` = 32 zero octets, so the
  checkpoints form a chain too.

Tables (created by the first seal): ``m2msec_audit_mac(seq, tag, chain)`` one entry per sealed row,
``m2msec_audit_seal(seal_no, last_seq, row_count, chain, sealed_at, kek_id, mac)`` one per seal.

Out-of-order ``seq`` (PostgreSQL draws identity values at INSERT and commits later, so seq 10 may
commit after seq 11): a seal covers rows up to a *horizon* ``H``, the largest committed ``seq``
when it starts; before reading rows it waits for every transaction that held a write lock on
``m2msec_audit`` at that moment to end (:meth:`Backend.wait_for_audit_writers`; an INSERT holds
that lock from before it draws its ``seq`` until it commits), so no row ``<= H`` can appear later.
Appends never wait for a sealer.  On SQLite, writers are serialised and commit in ``seq`` order:
no wait is needed.  A row that still appears inside the sealed range was put there by hand.
"""

from __future__ import annotations

import hmac
import json
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from m2msec.store.errors import KekMismatch, StoreError
from m2msec.store.kek import AuditSealKey, KeyEncryptionKey

if TYPE_CHECKING:
    from m2msec.store._backends import Backend
    from m2msec.store.store import Store

__all__ = [
    "ANCHOR_HEX_DIGITS",
    "GENESIS",
    "AuditCheckpoint",
    "AuditFinding",
    "AuditSealError",
    "AuditSealKekMismatch",
    "AuditSealResult",
    "AuditTampered",
    "AuditVerification",
    "chain_next",
    "checkpoint_mac",
    "encode_row",
    "reseal",
    "row_tag",
    "seal",
    "verify",
]

GENESIS = bytes(32)
ROW_LABEL = b"m2msec.store.audit-row v1\x00"
_I64 = struct.Struct(">q")
_U32 = struct.Struct(">I")
_MIN_SEQ = -(2**63)
#: hex digits of a checkpoint MAC in an anchor (128 bits)
ANCHOR_HEX_DIGITS = 32


class AuditSealError(StoreError):
    """Sealing or verifying the audit trail failed for a reason other than tampering."""


class AuditSealKekMismatch(AuditSealError, KekMismatch):
    """The trail was sealed under another key-encryption key."""


class AuditTampered(AuditSealError):
    """A seal was refused: the newest checkpoint or the entries it covers do not authenticate."""


# ---------------------------------------------------------------------------------------
# pure functions (known-answer tested)


def _lp(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    return _U32.pack(len(raw)) + raw


def encode_row(seq: int, ts: str, actor: str, action: str, subject: str, outcome: str, details: str) -> bytes:
    """``enc(row)``: the canonical octets of one audit row (module docstring)."""
    return b"".join(
        (ROW_LABEL, _I64.pack(seq), _lp(ts), _lp(actor), _lp(action), _lp(subject), _lp(outcome), _lp(details))
    )


def row_tag(key: AuditSealKey, encoded_row: bytes) -> bytes:
    return key.mac(b"\x01" + encoded_row)


def chain_next(key: AuditSealKey, prev: bytes, tag: bytes) -> bytes:
    return key.mac(b"\x02" + prev + tag)


def checkpoint_mac(
    key: AuditSealKey, seal_no: int, prev_mac: bytes, last_seq: int, row_count: int, chain: bytes,
    sealed_at: str, kek_id: bytes,
) -> bytes:
    return key.mac(b"".join((
        b"\x03", _I64.pack(seal_no), prev_mac, _I64.pack(last_seq), _I64.pack(row_count), chain,
        _lp(sealed_at), kek_id,
    )))


def ts_text(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def details_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _canonical_row(b: Backend, row: Sequence[Any]) -> bytes:
    """``enc`` of a row as the database returns it; a value that does not parse or is not text
    (written by hand) is encoded as NUL + its repr.  No genuine value starts with NUL (audit_draft
    refuses NUL in the text fields; the timestamp and the JSON details are ASCII), so a sealed
    genuine value cannot be swapped for a foreign one with the same encoding."""
    seq, ts, actor, action, subject, outcome, details = row
    try:
        ts_s = ts_text(b.ts_out(ts))  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - any unparseable value is a finding, not a crash
        ts_s = "\x00" + repr(ts)
    try:
        det_s = details_text(b.json_out(details))
    except Exception:  # noqa: BLE001
        det_s = "\x00" + repr(details)
    texts = [v if isinstance(v, str) and not v.startswith("\x00") else "\x00" + repr(v)
             for v in (actor, action, subject, outcome)]
    return encode_row(int(seq), ts_s, *texts, det_s)


# ---------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class AuditCheckpoint:
    seal_no: int
    last_seq: int
    row_count: int
    chain: bytes
    sealed_at: datetime
    kek_id: str
    mac: bytes

    @property
    def anchor(self) -> str:
        """``<seal_no>:<first 32 hex digits of its MAC>``: keep it off the host, pass it to verify."""
        return f"{self.seal_no}:{self.mac.hex()[:ANCHOR_HEX_DIGITS]}"

    def __repr__(self) -> str:
        return (f"AuditCheckpoint(seal_no={self.seal_no}, last_seq={self.last_seq}, row_count={self.row_count}, "
                f"sealed_at={self.sealed_at.isoformat()}, kek_id={self.kek_id}, anchor={self.anchor})")


@dataclass(frozen=True)
class AuditSealResult:
    sealed_rows: int          #: rows sealed by this call
    checkpoints: int          #: checkpoints written by this call
    head: AuditCheckpoint | None  #: the newest checkpoint afterwards
    retries: int = 0          #: times another sealer won the race and this one re-read


@dataclass(frozen=True)
class AuditFinding:
    """One piece of evidence.  ``kind``: modified, deleted, inserted, chain-break, count-mismatch,
    checkpoint-forged, checkpoint-missing, rolled-back."""

    kind: str
    message: str
    seq: int | None = None
    seal_no: int | None = None


@dataclass(frozen=True)
class AuditVerification:
    checkpoints: int
    sealed_rows: int                   #: seal entries checked
    unsealed_rows: int                 #: audit rows after the newest checkpoint
    head: AuditCheckpoint | None
    findings: tuple[AuditFinding, ...] = field(default_factory=tuple)
    more_findings: int = 0             #: findings beyond ``max_findings``, counted only

    @property
    def intact(self) -> bool:
        return not self.findings

    def first(self, kind: str) -> AuditFinding | None:
        return next((f for f in self.findings if f.kind == kind), None)

    @property
    def first_modified_seq(self) -> int | None:
        f = self.first("modified")
        return None if f is None else f.seq


# ---------------------------------------------------------------------------------------
# I/O

_CP_COLS = "seal_no, last_seq, row_count, chain, sealed_at, kek_id, mac"
_ROW_COLS = "seq, ts, actor, action, subject, outcome, details"
_ENTRIES_PER_INSERT = 300


def _cp(b: Backend, r: Sequence[Any]) -> AuditCheckpoint:
    return AuditCheckpoint(int(r[0]), int(r[1]), int(r[2]), b.blob_out(r[3]), b.ts_out(r[4]),  # type: ignore[arg-type]
                           str(r[5]), b.blob_out(r[6]))


def _cp_valid(key: AuditSealKey, cp: AuditCheckpoint, prev_mac: bytes) -> bool:
    try:
        kid = bytes.fromhex(cp.kek_id)
    except ValueError:
        return False
    want = checkpoint_mac(key, cp.seal_no, prev_mac, cp.last_seq, cp.row_count, cp.chain, ts_text(cp.sealed_at), kid)
    return hmac.compare_digest(want, cp.mac)


def _tables_exist(b: Backend, conn: Any) -> bool:
    return b.table_exists(conn, "m2msec_audit_seal") and b.table_exists(conn, "m2msec_audit_mac")


def _ensure_tables(store: Store) -> None:
    b = store._backend
    with store._conn(write=False) as conn:
        if _tables_exist(b, conn):
            return
    with store._conn(write=True) as conn:
        b.schema_lock(conn)
        for stmt in b.audit_seal_ddl():
            b.execute(conn, stmt)


def _head(b: Backend, conn: Any) -> tuple[AuditCheckpoint | None, bytes]:
    """The newest checkpoint and its predecessor's MAC (GENESIS for the first)."""
    rows = b.execute(conn, f"SELECT {_CP_COLS} FROM m2msec_audit_seal ORDER BY seal_no DESC LIMIT 2").fetchall()
    if not rows:
        return None, GENESIS
    head = _cp(b, rows[0])
    if len(rows) > 1 and int(rows[1][0]) == head.seal_no - 1:
        return head, b.blob_out(rows[1][6])
    return head, GENESIS if head.seal_no == 1 else b""  # b"": the predecessor is missing


def _check_kek(head: AuditCheckpoint | None, key: AuditSealKey, prev_mac: bytes) -> None:
    if head is not None and head.kek_id != key.kek_id.hex() and not _cp_valid(key, head, prev_mac):
        raise AuditSealKekMismatch(
            f"audit checkpoint {head.seal_no} is sealed under KEK id {head.kek_id}, "
            f"but this KEK has id {key.kek_id.hex()}"
        )


def seal(store: Store, kek: KeyEncryptionKey, *, max_rows: int | None = None, batch_rows: int = 10000,
         writer_timeout: float = 30.0, max_retries: int = 20) -> AuditSealResult:
    """Extend the chain over the committed rows after the newest checkpoint (module docstring).

    Each batch of at most ``batch_rows`` rows is sealed in one transaction together with its
    checkpoint; rows are read and MACed before that transaction, which only re-checks that the
    newest checkpoint is still the one extended (else another sealer won: re-read, retry).
    :class:`AuditTampered` if the newest checkpoint does not authenticate or the seal entries
    do not end where it says; :class:`AuditSealKekMismatch` under another KEK.
    """
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    key = kek.audit_seal_key()
    b = store._backend
    _ensure_tables(store)
    sealed = written = retries = streak = 0
    target: int | None = None
    head: AuditCheckpoint | None = None
    while max_rows is None or sealed < max_rows:
        with store._conn(write=False) as conn:
            b.repeatable_read(conn)  # the head and the last entry from one snapshot
            head, prev_mac = _head(b, conn)
            _check_kek(head, key, prev_mac)
            if head is not None and (not prev_mac or not _cp_valid(key, head, prev_mac)):
                raise AuditTampered(
                    f"the newest audit checkpoint ({head.seal_no}) does not authenticate: "
                    "run `m2msec store audit verify`; nothing sealed"
                )
            last = b.execute(conn, "SELECT seq, chain FROM m2msec_audit_mac ORDER BY seq DESC LIMIT 1").fetchone()
            if (head is None and last is not None) or (head is not None and (
                last is None or int(last[0]) != head.last_seq or b.blob_out(last[1]) != head.chain
            )):
                raise AuditTampered(
                    "the audit seal entries do not end where the newest checkpoint says: "
                    "run `m2msec store audit verify`; nothing sealed"
                )
        after = head.last_seq if head is not None else _MIN_SEQ
        with store._conn(write=False) as conn:  # read committed (PostgreSQL): sees what the wait let commit
            if target is None:
                top = b.execute(conn, "SELECT max(seq) FROM m2msec_audit").fetchone()[0]
                if top is None or int(top) <= after:
                    break
                target = int(top)
                b.wait_for_audit_writers(conn, writer_timeout)
            if after >= target:
                break
            limit = batch_rows if max_rows is None else min(batch_rows, max_rows - sealed)
            rows = b.execute(
                conn, f"SELECT {_ROW_COLS} FROM m2msec_audit WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (after, target, limit),
            ).fetchall()
        if not rows:
            break
        chain = head.chain if head is not None else GENESIS
        entries: list[tuple[int, bytes, bytes]] = []
        for r in rows:
            tag = row_tag(key, _canonical_row(b, r))
            chain = chain_next(key, chain, tag)
            entries.append((int(r[0]), tag, chain))
        seal_no = head.seal_no + 1 if head is not None else 1
        count = (head.row_count if head is not None else 0) + len(entries)
        now = store._now()
        cp = AuditCheckpoint(seal_no, entries[-1][0], count, chain, now, key.kek_id.hex(), b"")
        mac = checkpoint_mac(key, seal_no, head.mac if head is not None else GENESIS, cp.last_seq, count,
                             chain, ts_text(now), key.kek_id)
        with store._conn(write=True) as conn:
            b.seal_lock(conn)
            now_head, _ = _head(b, conn)
            if (now_head is None) != (head is None) or now_head is not None and (
                now_head.seal_no != head.seal_no or now_head.mac != head.mac  # type: ignore[union-attr]
            ):
                retries += 1
                streak += 1
                if streak > max_retries:
                    raise AuditSealError(f"another sealer won {max_retries} times in a row: gave up")
                continue  # leaves the block without an exception: the transaction commits nothing
            for i in range(0, len(entries), _ENTRIES_PER_INSERT):
                chunk = entries[i : i + _ENTRIES_PER_INSERT]
                b.execute(conn, "INSERT INTO m2msec_audit_mac (seq, tag, chain) VALUES "
                          + ", ".join(["(?, ?, ?)"] * len(chunk)), [v for e in chunk for v in e])
            b.execute(conn, f"INSERT INTO m2msec_audit_seal ({_CP_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (seal_no, cp.last_seq, count, chain, b.ts_in(now), cp.kek_id, mac))
        sealed += len(entries)
        written += 1
        streak = 0
        head = AuditCheckpoint(seal_no, cp.last_seq, count, chain, now, cp.kek_id, mac)
    return AuditSealResult(sealed, written, head, retries)


def reseal(store: Store, old_kek: KeyEncryptionKey, new_kek: KeyEncryptionKey, *,
           batch_rows: int = 10000) -> AuditSealResult:
    """After a KEK rotation: verify the whole trail under ``old_kek`` and, only if intact, rebuild
    the seal under ``new_kek`` in one transaction (the sealed rows become checkpoint 1 of a new
    chain; earlier anchors no longer apply), then seal what is newer.

    :class:`AuditTampered` if the trail does not verify under ``old_kek`` (nothing changes).
    The transaction holds the write lock while it recomputes (SQLite appends wait for it).
    """
    if old_kek == new_kek:
        raise AuditSealError("old and new key-encryption keys are the same")
    v = verify(store, old_kek)
    if not v.intact:
        raise AuditTampered(f"the audit trail does not verify under the old KEK ({len(v.findings) + v.more_findings} "
                            "finding(s)): nothing resealed")
    if v.head is None:
        return seal(store, new_kek, batch_rows=batch_rows)
    key = new_kek.audit_seal_key()
    b = store._backend
    old = v.head
    with store._conn(write=True) as conn:
        b.seal_lock(conn)
        now_head, _ = _head(b, conn)
        if now_head is None or now_head.seal_no != old.seal_no or now_head.mac != old.mac:
            raise AuditSealError("the seal changed while it was verified (another sealer?): run reseal again")
        # What goes under the new key is what the old key authenticates *in this transaction*:
        # every row re-checked against its old tag and chain (a row changed after the verify
        # above is refused, not resealed as genuine).
        old_key = old_kek.audit_seal_key()
        chain, old_chain, entries = GENESIS, GENESIS, []
        cols = ", ".join("a." + c for c in _ROW_COLS.split(", "))
        for r in _keyset(b, conn, f"SELECT {cols}, m.tag, m.chain FROM m2msec_audit a JOIN m2msec_audit_mac m "
                         "ON m.seq = a.seq WHERE a.seq > ? AND a.seq <= ? ORDER BY a.seq LIMIT ?", old.last_seq):
            enc = _canonical_row(b, r[:7])
            old_tag = row_tag(old_key, enc)
            old_chain = chain_next(old_key, old_chain, old_tag)
            if not (hmac.compare_digest(old_tag, b.blob_out(r[7])) and hmac.compare_digest(old_chain, b.blob_out(r[8]))):
                raise AuditTampered(f"audit row seq {int(r[0])} changed while the trail was resealed: nothing resealed")
            tag = row_tag(key, enc)
            chain = chain_next(key, chain, tag)
            entries.append((int(r[0]), tag, chain))
        if len(entries) != old.row_count or not hmac.compare_digest(old_chain, old.chain):
            raise AuditTampered("the sealed rows changed while they were resealed: nothing resealed")
        b.execute(conn, "DELETE FROM m2msec_audit_mac")
        b.execute(conn, "DELETE FROM m2msec_audit_seal")
        for i in range(0, len(entries), _ENTRIES_PER_INSERT):
            chunk = entries[i : i + _ENTRIES_PER_INSERT]
            b.execute(conn, "INSERT INTO m2msec_audit_mac (seq, tag, chain) VALUES "
                      + ", ".join(["(?, ?, ?)"] * len(chunk)), [v for e in chunk for v in e])
        now = store._now()
        mac = checkpoint_mac(key, 1, GENESIS, old.last_seq, old.row_count, chain, ts_text(now), key.kek_id)
        b.execute(conn, f"INSERT INTO m2msec_audit_seal ({_CP_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (1, old.last_seq, old.row_count, chain, b.ts_in(now), key.kek_id.hex(), mac))
    more = seal(store, new_kek, batch_rows=batch_rows)
    head = more.head or AuditCheckpoint(1, old.last_seq, old.row_count, chain, now, key.kek_id.hex(), mac)
    return AuditSealResult(old.row_count + more.sealed_rows, 1 + more.checkpoints, head, more.retries)


def _keyset(b: Backend, conn: Any, sql: str, upper: int, size: int = 5000) -> Iterator[Sequence[Any]]:
    """Rows of ``sql`` (``… WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?``) page by page."""
    last = _MIN_SEQ
    while True:
        rows = b.execute(conn, sql, (last, upper, size)).fetchall()
        yield from rows
        if len(rows) < size:
            return
        last = int(rows[-1][0])


def parse_anchor(anchor: str) -> tuple[int, str]:
    """``<seal_no>:<hex prefix>`` (at least 16 hex digits) -> (seal_no, lower-case prefix)."""
    try:
        no_s, _, prefix = anchor.strip().partition(":")
        seal_no = int(no_s)
        bytes.fromhex(prefix if len(prefix) % 2 == 0 else prefix + "0")
    except ValueError:
        raise AuditSealError(f"anchor {anchor!r} is not <seal_no>:<hex digits>") from None
    if seal_no < 1 or not 16 <= len(prefix) <= 64:
        raise AuditSealError("an anchor is <seal_no>:<16 to 64 hex digits of its MAC>")
    return seal_no, prefix.lower()


def verify(store: Store, kek: KeyEncryptionKey, *, anchor: str | None = None,
           max_findings: int = 1000) -> AuditVerification:
    """Recompute the chain over the sealed range in one snapshot and report every inconsistency.

    :class:`AuditSealKekMismatch` if the newest checkpoint names another KEK and does not
    authenticate under this one.  ``anchor`` (from a seal kept elsewhere) also detects a
    rollback that removed that checkpoint and everything after it.
    """
    key = kek.audit_seal_key()
    want_anchor = parse_anchor(anchor) if anchor is not None else None
    b = store._backend
    findings: list[AuditFinding] = []
    more = 0

    def found(kind: str, message: str, seq: int | None = None, seal_no: int | None = None) -> None:
        nonlocal more
        if len(findings) < max_findings:
            findings.append(AuditFinding(kind, message, seq, seal_no))
        else:
            more += 1

    with store._conn(write=False) as conn:
        b.repeatable_read(conn)
        have_tables = _tables_exist(b, conn)
        if not have_tables:
            cps: list[AuditCheckpoint] = []
        else:
            cps = [_cp(b, r) for r in b.execute(conn, f"SELECT {_CP_COLS} FROM m2msec_audit_seal ORDER BY seal_no").fetchall()]
        head = cps[-1] if cps else None
        prev_of_head = cps[-2].mac if len(cps) > 1 and cps[-2].seal_no == head.seal_no - 1 else GENESIS  # type: ignore[union-attr]
        # a seal lives under one KEK (reseal rebuilds all of it): if an older checkpoint names
        # this KEK, a newest one naming another was edited, and is reported as forged below
        if not any(cp.kek_id == key.kek_id.hex() for cp in cps[:-1]):
            _check_kek(head, key, prev_of_head)

        # 1. the checkpoints: consecutive numbers, each MAC over its predecessor's
        bounds: list[AuditCheckpoint] = []
        prev_mac, expect_no = GENESIS, 1
        for cp in cps:
            if cp.seal_no != expect_no:
                found("checkpoint-missing", f"checkpoint(s) {expect_no}..{cp.seal_no - 1} missing before "
                      f"checkpoint {cp.seal_no}", seal_no=expect_no)
            if _cp_valid(key, cp, prev_mac if cp.seal_no == expect_no else b""):
                bounds.append(cp)
            elif cp.seal_no == expect_no:
                found("checkpoint-forged", f"checkpoint {cp.seal_no} (rows up to seq {cp.last_seq}) does not "
                      "authenticate: forged, altered or replaced", seal_no=cp.seal_no)
            prev_mac, expect_no = cp.mac, cp.seal_no + 1
        if want_anchor is not None:
            no, prefix = want_anchor
            hit = next((cp for cp in cps if cp.seal_no == no), None)
            if hit is None:
                found("rolled-back", f"checkpoint {no} named by the anchor is gone: the trail was rolled back "
                      f"(newest checkpoint: {head.seal_no if head else 'none'})", seal_no=no)
            elif not hit.mac.hex().startswith(prefix):
                found("rolled-back", f"checkpoint {no} is not the one named by the anchor: replaced", seal_no=no)

        # 2. rows and seal entries, merged in seq order
        sealed_to = head.last_seq if head is not None else _MIN_SEQ
        mac_top = None
        if have_tables:
            mac_top = b.execute(conn, "SELECT max(seq) FROM m2msec_audit_mac").fetchone()[0]
        upper = max(sealed_to, int(mac_top) if mac_top is not None else _MIN_SEQ)
        rows = _keyset(b, conn, f"SELECT {_ROW_COLS} FROM m2msec_audit WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?", upper)
        ents = (_keyset(b, conn, "SELECT seq, tag, chain FROM m2msec_audit_mac WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?", upper)
                if mac_top is not None else iter(()))
        chain, prev_seq, count, bi, beyond = GENESIS, None, 0, 0, 0
        base_count, base_rows, base_seq = 0, 0, None  # at the previous verified checkpoint

        def boundaries(before: int | None) -> None:
            # each verified checkpoint: as many entries since the previous one as it sealed, and
            # the chain ends in its value
            nonlocal bi, base_count, base_rows, base_seq
            while bi < len(bounds) and (before is None or bounds[bi].last_seq < before):
                cp = bounds[bi]
                want, have = cp.row_count - base_rows, count - base_count
                span = f"after seq {base_seq} " if base_seq is not None else ""
                if have != want:
                    why = "sealed rows were removed with their entries" if have < want else "entries were added"
                    found("count-mismatch", f"checkpoint {cp.seal_no} sealed {want} row(s) {span}up to seq "
                          f"{cp.last_seq}; {have} seal entries are there: {why}", seq=cp.last_seq,
                          seal_no=cp.seal_no)
                elif chain != cp.chain:
                    found("count-mismatch", f"the chain at seq {cp.last_seq} does not end in checkpoint "
                          f"{cp.seal_no}'s value", seq=cp.last_seq, seal_no=cp.seal_no)
                base_count, base_rows, base_seq = count, cp.row_count, cp.last_seq
                bi += 1

        r = next(rows, None)
        e = next(ents, None)
        while r is not None or e is not None:
            rs = int(r[0]) if r is not None else None
            es = int(e[0]) if e is not None else None
            s = min(x for x in (rs, es) if x is not None)
            boundaries(s)
            if es == s:
                tag, stored = b.blob_out(e[1]), b.blob_out(e[2])  # type: ignore[index]
                if rs == s:
                    if not hmac.compare_digest(row_tag(key, _canonical_row(b, r)), tag):  # type: ignore[arg-type]
                        found("modified", f"audit row seq {s} was modified after it was sealed", seq=s)
                else:
                    found("deleted", f"sealed audit row seq {s} was deleted", seq=s)
                if chain_next(key, chain, tag) != stored:
                    gap = f"after seq {prev_seq}" if prev_seq is not None else "at the start"
                    found("chain-break", f"the chain breaks before seq {s}: sealed row(s) {gap} were removed "
                          "with their seal entries, or seal entries were altered", seq=s)
                if s > sealed_to:
                    beyond += 1
                chain, prev_seq, count = stored, s, count + 1
                e = next(ents, None)
            elif s <= sealed_to:
                found("inserted", f"audit row seq {s} lies inside the sealed range but was never sealed", seq=s)
            if rs == s:
                r = next(rows, None)
        boundaries(None)
        if beyond:
            found("rolled-back", f"{beyond} seal entr{'y' if beyond == 1 else 'ies'} after the newest checkpoint "
                  f"({head.seal_no if head else 'none'}): newer checkpoint(s) were deleted",
                  seq=sealed_to if head else None)
        unsealed = int(b.execute(conn, "SELECT count(*) FROM m2msec_audit WHERE seq > ?", (sealed_to,)).fetchone()[0])
    return AuditVerification(len(cps), count, unsealed, head, tuple(findings), more)
