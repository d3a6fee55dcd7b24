"""Real processes against one store: kill -9 inside a transaction, multi-process single-use take."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from m2msec.store import KeyEncryptionKey, NotFound, open_store

_CRASH_CHILD = textwrap.dedent(
    """
    import sys, time
    from m2msec.store import KeyEncryptionKey, open_store
    store = open_store(sys.argv[1], KeyEncryptionKey.from_env())
    store.put_record("crash", "committed", {"ok": True})
    store.put_credential("crash", "committed", b"k" * 32)
    with store.transaction() as tx:
        tx.take_record("crash", "committed")  # a delete that must not survive either
        for i in range(1500):  # ~3 MB: more than SQLite's page cache, so pages spill to the WAL
            tx.put_record("crash", f"r{i}", {"i": i, "pad": "x" * 2000})
            if i % 10 == 0:
                tx.put_credential("crash", f"c{i}", b"s" * 32, metadata={"i": i})
        tx.append_audit("child", "bulk", "crash", "ok")
        print("READY", flush=True)
        time.sleep(60)
    print("COMMITTED", flush=True)
    """
)

_TAKE_CHILD = textwrap.dedent(
    """
    import json, sys
    from m2msec.store import KeyEncryptionKey, NotFound, open_store
    store = open_store(sys.argv[1], KeyEncryptionKey.from_env())
    n = int(sys.argv[2])
    print("READY", flush=True)
    sys.stdin.readline()
    won = []
    for i in range(n):
        try:
            store.take_credential("tok", f"t{i}")
            won.append(f"t{i}")
        except NotFound:
            pass
        try:
            store.take_record("tok", f"r{i}")
            won.append(f"r{i}")
        except NotFound:
            pass
    print(json.dumps(won), flush=True)
    """
)


def _env(kek: KeyEncryptionKey) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("M2MSEC_KEK_FILE", None)
    env["M2MSEC_KEK"] = kek._key.hex()
    return env


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "READY":
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"child did not get ready: {line!r} {err[-2000:]}")


def test_kill_9_inside_transaction_leaves_no_partial_rows(store_url: str, kek: KeyEncryptionKey) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _CRASH_CHILD, store_url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(kek))
    try:
        _wait_ready(proc)
        if store_url.startswith("sqlite://"):
            # uncommitted pages really reached the WAL file: recovery must ignore them
            assert os.stat(store_url[len("sqlite://"):] + "-wal").st_size > 1_000_000
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    with open_store(store_url, kek) as s:
        # what was committed before the transaction is intact (the in-transaction take was undone)
        assert s.get_record("crash", "committed").doc == {"ok": True}
        assert s.get_credential("crash", "committed").secret == b"k" * 32
        # nothing of the killed transaction is visible
        assert [r.rec_id for r in s.list_records("crash")] == ["committed"]
        assert [c.cred_id for c in s.list_credentials("crash")] == ["committed"]
        assert s.list_audit() == []
        # and the database is not left locked: the same identifiers can be written now
        s.put_record("crash", "r0", {"after": "crash"}, if_absent=True)
        s.put_credential("crash", "c0", b"after", if_absent=True)
        assert s.get_record("crash", "r0").version == 1


def test_take_across_processes_each_token_exactly_once(store_url: str, kek: KeyEncryptionKey) -> None:
    n, procs_n = 25, 3
    with open_store(store_url, kek) as s:
        with s.transaction() as tx:
            for i in range(n):
                tx.put_credential("tok", f"t{i}", os.urandom(16))
                tx.put_record("tok", f"r{i}", {"i": i})
    procs = [
        subprocess.Popen([sys.executable, "-c", _TAKE_CHILD, store_url, str(n)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(kek))
        for _ in range(procs_n)
    ]
    try:
        for p in procs:
            _wait_ready(p)
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err[-2000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    won = [x for r in results for x in r]
    assert sorted(won) == sorted([f"t{i}" for i in range(n)] + [f"r{i}" for i in range(n)])  # no token twice
    with open_store(store_url, kek) as s:
        assert s.list_credentials("tok") == [] and s.list_records("tok") == []
        with pytest.raises(NotFound):
            s.take_credential("tok", "t0")
