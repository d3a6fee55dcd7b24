"""Services seal their own audit trail: :class:`AuditSealer`, a background task of ``maf serve``
and ``mef serve`` (TS-0003 6.2.5.2 Sensitive Data Handling; the audit trail of the MAF and MEF
procedures, 8.8 and 8.3; seal format: :mod:`m2msec.store.audit_seal`, profile S10).

Rows written since the last seal are only append-only (the guard of S7): the interval between
two seals is the window in which someone who can write the database changes them unnoticed.
The services hold the store's KEK anyway, so each one extends the seal itself every
``audit_seal_interval_s`` (maf.toml top level, mef.toml ``[mef]``; default
:data:`DEFAULT_INTERVAL_S`, 0 = off, else :data:`MIN_INTERVAL_S` to :data:`MAX_INTERVAL_S`):

* once when the service starts (rows left by a previous run), then every interval, and once
  more when it stops (after its listeners have closed, so its last rows are covered);
* each tick runs in this task's own worker thread (one thread, never the event loop, never a
  thread that serves requests) and, after :meth:`Store.seal_audit
  <m2msec.store.store.Store.seal_audit>`, re-checks a slice of ``check_rows`` sealed rows
  (:func:`check_slice`; default: 34 per second of interval, from 100 to 10000, i.e. 10000 per
  tick at 300 s; the slice moves on each tick and wraps around, so a trail of R rows is
  re-checked every ``ceil(R / check_rows)`` ticks, about R / 34 seconds, e.g. 1 million rows in
  8 hours).  A seal only authenticates the newest checkpoint and where the seal entries end; the
  slice check is what notices a sealed row that was changed, deleted or inserted with raw SQL;
* a seal logs ``audit sealed N row(s); anchor <seal_no>:<mac>`` at INFO on logger
  ``m2msec.store.autoseal`` (the services set that logger to INFO whatever their verbosity, so
  shipped logs carry the anchors off the host; an idle tick logs nothing);
* a refusal (:class:`~m2msec.store.audit_seal.AuditTampered`: the newest checkpoint or the end
  of the seal entries does not authenticate), a KEK mismatch, a finding of the slice check or
  any other failure (database unreachable) is an ERROR line on every tick it happens; the
  service keeps answering (refusing service would hand whoever tampered a denial of service).

Several sealers on one database (``maf serve --workers N`` seals in the parent only; several
instances on one PostgreSQL database or one SQLite file) are safe: sealers serialise on the
store's seal lock and re-read the head when another one won (:func:`m2msec.store.audit_seal.seal`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from m2msec.pki._background import BackgroundTask
from m2msec.store.audit_seal import (
    _MIN_SEQ,
    _ROW_COLS,
    GENESIS,
    AuditFinding,
    AuditSealKekMismatch,
    AuditSealResult,
    AuditTampered,
    _canonical_row,
    _head,
    _tables_exist,
    chain_next,
    row_tag,
)

if TYPE_CHECKING:
    from m2msec.store.kek import KeyEncryptionKey
    from m2msec.store.store import Store

__all__ = [
    "CHECK_ROWS_MIN",
    "CHECK_ROWS_PER_SECOND",
    "CHECK_ROWS_PER_TICK",
    "DEFAULT_INTERVAL_S",
    "MAX_INTERVAL_S",
    "MIN_INTERVAL_S",
    "AuditSealer",
    "SliceCheck",
    "check_slice",
    "parse_interval",
    "show_seal_log",
]

log = logging.getLogger(__name__)

#: default ``audit_seal_interval_s``: the window in which unsealed rows can change unnoticed
DEFAULT_INTERVAL_S = 300.0
#: shortest interval accepted (each seal with new rows is one write transaction and a checkpoint row)
MIN_INTERVAL_S = 0.5
#: longest interval accepted (one day)
MAX_INTERVAL_S = 86400.0
#: sealed rows re-checked per tick by :func:`check_slice`: at most this many ...
CHECK_ROWS_PER_TICK = 10000
#: ... and about this many per second of interval (at least :data:`CHECK_ROWS_MIN`), so that the
#: re-check costs the same CPU whatever the interval (about 20 us per row: 0.07 % of a core)
CHECK_ROWS_PER_SECOND = 34
CHECK_ROWS_MIN = 100
#: ERROR lines of slice-check findings per tick (the rest are counted in one more line)
MAX_FINDING_LINES = 10


def parse_interval(value: object, *, key: str = "audit_seal_interval_s") -> float:
    """``audit_seal_interval_s`` from TOML: 0 (off) or a number of seconds from
    :data:`MIN_INTERVAL_S` to :data:`MAX_INTERVAL_S`.  TypeError / ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{key} must be a number of seconds (0: off)")
    v = float(value)
    if v == 0:
        return 0.0
    if not math.isfinite(v) or not MIN_INTERVAL_S <= v <= MAX_INTERVAL_S:
        raise ValueError(f"{key} must be 0 (off) or from {MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g} seconds")
    return v


