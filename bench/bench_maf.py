"""MAF Key Retrieval (TS-0003 8.8.2.8) throughput and latency.

    .venv/bin/python bench/bench_maf.py [--keys 10000,1000000] [--clients 1,10,50] [--duration 3] [--rounds 3]
                                        [--latency-n 2000] [--db-dir DIR] [--workers 1]
                                        [--audit-seal-interval 0]
    .venv/bin/python bench/bench_maf.py --decompose [--keys 10000] [--clients 10] [--rounds 3]

(a) Throughput: key retrievals per second over persistent TLS-PSK connections (one MAF
Handshake per connection, then HTTP/1.1 keep-alive) with 1, 10 and 50 concurrent clients,
against a *plain* endpoint: the same MAFServer (same TLS engine, same h11 connection loop,
same PSK handshake) whose dispatch returns a fixed body of the size of a Key Retrieval
response without touching the store.  The server runs in a child process (the load
generator in this one; both share the machine's cores), and the table also gives the server
process's CPU time per request (utime+stime from /proc), which does not depend on whether the
load generator saturates.  Target: MAF >= 0.8x plain.  ``--workers N`` runs each server
(MAF and plain alike) as N processes on one port (SO_REUSEPORT, as ``m2msec maf serve --workers
N``): the first binds, the others join its port; the CPU column sums all N processes.

(b) Latency: p50/p99 of sequential retrievals of random keys from one client, with the store
populated to each size in ``--keys`` (Key Registration rows written directly through the
store API, one transaction per 10 000 keys, the same three rows a Key Registration writes:
``maf.keyid``, ``maf.keyreg``, ``maf.key``).  Target: flat across sizes, p99 < 20 ms.

(c) The SQL of one Key Retrieval, captured from the store backend, with SQLite's
EXPLAIN QUERY PLAN: every look-up must be a primary-key search, not a scan.

``--decompose`` runs, instead, one server per variant of :data:`DECOMPOSE` (the fixed body; then
request parsing and response encoding; the durable audit record alone; the store read alone; the
MAF; the MAF with an fsync per audit commit; the MAF without any fsync) and prints their rates and server CPU per request side by side: where
the MAF's extra cost goes, measured rather than profiled.  ``maf-nofsync`` is an experiment
(SQLite ``synchronous = OFF`` in that process only), not a configuration the MAF offers.

Every Key Retrieval is one write transaction (its audit record), committed before the answer
leaves (group commit).  With the MAF's default ``audit_sync_interval_s`` (1 s,
``--audit-sync-interval``) that commit does not wait for the disk and one fsync a second puts
the records on it; ``--audit-sync-interval 0`` measures an fsync per audit commit instead
(``--decompose`` shows both: ``maf`` and ``maf-fsync``).  ``--db-dir`` chooses where the database lives (default: a temporary directory
from ``tempfile``; say where it is: fsync cost depends on the disk, tmpfs makes it free).
``--audit-seal-interval S`` runs the audit sealer of ``m2msec maf serve``
(:class:`m2msec.store.autoseal.AuditSealer`, every S seconds) in the (first) MAF server process,
as ``audit_seal_interval_s`` does; its ``audit sealed ...`` lines go to stderr.  Default 0: no
sealer (the server of this benchmark is a bare MAFServer, not ``serve``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from m2msec.keys import maf_key_id
from m2msec.maf import AdminConfig, MAFClient, MAFClientConfig, MAFServer, MAFService
from m2msec.maf.protocol import (
    ClientRegistrationRequest,
    KeyRetrievalRequest,
    KeyRetrievalResponse,
    Procedure,
    decode_body,
    encode_body,
)
from m2msec.maf.service import AUDIT_SYNC_INTERVAL_DEFAULT, NS, MAFPeer
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.onem2m.timestamps import format_timestamp
from m2msec.store import KeyEncryptionKey, Store, open_store
from m2msec.tls.engine import PSKCredentials

MAF = "maf.bench.example.com"
ADMIN = "sp.bench.example.com"
SOURCE = "//sp.bench.example.com/CSource"
TARGET = "//sp.bench.example.com/CTarget"
KMID = f"ctarget@{MAF}"
KM = bytes(range(32))
BATCH = 10_000


def utc_now() -> datetime:
    return datetime.now(UTC)


#: the MAF's audit_sync_interval_s in the server processes (``--audit-sync-interval``, passed on
#: to the children in the environment)
SYNC_ENV = "M2MSEC_BENCH_AUDIT_SYNC_INTERVAL"


def _service(store: Store, sync_interval: float | None = None) -> MAFService:
    if sync_interval is None:
        sync_interval = float(os.environ.get(SYNC_ENV, AUDIT_SYNC_INTERVAL_DEFAULT))
    return MAFService(store, MAF, admins=[AdminConfig(ADMIN)], clock=utc_now, audit_sync_interval=sync_interval)


# ------------------------------------------------------------------ store population


def create_db(path: Path, kek: KeyEncryptionKey) -> Store:
    store = open_store(f"sqlite:///{path}", kek, clock=utc_now)
    svc = _service(store)
    svc.add_km_client(KMID, KM, client_id=TARGET)
    svc.run(Procedure.CLIENT_REGISTRATION, _peer(), ClientRegistrationRequest(MAF, utc_now() + timedelta(days=1), ADMIN),
            lambda: (b"", b""))
    return store


def _peer() -> MAFPeer:
    return MAFPeer(kind="km", client_id=TARGET, credential_id=f"11-{KMID}", kmid=KMID)


def populate(store: Store, n: int, *, start: int = 0) -> tuple[list[str], float]:
    """Write ``n`` Key Registrations (SUID 33, Source -> Target) in transactions of BATCH keys;
    returns a sample of RelativeKeyIDs and the seconds it took."""
    expires = utc_now() + timedelta(days=30)
    exp_s = format_timestamp(expires)
    sample: list[str] = []
    rng = random.Random(start)
    t0 = time.perf_counter()
    done = 0
    while done < n:
        with store.transaction() as tx:
            for _ in range(min(BATCH, n - done)):
                rel = secrets.token_hex(16)
                doc = {"keyID": maf_key_id(bytes.fromhex(rel), MAF), "sourceMAFClientID": SOURCE, "adminFQDN": ADMIN,
                       "suid": int(SUID.MAF_ESPRIM), "targetIDs": [TARGET], "labels": [], "origin": "client",
                       "expirationTime": exp_s}
                tx.put_record(NS.KEY_ID, rel, {"sourceMAFClientID": SOURCE})
                tx.put_record(NS.KEY_REG, rel, doc, expires_at=expires)
                tx.put_credential(NS.KEY, rel, os.urandom(32), metadata={"suid": int(SUID.MAF_ESPRIM)},
                                  expires_at=expires)
                if len(sample) < 20_000 and rng.random() < max(20_000 / max(n, 1), 0.002):
                    sample.append(rel)
                done += 1
    return sample, time.perf_counter() - t0


def query_plans(store: Store, rel: str) -> list[tuple[str, list[str]]]:
    """Run one Key Retrieval through MAFService.run, capture its SQL and EXPLAIN QUERY PLAN it."""
    backend = store._backend  # observation only: wrap the backend's execute for one call
    captured: list[tuple[str, tuple[Any, ...]]] = []
    orig = backend.execute

    def spy(conn: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        captured.append((sql, tuple(params)))
        return orig(conn, sql, params)

    backend.execute = spy  # type: ignore[method-assign]
    try:
        rsp = _service(store).run(Procedure.KEY_RETRIEVAL, _peer(), KeyRetrievalRequest(rel), lambda: (b"", b""))
        assert isinstance(rsp, KeyRetrievalResponse) and rsp.source_maf_client_id == SOURCE
    finally:
        backend.execute = orig  # type: ignore[method-assign]
    out = []
    with store._conn(write=False) as conn:
        for sql, params in captured:
            if not sql.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE")):
                continue
            rows = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
            out.append((" ".join(sql.split())[:110], [str(r[-1]) for r in rows]))
    return out


# ------------------------------------------------------------------ the server process


class PlainServer(MAFServer):
    """The same TLS + h11 server, answering every request with a fixed Key-Retrieval-sized body."""

    BODY = encode_body(KeyRetrievalResponse(expiration_time=datetime(2030, 1, 1, tzinfo=UTC),
                                            source_maf_client_id=SOURCE, admin_fqdn=ADMIN, suid=SUID.MAF_ESPRIM,
                                            key_value=bytes(32)))

    async def _dispatch(self, peer: Any, req: Any, body: bytes, exporter: Any) -> Any:
        return RSC.OK.http_status, [("Content-Type", "application/json"), ("X-M2M-RSC", str(int(RSC.OK)))], self.BODY


#: ``--decompose``: server variants, each adding one part of a Key Retrieval to the previous one
DECOMPOSE = {
    "plain": "fixed body (the baseline)",
    "codec": "+ parse the request, build and encode a real response (no store)",
    "audit": "+ audit record (group commit as configured), no store read",
    "read": "+ store read (key registration, key value, client registration), no audit",
    "maf": "the MAF: codec + read + audit (audit_sync_interval as configured)",
    "maf-fsync": "the MAF with audit_sync_interval 0 (an fsync per audit commit, before the answer)",
    "maf-nofsync": "the MAF with SQLite synchronous=OFF (experiment only: no durability)",
}


class DecomposeServer(MAFServer):
    """A MAFServer doing only part of a Key Retrieval (``--decompose``; the answers of
    "codec" and "audit" are well-formed but carry a zero key)."""

    kind = "codec"

    async def _dispatch(self, peer: Any, req: Any, body: bytes, exporter: Any) -> Any:
        if self.kind in ("maf", "maf-fsync", "maf-nofsync"):
            return await super()._dispatch(peer, req, body, exporter)
        svc = self.service
        request = decode_body(KeyRetrievalRequest, body)
        if self.kind == "read":
            found = svc._key_retrieval_cached(peer, request) or svc._key_retrieval_read(peer, request)
            response = found[0]
        else:
            response, subject, details = svc._key_retrieval_answer(
                peer.client_id, request.relative_key_id,
                {"sourceMAFClientID": SOURCE, "adminFQDN": ADMIN, "suid": int(SUID.MAF_ESPRIM), "labels": []},
                utc_now() + timedelta(days=1), bytes(32))
            if self.kind == "audit":
                await svc.audit.append_async("maf", "key_retrieval", subject, "ok", details)
        return RSC.OK.http_status, [("Content-Type", "application/json"), ("X-M2M-RSC", str(int(RSC.OK)))], \
            encode_body(response)


def _no_fsync() -> None:
    """``maf-nofsync`` only: every SQLite connection of this process commits without fsync."""
    from m2msec.store import _backends

    orig = _backends.SQLiteBackend.connect

    def connect(self: Any) -> Any:
        conn = orig(self)
        conn.execute("PRAGMA synchronous = OFF")
        return conn

    _backends.SQLiteBackend.connect = connect  # type: ignore[method-assign]


def serve_child(db: str, kek_file: str, kind: str, port: int = 0, reuse_port: bool = False,
                seal_interval: float = 0.0) -> None:
    if kind == "maf-nofsync":
        _no_fsync()
    store = open_store(f"sqlite:///{db}", KeyEncryptionKey.from_file(kek_file), clock=utc_now)
    svc = _service(store, 0.0 if kind == "maf-fsync" else None)
    cls: type[MAFServer]
    if kind in DECOMPOSE and kind not in ("plain", "maf"):
        cls = type(f"Decompose_{kind}", (DecomposeServer,), {"kind": kind})
    else:
        cls = PlainServer if kind == "plain" else MAFServer

    async def main() -> None:
        sealer = None
        if seal_interval > 0:
            from m2msec.store.autoseal import AuditSealer, show_seal_log

            show_seal_log()
            sealer = AuditSealer(store, seal_interval)
            sealer.start()
        srv = await cls(svc, host="127.0.0.1", port=port, idle_timeout=600, reuse_port=reuse_port).start()
        print(f"port {srv.port}", flush=True)
        try:
            await srv.serve_forever()
        finally:
            if sealer is not None:
                await sealer.stop()

    try:
        asyncio.run(main())
    finally:
        store.close()


class Child:
    """The server: ``workers`` processes on one port (the first binds; with more than one, all
    set SO_REUSEPORT and the others join the first one's port)."""

    def __init__(self, db: Path, kek: KeyEncryptionKey, kind: str, workers: int = 1,
                 seal_interval: float = 0.0) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        port = 0
        for i in range(workers):
            proc = subprocess.Popen(
                [sys.executable, __file__, "_serve", str(db), str(db.parent / "kek.hex"), kind, str(port),
                 "1" if workers > 1 else "0", str(seal_interval if i == 0 else 0.0)],
                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
            self.procs.append(proc)
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line.startswith("port "):
                self.stop()
                raise RuntimeError(f"{kind} server did not start: {line!r}")
            port = int(line.split()[1])
        self.port = port

    def cpu(self) -> float:
        total = 0
        for proc in self.procs:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# ------------------------------------------------------------------ load


def _config(port: int) -> MAFClientConfig:
    return MAFClientConfig(maf_fqdn=MAF, admin_fqdn=ADMIN, host="127.0.0.1", port=port,
                           psk=PSKCredentials(KMID.encode(), KM), timeout=30.0)


async def throughput(port: int, n_clients: int, duration: float, sample: list[str], check: bool) -> tuple[int, float]:
    bodies = [encode_body(KeyRetrievalRequest(r)) for r in sample]
    clients = [MAFClient(_config(port)) for _ in range(n_clients)]
    await asyncio.gather(*(c.connect() for c in clients))  # MAF Handshakes outside the timed window
    count = 0
    stop = False

    async def worker(c: MAFClient, i: int) -> None:
        nonlocal count
        rng = random.Random(i)
        while not stop:
            _status, rsc, _body = await c.raw(Procedure.KEY_RETRIEVAL, rng.choice(bodies))
            if check and rsc != int(RSC.OK):
                raise RuntimeError(f"retrieval answered {rsc}")
            count += 1

    tasks = [asyncio.create_task(worker(c, i)) for i, c in enumerate(clients)]
    await asyncio.sleep(min(0.5, duration / 4))  # warm-up
    start_count, t0 = count, time.perf_counter()
    await asyncio.sleep(duration)
    done, elapsed = count - start_count, time.perf_counter() - t0
    stop = True
    await asyncio.gather(*tasks)
    for c in clients:
        await c.aclose()
    return done, elapsed


async def latency(port: int, n: int, sample: list[str]) -> list[float]:
    rng = random.Random(7)
    out: list[float] = []
    async with MAFClient(_config(port)) as c:
        for r in sample[:50]:
            await c.retrieve_key(maf_key_id(bytes.fromhex(r), MAF))  # warm-up
        for _ in range(n):
            kid = maf_key_id(bytes.fromhex(rng.choice(sample)), MAF)
            t0 = time.perf_counter()
            got = await c.retrieve_key(kid)
            out.append(time.perf_counter() - t0)
            if got.source_id != SOURCE:
                raise RuntimeError("wrong key")
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


# ------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", default="10000,1000000", help="store sizes for the latency table")
    ap.add_argument("--clients", default="1,10,50")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per throughput run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating MAF/plain runs per client count (median)")
    ap.add_argument("--latency-n", type=int, default=2000)
    ap.add_argument("--db-dir", default=None)
    ap.add_argument("--workers", type=int, default=1,
                    help="server processes on one port (SO_REUSEPORT), for the MAF and the plain endpoint alike")
    ap.add_argument("--audit-seal-interval", type=float, default=0.0,
                    help="run the audit sealer in the MAF server every this many seconds (0: no sealer)")
    ap.add_argument("--audit-sync-interval", type=float, default=AUDIT_SYNC_INTERVAL_DEFAULT,
                    help="the MAF's audit_sync_interval_s (default %(default)g; 0: fsync each audit commit "
                         "before answering)")
    ap.add_argument("--populate-budget", type=float, default=600.0,
                    help="stop growing the store when population has taken this many seconds")
    ap.add_argument("--decompose", action="store_true",
                    help="instead of (a)-(c): where the MAF's extra cost goes, one server variant per part "
                         "(plain, codec, audit, read, maf, maf-fsync, maf-nofsync) at the first --clients count, "
                         "store of the first --keys size")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    os.environ[SYNC_ENV] = repr(args.audit_sync_interval)
    sizes = sorted(int(x) for x in args.keys.split(","))
    client_counts = [int(x) for x in args.clients.split(",")]
    if args.decompose:
        return run_decompose(sizes[0], client_counts[0], args.duration, args.rounds, args.db_dir)

    work = Path(tempfile.mkdtemp(prefix="bench-maf-", dir=args.db_dir))
    kek = KeyEncryptionKey.generate()
    kek.write_file(work / "kek.hex")
    db = work / "maf.db"
    print(f"database: {db} (SQLite, WAL, synchronous=FULL; audit_sync_interval {args.audit_sync_interval:g} s); "
          f"{os.cpu_count()} CPUs; "
          f"server in {_procs(args.workers)}, load generator in this one")
    try:
        store = create_db(db, kek)
        have = 0
        sample: list[str] = []
        latency_rows: list[tuple[int, float, float, float, float, float]] = []
        plans: list[tuple[str, list[str]]] = []
        spent = 0.0
        for i, size in enumerate(sizes):
            if spent > args.populate_budget:
                print(f"skipping {size:,} keys: population budget of {args.populate_budget:.0f} s used up")
                break
            more, secs = populate(store, size - have, start=size)
            spent += secs
            sample = (sample + more)[-20_000:]
            have = size
            print(f"populated {size:,} keys (+{size - (sizes[i - 1] if i else 0):,} in {secs:.1f} s, "
                  f"{(size - (sizes[i - 1] if i else 0)) / max(secs, 1e-9):,.0f} keys/s); "
                  f"db {db.stat().st_size / 1e6:,.0f} MB + WAL", flush=True)
            plans = query_plans(store, sample[0])
            store.close()
            child = Child(db, kek, "maf", args.workers, args.audit_seal_interval)
            try:
                if i == 0:
                    thr = run_throughput(db, kek, child, client_counts, args.duration, sample, args.rounds,
                                         args.workers)
                lat = asyncio.run(latency(child.port, args.latency_n, sample))
            finally:
                child.stop()
            latency_rows.append((size, pct(lat, 50) * 1e3, pct(lat, 99) * 1e3, max(lat) * 1e3,
                                 sum(lat) / len(lat) * 1e3, len(lat)))
            store = open_store(f"sqlite:///{db}", kek, clock=utc_now)
        store.close()

        print("\n(a) Key Retrieval throughput over persistent TLS-PSK connections "
              f"(median of {args.rounds} alternating runs of {args.duration:g} s, store of {sizes[0]:,} keys, "
              f"MAF and plain each in {_procs(args.workers)})")
        print(f"{'clients':>8} {'MAF req/s':>10} {'plain req/s':>12} {'ratio':>6} "
              f"{'MAF srv CPU us/req':>19} {'plain srv CPU us/req':>21}")
        for n, (m_rps, m_cpu), (p_rps, p_cpu) in thr:
            print(f"{n:>8} {m_rps:>10,.0f} {p_rps:>12,.0f} {m_rps / p_rps:>6.2f} {m_cpu:>19,.0f} {p_cpu:>21,.0f}")
        print(f"\n(b) Key Retrieval latency, one client, sequential, random keys (MAF in {_procs(args.workers)})")
        print(f"{'keys':>10} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'mean ms':>8}")
        for size, p50, p99, mx, mean, n in latency_rows:
            print(f"{size:>10,} {n:>6} {p50:>8.2f} {p99:>8.2f} {mx:>8.2f} {mean:>8.2f}")
        print(f"\n(c) SQL of one Key Retrieval and its SQLite query plan (store of {have:,} keys)")
        for sql, plan in plans:
            print(f"  {sql}")
            for step in plan:
                print(f"      -> {step}")
        scans = [s for s, p in plans if any(step.startswith("SCAN") for step in p)]
        print("  every look-up uses an index" if not scans else f"  SCANS: {scans}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run_decompose(size: int, clients: int, duration: float, rounds: int, db_dir: str | None) -> int:
    """``--decompose``: every variant of :data:`DECOMPOSE` in its own server process, run in
    turn ``rounds`` times (so that drift of the machine hits all alike); the median of each."""
    work = Path(tempfile.mkdtemp(prefix="bench-maf-", dir=db_dir))
    kek = KeyEncryptionKey.generate()
    kek.write_file(work / "kek.hex")
    db = work / "maf.db"
    children: dict[str, Child] = {}
    try:
        store = create_db(db, kek)
        sample, _secs = populate(store, size)
        store.close()
        print(f"database: {db} (SQLite, WAL); {size:,} keys; {clients} clients; {os.cpu_count()} CPUs")
        for kind in DECOMPOSE:
            children[kind] = Child(db, kek, kind)
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in DECOMPOSE}
        for _ in range(rounds):
            for kind, child in children.items():
                c0 = child.cpu()
                done, elapsed = asyncio.run(throughput(child.port, clients, duration, sample, True))
                runs[kind].append((done / elapsed, (child.cpu() - c0) / max(done, 1) * 1e6))
        print(f"\nWhere a Key Retrieval's cost goes (median of {rounds} runs of {duration:g} s per variant, "
              f"{clients} clients)")
        print(f"{'variant':>12} {'req/s':>7} {'vs plain':>8} {'srv CPU us/req':>15}  what it does")
        base = statistics.median(r for r, _ in runs["plain"])
        for kind, what in DECOMPOSE.items():
            rate = statistics.median(r for r, _ in runs[kind])
            cpu = statistics.median(c for _, c in runs[kind])
            print(f"{kind:>12} {rate:>7,.0f} {rate / base:>8.2f} {cpu:>15,.0f}  {what}")
    finally:
        for child in children.values():
            child.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _procs(workers: int) -> str:
    return "1 server process" if workers == 1 else f"{workers} server processes (SO_REUSEPORT)"


def run_throughput(db: Path, kek: KeyEncryptionKey, maf_child: Child, counts: list[int], duration: float,
                   sample: list[str], rounds: int,
                   workers: int = 1) -> list[tuple[int, tuple[float, float], tuple[float, float]]]:
    """For each client count, ``rounds`` alternating MAF/plain runs; the median of each side
    (rate and server CPU per request), so that drift of the machine hits both alike."""
    plain = Child(db, kek, "plain", workers)
    out = []
    try:
        for n in counts:
            runs: dict[str, list[tuple[float, float]]] = {"maf": [], "plain": []}
            for _ in range(rounds):
                for kind, child, check in (("maf", maf_child, True), ("plain", plain, False)):
                    c0 = child.cpu()
                    done, elapsed = asyncio.run(throughput(child.port, n, duration, sample, check))
                    cpu = child.cpu() - c0
                    runs[kind].append((done / elapsed, cpu / max(done, 1) * 1e6))
            row = [(statistics.median(r for r, _ in runs[k]), statistics.median(c for _, c in runs[k]))
                   for k in ("maf", "plain")]
            out.append((n, row[0], row[1]))
            print(f"  {n} clients: MAF {', '.join(f'{r:,.0f}' for r, _ in runs['maf'])} req/s; "
                  f"plain {', '.join(f'{r:,.0f}' for r, _ in runs['plain'])} req/s", flush=True)
    finally:
        plain.stop()
    return out


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "_serve":
        serve_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6] == "1", float(sys.argv[7]))
        sys.exit(0)
    sys.exit(main())
