"""The SAEF listener end to end: a real ACME CSE, ``m2msec gateway serve`` as a process with
``[saef]`` (``--saef-listen 127.0.0.1:0``), AEs connecting with TLS 1.2 (TS-0003 8.2.2.1 PSK
with Kpsa/KpsaID, 8.2.2.2 AE-ID certificate) and the 7.2.1 From check; the plain listener's
``require_saef_for``.  What ACME holds is checked through the admin, so "the CSE sees
nothing" means the resource does not exist there."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from _gateway_support import GatewayProcess
from _saef_support import (
    ADMIN,
    SP,
    ae_certificate_client,
    gateway_toml_head,
    req,
    utc_now,
    write_cse_credentials,
)
from _saef_support import run as saef_run
from cryptography.hazmat.primitives import serialization

from m2msec.net.acme import AcmeCSE
from m2msec.net.client import OneM2MClient
from m2msec.onem2m import Operation, RequestPrimitive, ResourceType, ResponsePrimitive
from m2msec.onem2m.primitives import new_request_id
from m2msec.pki import CertificateFlavour, DevCA, IssuedCertificate
from m2msec.saef import KpsaEntry, psk_client
from m2msec.saef.framework import SAEFEndpoint
from m2msec.saef.http import SAEFHTTPClient
from m2msec.tls.engine import TLSFailureReason, TLSHandshakeError

pytestmark = pytest.mark.acme


@dataclass
class World:
    acme: AcmeCSE
    gw: GatewayProcess
    ca: DevCA
    evil: DevCA
    ae_psk: str
    ae_cert: str
    ae_plain: str
    kid: str
    kpsa: bytes
    cert: IssuedCertificate

    @property
    def saef(self) -> tuple[str, int]:
        assert self.gw.saef_address is not None
        return self.gw.saef_address

    def psk(self, kid: str | None = None, kpsa: bytes | None = None) -> SAEFEndpoint:
        return psk_client(KpsaEntry(kid or self.kid, kpsa or self.kpsa), id_b=self.acme.csi)

    def certificate(self, issued: IssuedCertificate | None = None) -> SAEFEndpoint:
        return ae_certificate_client(issued or self.cert, self.ca, self.acme.csi)

    def admin_rsc(self, path: str) -> int:
        with OneM2MClient(self.gw.url, ADMIN) as c:
            return int(c.retrieve(path, check=False).rsc)


@pytest.fixture(scope="module")
def world(acme: AcmeCSE, gwdir: Path, tag: str) -> Iterator[World]:
    now = utc_now()
    ca = DevCA.create("SAEF e2e SP", now=now, intermediate=True)
    evil = DevCA.create("SAEF e2e Evil", now=now, intermediate=True)
    ae_psk, ae_cert, ae_plain = f"Csaef-psk-{tag}", f"Csaef-crt-{tag}", f"Csaef-plain-{tag}"
    cert = ca.issue(CertificateFlavour.AE_ID, [f"//{SP}/{acme.cse_id}/{ae_cert}"], now=now)
    cse_cert, cse_key = write_cse_credentials(gwdir, ca.issue(CertificateFlavour.CSE_ID, [f"in.{SP}"], now=now))
    (gwdir / "aes-ca.pem").write_bytes(ca.trust_anchor.public_bytes(serialization.Encoding.PEM))
    kid, kpsa = f"{tag}@sp.{SP}", os.urandom(32)
    (gwdir / "ae.psk").write_text(kpsa.hex())
    config = gwdir / "gateway-saef.toml"
    config.write_text(gateway_toml_head(acme, gwdir, "gateway-saef.db") + f"""[saef]
