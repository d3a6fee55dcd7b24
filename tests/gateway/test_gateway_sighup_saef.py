"""SIGHUP on ``m2msec gateway serve`` reloads ``require_saef_for`` and ``[saef_maf]`` with the
SAEF bindings, all or nothing (TS-0003 7.2.1, 8.2.2.1, 8.2.2.3): a real gateway process in front
of a real ACME CSE, the file rewritten before each SIGHUP.

* ``require_saef_for``: an AE-ID newly listed is refused 4106 on the plain listener at its next
  request (in every originator form), an AE-ID no longer listed reaches the CSE again;
* a broken file (an invalid pattern, an invalid ``[saef_maf]``, an unknown key, a missing Kpsa
  file) changes nothing: one ``error: saef not reloaded: ...`` line naming the problem, no key
  bytes, the previous patterns and MAF Client still in force;
* ``[saef_maf]``: the MAF Client in use is seen in the gateway's "MAF ... at HOST:PORT
  unreachable" warning (the configured MAF addresses are closed ports: no MAF is needed to see
  which client a handshake used).  A changed block gets a new client (``; [saef_maf] new MAF
  Client``), an unchanged one keeps it, a removed one (``; [saef_maf] off``) asks no MAF;
* ``[saef] listen`` changed: a warning that a restart is needed, the listener stays where it
  is and the rest is reloaded.
"""

from __future__ import annotations

import asyncio
import os
import queue
import secrets
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from _gateway_support import GatewayProcess

from m2msec.net.acme import AcmeCSE
from m2msec.onem2m import Operation, RequestPrimitive, ResourceType
from m2msec.onem2m.primitives import new_request_id
from m2msec.saef import KpsaEntry, psk_client
from m2msec.saef.http import SAEFHTTPClient
from m2msec.tls.engine import TLSFailureReason, TLSHandshakeError

pytestmark = pytest.mark.acme
SP = "m2m.example.com"
MAF_FQDN, ADMIN_FQDN = "maf.m2m.example.com", "sp.m2m.example.com"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class World:
    acme: AcmeCSE
    config: Path
    tag: str
    kpsa: bytes
    km: bytes
    maf_ports: tuple[int, int, int]
    gw: GatewayProcess = field(init=False)
    saef: tuple[str, int] = field(init=False)
    lines: queue.Queue[str] = field(default_factory=queue.Queue)

    @property
    def ae(self) -> str:
        return f"Csighup-a-{self.tag}"

    @property
    def other(self) -> str:
        return f"Csighup-b-{self.tag}"

    def write(self, require: list[str], *, maf_port: int | None = None, listen: str = "127.0.0.1:0",
              maf_extra: dict[str, str] | None = None, extra: str = "") -> None:
        d = self.config.parent
        (d / "sighup-a.psk").write_text(self.kpsa.hex())
        (d / "sighup-maf.key").write_text(self.km.hex())
        pats = ", ".join(f'"{p}"' for p in require)
        text = f"""
[cse]
id = "{self.acme.cse_id}"
name = "{self.acme.cse_name}"
admin = "CAdmin"
sp_id = "//{SP}"
[store]
kek_file = "gateway.kek"
url = "sqlite://{d}/gateway-sighup.db"
[gateway]
audit_seal_interval_s = 0
[saef]
listen = "{listen}"
require_saef_for = [{pats}]
[[saef_psk]]
kpsa_id = "sighup-a-{self.tag}@sp.{SP}"
kpsa_file = "sighup-a.psk"
ae_id = "{self.ae}"
"""
        if maf_port is not None:
            maf = {"fqdn": f'"{MAF_FQDN}"', "port": str(maf_port), "admin_fqdn": f'"{ADMIN_FQDN}"',
                   "kmid": f'"gw{self.tag}@{MAF_FQDN}"', "km_file": '"sighup-maf.key"', "timeout": "2",
                   "negative_ttl": "0.1", **(maf_extra or {})}
            text += "[saef_maf]\n" + "".join(f"{k} = {v}\n" for k, v in maf.items())
        self.config.write_text(text + extra)

    def stderr(self) -> str:
        self.gw._err.seek(0)
        return self.gw._err.read().decode("utf-8", "replace")

    def sighup(self) -> tuple[str, str]:
        """SIGHUP; returns (the ``saef reloaded`` stdout line or "", what it wrote to stderr)."""
        before = len(self.stderr())
        self.gw.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.05).strip()
            except queue.Empty:
                err = self.stderr()[before:]
                if "error: saef not reloaded" in err:
                    return "", err
                continue
            if line.startswith("saef reloaded"):
                return line, self.stderr()[before:]
        raise AssertionError("the gateway did not answer SIGHUP")

    def reset(self, require: list[str], **kw: Any) -> None:
        self.write(require, **kw)
        out, err = self.sighup()
        assert out.startswith("saef reloaded 1 binding(s)"), (out, err)

    def plain(self, fr: str) -> int:
        """RETRIEVE on the plain listener as ``fr`` (of a resource that does not exist, so that
        the CSE gives every originator the same answer): the X-M2M-RSC."""
        r = httpx.get(f"{self.gw.url}/{self.acme.cse_name}/nothing-{self.tag}", timeout=10,
                      headers={"X-M2M-Origin": fr, "X-M2M-RI": new_request_id(), "X-M2M-RVI": "3",
                               "Accept": "application/json"})
        return int(r.headers["X-M2M-RSC"])

    def saef_retrieve(self, *, register: bool = False) -> int:
        """The Kpsa-bound AE over its association: RETRIEVE of its own <AE> (``register``: CREATE it)."""
        async def go() -> int:
            ep = psk_client(KpsaEntry(f"sighup-a-{self.tag}@sp.{SP}", self.kpsa), id_b="/" + self.acme.cse_id)
            if register:
                req = RequestPrimitive(op=Operation.CREATE, to=self.acme.cse_base, fr=self.ae, rqi=new_request_id(),
                                       rvi="3", ty=ResourceType.AE,
                                       pc={"m2m:ae": {"rn": self.ae, "api": "Nm2msec", "rr": False, "srv": ["3"]}})
            else:
                req = RequestPrimitive(op=Operation.RETRIEVE, to=f"{self.acme.cse_base}/{self.ae}", fr=self.ae,
                                       rqi=new_request_id(), rvi="3")
            async with await SAEFHTTPClient.connect(ep, *self.saef, timeout=8) as c:
                return int((await c.send(req)).rsc)

        return asyncio.run(asyncio.wait_for(go(), 20))

    def kcid_handshake(self) -> TLSFailureReason:
        """A MAF-based association with a fresh KcID: fails (no MAF answers); the reason."""
        async def go() -> None:
            ep = psk_client(KpsaEntry(f"{secrets.token_hex(16)}@{MAF_FQDN}", os.urandom(32)),
                            id_b="/" + self.acme.cse_id)
            await SAEFHTTPClient.connect(ep, *self.saef, timeout=8)

        with pytest.raises(TLSHandshakeError) as ei:
            asyncio.run(asyncio.wait_for(go(), 20))
        return ei.value.reason

    def unreachable(self, port: int) -> int:
        """How many "MAF unreachable" warnings name the MAF Client of ``port``."""
        return self.stderr().count(f"saef_maf: MAF {MAF_FQDN} at 127.0.0.1:{port} unreachable")


@pytest.fixture(scope="module")
def world(acme: AcmeCSE, gwdir: Path, tag: str) -> Iterator[World]:
    w = World(acme, gwdir / "gateway-sighup.toml", tag, os.urandom(32), os.urandom(32),
              (_closed_port(), _closed_port(), _closed_port()))
    w.write([w.ae], maf_port=w.maf_ports[0])
    w.gw = GatewayProcess(w.config, acme.url)  # [saef] listen from the file: the second line is read here
    try:
        out = w.gw.proc.stdout
        assert out is not None
        first = out.readline()
        assert first.startswith("saef listening on "), first
        host, _, port = first.split("saef listening on ", 1)[1].strip().rpartition(":")
        w.saef = (host, int(port))
        threading.Thread(target=lambda: [w.lines.put(line) for line in out], daemon=True).start()
        assert w.saef_retrieve(register=True) == 2001
        yield w
    finally:
        assert w.gw.stop() == 0


def test_a_newly_protected_ae_id_is_4106_and_a_removed_one_reaches_the_cse(world: World) -> None:
    w = world
    w.reset([w.ae], maf_port=w.maf_ports[0])
    open_code = w.plain(f"Csighup-nobody-{w.tag}")
    assert open_code == 4004  # the CSE's answer: the resource does not exist
    assert w.plain(w.ae) == 4106
    assert w.plain(w.other) == open_code
    w.write([f"Csighup-b-{w.tag[:3]}*"], maf_port=w.maf_ports[0])  # a prefix pattern covering "other" only
    out, err = w.sighup()
    assert out == "saef reloaded 1 binding(s)", (out, err)
    assert w.plain(w.other) == 4106
    assert w.plain(f"/{w.acme.cse_id}/{w.other}") == 4106
    assert w.plain(f"//{SP}/{w.acme.cse_id}/{w.other}") == 4106
    assert w.plain(w.ae) == open_code  # no longer protected: forwarded to the CSE as before
    assert w.saef_retrieve() == 2000  # the association of the Kpsa binding is unaffected
    assert f"refused a request on the plain listener claiming the originator {w.other!r}" in w.stderr()
    w.reset([w.ae], maf_port=w.maf_ports[0])
    assert w.plain(w.other) == open_code and w.plain(w.ae) == 4106
    assert w.gw.proc.poll() is None


