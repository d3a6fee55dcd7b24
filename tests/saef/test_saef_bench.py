"""Smoke test: bench/bench_handshake.py still runs and prints its table (tiny iteration count)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_handshake.py"


def test_bench_handshake_runs() -> None:
    r = subprocess.run([sys.executable, str(BENCH), "--iterations", "3", "--rounds", "1"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = {m.group(1): (float(m.group(2)), float(m.group(3)), float(m.group(4)))
            for m in re.finditer(r"^(\S+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", r.stdout, re.M)}
    assert set(rows) == {"TLS-PSK", "TLS-cert", "TLS-cert+pki", "DTLS-PSK"}, r.stdout
    assert all(o > 0 and b > 0 and abs(o / b - ratio) < 0.01 for o, b, ratio in rows.values())
