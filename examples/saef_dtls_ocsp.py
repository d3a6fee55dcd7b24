"""Certificate status in a Certificate-Based SAEF over DTLS (TS-0003 8.2.2.2, 8.1.2.2; RFC 6960
OCSP, RFC 6066 8 OCSP stapling).

    .venv/bin/python examples/saef_dtls_ocsp.py

The service provider's CA runs an OCSP responder over HTTP on 127.0.0.1.  A CSE (Entity B)
accepts constrained devices over DTLS 1.2 (``TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8``):

* it staples the responder's answer about its own certificate, so a device that cannot reach
  the responder still learns the CSE's status, and insists on it (``ocsp_staple="require"``);
* it asks the responder about each device certificate during the handshake: its final flight
  (ChangeCipherSpec, Finished) is held until the answer is in, so a revoked device never gets a
  session, and other devices are served meanwhile.

A meter associates and sends a reading; the operator revokes the valve's certificate at the CA;
the valve's handshake is refused with the alert ``certificate_revoked`` (the CSE asked the
responder); the meter associates again without a new query (the CSE holds the GOOD answer until
its nextUpdate - the window in which a revocation at the responder alone is not seen).  The
application code is between the ``----`` markers; the rest is the PKI and the CSE.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from datetime import UTC, datetime

from cryptography import x509

from m2msec.pki import CertificateFlavour, DevCA, PeerCertInfo
from m2msec.pki.ocsp import OCSPResponder
from m2msec.pki.ocsp_check import PeerOCSPChecker
from m2msec.pki.ocsp_http import OCSPHTTPServer
from m2msec.pki.ocsp_staple import stapler_for_chain
from m2msec.saef import (
    AssociationConfiguration,
    CredentialConfiguration,
    SecurityContext,
    certificate_client,
    certificate_server,
    connect_dtls,
    serve_dtls,
)
from m2msec.tls import TLSHandshakeError, Transport

SP = "sp.example.com"
CSE_NAME, CSE_ID = f"cse-in.{SP}", "/id-in"
METER, VALVE = f"//{SP}/id-in/Cmeter", f"//{SP}/id-in/Cvalve"


def now() -> datetime:
    return datetime.now(UTC)


async def main() -> int:
    # The PKI: a CA (root + issuing CA), its OCSP responder, the CSE's and two devices' certificates.
    ca = DevCA.create("Example SP", now=now(), permit_dns=[SP], permit_uri=[SP], intermediate=True)
    responder = OCSPHTTPServer(OCSPResponder(ca, clock=now).respond)
    await responder.start()
    cse_cert = ca.issue(CertificateFlavour.CSE_ID, [CSE_NAME], now=now())
    devices = {ae: ca.issue(CertificateFlavour.AE_ID, [ae], now=now()) for ae in (METER, VALVE)}
    print(f"CA {ca.trust_anchor.subject.rfc4514_string()}, OCSP responder {responder.url}")

    # ---- The CSE (Entity B): staples its own status; checks every device over OCSP in the handshake
    stapler = stapler_for_chain(responder.url, [cse_cert.certificate, *cse_cert.chain], clock=now)
    await stapler.refresh()  # then stapler.start() keeps it fresh in a long-running service
    ocsp = PeerOCSPChecker(clock=now, policy="require", url=responder.url, timeout=3)  # answers held, shared
    associations = [dataclasses.replace(
        AssociationConfiguration.entity_b(id_a=ae, cert_name_a=PeerCertInfo(CertificateFlavour.AE_ID, ae),
                                          root_of_trust_a=[ca.trust_anchor], id_b=CSE_ID, revocation="require"),
        peer_ocsp=ocsp) for ae in devices]
    cse = certificate_server(CredentialConfiguration.from_issued(cse_cert), associations, clock=now,
                             transport=Transport.DTLS, ocsp_staple=stapler.staple)
    readings: list[tuple[str, str]] = []

    async def handle(session: object, ctx: SecurityContext) -> None:
        data = await session.recv(5)  # type: ignore[attr-defined]
        readings.append((ctx.peer_id, data.decode()))
        session.send(b"ok")  # type: ignore[attr-defined]

    server = await serve_dtls(cse, handle, handshake_timeout=8)
    host, port = server.sockname[:2]
    print(f"CSE {CSE_ID} on {host}:{port} (DTLS 1.2, certificates, OCSP)")
    # ----

    async def device(ae: str) -> str:
        # ---- A device (Entity A): mutual DTLS, the CSE's stapled status required
        to_cse = AssociationConfiguration.entity_a(
            id_a=ae, id_b=CSE_ID, cert_name_b=PeerCertInfo(CertificateFlavour.CSE_ID, CSE_NAME),
            root_of_trust_b=[ca.trust_anchor])
        endpoint = certificate_client(CredentialConfiguration.from_issued(devices[ae]), to_cse, clock=now,
                                      transport=Transport.DTLS, ocsp_staple="require")
        try:
            session, ctx = await connect_dtls(endpoint, host, port, timeout=8)
        except TLSHandshakeError as exc:
            return f"refused ({exc.reason.value}: {exc.detail})"
        staple = ctx.engine.ocsp_staple_result
        session.send(b"42.1 m3")
        answer = (await session.recv(5)).decode()
        session.close()
        # ----
        return f"associated with {ctx.peer_id} ({ctx.cipher}), CSE status {staple.status.value}, reply {answer!r}"

    try:
        first = await device(METER)
        print(f"meter: {first}")
        ca.revoke(devices[VALVE].certificate, now=now(), reason=x509.ReasonFlags.key_compromise)
        print("operator revoked the valve's certificate at the CA")
        valve = await device(VALVE)
        print(f"valve: {valve}")
        second = await device(METER)
        print(f"meter again: {second}")
        print(f"OCSP queries by the CSE: {ocsp.queries} (the two device certificates and their issuing CA; "
              "answers are held until their nextUpdate)")
    finally:
        server.close()
        await stapler.stop()
        await responder.close()
    print(f"the CSE received: {readings}")
    if (not first.startswith("associated") or "certificate revoked" not in valve
            or not second.startswith("associated") or [r[0] for r in readings] != [METER, METER]):
        print("FAIL: unexpected outcome")
        return 1
    print("OK: DTLS certificate SAEF with OCSP stapling and OCSP checks of the devices")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(asyncio.wait_for(main(), 60)))
