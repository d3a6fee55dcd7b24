"""Group commit for audit records: many concurrent appends, one transaction (one disk sync) per batch.

The scale-out rule (DESIGN.md section 3) wants every security-relevant action audited in the
durable store before its effect leaves the service — for the MAF, every key disclosure of a
Key Retrieval (TS-0003 8.8.2.8) is recorded before the key is sent.  Writing each record in its
own transaction costs one synchronous commit (an fsync with SQLite ``synchronous = FULL``) per
request and serialises concurrent requests on SQLite's single writer.  :class:`AuditBatcher`
keeps the same guarantee at a fraction of the cost:

* callers (worker threads via :meth:`AuditBatcher.append`, coroutines via
  :meth:`AuditBatcher.append_async`) enqueue an already validated record and wait;
* one writer thread per batcher takes everything queued (up to ``max_batch``), writes it in
  one store transaction (multi-row INSERTs) and commits once; while it commits, new records
  queue up for the next batch (no timer: a lone caller is committed at once, batches grow
  with the load);
* coroutines' records reach the writer once per pass of their event loop (one hand-over for
  all records appended in that pass and the next one).  With ``inline_async`` (the default
  for a local SQLite file) that hand-over *is* the commit, made on the loop's thread: no
  thread hand-offs, no GIL contention, at the price of the loop waiting for the commit (a
  few tens of microseconds of CPU plus the disk sync).  PostgreSQL commits are network
  round trips and stay on the writer thread;
* a caller returns only after the commit holding its record returned, with the record's
  :class:`~m2msec.store.AuditEntry` (``seq`` as assigned); if that commit fails, every caller
  of the batch gets :class:`AuditCommitError` and none of them may act as if audited.

Deferred sync (``sync_interval`` > 0; the MAF's ``audit_sync_interval_s``, default 1 s): a batch
commits with ``Store.transaction(durable=False)``.  The caller is still released only after
that commit returned, so the record is in the database before the key leaves: a crash, kill or
restart of the service loses nothing, and every other reader (another instance, ``m2msec store
audit``) sees it.  What is deferred is only the disk sync: a syncer thread calls
:meth:`Store.sync_committed` at most ``sync_interval`` seconds after the first commit not yet
synced (one fsync per interval instead of one per batch), so a crash of the operating system
or a power failure can lose the records of at most the last ``sync_interval`` seconds (the
trade-off of HashiCorp Vault's audit devices, which write each entry before answering, and of
auditd's default ``flush = incremental_async``).  A failed sync is logged at ERROR and every
later batch commits durably again until a sync succeeds; :meth:`close` syncs once more.
``sync_interval = 0`` (the default of this class) makes every batch commit durable (one disk
sync per batch, before any caller of the batch is released).

Order: records of one batcher are written in the order their ``append`` calls enqueued them,
per thread and per event loop (``seq`` grows in that order); ``ts`` is the store clock at the
``append`` call.  Records of different threads, loops, batchers and instances interleave in
commit order, as with single appends.  A caller whose wait is abandoned (timeout, task
cancelled) does not withdraw its record: it is committed anyway (an audit may over-report a
disclosure that was not sent, never under-report one).

An inline commit that finds SQLite's write lock held (a procedure's transaction, another
process) waits for it up to the store's busy timeout, like every SQLite writer.  The writer
thread is started on demand and ends after ``idle_exit`` seconds without records, so an idle
batcher holds no thread; :meth:`close` flushes and stops it (records of coroutines not yet
handed over when it is called fail with :class:`~m2msec.store.StoreError`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from m2msec.store.errors import StoreError
from m2msec.store.store import AuditDraft, AuditEntry, Store, audit_draft

__all__ = ["AuditBatcher", "AuditCommitError"]

log = logging.getLogger(__name__)


class AuditCommitError(StoreError):
    """The batch holding this audit record did not commit (the record is not in the store)."""


_Done = Callable[[AuditEntry | None, BaseException | None], None]
_Waiter = Any  # a _Done callable or an _AsyncWaiter


class _Item:
    __slots__ = ("draft", "ts", "done")

    def __init__(self, draft: AuditDraft, ts: datetime, done: _Waiter) -> None:
        self.draft = draft
        self.ts = ts
        self.done = done


class _SyncWaiter:
    __slots__ = ("event", "entry", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.entry: AuditEntry | None = None
        self.error: BaseException | None = None

    def __call__(self, entry: AuditEntry | None, error: BaseException | None) -> None:
        self.entry, self.error = entry, error
        self.event.set()


class _AsyncWaiter:
    """Resolved on its event loop; the writer wakes each loop once per batch (one self-pipe write)."""

    __slots__ = ("loop", "fut")

    def __init__(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[AuditEntry]) -> None:
        self.loop = loop
        self.fut = fut


def _resolve_all(results: list[tuple[asyncio.Future[AuditEntry], AuditEntry | None, BaseException | None]]) -> None:
    for fut, entry, error in results:
        if fut.done():  # the waiting task was cancelled: the record is committed (or failed) anyway
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(entry)  # type: ignore[arg-type]


def _fail_waiters(items: list[_Item], error: BaseException) -> None:
    """Fail the still-waiting coroutines of ``items`` (all :class:`_AsyncWaiter`, on this loop)."""
    for it in items:
        if not it.done.fut.done():
            it.done.fut.set_exception(error)


class AuditBatcher:
    """Group commit of audit records into ``store`` (thread-safe; any number of event loops)."""

    def __init__(self, store: Store, *, max_batch: int = 512, idle_exit: float = 2.0,
                 inline_async: bool | None = None, sync_interval: float = 0.0) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if not 0 <= sync_interval <= 60:
            raise ValueError("sync_interval must be 0 (sync every commit) to 60 seconds")
        #: deferred sync: seconds a committed record may wait for its disk sync (0: none)
        self.sync_interval = float(sync_interval)
        self._sync_cv = threading.Condition()
        self._unsynced_since: float | None = None  # monotonic time of the first commit not yet synced
        self._sync_thread: threading.Thread | None = None
        self._sync_broken = False  # the last sync failed: commit durably until one succeeds
        #: completed deferred syncs and failed ones (observability, tests)
        self.syncs = 0
        self.sync_failures = 0
        self.store = store
        #: commit the records of coroutines on their event loop's thread (no writer thread, no
        #: hand-offs); default: for a local SQLite file, whose commit costs tens of microseconds
        self.inline_async = store.backend_name == "sqlite" if inline_async is None else inline_async
        self.max_batch = max_batch
        self.idle_exit = idle_exit
        self._cv = threading.Condition()
        self._queue: deque[_Item] = deque()
        #: records appended on an event loop, not yet handed to the writer (touched on that loop only)
        self._loop_pending: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        #: committed batches and records (observability, tests)
        self.batches = 0
        self.records = 0

    def __repr__(self) -> str:
        return f"AuditBatcher(store={self.store!r}, queued={len(self._queue)}, closed={self._closed})"

    # ------------------------------------------------------------------ public API

    def append(self, actor: str, action: str, subject: str, outcome: str,
               details: Mapping[str, Any] | None = None, *, timeout: float | None = None) -> AuditEntry:
        """Queue one record and block until the commit that holds it returned.

        Invalid records raise :class:`~m2msec.store.InvalidValue` at once (they never reach a
        batch); a failed commit raises :class:`AuditCommitError`.  Must not be called while this
        thread holds an open transaction on the same store (use ``tx.append_audit`` there).
        """
        if getattr(self.store._local, "tx", None) is not None:  # noqa: SLF001
            raise StoreError("this thread has an open transaction on the store: use tx.append_audit, "
                             "a batched append would wait for the lock that transaction holds")
        waiter = _SyncWaiter()
        self._enqueue(audit_draft(actor, action, subject, outcome, details), waiter)
        if not waiter.event.wait(timeout):
            raise AuditCommitError(f"audit record not committed within {timeout} s (it may still be)")
        if waiter.error is not None:
            raise waiter.error
        assert waiter.entry is not None
        return waiter.entry

    async def append_async(self, actor: str, action: str, subject: str, outcome: str,
                           details: Mapping[str, Any] | None = None) -> AuditEntry:
        """:meth:`append` for coroutines: waits for the commit without blocking the event loop
        or holding a worker thread.  Records appended during one pass of the event loop reach
        the writer together (one hand-over, one wake-up)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[AuditEntry] = loop.create_future()
        draft = audit_draft(actor, action, subject, outcome, details)
        if self._closed:
            raise StoreError("audit batcher is closed")
        item = _Item(draft, self.store._now(), _AsyncWaiter(loop, fut))  # noqa: SLF001 - the store clock
        pending = self._loop_pending.get(loop)
        if pending is None:
            pending = self._loop_pending[loop] = []
            # one more pass first: the loop's next poll lets coroutines whose data arrived
            # meanwhile add their records to this batch (measured: about twice the batch size
            # under load, for the cost of one loop pass of latency)
            loop.call_soon(loop.call_soon, self._hand_over, loop)
        pending.append(item)
        return await fut

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """On ``loop``: queue everything its coroutines appended since the last hand-over."""
        items = self._loop_pending.pop(loop, [])
        if self.inline_async and not self._closed:
            try:
                for i in range(0, len(items), self.max_batch):
                    self._commit(items[i : i + self.max_batch])
            except BaseException as exc:  # noqa: BLE001 - no waiter may be left hanging
                _fail_waiters(items, AuditCommitError(f"audit batch not committed: {type(exc).__name__}: {exc}"))
                raise
            return
        with self._cv:
            if self._closed:
                _fail_waiters(items, StoreError("audit batcher is closed"))
                return
            self._queue.extend(items)
            self._start_locked()
            self._cv.notify()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record queued before this call has been committed or failed."""
        if self._thread is threading.current_thread():
            raise StoreError("flush() from the writer thread")
        with self._cv:
            if not self._queue and self._thread is None:
                return
        waiter = _SyncWaiter()
        with self._cv:
            if self._closed and self._thread is None:
                return
            # a marker item: resolved (without a row) when the writer reaches it
            self._queue.append(_Item(None, None, waiter))  # type: ignore[arg-type]
            self._start_locked()
            self._cv.notify()
        waiter.event.wait(timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        """Commit what is queued, stop the writer, sync what is committed but not yet synced;
        later appends raise :class:`StoreError`."""
        with self._cv:
            self._closed = True
            thread = self._thread
            self._cv.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._sync_cv:
            syncer = self._sync_thread
            self._sync_cv.notify_all()
        if syncer is not None and syncer is not threading.current_thread():
            syncer.join(timeout)
        self.sync()

    def sync(self) -> bool:
        """Put the records committed so far on disk now (deferred sync); False if that failed
        (logged).  Nothing to do when every commit was durable."""
        with self._sync_cv:
            if self._unsynced_since is None:
                return True
            self._unsynced_since = None
        if self.store.closed:
            return True  # Store.close synced what was committed
        try:
            self.store.sync_committed()
        except Exception as exc:  # noqa: BLE001 - reported, retried, and commits turn durable
            if self.store.closed:
                return True  # closed meanwhile: Store.close synced what was committed
            with self._sync_cv:
                self.sync_failures += 1
                self._sync_broken = True
                if self._unsynced_since is None:
                    self._unsynced_since = time.monotonic()
            log.error("audit records committed but not yet on disk: sync failed (%s: %s); "
                      "later audit commits sync each", type(exc).__name__, exc)
            return False
        with self._sync_cv:
            self.syncs += 1
            self._sync_broken = False
        return True

    def _committed_unsynced(self) -> None:
        if self._unsynced_since is not None and self._sync_thread is not None:
            return  # a sync is already due (read without the lock: a race only costs one extra sync)
        with self._sync_cv:
            if self._unsynced_since is not None and self._sync_thread is not None:
                return  # the syncer already waits for that deadline: no wake-up per commit
            if self._unsynced_since is None:
                self._unsynced_since = time.monotonic()
            if self._sync_thread is None:
                self._sync_thread = threading.Thread(target=self._syncer, name="m2msec-audit-sync", daemon=True)
                self._sync_thread.start()
            self._sync_cv.notify()

    def _syncer(self) -> None:
        while True:
            with self._sync_cv:
                idle_since = time.monotonic()
                while True:
                    if self._closed:
                        self._sync_thread = None
                        return  # close() syncs what is left
                    now = time.monotonic()
                    if self._unsynced_since is not None:
                        left = self._unsynced_since + self.sync_interval - now
                        if left <= 0:
                            break
                    else:
                        left = self.idle_exit - (now - idle_since)
                        if left <= 0:
                            self._sync_thread = None
                            return
                    self._sync_cv.wait(left)
            self.sync()

    # ------------------------------------------------------------------ internals

    def _enqueue(self, draft: AuditDraft, done: _Waiter) -> None:
        ts = self.store._now()  # noqa: SLF001 - the store clock, checked like every store write
        with self._cv:
            if self._closed:
                raise StoreError("audit batcher is closed")
            self._queue.append(_Item(draft, ts, done))
            self._start_locked()
            self._cv.notify()

    def _start_locked(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._writer, name="m2msec-audit-writer", daemon=True)
            self._thread.start()

    def _writer(self) -> None:
        while True:
            with self._cv:
                idle_since = time.monotonic()
                while not self._queue:
                    if self._closed:
                        self._thread = None
                        return
                    left = self.idle_exit - (time.monotonic() - idle_since)
                    if left <= 0:
                        self._thread = None
                        return
                    self._cv.wait(left)
                n = min(len(self._queue), self.max_batch)
                batch = [self._queue.popleft() for _ in range(n)]
            self._commit(batch)

    def _commit(self, batch: list[_Item]) -> None:
        rows = [it for it in batch if it.draft is not None]
        entries: list[AuditEntry] = []
        error: BaseException | None = None
        deferred = self.sync_interval > 0 and not self._sync_broken
        if rows:
            try:
                with self.store.transaction(durable=not deferred) as tx:
                    entries = tx._append_drafts([(it.draft, it.ts) for it in rows])  # noqa: SLF001
            except BaseException as exc:  # noqa: BLE001 - every waiter must hear about it
                error = exc
        if error is None and rows:
            self.batches += 1
            self.records += len(rows)
            if deferred:
                self._committed_unsynced()
        results = iter(entries)
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for it in batch:
            entry: AuditEntry | None = None
            err: BaseException | None = None
            if it.draft is None:
                pass
            elif error is not None:
                # one fresh exception per waiter (they are raised in different threads/tasks)
                err = AuditCommitError(f"audit batch of {len(rows)} records not committed: "
                                       f"{type(error).__name__}: {error}")
                err.__cause__ = error
            else:
                entry = next(results)
            if isinstance(it.done, _AsyncWaiter):
                by_loop.setdefault(it.done.loop, []).append((it.done.fut, entry, err))
            else:
                it.done(entry, err)
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for loop, res in by_loop.items():
            if loop is here:  # committed on the waiters' own loop (inline_async)
                _resolve_all(res)
                continue
            try:
                loop.call_soon_threadsafe(_resolve_all, res)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass
