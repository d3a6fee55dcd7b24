"""SIGHUP on ``m2msec gateway serve`` re-reads the SAEF bindings (TS-0003 8.2.2.1, 8.2.2.2,
8.1.2.2): ``[[saef_psk]]``, ``[[saef_cert]]`` and their CRL files, all or nothing, with a real
gateway process in front of a real ACME CSE.

A Kpsa binding added to the file and a SIGHUP let the new AE in; a removed binding is refused
in the handshake, and the association made with it before the reload is refused (4106) and
closed at its next request; a CRL file
that now revokes an AE's certificate refuses it; a broken file keeps the old bindings
(``error: saef not reloaded: ...``); the gateway keeps running throughout.  Without ``[saef]``
SIGHUP is still the "nothing to reload" note (tests/test_configuration_doc.py)."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from _gateway_support import GatewayProcess
from cryptography.hazmat.primitives import serialization

from m2msec.net.acme import AcmeCSE
from m2msec.onem2m import Operation, RequestPrimitive, ResourceType, ResponsePrimitive
from m2msec.onem2m.primitives import new_request_id
from m2msec.pki import CertificateFlavour, DevCA, IssuedCertificate, PeerCertInfo
from m2msec.saef import (
    AssociationConfiguration,
    CredentialConfiguration,
    KpsaEntry,
    certificate_client,
    psk_client,
)
from m2msec.saef.framework import SAEFEndpoint
from m2msec.saef.http import SAEFHTTPClient
from m2msec.tls.engine import TLSFailureReason, TLSHandshakeError

pytestmark = pytest.mark.acme
SP = "m2m.example.com"
PEM = serialization.Encoding.PEM


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class World:
    acme: AcmeCSE
    gw: GatewayProcess
    config: Path
    ca: DevCA
    cert: IssuedCertificate
    ae_cert: str
    keys: dict[str, tuple[str, bytes]]  # AE-ID -> (KpsaID, Kpsa)
    stdout: queue.Queue[str] | None = None

    def psk(self, ae: str) -> SAEFEndpoint:
        kid, kpsa = self.keys[ae]
        return psk_client(KpsaEntry(kid, kpsa), id_b="/" + self.acme.cse_id)

    def certificate(self) -> SAEFEndpoint:
        assoc = AssociationConfiguration.entity_a(
            id_b="/" + self.acme.cse_id, cert_name_b=PeerCertInfo(CertificateFlavour.CSE_ID, f"in.{SP}"),
            root_of_trust_b=[self.ca.trust_anchor])
        return certificate_client(CredentialConfiguration.from_issued(self.cert), assoc, clock=utc_now)

    def write(self, psk_aes: list[str], *, extra: str = "") -> None:
        d = self.config.parent
        text = f"""
[cse]
id = "{self.acme.cse_id}"
name = "{self.acme.cse_name}"
admin = "CAdmin"
sp_id = "//{SP}"
[store]
kek_file = "gateway.kek"
url = "sqlite://{d}/gateway-saef-reload.db"
[saef]
listen = "127.0.0.1:1"
cert = "reload-cse-cert.pem"
key = "reload-cse-key.pem"
"""
        for ae in psk_aes:
            kid, kpsa = self.keys[ae]
            (d / f"{ae}.psk").write_text(kpsa.hex())
            text += f'[[saef_psk]]\nkpsa_id = "{kid}"\nkpsa_file = "{ae}.psk"\nae_id = "{ae}"\n'
        text += (f'[[saef_cert]]\nflavour = "ae-id"\nidentifier = "//{SP}/{self.acme.cse_id}/{self.ae_cert}"\n'
                 f'root_of_trust = "reload-aes-ca.pem"\ncrls = ["reload-aes.crl"]\nrevocation = "require"\n')
        self.config.write_text(text + extra)

    def sighup(self) -> str:
        """Send SIGHUP and return the gateway's answer: its next stdout line, or a new stderr line."""
        if self.stdout is None:  # one reader for the whole module: a line is never lost to a stale reader
            self.stdout = queue.Queue()
            out = self.gw.proc.stdout
            assert out is not None
            threading.Thread(target=lambda: [self.stdout.put(line) for line in out], daemon=True).start()  # type: ignore[union-attr]
        before = self.stderr()
        self.gw.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                return self.stdout.get(timeout=0.05).strip()
            except queue.Empty:
                pass
            err = self.stderr()
            if len(err) > len(before):
                return err[len(before):].strip()
        raise AssertionError("the gateway did not answer SIGHUP")

    def stderr(self) -> str:
        self.gw._err.seek(0)
        return self.gw._err.read().decode("utf-8", "replace")


