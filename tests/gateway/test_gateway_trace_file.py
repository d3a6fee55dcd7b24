"""The gateway trace file (``[gateway] trace_file`` / ``serve --trace``) records decrypted traffic
(requests the gateway opens for the CSE, TS-0003 7.2.2 / profile G5): it is created 0600 whatever
the umask, and ``serve`` warns once on stderr at start (docs/threat-model.md 4.4, 5.2)."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from _gateway_support import write_config

from m2msec.gateway.server import prepare_trace_file
from m2msec.store import KeyEncryptionKey

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX modes")


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


class _CSE(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server API
        body = b'{"m2m:cb":{"ri":"id-in","rn":"cse-in"}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-M2M-RSC", "2000")
        self.send_header("X-M2M-RI", self.headers.get("X-M2M-RI", ""))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def cse() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _CSE)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_serve_creates_the_trace_0600_under_umask_022_and_warns_once(tmp_path: Path, cse: str) -> None:
    KeyEncryptionKey.generate().write_file(tmp_path / "gateway.kek")
    cfg = write_config(tmp_path / "gateway.toml", cse_id="id-in", cse_name="cse-in", keys=[])
    trace = tmp_path / "trace.jsonl"
    err = tempfile.TemporaryFile()
    old = os.umask(0o022)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "m2msec.gateway", "serve", "--config", str(cfg), "--cse", cse,
                                 "--listen", "127.0.0.1:0", "--trace", str(trace)],
                                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        os.umask(old)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on "), line
        url = line.split("listening on ", 1)[1].strip()
        assert _mode(trace) == 0o600  # created before the first message
        r = httpx.get(f"{url}/id-in", headers={"X-M2M-Origin": "CAdmin", "X-M2M-RI": "t1", "X-M2M-RVI": "3"},
                      timeout=10)
        assert r.status_code == 200
        deadline = time.monotonic() + 5
        while trace.stat().st_size == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b"t1" in trace.read_bytes() and _mode(trace) == 0o600
    finally:
        proc.terminate()
        proc.wait(10)
        err.seek(0)
        stderr = err.read().decode()
        err.close()
    warnings = [ln for ln in stderr.splitlines() if "records every forwarded HTTP message" in ln]
    assert len(warnings) == 1 and str(trace) in warnings[0] and "plaintext" in warnings[0]


def test_no_warning_without_a_trace_file(tmp_path: Path, cse: str) -> None:
    KeyEncryptionKey.generate().write_file(tmp_path / "gateway.kek")
    cfg = write_config(tmp_path / "gateway.toml", cse_id="id-in", cse_name="cse-in", keys=[])
    proc = subprocess.Popen([sys.executable, "-m", "m2msec.gateway", "serve", "--config", str(cfg), "--cse", cse,
                             "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("listening on ")
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    assert "trace file" not in stderr


def test_prepare_trace_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "t.jsonl"
    old = os.umask(0o277)
    try:
        prepare_trace_file(p)
    finally:
        os.umask(old)
    assert _mode(p) == 0o600 and p.read_bytes() == b""
    # an existing file keeps its mode; an open one is reported
    q = tmp_path / "open.jsonl"
    q.write_text("x\n")
    q.chmod(0o644)
    caplog.set_level(logging.WARNING, logger="m2msec.gateway.server")
    prepare_trace_file(q)
    assert _mode(q) == 0o644 and q.read_text() == "x\n"
    assert any(str(q) in r.getMessage() and "0644" in r.getMessage() for r in caplog.records)
    caplog.clear()
    prepare_trace_file(p)
    assert not caplog.records
    with pytest.raises(ValueError, match="cannot create trace file"):
        prepare_trace_file(tmp_path / "no-such-dir" / "t.jsonl")
