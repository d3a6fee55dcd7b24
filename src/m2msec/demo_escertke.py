"""Demo step: ESCertKE between two AEs over real HTTP endpoints, then ESPrim with its key.

TS-0003 8.7 (ESCertKE) and 10.3.1 (``EXPORTER-oneM2M-ESCertKE``), TS-0004 7.5.1.2.12
(securityInfoType 6 in Notify).  A development CA issues AE-ID certificates to two AEs;
AE1 (Initiating End-Point) runs the four ESCertKE messages as two Notify round trips to
AE2's endpoint (Terminating End-Point), both export the pairwiseE2EKey, and AE1 then sends
AE2 an ESPrim-protected RETRIEVE with that key (SUID 43).  A third AE whose certificate
comes from a CA AE2 does not trust is refused.  Then the CA revokes AE1's certificate
(TS-0003 8.1.2.2): once AE2 holds the new CRL, the key agreed with that certificate stops
working (4112) and a new ESCertKE from AE1 is refused.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

Rows = list[tuple[str, str]]


def run_escertke() -> Rows:
    # the key-drop warning of m2msec.escertke.keys is shown as a table row instead
    quiet = logging.NullHandler()
    keys_log = logging.getLogger("m2msec.escertke.keys")
    keys_log.addHandler(quiet)
    try:
        return asyncio.run(asyncio.wait_for(_run(), 60))
    finally:
        keys_log.removeHandler(quiet)


async def _run() -> Rows:
    from m2msec.escertke import (
        ESCertKEError,
        InitiatingEndPoint,
        InitiatorInfo,
        TerminatingEndPoint,
        TerminatorInfo,
        run_initiator,
        terminator_handler,
    )
    from m2msec.demo_provisioning import fingerprint
    from m2msec.esprim import Originator, Receiver, ReceiverPolicy
    from m2msec.esprim.originator import SessionReady
    from m2msec.esprim.state import MemoryReceiverState
    from m2msec.net.client import AsyncOneM2MClient
    from m2msec.net.endpoint import AEEndpoint, NotifyDispatcher
    from m2msec.onem2m import Operation, RequestPrimitive, ResponsePrimitive, SecurityInfo
    from m2msec.onem2m.enums import SUID
    from m2msec.onem2m.rsc import ResponseStatusCode as RSC
    from m2msec.pki import CertificateFlavour, CRLStore, DevCA, PeerCertInfo
    from m2msec.tls import CertCredentials

    def clock() -> datetime:
        return datetime.now(timezone.utc)

    now = clock()
    sp = "m2msec.example"
    ae1, ae2, ae3 = "Cdemo-ini", "Cdemo-ter", "Cdemo-rogue"
    cert_id = {name: f"https://{sp}/id-in/{name}" for name in (ae1, ae2, ae3)}
    ca = DevCA.create("m2msec demo SP", now=now, permit_uri=[sp], permit_dns=[sp], intermediate=True)
    rogue_ca = DevCA.create("rogue CA", now=now, permit_uri=[sp], permit_dns=[sp])

    def creds(authority: DevCA, name: str) -> CertCredentials:
        issued = authority.issue(CertificateFlavour.AE_ID, [cert_id[name]], now=now)
        return CertCredentials(issued.private_key, issued.certificate, tuple(issued.chain))  # type: ignore[arg-type]

    def ae_info(name: str) -> PeerCertInfo:
        return PeerCertInfo(CertificateFlavour.AE_ID, cert_id[name])

    anchors = (ca.trust_anchor,)
    crls = CRLStore([ca.issue_crl(now=now)])  # AE2's view of the CA's CRL (nothing revoked yet)
    terminator = TerminatingEndPoint(
        creds(ca, ae2), [InitiatorInfo(ae_info(ae1), anchors, identity=ae1, crls=crls),
                         InitiatorInfo(ae_info(ae3), anchors, identity=ae3, crls=crls)], clock=clock,
    )
    receiver = Receiver(keys=terminator.keys, state=MemoryReceiverState(clock=clock), clock=clock,
                        policy=ReceiverPolicy(supported_suids=(SUID.CERTIFICATE_ESPRIM,)))

    async def on_esprim(req: RequestPrimitive, seci: SecurityInfo) -> ResponsePrimitive:
        try:
            inner, ctx = receiver.open_request(seci.esprim_object, outer_from=req.fr)
        except Exception as exc:  # answered with the RSC of TS-0004 table 7.6.2-1
            return receiver.error_response(exc, req)  # type: ignore[arg-type]
        reply = ResponsePrimitive(rsc=RSC.OK, rqi=inner.rqi, rvi="3", pc={"m2m:cin": {"con": f"hello {inner.fr}"}})
        return receiver.esprim_response(req, receiver.protect_response(ctx, reply))

    endpoint = await AEEndpoint(NotifyDispatcher(on_escertke_message=terminator_handler(terminator),
                                                 on_esprim_object=on_esprim)).start()
    rows: Rows = [("AE2 (Terminating End-Point)", f"{ae2} at {endpoint.url}")]

    async def refusal(client: AsyncOneM2MClient, ini: InitiatingEndPoint, unexpected: str) -> str:
        """Run an ESCertKE Procedure that AE2 must refuse; the row text of the refusal."""
        try:
            await run_initiator(client, ini.initiate(ter_info))
        except ESCertKEError as exc:
            return f"refused, {int(exc.rsc)} {exc.rsc.name} ({exc.reason.value})"
        raise RuntimeError(unexpected)

    try:
        ter_info = TerminatorInfo(ae_info(ae2), anchors, identity=ae2, address=f"/id-in/{ae2}")
        ae1_creds = creds(ca, ae1)
        initiator = InitiatingEndPoint(ae1_creds, clock=clock)
        async with AsyncOneM2MClient(endpoint.url, ae1) as client:
            result = await run_initiator(client, initiator.initiate(ter_info))
            theirs = terminator.keys.for_peer(ae1)
            if theirs is None or theirs.key != result.key:
                raise RuntimeError("the two end-points hold different pairwiseE2EKeys")
            rows += [
                ("ESCertKE messages", "1 and 3 in Notify requests, 2 and 4 in their responses (securityInfoType 6)"),
                ("peer verified by AE1", f"{result.peer_id} (AE-ID certificate, TS-0003 8.1.2.5)"),
                ("pairwiseE2EKeyID (kid)", result.kid),
                ("both ends hold the same pairwiseE2EKey", f"yes (fingerprint sha256:{fingerprint(result.key)}…)"),
            ]
            originator = Originator(clock=clock)
            step = originator.start(initiator.keys.resolve(result.kid), receiver.e2e_sec_info())
            if not isinstance(step, SessionReady):
                raise RuntimeError("no ESPrim session")
            inner = RequestPrimitive(op=Operation.RETRIEVE, to=f"/id-in/{ae2}", fr=ae1, rqi="demo-1", rvi="3")
            obj, pending = originator.protect_request(inner, step.session)
            outer = RequestPrimitive.notify_security_info(to=f"/id-in/{ae2}", fr=ae1, seci=SecurityInfo.esprim(obj))
            rsp = await client.send(outer)
            reply = originator.open_response(rsp.security_info().esprim_object, pending)  # type: ignore[union-attr]
            rows.append(("ESPrim RETRIEVE with that key", f"{int(reply.rsc)} {reply.pc}"))

            # the CA revokes AE1's certificate; AE2 gets the new CRL
            ca.revoke(ae1_creds.certificate, now=clock())
            crls.add(ca.issue_crl(now=clock()))
            inner = RequestPrimitive(op=Operation.RETRIEVE, to=f"/id-in/{ae2}", fr=ae1, rqi="demo-2", rvi="3")
            obj, pending = originator.protect_request(inner, step.session)
            rsp = await client.send(RequestPrimitive.notify_security_info(to=f"/id-in/{ae2}", fr=ae1,
                                                                          seci=SecurityInfo.esprim(obj)))
            if rsp.rsc != RSC.ESPRIM_UNKNOWN_KEY_ID or terminator.keys.for_peer(ae1) is not None:
                raise RuntimeError(f"the key of a revoked certificate still works ({int(rsp.rsc)})")
            rows.append(("CA revokes AE1's certificate, AE2 gets the CRL",
                         f"same ESPrim request now {int(rsp.rsc)} {rsp.rsc.name}: AE2 dropped the key "
                         f"(serial {ae1_creds.certificate.serial_number:x})"))
            rows.append(("new ESCertKE from AE1",
                         await refusal(client, initiator, "a revoked certificate completed ESCertKE")))
        rogue = InitiatingEndPoint(creds(rogue_ca, ae3), clock=clock)
        async with AsyncOneM2MClient(endpoint.url, ae3) as client:
            rows.append(("AE3 with a certificate from an untrusted CA",
                         await refusal(client, rogue, "an AE with an untrusted certificate completed ESCertKE")))
    finally:
        await endpoint.close()
    return rows