@pytest.mark.parametrize(("maf_extra", "extra", "require", "needle"), [
    ({}, "", ["*"], "require_saef_for: '*' must be an AE-ID"),
    ({"timeout": "9"}, "", None, "[saef_maf] timeout must be at most 8 seconds"),
    ({"negative_ttl": "0"}, "", None, "[saef_maf] negative_ttl must be a positive number"),
    ({"ca": '"nowhere.pem"'}, "", None, "[saef_maf]: ca is for the certificate MAF Handshake"),
    ({"kmid": '"not a key id"'}, "", None, "[saef_maf] kmid"),
    ({}, '[[saef_psk]]\nkpsa_id = "x@sp.m2m.example.com"\nkpsa_file = "no-such.psk"\n', None, "no-such.psk"),
    ({}, "[gateway_x]\n", None, "unknown key 'gateway_x'"),
])
def test_a_broken_file_keeps_require_saef_for_and_the_maf_client(world: World, maf_extra: dict[str, str], extra: str,
                                                                   require: list[str] | None, needle: str) -> None:
    w = world
    p1, p2, _ = w.maf_ports
    w.reset([w.ae], maf_port=p1)
    open_code = w.plain(f"Csighup-nobody-{w.tag}")
    # would protect "other" instead of "ae" and move the MAF Client to p2 ... but something is wrong
    w.write(require or [w.other], maf_port=p2, maf_extra=maf_extra, extra=extra)
    out, err = w.sighup()
    assert out == "", out
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: saef not reloaded: ") and needle in lines[0], err
    assert w.kpsa.hex() not in w.stderr() and w.km.hex() not in w.stderr()
    assert w.plain(w.ae) == 4106 and w.plain(w.other) == open_code  # the previous patterns
    before = w.unreachable(p1)
    time.sleep(0.15)  # past the previous client's negative_ttl
    assert w.kcid_handshake() is TLSFailureReason.UNKNOWN_PSK_IDENTITY
    assert w.unreachable(p1) == before + 1 and w.unreachable(p2) == 0  # the previous MAF Client answered
    assert w.gw.proc.poll() is None


def test_saef_maf_changed_unchanged_and_removed(world: World) -> None:
    w = world
    p1, p2, _ = w.maf_ports
    w.reset([w.ae], maf_port=p1)
    time.sleep(0.15)
    base1, base2 = w.unreachable(p1), w.unreachable(p2)
    assert w.kcid_handshake() is TLSFailureReason.UNKNOWN_PSK_IDENTITY
    assert w.unreachable(p1) == base1 + 1
    # changed: a new MAF Client for the handshakes from now on
    w.write([w.ae], maf_port=p2)
    out, _ = w.sighup()
    assert out == "saef reloaded 1 binding(s); [saef_maf] new MAF Client"
    assert w.kcid_handshake() is TLSFailureReason.UNKNOWN_PSK_IDENTITY
    assert w.unreachable(p2) == base2 + 1 and w.unreachable(p1) == base1 + 1
    # unchanged (the file re-read, another pattern): the client stays
    w.write([w.ae, w.other], maf_port=p2)
    out, _ = w.sighup()
    assert out == "saef reloaded 1 binding(s)"
    assert w.plain(w.other) == 4106
    time.sleep(0.15)
    assert w.kcid_handshake() is TLSFailureReason.UNKNOWN_PSK_IDENTITY
    assert w.unreachable(p2) == base2 + 2
    # removed: no MAF is asked, KcIDs are unknown identities; the Kpsa binding still works
    w.write([w.ae])
    out, _ = w.sighup()
    assert out == "saef reloaded 1 binding(s); [saef_maf] off"
    assert w.kcid_handshake() is TLSFailureReason.UNKNOWN_PSK_IDENTITY
    assert w.unreachable(p1) == base1 + 1 and w.unreachable(p2) == base2 + 2
    assert w.saef_retrieve() == 2000
    assert w.km.hex() not in w.stderr()
    w.reset([w.ae], maf_port=p1)


def test_a_changed_listen_address_is_a_warning_and_the_rest_is_reloaded(world: World) -> None:
    w = world
    w.reset([w.ae], maf_port=w.maf_ports[0])
    w.write([w.other], maf_port=w.maf_ports[0], listen="127.0.0.1:1")
    out, err = w.sighup()
    assert out == "saef reloaded 1 binding(s)", (out, err)
    assert f"warning: [saef] listen changed to 127.0.0.1:1: a restart is needed to listen there; the SAEF " \
           f"listener stays on {w.saef[0]}:{w.saef[1]}" in err, err
    assert w.plain(w.other) == 4106  # the rest was reloaded
    assert w.saef_retrieve() == 2000  # still on the old address
    w.reset([w.ae], maf_port=w.maf_ports[0])  # the original address: no warning
    assert w.stderr().count("listen changed") == 1
