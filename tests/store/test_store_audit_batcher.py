"""AuditBatcher: group commit of audit records (SQLite and PostgreSQL, see conftest.py)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from m2msec.store import AuditBatcher, AuditCommitError, AuditEntry, InvalidValue, Store, StoreError


def _subjects(store: Store) -> list[str]:
    return [a.subject for a in store.list_audit(limit=None, newest_first=False)]


def test_append_returns_committed_entry(store: Store, clock: Any) -> None:
    b = AuditBatcher(store)
    e = b.append("maf", "key_retrieval", "C1", "ok", {"relativeKeyID": "ab" * 16})
    # visible to another reader as soon as append returned
    [got] = store.list_audit(limit=None)
    assert (got.seq, got.subject, got.details, got.ts) == (e.seq, "C1", {"relativeKeyID": "ab" * 16}, clock.now)
    b.close()


def test_sequential_order_and_seq(store: Store) -> None:
    b = AuditBatcher(store)
    seqs = [b.append("a", "x", f"s{i}", "ok").seq for i in range(20)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 20
    assert _subjects(store) == [f"s{i}" for i in range(20)]
    b.close()


def test_queue_order_is_commit_order_and_batches_form(store: Store) -> None:
    """Records queued while a commit is running go into the next batch, in queue order."""
    b = AuditBatcher(store)
    gate = threading.Event()
    entered = threading.Event()
    real = b._commit  # noqa: SLF001

    def slow_commit(batch: list[Any]) -> None:
        entered.set()
        gate.wait(10)
        real(batch)

    b._commit = slow_commit  # type: ignore[method-assign]
    results: dict[int, int] = {}
    first = threading.Thread(target=lambda: results.__setitem__(-1, b.append("a", "x", "first", "ok").seq))
    first.start()
    assert entered.wait(10)  # the writer holds the first record and waits at the gate
    threads = []
    for i in range(30):
        t = threading.Thread(target=lambda i=i: results.__setitem__(i, b.append("a", "x", f"r{i}", "ok").seq))
        t.start()
        threads.append(t)
        while len(b._queue) < i + 1:  # noqa: SLF001 - enqueue in a known order
            pass
    gate.set()
    for t in [first, *threads]:
        t.join(10)
    assert _subjects(store) == ["first"] + [f"r{i}" for i in range(30)]
    assert [results[i] for i in range(30)] == sorted(results[i] for i in range(30))
    assert b.batches == 2 and b.records == 31  # one commit for the 30 queued behind the first
    b.close()


def test_no_record_lost_under_concurrency(store: Store) -> None:
    b = AuditBatcher(store, max_batch=16)
    n_threads, per = 12, 25
    seqs: list[int] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        for i in range(per):
            e = b.append("a", "x", f"{t}-{i}", "ok", {"i": i})
            with lock:
                seqs.append(e.seq)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    rows = store.list_audit(limit=None, newest_first=False)
    assert len(rows) == len(seqs) == n_threads * per
    assert sorted(seqs) == [r.seq for r in rows]
    assert {r.subject for r in rows} == {f"{t}-{i}" for t in range(n_threads) for i in range(per)}
    # each thread's records are in its own order
    for t in range(n_threads):
        mine = [r.details["i"] for r in rows if r.subject.startswith(f"{t}-")]
        assert mine == list(range(per))
    assert b.batches < n_threads * per  # some grouping happened
    b.close()


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "writer-thread"])
def test_async_waiters(store: Store, inline: bool) -> None:
    b = AuditBatcher(store, inline_async=inline)

    async def main() -> list[int]:
        entries = await asyncio.gather(*(b.append_async("a", "x", f"c{i}", "ok") for i in range(100)))
        return [e.seq for e in entries]

    seqs = asyncio.run(main())
    assert seqs == sorted(seqs)  # gather enqueues in order: seq follows
    assert _subjects(store) == [f"c{i}" for i in range(100)]
    assert b.batches < 100
    b.close()


def test_failed_commit_fails_every_waiter_of_the_batch(store: Store) -> None:
    """A commit that fails (here: the audit table rejects the batch) fails every caller in it,
    and nothing of the batch is in the store; the batcher keeps working afterwards."""
    b = AuditBatcher(store)
    gate = threading.Event()
    entered = threading.Event()
    real = b._commit  # noqa: SLF001
    backend = store._backend  # noqa: SLF001
    orig_execute = backend.execute
    fail = {"on": False}

    def failing_execute(conn: Any, sql: str, params: Any = ()) -> Any:
        if fail["on"] and sql.startswith("INSERT INTO m2msec_audit") and "boom" in tuple(params)[4::6]:  # outcome of each row
            raise StoreError("simulated commit failure")
        return orig_execute(conn, sql, params)

    def gated(batch: list[Any]) -> None:
        entered.set()
        gate.wait(10)
        real(batch)

    backend.execute = failing_execute  # type: ignore[method-assign]
    b._commit = gated  # type: ignore[method-assign]
    errors: dict[str, BaseException | None] = {}

    def call(subject: str) -> None:
        try:
            b.append("a", "x", subject, "boom" if subject == "bad" else "ok")
            errors[subject] = None
        except BaseException as exc:  # noqa: BLE001
            errors[subject] = exc

    try:
        t0 = threading.Thread(target=call, args=("before",))
        t0.start()
        assert entered.wait(10)
        fail["on"] = True
        ts = [threading.Thread(target=call, args=(s,)) for s in ("ok1", "bad", "ok2")]
        for t in ts:
            t.start()
        while len(b._queue) < 3:  # noqa: SLF001
            pass
        gate.set()
        for t in [t0, *ts]:
            t.join(10)
    finally:
        backend.execute = orig_execute  # type: ignore[method-assign]
    assert errors["before"] is None
    for s in ("ok1", "bad", "ok2"):
        assert isinstance(errors[s], AuditCommitError), errors[s]
        assert "simulated commit failure" in str(errors[s])
    assert _subjects(store) == ["before"]  # the failed batch left no row
    b.append("a", "x", "after", "ok")
    assert _subjects(store) == ["before", "after"]
    b.close()


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "writer-thread"])
def test_failed_commit_fails_async_waiters(store: Store, inline: bool) -> None:
    b = AuditBatcher(store, inline_async=inline)
    store.close()  # every commit now fails

    async def main() -> None:
        with pytest.raises(AuditCommitError):
            await b.append_async("a", "x", "s", "ok")

    asyncio.run(main())


def test_invalid_record_rejected_before_queueing(store: Store) -> None:
    b = AuditBatcher(store)
    with pytest.raises(InvalidValue):
        b.append("a", "x", "s", "ok", {"key": b"\x00" * 16})
    with pytest.raises(InvalidValue):
        b.append("a", "x\x00", "s", "ok")
    assert b.records == 0 and store.list_audit() == []
    b.close()


def test_append_inside_open_transaction_refused(store: Store) -> None:
    b = AuditBatcher(store)
    with store.transaction() as tx:
        with pytest.raises(StoreError, match="open transaction"):
            b.append("a", "x", "s", "ok")
        tx.append_audit("a", "x", "in-tx", "ok")
    assert _subjects(store) == ["in-tx"]
    b.close()


def test_closed_batcher_refuses(store: Store) -> None:
    b = AuditBatcher(store)
    b.append("a", "x", "s", "ok")
    b.close()
    with pytest.raises(StoreError, match="closed"):
        b.append("a", "x", "t", "ok")
    assert _subjects(store) == ["s"]


def test_idle_writer_thread_exits_and_restarts(store: Store) -> None:
    b = AuditBatcher(store, idle_exit=0.05)
    b.append("a", "x", "s1", "ok")
    t = b._thread  # noqa: SLF001
    assert t is not None
    t.join(5)
    assert not t.is_alive() and b._thread is None  # noqa: SLF001
    b.append("a", "x", "s2", "ok")
    assert _subjects(store) == ["s1", "s2"]
    b.close()


def test_snapshot_is_read_only(store: Store) -> None:
    store.put_record("ns", "r", {"a": 1})
    with store.snapshot() as tx:
        assert tx.get_record("ns", "r").doc == {"a": 1}
        with pytest.raises(StoreError, match="read-only"):
            tx.put_record("ns", "r2", {})
        with pytest.raises(StoreError, match="read-only"):
            tx.append_audit("a", "x", "s", "ok")
    assert store.find_record("ns", "r2") is None


def test_inline_default_follows_the_backend(store: Store) -> None:
    assert AuditBatcher(store).inline_async is (store.backend_name == "sqlite")


def test_inline_async_one_commit_per_loop_pass_on_the_loop_thread(store: Store) -> None:
    """Coroutines that append in one pass of the loop share one commit, made on the loop's
    thread (no writer thread); more than max_batch records are split, order kept."""
    b = AuditBatcher(store, inline_async=True, max_batch=512)

    async def main(n: int) -> list[int]:
        entries = await asyncio.gather(*(b.append_async("a", "x", f"c{i}", "ok", {"i": i}) for i in range(n)))
        assert [e.details["i"] for e in entries] == list(range(n))
        return [e.seq for e in entries]

    seqs = asyncio.run(main(50))
    assert (b.batches, b.records, b._thread) == (1, 50, None)  # noqa: SLF001
    more = asyncio.run(main(600))  # 512 + 88, and more than one INSERT statement's worth of rows
    assert b.batches == 3 and b._thread is None  # noqa: SLF001
    assert seqs + more == sorted(seqs + more) and len(set(seqs + more)) == 650
    assert _subjects(store) == [f"c{i}" for i in range(50)] + [f"c{i}" for i in range(600)]
    entries = store.list_audit(limit=None, newest_first=False)
    assert [e.seq for e in entries] == seqs + more and entries[-1].details == {"i": 599}


def test_inline_async_closed_batcher_fails_pending_waiters(store: Store) -> None:
    b = AuditBatcher(store, inline_async=True)

    async def main() -> None:
        task = asyncio.ensure_future(b.append_async("a", "x", "late", "ok"))
        await asyncio.sleep(0)  # appended, not yet handed over
        b.close()
        with pytest.raises(StoreError, match="closed"):
            await task
        with pytest.raises(StoreError, match="closed"):
            await b.append_async("a", "x", "after", "ok")

    asyncio.run(main())
    assert _subjects(store) == []


def test_inline_async_unexpected_failure_fails_every_waiter(store: Store) -> None:
    """Whatever goes wrong in an inline hand-over, no coroutine is left waiting for ever."""
    b = AuditBatcher(store, inline_async=True)

    def broken(batch: list[Any]) -> None:
        raise RuntimeError("bug in the commit path")

    b._commit = broken  # type: ignore[method-assign]

    async def main() -> list[BaseException | AuditEntry]:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, _ctx: None)  # the callback's error is expected here
        return await asyncio.wait_for(
            asyncio.gather(*(b.append_async("a", "x", f"s{i}", "ok") for i in range(3)), return_exceptions=True), 5)

    results = asyncio.run(main())
    assert all(isinstance(r, AuditCommitError) and "bug in the commit path" in str(r) for r in results)
    assert _subjects(store) == []
