"""``m2msec maf serve --workers N``: N MAF processes on one port (SO_REUSEPORT, Linux), each with
its own store connection (DESIGN.md section 3 scale-out rule; TS-0003 8.8).

Real processes throughout.  Which process holds a connection is read from the kernel
(``/proc/net/tcp`` socket inodes against ``/proc/<pid>/fd``), not from anything the MAF reports.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _mafserve import MAFServe
from _mafhelp import ADMIN, MAF
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from m2msec.maf import MAFClient, MAFClientConfig
from m2msec.maf.cli import app
from m2msec.maf.server import load_config, open_config_store
from m2msec.maf.service import MAFService
from m2msec.onem2m.enums import SUID
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import DevCA, PeerCertInfo
from m2msec.store import KeyEncryptionKey
from m2msec.tls.engine import CertCredentials, PSKCredentials, TLSHandshakeError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing is Linux only")

AE1, AE2 = "//sp.example.com/CAE1", "//sp.example.com/CAE2"
KM1, KM2 = bytes([0x11]) * 32, bytes([0x22]) * 32
PEM = serialization.Encoding.PEM
LISTEN, ESTABLISHED = "0A", "01"


def now() -> datetime:
    return datetime.now(UTC)


def _config(tmp: Path, extra: str = "") -> Path:
    KeyEncryptionKey.generate().write_file(tmp / "kek.hex")
    cfg = tmp / "maf.toml"
    cfg.write_text(f'fqdn = "{MAF}"\nstore = "sqlite:///{tmp / "maf.db"}"\nkek_file = "kek.hex"\n{extra}'
                   f'[[admin]]\nfqdn = "{ADMIN}"\nclient_config = {{ httpPort = 8443 }}\n', encoding="utf-8")
    return cfg


def _Serve(config: Path, workers: int) -> MAFServe:  # noqa: N802 - reads like the class it returns
    srv = MAFServe(config, "--workers", str(workers))
    assert srv.first.startswith(f"MAF {MAF} listening on 127.0.0.1:")  # the one line the process tests read
    return srv


# ------------------------------------------------------------------ what the kernel says


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(d))
    return sorted(out)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _server_sockets(port: int, state: str) -> set[str]:
    """Inodes of the TCP sockets whose *local* port is ``port`` in ``state`` (server side)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) == port and f[3] == state:
            inodes.add(f[9])
    return inodes


def _owned(pid: int, inodes: set[str]) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            n += 1
    return n


def _psk_client(port: int, kmid: str, km: bytes) -> MAFClient:
    return MAFClient(MAFClientConfig(MAF, ADMIN, "127.0.0.1", port, psk=PSKCredentials(kmid.encode(), km), timeout=10.0))


# ------------------------------------------------------------------ tests


def test_two_workers_share_the_port_and_the_store(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    runner = CliRunner()
    for cid, kmid, km in ((AE1, f"cae1@{MAF}", KM1), (AE2, f"cae2@{MAF}", KM2)):
        r = runner.invoke(app, ["add-client", "-c", str(cfg), "--client-id", cid, "--kmid", kmid, "--km-hex", km.hex()])
        assert r.exit_code == 0, r.output
    srv = _Serve(cfg, 2)
    try:
        parent = srv.proc.pid
        workers = _children(parent)
        assert len(workers) == 1, workers  # N-1 worker processes besides the parent
        procs = [parent, *workers]
        listening = _server_sockets(srv.port, LISTEN)
        assert [_owned(p, listening) for p in procs] == [1, 1]  # two listeners on one port, one per process

        async def main() -> tuple[list[int], int]:
            src = _psk_client(srv.port, f"cae1@{MAF}", KM1)
            async with src:
                await src.register(now() + timedelta(days=1))
                key = await src.register_key(SUID.MAF_ESPRIM, [AE2], now() + timedelta(hours=1))
                targets = []
                try:
                    for i in range(20):  # 20 fresh MAF Handshakes, kept open
                        c = _psk_client(srv.port, f"cae2@{MAF}", KM2)
                        await c.connect()
                        targets.append(c)
                        if i == 0:
                            await c.register(now() + timedelta(days=1))
                    established = _server_sockets(srv.port, ESTABLISHED)
                    per_process = [_owned(p, established) for p in procs]
                    # the key registered through the source's connection is retrieved through every
                    # target connection, whichever process holds it
                    for c in targets:
                        got = await c.retrieve_key(key.key_id)
                        assert got.key == key.key and got.source_id == AE1
                finally:
                    for c in targets:
                        await c.aclose()
                return per_process, len(established)

        per_process, total = asyncio.run(asyncio.wait_for(main(), 30))
        assert total == 21 and sum(per_process) == 21, (per_process, total)
        assert all(n >= 1 for n in per_process), per_process  # both processes took connections

        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(15) == 0
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in workers), "a worker outlived the parent"
        assert "error" not in srv.stderr()
    finally:
        srv.stop()


