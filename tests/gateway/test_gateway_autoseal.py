"""``m2msec gateway serve`` seals its store's audit trail (``[gateway] audit_seal_interval_s``,
m2msec.store.autoseal.AuditSealer; TS-0003 6.2.5.2, profile S10, threat model 4.11/5.6): real
gateway processes (no CSE is needed: nothing is forwarded), the trail written and checked by the
test on the same SQLite file with Store.verify_audit and ``m2msec store audit verify``.

The gateway seals the rows it finds at start, new rows every interval (anchor lines at INFO on
stderr), and the rows written just before SIGTERM; 0 seals nothing; a sealed row rewritten with
raw SQL (trigger dropped: AT6) is an ERROR line while the gateway keeps answering; a value
outside 0 / 0.5-86400 is exit code 2."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _autoseal_support import ANCHOR, until, verify_audit
from _gateway_support import GatewayProcess, write_config
from typer.testing import CliRunner

from m2msec.store import KeyEncryptionKey, open_store
from m2msec.store.audit_seal import AuditVerification
from m2msec.store.cli import app as store_app

CSE = "http://127.0.0.1:9"  # never contacted by these tests (a forwarded request gets 5103)


@pytest.fixture
def gw_dir(tmp_path: Path) -> Path:
    KeyEncryptionKey.generate().write_file(tmp_path / "gateway.kek")
    return tmp_path


def _config(d: Path, interval: object | None) -> Path:
    path = write_config(d / "gateway.toml", cse_id="id-in", cse_name="cse-in", keys=[])
    if interval is not None:  # into write_config's [gateway] table
        path.write_text(path.read_text().replace("[gateway]\n", f"[gateway]\naudit_seal_interval_s = {interval}\n", 1))
    return path


def _store_url(d: Path) -> str:
    return f"sqlite://{d}/gateway.db"


def _append(d: Path, n: int, what: str) -> None:
    """``n`` audit rows, as another writer of the gateway's database would add them."""
    with open_store(_store_url(d), KeyEncryptionKey.from_file(d / "gateway.kek")) as store:
        for i in range(n):
            store.append_audit("test", what, f"row-{i}", "ok", {"i": i})


def _verify(d: Path) -> AuditVerification:
    return verify_audit(_store_url(d), d / "gateway.kek")


def _until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    until(pred, timeout, step=0.05)


def _stderr(gw: GatewayProcess) -> str:
    gw._err.seek(0)
    return gw._err.read().decode("utf-8", "replace")


@pytest.fixture
def started() -> Iterator[list[GatewayProcess]]:
    procs: list[GatewayProcess] = []
    yield procs
    for p in procs:
        p.stop()


def _start(d: Path, interval: object | None, procs: list[GatewayProcess]) -> GatewayProcess:
    gw = GatewayProcess(_config(d, interval), CSE)
    procs.append(gw)
    return gw


def test_seals_at_start_every_interval_and_at_sigterm(gw_dir: Path, started: list[GatewayProcess]) -> None:
    d = gw_dir
    _append(d, 3, "before-start")
    gw = _start(d, 0.5, started)
    _until(lambda: _verify(d).sealed_rows == 3)  # the rows left by earlier writers, sealed at start
    _until(lambda: ANCHOR.search(_stderr(gw)) is not None)
    first = ANCHOR.findall(_stderr(gw))
    assert first[0][0] == "3"
    _append(d, 2, "while-running")
    _until(lambda: _verify(d).sealed_rows == 5, timeout=5)  # within about one interval
    v = _verify(d)
    assert v.intact and v.unsealed_rows == 0 and v.checkpoints == 2, v
    _until(lambda: len(ANCHOR.findall(_stderr(gw))) == 2)
    seals = ANCHOR.findall(_stderr(gw))
    assert seals[1][0] == "2"
    assert v.head is not None and f"{seals[1][1]}:{seals[1][2]}" == v.head.anchor  # the log carries the head
    # the m2msec store CLI agrees, and against the logged anchor
    r = CliRunner().invoke(store_app, ["audit", "verify", "--url", _store_url(d), "--kek-file",
                                       str(d / "gateway.kek"), "--anchor", f"{seals[1][1]}:{seals[1][2]}"])
    assert r.exit_code == 0, r.output
    assert gw.proc.poll() is None
    assert gw.stop() == 0