listen = "127.0.0.1:1"
cert = "{cse_cert}"
key = "{cse_key}"
require_saef_for = ["{ae_psk}", "Csaef-crt-*"]
[[saef_psk]]
kpsa_id = "{kid}"
kpsa_file = "ae.psk"
ae_id = "{ae_psk}"
[[saef_cert]]
flavour = "ae-id"
identifier = "//{SP}/{acme.cse_id}/{ae_cert}"
root_of_trust = "aes-ca.pem"
revocation = "off"
""")
    gw = GatewayProcess(config, acme.url, saef_listen="127.0.0.1:0")  # overrides the file's listen
    try:
        with OneM2MClient(gw.url, ae_plain) as c:  # an AE of the plain listener: the impersonation victim
            c.create(acme.cse_base, ResourceType.AE, {"m2m:ae": {"rn": ae_plain, "api": "Nm2msec", "rr": False,
                                                                 "srv": ["3"]}})
        yield World(acme, gw, ca, evil, ae_psk, ae_cert, ae_plain, kid, kpsa, cert)
    finally:
        assert gw.stop() == 0


def run(coro: Any) -> Any:
    return saef_run(coro, 20)


async def _session(w: World, ep: SAEFEndpoint, requests: list[RequestPrimitive]) -> tuple[str, list[ResponsePrimitive]]:
    async with await SAEFHTTPClient.connect(ep, *w.saef) as c:
        return c.context.framework, [await c.send(r) for r in requests]


def _register_and_use(w: World, ep: SAEFEndpoint, ae: str) -> None:
    base = w.acme.cse_base
    reqs = [
        req(Operation.CREATE, base, ae, ty=ResourceType.AE,
            pc={"m2m:ae": {"rn": ae, "api": "Nm2msec", "rr": False, "srv": ["3"]}}),
        req(Operation.CREATE, f"{base}/{ae}", ae, ty=ResourceType.CONTAINER, pc={"m2m:cnt": {"rn": "data"}}),
        req(Operation.CREATE, f"{base}/{ae}/data", None, ty=ResourceType.CONTENT_INSTANCE,
            pc={"m2m:cin": {"con": "21.5", "cr": None}}),  # no From: sent on as the bound AE-ID; cr: the creator
        req(Operation.RETRIEVE, f"{base}/{ae}/data/la", ae),
    ]
    _, rsps = run(_session(w, ep, reqs))
    assert [int(r.rsc) for r in rsps] == [2001, 2001, 2001, 2000], [r.pc for r in rsps]
    assert rsps[0].pc["m2m:ae"]["aei"] == ae  # type: ignore[index]
    assert rsps[3].pc["m2m:cin"]["con"] == "21.5"  # type: ignore[index]
    assert rsps[3].pc["m2m:cin"]["cr"] == ae  # type: ignore[index]  # ACME recorded the bound creator


def test_psk_ae_registers_creates_and_retrieves_through_the_saef_listener(world: World) -> None:
    _register_and_use(world, world.psk(), world.ae_psk)


def test_certificate_ae_registers_creates_and_retrieves_through_the_saef_listener(world: World) -> None:
    _register_and_use(world, world.certificate(), world.ae_cert)


def test_from_of_another_ae_is_4106_and_the_cse_sees_nothing(world: World) -> None:
    w = world
    target = f"{w.acme.cse_base}/{w.ae_plain}"
    fw, rsps = run(_session(w, w.psk(), [
        req(Operation.CREATE, target, w.ae_plain, ty=ResourceType.CONTAINER, pc={"m2m:cnt": {"rn": "stolen"}}),
        req(Operation.DELETE, target, f"/{w.acme.cse_id}/{w.ae_plain}"),
    ]))
    assert fw == "psk"
    assert [int(r.rsc) for r in rsps] == [4106, 4106]
    assert w.admin_rsc(f"{target}/stolen") == 4004
    assert w.admin_rsc(target) == 2000  # not deleted


@pytest.mark.parametrize("case", ["wrong-kpsa", "unknown-kpsa-id", "untrusted-certificate"])
def test_handshake_failures(world: World, case: str) -> None:
    w = world
    ep = {"wrong-kpsa": lambda: w.psk(kpsa=os.urandom(32)),
          "unknown-kpsa-id": lambda: w.psk(kid=f"nobody@sp.{SP}"),
          "untrusted-certificate": lambda: w.certificate(w.evil.issue(
              CertificateFlavour.AE_ID, [f"//{SP}/{w.acme.cse_id}/{w.ae_cert}"], now=utc_now()))}[case]()
    with pytest.raises(TLSHandshakeError) as ei:
        run(SAEFHTTPClient.connect(ep, *w.saef, timeout=5))
    want = {"wrong-kpsa": TLSFailureReason.PSK_MISMATCH, "unknown-kpsa-id": TLSFailureReason.UNKNOWN_PSK_IDENTITY,
            "untrusted-certificate": TLSFailureReason.BAD_CERTIFICATE}[case]
    assert ei.value.reason is want


@pytest.mark.parametrize("claimed", ["psk", "cert-prefix"])
def test_plain_listener_refuses_a_protected_originator(world: World, claimed: str) -> None:
    w = world
    fr = w.ae_psk if claimed == "psk" else f"/{w.acme.cse_id}/Csaef-crt-other"
    rqi = new_request_id()
    r = httpx.post(f"{w.gw.url}{w.acme.cse_base}", content=b'{"m2m:ae":{"rn":"' + fr.encode()[-12:] + b'x","api":"Nx",'
                   b'"rr":false,"srv":["3"]}}',
                   headers={"X-M2M-Origin": fr, "X-M2M-RI": rqi, "X-M2M-RVI": "3",
                            "Content-Type": "application/json;ty=2"}, timeout=10)
    assert (r.status_code, r.headers["X-M2M-RSC"], r.headers["X-M2M-RI"]) == (403, "4106", rqi)
    assert w.admin_rsc(f"{w.acme.cse_base}/{fr[-12:]}x") == 4004
    # the plain listener still serves the unprotected AE
    with OneM2MClient(w.gw.url, w.ae_plain) as c:
        assert int(c.retrieve(f"{w.acme.cse_base}/{w.ae_plain}", check=False).rsc) == 2000


def test_garbled_tls_bytes_then_the_listener_still_serves(world: World) -> None:
    w = world

    async def garble() -> bytes:
        reader, writer = await asyncio.open_connection(*w.saef)
        writer.write(b"\x16\x03\x01\x00\x05hello" + os.urandom(200))
        await writer.drain()
        got = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return got

    got = run(garble())
    assert b"HTTP/" not in got
    fw, rsps = run(_session(w, w.psk(), [req(Operation.RETRIEVE, w.acme.cse_base, w.ae_plain)]))
    assert fw == "psk" and [int(r.rsc) for r in rsps] == [4106]  # handshake and the 7.2.1 check still work
    assert w.gw.proc.poll() is None