def show_seal_log() -> None:
    """Let the sealer's INFO lines through whatever the service's log level: the logger gets
    level INFO, and a stderr handler if the root logger has none (the MEF configures no logging)."""
    log.setLevel(logging.INFO)
    if not logging.getLogger().handlers and not log.handlers:
        h = _StderrHandler()
        h.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
        log.addHandler(h)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is logged (as logging's last resort does)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


@dataclass(frozen=True)
class SliceCheck:
    checked: int                          #: seal entries checked
    findings: tuple[AuditFinding, ...]    #: modified / deleted / inserted / chain-break
    next_after: int                       #: where the next slice starts (seq; wraps to the start)


def check_slice(store: Store, kek: KeyEncryptionKey, after: int = _MIN_SEQ,
                limit: int = CHECK_ROWS_PER_TICK) -> SliceCheck:
    """Re-check up to ``limit`` sealed rows after seq ``after`` in one snapshot: each row against
    its seal entry's tag, each entry's chain value against its predecessor's, and no unsealed
    row inside the range.  Checkpoints other than the newest are not checked here (``m2msec
    store audit verify`` does); the newest one is checked by every seal."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    key = kek.audit_seal_key()
    b = store._backend
    findings: list[AuditFinding] = []
    with store._conn(write=False) as conn:
        b.repeatable_read(conn)
        if not _tables_exist(b, conn):
            return SliceCheck(0, (), _MIN_SEQ)
        head, _ = _head(b, conn)
        if head is None:
            return SliceCheck(0, (), _MIN_SEQ)
        sealed_to = head.last_seq
        if after >= sealed_to:
            after = _MIN_SEQ
        chain = GENESIS
        if after > _MIN_SEQ:
            base = b.execute(conn, "SELECT seq, chain FROM m2msec_audit_mac WHERE seq <= ? ORDER BY seq DESC LIMIT 1",
                             (after,)).fetchone()
            chain = b.blob_out(base[1]) if base is not None else GENESIS
        ents = b.execute(conn, "SELECT seq, tag, chain FROM m2msec_audit_mac WHERE seq > ? AND seq <= ? "
                         "ORDER BY seq LIMIT ?", (after, sealed_to, limit)).fetchall()
        upper = int(ents[-1][0]) if len(ents) == limit else sealed_to
        rows = b.execute(conn, f"SELECT {_ROW_COLS} FROM m2msec_audit WHERE seq > ? AND seq <= ? ORDER BY seq "
                         "LIMIT ?", (after, upper, 4 * limit)).fetchall()
    ri = 0
    for e in ents:
        s, tag, stored = int(e[0]), b.blob_out(e[1]), b.blob_out(e[2])
        while ri < len(rows) and int(rows[ri][0]) < s:
            rs = int(rows[ri][0])
            findings.append(AuditFinding("inserted", f"audit row seq {rs} lies inside the sealed range but was "
                                         "never sealed", seq=rs))
            ri += 1
        if ri < len(rows) and int(rows[ri][0]) == s:
            if not hmac.compare_digest(row_tag(key, _canonical_row(b, rows[ri])), tag):
                findings.append(AuditFinding("modified", f"audit row seq {s} was modified after it was sealed", seq=s))
            ri += 1
        else:
            findings.append(AuditFinding("deleted", f"sealed audit row seq {s} was deleted", seq=s))
        if not hmac.compare_digest(chain_next(key, chain, tag), stored):
            findings.append(AuditFinding("chain-break", f"the chain breaks before seq {s}: sealed rows were removed "
                                         "with their seal entries, or seal entries were altered", seq=s))
        chain = stored
    for r in rows[ri:]:
        rs = int(r[0])
        findings.append(AuditFinding("inserted", f"audit row seq {rs} lies inside the sealed range but was never "
                                     "sealed", seq=rs))
    return SliceCheck(len(ents), tuple(findings), upper if len(ents) == limit else _MIN_SEQ)


class AuditSealer(BackgroundTask):
    """Seal ``store``'s audit trail now (:meth:`start`), every ``interval`` seconds, and once
    more in :meth:`close`; see the module docstring.  ``kek`` defaults to the store's KEK;
    ``check_rows`` (sealed rows re-checked per tick, 0 = none) to the interval's share."""

    _task_name = "audit sealer"

    def __init__(self, store: Store, interval: float, *, kek: KeyEncryptionKey | None = None,
                 check_rows: int | None = None, sleep: Callable[[float], Awaitable[Any]] | None = None,
                 logger: logging.Logger | None = None) -> None:
        super().__init__(sleep)
        if interval <= 0:
            raise ValueError("the audit sealer needs a positive interval")
        if check_rows is None:
            check_rows = min(CHECK_ROWS_PER_TICK, max(CHECK_ROWS_MIN, math.ceil(interval * CHECK_ROWS_PER_SECOND)))
        if check_rows < 0:
            raise ValueError("check_rows must not be negative")
        self.store = store
        self.interval = float(interval)
        self._kek = kek
        self._check_rows = check_rows
        self._log = logger or log
        self._cursor = _MIN_SEQ
        self._executor: ThreadPoolExecutor | None = None
        self.ticks = 0

    def __repr__(self) -> str:
        return f"AuditSealer(store={self.store!r}, interval={self.interval:g})"

    # -- the work, in the sealer's thread ------------------------------------------------------
    def seal_once(self) -> AuditSealResult | None:
        """One tick, blocking (the sealer's thread calls it): seal, log, re-check a slice.
        Never raises for a store or seal failure: it is logged as an ERROR and None returned."""
        self.ticks += 1
        result: AuditSealResult | None = None
        kek_ok = True
        try:
            result = self.store.seal_audit(self._kek)
        except AuditSealKekMismatch as exc:
            kek_ok = False
            self._log.error("audit seal refused: %s (m2msec store audit reseal after a KEK rotation)", exc)
        except AuditTampered as exc:
            self._log.error("audit seal refused, the audit trail does not verify: %s", exc)
        except Exception as exc:  # noqa: BLE001 - the service keeps running; the next tick tries again
            self._log.error("audit seal failed: %s: %s", type(exc).__name__, exc)
        if result is not None and result.sealed_rows and result.head is not None:
            self._log.info("audit sealed %d row(s); anchor %s", result.sealed_rows, result.head.anchor)
        if kek_ok and self._check_rows:
            try:
                kek = self._kek if self._kek is not None else self.store._require_kek()
                chk = check_slice(self.store, kek, self._cursor, self._check_rows)
            except Exception as exc:  # noqa: BLE001
                self._log.error("audit trail check failed: %s: %s", type(exc).__name__, exc)
            else:
                self._cursor = chk.next_after
                for f in chk.findings[:MAX_FINDING_LINES]:
                    self._log.error("audit trail does not verify: %s (m2msec store audit verify)", f.message)
                if len(chk.findings) > MAX_FINDING_LINES:
                    self._log.error("audit trail does not verify: %d more finding(s) in this slice",
                                    len(chk.findings) - MAX_FINDING_LINES)
        return result

    async def seal_now(self) -> AuditSealResult | None:
        """Run :meth:`seal_once` in the sealer's own thread (ticks never overlap)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-sealer")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.seal_once)

    # -- the loop --------------------------------------------------------------------------------
    async def run(self) -> None:
        self._wake = asyncio.Event()
        while True:
            await self.seal_now()
            await self._nap(self.interval)

    async def close(self, *, final: bool = True) -> None:
        """Stop the loop, then (``final``) seal once more and release the thread.  Call it after
        the service stopped writing (listeners closed) and before the store is closed."""
        await self.stop()
        try:
            if final:
                await self.seal_now()
        finally:
            ex, self._executor = self._executor, None
            if ex is not None:
                ex.shutdown(wait=True)