def test_sigterm_seals_the_last_rows(gw_dir: Path, started: list[GatewayProcess]) -> None:
    d = gw_dir
    _append(d, 1, "before-start")
    gw = _start(d, 3600, started)  # no tick before the stop: only the start and the last seal
    _until(lambda: _verify(d).sealed_rows == 1)  # the start tick is done
    _append(d, 2, "last")
    v = _verify(d)
    assert v.checkpoints == 1 and v.unsealed_rows == 2, v
    assert gw.stop() == 0
    v = _verify(d)
    assert v.intact and v.sealed_rows == 3 and v.unsealed_rows == 0 and v.checkpoints == 2, v


def test_zero_seals_nothing(gw_dir: Path, started: list[GatewayProcess]) -> None:
    d = gw_dir
    _append(d, 2, "before-start")
    gw = _start(d, 0, started)
    _append(d, 1, "while-running")
    time.sleep(1.2)  # more than two ticks of the shortest interval
    err = _stderr(gw)
    assert gw.stop() == 0
    v = _verify(d)
    assert v.checkpoints == 0 and v.sealed_rows == 0 and v.unsealed_rows == 3, v
    assert "audit sealed" not in err


def test_default_is_on(gw_dir: Path, started: list[GatewayProcess]) -> None:
    """Without the key (default 300 s) the gateway seals at start and at stop."""
    d = gw_dir
    _append(d, 1, "before-start")
    gw = _start(d, None, started)
    _until(lambda: _verify(d).sealed_rows == 1)
    assert gw.stop() == 0


def test_a_tampered_sealed_row_is_an_error_every_tick_and_the_gateway_keeps_answering(
        gw_dir: Path, started: list[GatewayProcess]) -> None:
    d = gw_dir
    _append(d, 3, "before-start")
    gw = _start(d, 0.5, started)
    _until(lambda: _verify(d).sealed_rows == 3)
    with sqlite3.connect(d / "gateway.db") as conn:  # AT6: database write access, no KEK
        conn.execute("DROP TRIGGER m2msec_audit_no_update")
        conn.execute("UPDATE m2msec_audit SET outcome = 'denied' WHERE seq = (SELECT min(seq) FROM m2msec_audit)")
    _until(lambda: _stderr(gw).count("audit trail does not verify") >= 2, timeout=5)  # every tick
    assert "was modified after it was sealed" in _stderr(gw)
    assert "ERROR:m2msec.store.autoseal:" in _stderr(gw)
    req = urllib.request.Request(f"{gw.url}/cse-in", headers={"X-M2M-Origin": "CAdmin", "X-M2M-RI": "r1",
                                                               "X-M2M-RVI": "3"})
    with pytest.raises(urllib.error.HTTPError) as ei:  # answered: the CSE is unreachable, 5103
        urllib.request.urlopen(req, timeout=5)
    assert ei.value.headers.get("X-M2M-RSC") == "5103"
    assert gw.proc.poll() is None


@pytest.mark.parametrize("value", ["0.2", "86401", '"60"', "true", "-1"])
def test_invalid_interval_is_exit_code_2(gw_dir: Path, value: str) -> None:
    path = _config(gw_dir, value)
    p = subprocess.run([sys.executable, "-m", "m2msec.gateway", "serve", "--config", str(path), "--cse", CSE,
                        "--listen", "127.0.0.1:0"], check=False, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2, p
    assert p.stderr.startswith("error: ") and "[gateway] audit_seal_interval_s must" in p.stderr, p.stderr
    assert not (gw_dir / "gateway.db").exists() or _verify(gw_dir).checkpoints == 0