@pytest.fixture(scope="module")
def world(acme: AcmeCSE, gwdir: Path, tag: str) -> Iterator[World]:
    now = utc_now()
    ca = DevCA.create("SAEF reload SP", now=now)
    ae_cert = f"Csaef-rl-crt-{tag}"
    cert = ca.issue(CertificateFlavour.AE_ID, [f"//{SP}/{acme.cse_id}/{ae_cert}"], now=now)
    cse = ca.issue(CertificateFlavour.CSE_ID, [f"in.{SP}"], now=now)
    assert cse.private_key is not None
    (gwdir / "reload-cse-cert.pem").write_bytes(cse.certificate.public_bytes(PEM))
    (gwdir / "reload-cse-key.pem").write_bytes(cse.private_key.private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (gwdir / "reload-aes-ca.pem").write_bytes(ca.trust_anchor.public_bytes(PEM))
    (gwdir / "reload-aes.crl").write_bytes(ca.issue_crl(now=now).public_bytes(PEM))
    keys = {f"Csaef-rl-{n}-{tag}": (f"rl-{n}-{tag}@sp.{SP}", os.urandom(32)) for n in ("a", "b")}
    w = World(acme, None, gwdir / "gateway-saef-reload.toml", ca, cert, ae_cert, keys)  # type: ignore[arg-type]
    first = sorted(keys)[0]
    w.write([first])
    w.gw = GatewayProcess(w.config, acme.url, saef_listen="127.0.0.1:0")
    try:
        yield w
    finally:
        assert w.gw.stop() == 0


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def req(op: Operation, to: str, fr: str | None, **kw: Any) -> RequestPrimitive:
    return RequestPrimitive(op=op, to=to, fr=fr, rqi=new_request_id(), rvi="3", **kw)


def register(w: World, ae: str) -> RequestPrimitive:
    return req(Operation.CREATE, w.acme.cse_base, ae, ty=ResourceType.AE,
               pc={"m2m:ae": {"rn": ae, "api": "Nm2msec", "rr": False, "srv": ["3"]}})


async def _session(w: World, ep: SAEFEndpoint, requests: list[RequestPrimitive]) -> list[ResponsePrimitive]:
    assert w.gw.saef_address is not None
    async with await SAEFHTTPClient.connect(ep, *w.gw.saef_address, timeout=8) as c:
        return [await c.send(r) for r in requests]


def _refused(w: World, ep: SAEFEndpoint) -> TLSFailureReason:
    assert w.gw.saef_address is not None
    with pytest.raises(TLSHandshakeError) as ei:
        run(SAEFHTTPClient.connect(ep, *w.gw.saef_address, timeout=8))
    return ei.value.reason


def test_sighup_adds_and_removes_bindings_and_ends_removed_associations(world: World) -> None:
    w = world
    a, b = sorted(w.keys)
    # at start: a only
    assert [int(r.rsc) for r in run(_session(w, w.psk(a), [register(w, a)]))] == [2001]
    assert _refused(w, w.psk(b)) is TLSFailureReason.UNKNOWN_PSK_IDENTITY
    # add b: SIGHUP, b connects
    w.write([a, b])
    assert w.sighup() == "saef reloaded 3 binding(s)"
    rsps = run(_session(w, w.psk(b), [register(w, b), req(Operation.RETRIEVE, f"{w.acme.cse_base}/{b}", b),
                                      req(Operation.RETRIEVE, f"{w.acme.cse_base}/{a}", a)]))
    assert [int(r.rsc) for r in rsps] == [2001, 2000, 4106]  # still bound to b only

    # remove a while a's association is open: that association ends at its next request (G10)
    async def established() -> tuple[list[int], TLSFailureReason, str]:
        assert w.gw.saef_address is not None
        async with await SAEFHTTPClient.connect(w.psk(a), *w.gw.saef_address, timeout=8) as c:
            before = int((await c.send(req(Operation.RETRIEVE, f"{w.acme.cse_base}/{a}", a))).rsc)
            w.write([b])
            line = await asyncio.to_thread(w.sighup)
            after = int((await c.send(req(Operation.RETRIEVE, f"{w.acme.cse_base}/{a}", a))).rsc)
            with pytest.raises(Exception):  # noqa: B017, PT011 - the gateway closed the association
                await c.send(req(Operation.RETRIEVE, f"{w.acme.cse_base}/{a}", a))
            with pytest.raises(TLSHandshakeError) as ei:  # a new association with a's Kpsa is refused
                await SAEFHTTPClient.connect(w.psk(a), *w.gw.saef_address, timeout=8)
            return [before, after], ei.value.reason, line

    codes, reason, line = run(established())
    assert line == "saef reloaded 2 binding(s)"
    assert codes == [2000, 4106]
    assert reason is TLSFailureReason.UNKNOWN_PSK_IDENTITY
    assert w.gw.proc.poll() is None


def test_sighup_rereads_crl_files(world: World) -> None:
    w = world
    _, b = sorted(w.keys)
    w.write([b])
    assert w.sighup() == "saef reloaded 2 binding(s)"
    assert [int(r.rsc) for r in run(_session(w, w.certificate(), [register(w, w.ae_cert)]))] == [2001]
    now = utc_now()
    w.ca.revoke(w.cert.certificate, now=now)
    (w.config.parent / "reload-aes.crl").write_bytes(w.ca.issue_crl(now=now).public_bytes(PEM))
    assert w.sighup() == "saef reloaded 2 binding(s)"
    assert _refused(w, w.certificate()) is TLSFailureReason.BAD_CERTIFICATE
    assert [int(r.rsc) for r in run(_session(w, w.psk(b), [req(Operation.RETRIEVE, f"{w.acme.cse_base}/{b}", b)]))] \
        == [2000]


@pytest.mark.parametrize(("break_it", "needle"), [
    (lambda t: t + "[[saef_psk]]\nkpsa_id = \"x@sp.example.com\"\n", "exactly one of kpsa_hex or kpsa_file"),
    (lambda t: t.replace("reload-aes.crl", "no-such.crl"), "no-such.crl"),
    (lambda t: t + "[saef]\n", "is not TOML"),
    (lambda t: t.replace("[saef]\n", "[saef]\nlisten_again = 1\n"), "unknown key 'listen_again'"),
])
def test_a_broken_file_keeps_the_old_bindings(world: World, break_it: Any, needle: str) -> None:
    w = world
    a, b = sorted(w.keys)
    w.write([a, b])
    assert w.sighup() == "saef reloaded 3 binding(s)"
    good = w.config.read_text()
    w.write([b])  # would remove a ...
    w.config.write_text(break_it(w.config.read_text()))  # ... but the file is broken
    line = w.sighup()
    assert line.startswith("error: saef not reloaded: ") and needle in line, line
    assert w.keys[a][1].hex() not in w.stderr()
    rsps = run(_session(w, w.psk(a), [req(Operation.RETRIEVE, f"{w.acme.cse_base}/{a}", a)]))
    assert [int(r.rsc) for r in rsps] == [2000]  # a's binding is still in force
    w.config.write_text(good)
    assert w.gw.proc.poll() is None
