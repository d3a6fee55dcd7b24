"""MAF Key Registration (TS-0003 8.8.2.7) throughput: registrations per second with the quotas.

    .venv/bin/python bench/bench_maf_keyreg.py [--backend sqlite,postgresql] [--threads 1,8]
                                               [--clients 8] [--duration 3] [--db-dir DIR]
                                               [--max-keys-total N]

Each thread runs :meth:`MAFService.run` (``KEY_REGISTRATION``, a client-supplied 32-octet key,
one hour lifetime) in a loop for ``--duration`` seconds, in process (no TLS: the store
transaction with its quota bookkeeping and audit record is what is measured).  Threads are
spread over ``--clients`` Source MAF Clients (thread i registers for client i mod N), so with
N >= threads no two threads share a per-client quota record: what is left to serialise them is
the MAF-wide count (``max_keys_total``, sharded: :data:`m2msec.maf.service.TOTAL_SHARDS`
records) and the database itself.  ``--clients 1`` shows the per-client record as the hotspot
for comparison.  Every configuration runs twice, with the sharded count (``--shards N``,
default TOTAL_SHARDS) and with its baseline, one MAF-wide counter row; the table gives the ratio.  Two MAF service instances (two ``Store`` objects, as two processes would
have) share the database; odd threads use the second.

SQLite: a file in ``--db-dir`` (default: a temporary directory), ``synchronous = FULL`` as the
MAF runs it.  PostgreSQL: ``M2MSEC_TEST_PG_DSN`` or a throwaway cluster started like the test
suite's ``pg_server`` (``tests/pg.py``; needs initdb/pg_ctl).

``--prefill N`` first counts N synthetic live keys in the shards (e.g. 990000 with the default
``max_keys_total``: every registration then reads and rewrites a shard of ~3900 entries).
With N close to ``max_keys_total`` the MAF fills up during the run: a refusal (4103,
KeyTotalExceeded) counts as an answered registration, and the table's last column gives the
share of refused ones.  ``--full-hold S`` sets :class:`MAFService`'s ``total_full_hold`` (how
long a refusal at the limit lets the next ones be refused without reading every shard; 0 = read
them every time).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from m2msec.maf import AdminConfig, MAFService
from m2msec.maf.protocol import (
    ClientRegistrationRequest,
    KeyRegistrationRequest,
    Procedure,
)
from m2msec.maf.service import MAFPeer
from m2msec.onem2m.enums import SUID
from m2msec.store import KeyEncryptionKey, open_store

MAF = "maf.example.com"
ADMIN = "sp.example.com"
TARGET = "//sp.example.com/CTARGET"


def utc_now() -> datetime:
    return datetime.now(UTC)


def _peer(cid: str) -> MAFPeer:
    return MAFPeer("km", cid, f"11-{cid}")


def _no_exporter() -> tuple[bytes, bytes]:
    raise AssertionError("client-supplied keys only")


def _pg_server() -> Any:
    path = Path(__file__).resolve().parent.parent / "tests" / "pg.py"
    spec = importlib.util.spec_from_file_location("m2msec_bench_pg", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["m2msec_bench_pg"] = mod
    spec.loader.exec_module(mod)
    return mod.PgServer.from_environment()


def _service(store: Any, max_total: int | None, full_hold: float | None = None) -> MAFService:
    kw: dict[str, Any] = {"max_keys_per_client": 100_000, "key_cache_ttl": timedelta(0)}
    params = inspect.signature(MAFService).parameters
    if max_total is not None and "max_keys_total" in params:
        kw["max_keys_total"] = max_total
    if full_hold is not None and "total_full_hold" in params:
        kw["total_full_hold"] = timedelta(seconds=full_hold)
    return MAFService(store, MAF, admins=[AdminConfig(ADMIN)], clock=utc_now, **kw)


def prefill(store: Any, n: int) -> None:
    """Count ``n`` synthetic live keys (expiring in 30 days) in the MAF-wide shards, as a MAF
    holding ``n`` Key Registrations would: only the shard records (their size is what a
    registration then reads and writes), no Key Registration rows."""
    from m2msec.maf import service

    exp = service._epoch_us(utc_now() + timedelta(days=30))
    shards = service.TOTAL_SHARDS
    with store.transaction() as tx:
        for i in range(shards):
            k = n // shards + (1 if i < n % shards else 0)
            tx.put_record(service.NS.QUOTA_TOTAL, str(i), {"exp": f"{exp:014x}" * k})


def run_one(url: str, n_threads: int, n_clients: int, duration: float, max_total: int | None,
            prefilled: int = 0, full_hold: float | None = None) -> tuple[float, float]:
    """Answered registrations per second and the share of them refused at the MAF-wide limit."""
    from m2msec.maf.service import KeyTotalExceeded

    kek = KeyEncryptionKey.generate()
    stores = [open_store(url, kek, clock=utc_now), open_store(url, kek, clock=utc_now)]
    try:
        services = [_service(s, max_total, full_hold) for s in stores]
        clients = [f"//sp.example.com/CB{i}" for i in range(n_clients)]
        for cid in clients:
            services[0].run(Procedure.CLIENT_REGISTRATION, _peer(cid),
                            ClientRegistrationRequest(MAF, utc_now() + timedelta(days=1), ADMIN), _no_exporter)
        for svc in services:  # the one-time quota set-up is not part of the measurement
            svc.run(Procedure.KEY_REGISTRATION, _peer(clients[0]),
                    KeyRegistrationRequest(MAF, utc_now() + timedelta(hours=1), ADMIN, SUID.MAF_ESPRIM,
                                           target_ids=(TARGET,), key_value=os.urandom(32)), _no_exporter)
        if prefilled:
            prefill(stores[0], prefilled)
        counts = [0] * n_threads
        refused = [0] * n_threads
        errors: list[BaseException] = []
        start = threading.Barrier(n_threads + 1)
        stop_at: list[float] = [0.0]

        def worker(i: int) -> None:
            svc, cid = services[i % 2], clients[i % n_clients]
            start.wait()
            try:
                while time.perf_counter() < stop_at[0]:
                    try:
                        svc.run(Procedure.KEY_REGISTRATION, _peer(cid),
                                KeyRegistrationRequest(MAF, utc_now() + timedelta(hours=1), ADMIN, SUID.MAF_ESPRIM,
                                                       target_ids=(TARGET,), key_value=os.urandom(32)), _no_exporter)
                    except KeyTotalExceeded:
                        refused[i] += 1
                    counts[i] += 1
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        stop_at[0] = t0 + duration
        start.wait()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        if errors:
            raise errors[0]
        return sum(counts) / elapsed, sum(refused) / max(1, sum(counts))
    finally:
        for s in stores:
            s.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="sqlite,postgresql")
    ap.add_argument("--threads", default="1,8")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--db-dir", default=None)
    ap.add_argument("--max-keys-total", type=int, default=None)
    ap.add_argument("--shards", type=int, default=None,
                    help="experiment: split the MAF-wide count over N records instead of TOTAL_SHARDS "
                         "(1 = one counter row every registration waits for)")
    ap.add_argument("--prefill", type=int, default=0,
                    help="count this many synthetic live keys in the MAF-wide shards first (a MAF holding them)")
    ap.add_argument("--full-hold", type=float, default=None,
                    help="MAFService total_full_hold in seconds (0: every refusal at the limit reads every shard)")
    args = ap.parse_args(argv)
    from m2msec.maf import service

    # the design (TOTAL_SHARDS records, or --shards N) against its baseline in the same run:
    # one MAF-wide counter row that every registration updates
    design = args.shards if args.shards is not None else service.TOTAL_SHARDS
    variants = [(f"{design} records", design), ("1 counter row", 1)]
    rows: list[tuple[str, int, tuple[float, float], tuple[float, float]]] = []
    pg = None
    try:
        for backend in args.backend.split(","):
            for n in (int(x) for x in args.threads.split(",")):
                rates = []
                for _label, shards in variants:
                    service.TOTAL_SHARDS = shards
                    if backend == "sqlite":
                        d = tempfile.mkdtemp(dir=args.db_dir)
                        url = f"sqlite:///{Path(d) / 'maf.db'}"
                    else:
                        if pg is None:
                            pg = _pg_server()
                            if pg is None:
                                print("postgresql: no server (set M2MSEC_TEST_PG_DSN or install postgresql)")
                                break
                        url = pg.create_database("m2msec_bench")
                    rates.append(run_one(url, n, args.clients, args.duration, args.max_keys_total, args.prefill,
                                         args.full_hold))
                if len(rates) == len(variants):
                    rows.append((backend, n, rates[0], rates[1]))
                    print(f"  {backend} threads={n}: {rates[0][0]:.1f} vs {rates[1][0]:.1f} registrations/s",
                          flush=True)
        print(f"\nKey Registrations/s, {args.clients} clients, {args.duration:g} s per run"
              + (f", {args.prefill:,} keys held" if args.prefill else ""))
        print(f"{'backend':<11} {'threads':>7} {variants[0][0]:>14} {variants[1][0]:>14} {'ratio':>6} "
              f"{'refused':>15}")
        for backend, n, (a, ra), (b, rb) in rows:
            print(f"{backend:<11} {n:>7} {a:>14,.1f} {b:>14,.1f} {a / b:>6.2f} {ra:>7.0%} /{rb:>6.0%}")
    finally:
        if pg is not None:
            pg.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