def test_a_dead_worker_stops_the_maf(tmp_path: Path) -> None:
    srv = _Serve(_config(tmp_path), 3)
    try:
        workers = _children(srv.proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        rc = srv.proc.wait(15)
        assert rc == 1
        assert f"MAF worker {workers[0]} exited with code -9" in srv.stderr()
        deadline = time.monotonic() + 5
        while _alive(workers[1]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(workers[1])
    finally:
        srv.stop()


@pytest.mark.parametrize("n", ["0", "-2"])
def test_workers_below_one_refused(tmp_path: Path, n: str) -> None:
    r = CliRunner().invoke(app, ["serve", "-c", str(_config(tmp_path)), "--workers", n])
    assert r.exit_code == 2 and f"--workers must be at least 1 (got {n})" in r.output


def test_worker_flag_needs_the_parents_port(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["serve", "-c", str(_config(tmp_path)), "--worker"])
    assert r.exit_code == 2 and "--worker is internal" in r.output


def test_sighup_reaches_every_worker(tmp_path: Path) -> None:
    """With [tls] client_crls, SIGHUP to the parent reloads the CRLs in every process: a client
    certificate revoked after start is then refused on every fresh connection (each lands on
    either process)."""
    t0 = now()
    ca = DevCA.create("MAF workers CA", now=t0 - timedelta(days=1), permit_dns=["example.com"],
                      permit_uri=["sp.example.com"])
    maf_cert = ca.issue(F.FQDN, [MAF], now=t0 - timedelta(hours=1))
    ae1 = ca.issue(F.AE_ID, [AE1], now=t0 - timedelta(hours=1))
    (tmp_path / "maf.pem").write_bytes(b"".join(c.public_bytes(PEM) for c in [maf_cert.certificate, *maf_cert.chain]))
    (tmp_path / "maf.key").write_bytes(maf_cert.private_key.private_bytes(  # type: ignore[attr-defined]
        PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "ca.pem").write_bytes(ca.trust_anchor.public_bytes(PEM))
    (tmp_path / "ca.crl").write_bytes(ca.issue_crl(now=now()).public_bytes(PEM))
    cfg = _config(tmp_path, '[tls]\ncert = "maf.pem"\nkey = "maf.key"\nclient_trust_anchors = "ca.pem"\n'
                            'client_crls = ["ca.crl"]\nrevocation = "require"\n')
    conf = load_config(cfg)
    store = open_config_store(conf, clock=now)
    try:
        MAFService(store, MAF, admins=conf.admins, clock=now).add_cert_client(AE1, PeerCertInfo(F.AE_ID, AE1))
    finally:
        store.close()
    client = MAFClientConfig(maf_fqdn=MAF, admin_fqdn=ADMIN, host="127.0.0.1", port=0, timeout=10.0,
                             credentials=CertCredentials(ae1.private_key, ae1.certificate, tuple(ae1.chain)),
                             maf_trust_anchors=(ca.trust_anchor,), clock=now)

    async def handshakes(port: int, n: int) -> list[bool]:
        from dataclasses import replace

        ok = []
        for _ in range(n):
            c = MAFClient(replace(client, port=port))
            try:
                await c.connect()
                ok.append(True)
            except TLSHandshakeError:
                ok.append(False)
            finally:
                await c.aclose()
        return ok

    srv = _Serve(cfg, 2)
    try:
        [worker] = _children(srv.proc.pid)
        assert all(asyncio.run(handshakes(srv.port, 4)))
        ca.revoke(ae1.certificate, now=now())
        (tmp_path / "ca.crl").write_bytes(ca.issue_crl(now=now()).public_bytes(PEM))
        srv.proc.send_signal(signal.SIGHUP)
        lines = sorted(srv.line(10).strip() for _ in range(2))
        assert lines == ["crls reloaded 1", f"worker {worker}: crls reloaded 1"], lines
        assert not any(asyncio.run(handshakes(srv.port, 12)))  # refused by whichever process took it
        assert srv.proc.poll() is None and _alive(worker)
    finally:
        srv.stop()


def test_bench_runs_with_two_workers(tmp_path: Path) -> None:
    """bench/bench_maf.py --workers 2: MAF and plain endpoint each as two processes on one port."""
    bench = Path(__file__).resolve().parents[2] / "bench" / "bench_maf.py"
    out = subprocess.run(
        [sys.executable, str(bench), "--keys", "200", "--clients", "4", "--duration", "0.3", "--rounds", "1",
         "--latency-n", "10", "--db-dir", str(tmp_path), "--workers", "2"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    heading = out.stdout.split("(a) Key Retrieval throughput", 1)[1].splitlines()[0]
    assert "MAF and plain each in 2 server processes (SO_REUSEPORT)" in heading
    rows = [line.split() for line in out.stdout.split("(a)", 1)[1].split("(b)", 1)[0].splitlines()[2:] if line.strip()]
    assert [r[0] for r in rows] == ["4"] and float(rows[0][1].replace(",", "")) > 0
    bad = subprocess.run([sys.executable, str(bench), "--workers", "0"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--workers must be at least 1" in bad.stderr
