"""Security associations between an AE and its CSE (TS-0003 8.2: 8.2.2.1 Provisioned Symmetric
Key SAEF, 8.2.2.2 Certificate-Based SAEF; 8.1.2.5 certificate verification; 7.2.1 the From check).

    .venv/bin/python examples/saef_association.py

A CSE runs in-process on 127.0.0.1 with the oneM2M HTTP binding over TLS 1.2 and accepts two
kinds of AE:

* a sensor provisioned with a Kpsa/KpsaID (TLS-PSK, ``TLS_PSK_WITH_AES_128_CBC_SHA256``);
* an application with an AE-ID certificate from the service provider's CA (mutual TLS; each
  side verifies the other's certificate flavour and identifier, 8.1.2.5).

Each AE creates a container; the CSE's handler sees the identity bound to the association,
never a header.  A request whose From names another AE is answered 4106 without reaching the
handler; a wrong Kpsa and a certificate from another CA fail the handshake.  Key bytes are
never printed.  The application code is between the ``----`` markers; the rest is the CSE.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime

from m2msec.onem2m.enums import Operation, ResourceType
from m2msec.onem2m.primitives import RequestPrimitive, ResponsePrimitive
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.pki import CertificateFlavour, DevCA, PeerCertInfo
from m2msec.saef import (
    AssociationConfiguration,
    CredentialConfiguration,
    InMemoryKpsaDirectory,
    KpsaEntry,
    PeerKind,
    SecurityContext,
    certificate_client,
    certificate_server,
    combined_server,
    psk_client,
    psk_server,
)
from m2msec.saef.http import SAEFHTTPClient, SAEFHTTPServer
from m2msec.tls.engine import TLSHandshakeError

SP = "sp.example.com"
CSE_NAME, CSE_ID = f"cse-in.{SP}", "/id-in"
SENSOR, APP, OTHER = f"//{SP}/id-in/Csensor", f"//{SP}/id-in/Capp", f"//{SP}/id-in/Cother"


def now() -> datetime:
    return datetime.now(UTC)


def create(fr: str, rn: str) -> RequestPrimitive:
    return RequestPrimitive(op=Operation.CREATE, to="/id-in/cse-in", fr=fr, rqi=f"req-{rn}", rvi="3",
                            ty=ResourceType.CONTAINER, pc={"m2m:cnt": {"rn": rn}})


async def main() -> int:
    # Set-up: the SP's CA, the CSE's certificate, the sensor's Kpsa (8.1.2.4) and the
    # application's AE-ID certificate (8.1.2.3).
    ca = DevCA.create("example SP CA", now=now(), permit_dns=[SP], permit_uri=[SP])
    other_ca = DevCA.create("someone else's CA", now=now(), permit_dns=[SP], permit_uri=[SP])
    cse_cred = CredentialConfiguration.from_issued(ca.issue(CertificateFlavour.CSE_ID, [CSE_NAME], now=now()), CSE_ID)
    app_cred = CredentialConfiguration.from_issued(ca.issue(CertificateFlavour.AE_ID, [APP], now=now()), APP)
    forged_cred = CredentialConfiguration.from_issued(other_ca.issue(CertificateFlavour.AE_ID, [APP], now=now()), APP)
    kpsa = KpsaEntry(f"{os.urandom(16).hex()}@mef.{SP}", os.urandom(32), peer_id=SENSOR, peer_kind=PeerKind.AE)

    # The CSE: Entity B for both kinds of association, one listener.
    knows_app = AssociationConfiguration.entity_b(
        id_a=APP, cert_name_a=PeerCertInfo(CertificateFlavour.AE_ID, APP), root_of_trust_a=[ca.trust_anchor], id_b=CSE_ID)
    created: list[str] = []

    async def hosting_cse(req: RequestPrimitive, ctx: SecurityContext) -> ResponsePrimitive:
        created.append(f"{req.pc['m2m:cnt']['rn']} by {ctx.peer_id} ({ctx.framework})")
        return ResponsePrimitive(rsc=RSC.CREATED, rqi=req.rqi, rvi=req.rvi, pc={"m2m:cnt": req.pc["m2m:cnt"]})

    endpoint = combined_server(psk_server(InMemoryKpsaDirectory([kpsa]), id_b=CSE_ID),
                               certificate_server(cse_cred, [knows_app], clock=now))
    async with SAEFHTTPServer(endpoint, hosting_cse, sp_id=f"//{SP}", cse_id=CSE_ID) as cse:
        host, port = cse.address
        print(f"CSE {CSE_ID} on {host}:{port}: TLS-PSK and certificate associations")

        # ---- the sensor: Provisioned Symmetric Key SAEF (8.2.2.1)
        sensor_end = psk_client(KpsaEntry(kpsa.kpsa_id, kpsa.kpsa), id_b=CSE_ID, server_name=CSE_NAME)
        async with await SAEFHTTPClient.connect(sensor_end, host, port) as sensor:
            print(f"sensor associated: {sensor.context.protocol}, {sensor.context.cipher}, "
                  f"psk_identity {kpsa.kpsa_id}")
            rsp = await sensor.send(create(SENSOR, "readings"))
            print(f"sensor CREATE as itself: {int(rsp.rsc)} {rsp.rsc.name}")
            rsp = await sensor.send(create(OTHER, "spoofed"))
            print(f"sensor CREATE with From = another AE: {int(rsp.rsc)} {rsp.rsc.name}")

        # ---- the application: Certificate-Based SAEF (8.2.2.2)
        to_cse = AssociationConfiguration.entity_a(
            id_a=APP, id_b=CSE_ID, cert_name_b=PeerCertInfo(CertificateFlavour.CSE_ID, CSE_NAME),
            root_of_trust_b=[ca.trust_anchor])
        async with await SAEFHTTPClient.connect(certificate_client(app_cred, to_cse, clock=now), host, port) as app:
            print(f"app associated: {app.context.protocol}, {app.context.cipher}, CSE verified as {app.context.peer_id}")
            rsp = await app.send(create(APP, "commands"))
            print(f"app CREATE as itself: {int(rsp.rsc)} {rsp.rsc.name}")
        # ----

        for what, end in (
            ("wrong Kpsa", psk_client(KpsaEntry(kpsa.kpsa_id, os.urandom(32)), id_b=CSE_ID)),
            ("certificate from another CA", certificate_client(forged_cred, to_cse, clock=now)),
        ):
            try:
                await SAEFHTTPClient.connect(end, host, port)
                print(f"FAIL: {what} was accepted")
                return 1
            except TLSHandshakeError as exc:
                print(f"{what} refused: handshake failed ({exc.reason.value})")

    print("the CSE saw: " + "; ".join(created))
    if created != [f"readings by {SENSOR} (psk)", f"commands by {APP} (certificate)"]:
        print("FAIL: unexpected requests reached the CSE")
        return 1
    print("OK: PSK and certificate security associations, requests bound to the authenticated AE")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
