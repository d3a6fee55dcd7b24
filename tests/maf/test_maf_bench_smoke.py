"""Smoke test of bench/bench_maf.py with tiny numbers (the benchmark itself is not a test)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_maf.py"


def test_bench_maf_runs_and_reports_indexed_lookups(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--keys", "200,400", "--clients", "1,2", "--duration", "0.3", "--rounds", "1",
         "--latency-n", "20", "--db-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "(a) Key Retrieval throughput" in text and "(b) Key Retrieval latency" in text
    table = text.split("(a) Key Retrieval throughput", 1)[1].split("(b)", 1)[0]
    rows = [line.split() for line in table.splitlines()[2:] if line.strip()]
    assert [r[0] for r in rows] == ["1", "2"] and all(float(r[1].replace(",", "")) > 0 for r in rows)
    plan = text.split("(c)", 1)[1]
    assert re.search(r"SEARCH \S+ USING INDEX sqlite_autoindex_m2msec_records_1 \(namespace=\? AND rec_id=\?\)", plan)
    assert re.search(r"SEARCH \S+ USING INDEX sqlite_autoindex_m2msec_credentials_1 \(namespace=\? AND cred_id=\?\)",
                     plan)
    assert "every look-up uses an index" in text
    assert list(tmp_path.iterdir()) == []  # the benchmark database is removed


def test_bench_maf_decompose_prints_every_variant(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--decompose", "--keys", "200", "--clients", "2", "--duration", "0.3",
         "--rounds", "1", "--db-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=90,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    table = out.stdout.split("Where a Key Retrieval's cost goes", 1)[1]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:] if line.strip()}
    assert list(rows) == ["plain", "codec", "audit", "read", "maf", "maf-fsync", "maf-nofsync"]
    assert all(float(r[1].replace(",", "")) > 0 for r in rows.values())  # every variant answered (checked 2000)
    assert rows["plain"][2] == "1.00"
    assert list(tmp_path.iterdir()) == []


def test_bench_maf_keyreg_prints_design_against_baseline(tmp_path: Path) -> None:
    bench = BENCH.parent / "bench_maf_keyreg.py"
    out = subprocess.run(
        [sys.executable, str(bench), "--backend", "sqlite", "--threads", "1,2", "--duration", "0.3",
         "--db-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=90,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    table = out.stdout.split("Key Registrations/s", 1)[1].splitlines()
    assert "256 records" in table[1] and "1 counter row" in table[1]
    rows = [line.split() for line in table[2:] if line.strip()]
    assert [(r[0], r[1]) for r in rows] == [("sqlite", "1"), ("sqlite", "2")]
    assert all(float(r[2].replace(",", "")) > 0 and float(r[3].replace(",", "")) > 0 for r in rows)
