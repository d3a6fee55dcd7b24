"""Two AEs exchange ESPrim-protected primitives through a real CSE (ACME) fronted by the
m2msec gateway (TS-0003 8.4; TS-0004 7.5.1.2.11/13, 7.6.2).

    .venv/bin/python examples/esprim_two_aes.py

AE2 serves its handler "secured"; AE1 sends a RETRIEVE to AE2 "secured".  The application
code of each side is the few lines between the ``----`` markers; the rest starts the CSE
and the gateway and registers the AEs.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from m2msec.esprim import MemoryReceiverState, Originator, PairwiseKey, ProvisionedKeySource, Receiver
from m2msec.esprim.transport import SecureOriginator, SecureReceiver
from m2msec.gateway import GatewayConfig
from m2msec.gateway.app import build
from m2msec.net.acme import AcmeCSE
from m2msec.net.client import AsyncOneM2MClient
from m2msec.net.endpoint import AEEndpoint
from m2msec.onem2m import Operation, RequestPrimitive, ResourceType, ResponsePrimitive, ResponseStatusCode
from m2msec.onem2m.primitives import new_request_id
from m2msec.store import KeyEncryptionKey, open_store


def now() -> datetime:
    return datetime.now(timezone.utc)


AE1, AE2 = f"Cexample-ae1-{secrets.token_hex(2)}", f"Cexample-ae2-{secrets.token_hex(2)}"
KID = f"{secrets.token_hex(16)}@mef.example.com"
KEY = os.urandom(32)  # pre-provisioned pairwiseESPrimKey shared by AE1 and AE2 (SUID 13)


async def main(acme: AcmeCSE, workdir: Path) -> None:
    config = GatewayConfig(cse_id=acme.cse_id, cse_name=acme.cse_name, cse_url=acme.url)
    gateway, store = build(config, store=open_store(f"sqlite://{workdir}/gw.db", KeyEncryptionKey.generate()))
    await gateway.start()
    ae2_path = f"{acme.cse_base}/ae2"
    try:
        # ---- AE2: serve a handler, secured
        async def read_sensor(req: RequestPrimitive) -> ResponsePrimitive:
            return ResponsePrimitive(rsc=ResponseStatusCode.OK, rqi=req.rqi, pc={"m2m:cin": {"con": "21.5 C"}})

        receiver = Receiver(keys=ProvisionedKeySource([PairwiseKey(kid=KID, key=KEY, peer_id=AE1)], clock=now),
                            state=MemoryReceiverState(clock=now), clock=now)
        ae2 = SecureReceiver(receiver, read_sensor)
        endpoint = await AEEndpoint(ae2.dispatcher()).start()
        # ----

        async with AsyncOneM2MClient(gateway.url, AE2) as c2:  # register AE2 (poa, esi) and let AE1 in
            await c2.create(acme.cse_base, ResourceType.AE, {"m2m:ae": {
                "rn": "ae2", "api": "Nexample", "rr": True, "srv": ["3"], "poa": [endpoint.url],
                "esi": ae2.e2e_sec_info().to_json()}})
            acp = await c2.create(ae2_path, ResourceType.ACCESS_CONTROL_POLICY, {"m2m:acp": {
                "rn": "acp", "pv": {"acr": [{"acor": [AE1], "acop": 2 | 16}, {"acor": [AE2], "acop": 63}]},
                "pvs": {"acr": [{"acor": [AE2], "acop": 63}]}}})
            await c2.update(ae2_path, {"m2m:ae": {"acpi": [acp.pc["m2m:acp"]["ri"]]}})

        # ---- AE1: send a request to AE2, secured
        async with AsyncOneM2MClient(gateway.url, AE1) as client:
            ae1 = SecureOriginator(client, Originator(clock=now), PairwiseKey(kid=KID, key=KEY, peer_id=AE2))
            request = RequestPrimitive(op=Operation.RETRIEVE, to=ae2_path + "/temperature", fr=AE1,
                                       rqi=new_request_id(), rvi="3")
            response = await ae1.send(request, receiver=ae2_path, receiver_resource=ae2_path)
        # ----
        print(f"AE1 got {int(response.rsc)} {response.pc} from AE2 through ACME + gateway at {gateway.url}")
    finally:
        await gateway.close()  # first: closes its keep-alive connections to the endpoint
        store.close()
    await asyncio.sleep(0.1)  # let the endpoint see those connections end before closing it
    await endpoint.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d, AcmeCSE(Path(d) / "acme") as cse:
        asyncio.run(main(cse, Path(d)))
