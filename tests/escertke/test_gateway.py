"""ESCertKE through a real CSE: ``m2msec gateway`` in front of ACME (TS-0004 7.5.1.2.12).

ACME itself does not forward a NOTIFY carrying ``m2m:seci`` (tests/net pin that); the
gateway looks up the target AE's pointOfAccess in ACME and relays the Notify - Messages 1
and 3 - to the Terminating AE's endpoint and its response - Messages 2 and 4 - back.
Both AEs register in ACME through the gateway; the Initiator only knows the Terminator's
resource path.
"""

from __future__ import annotations

import asyncio
import importlib.util
import secrets
from pathlib import Path

import pytest
from _escertke_support import PKI, initiator_info, terminator_info  # type: ignore[import-not-found]

from m2msec.escertke import (
    ESCertKEError,
    InitiatingEndPoint,
    InitiatorInfo,
    Reason,
    TerminatingEndPoint,
    run_initiator,
    terminator_handler,
)
from m2msec.net.acme import AcmeCSE, acme_available
from m2msec.net.client import AsyncOneM2MClient, OneM2MClient
from m2msec.net.endpoint import EndpointThread, NotifyDispatcher
from m2msec.onem2m import ResourceType
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.store import KeyEncryptionKey

pytestmark = pytest.mark.skipif(not acme_available(), reason="acmecse is not installed")

_spec = importlib.util.spec_from_file_location(
    "m2msec_tests_gateway_support", Path(__file__).parents[1] / "gateway" / "_gateway_support.py"
)
assert _spec is not None and _spec.loader is not None
gw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gw)


def test_escertke_through_gateway_and_acme(pki: PKI, clock, tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    ini_aei, ter_aei = f"Cesc-ini-{tag}", f"Cesc-ter-{tag}"
    cse = AcmeCSE(tmp_path / "acme")
    cse.start()
    gwdir = tmp_path / "gw"
    gwdir.mkdir()
    KeyEncryptionKey.generate().write_file(gwdir / "gateway.kek")
    config = gw.write_config(gwdir / "gateway.toml", cse_id=cse.cse_id, cse_name=cse.cse_name, keys=[])
    proc = None
    ep = None
    try:
        proc = gw.GatewayProcess(config, cse.url)
        base = initiator_info(pki)
        ter = TerminatingEndPoint(pki.ter, [InitiatorInfo(base.cert_info, base.trust_anchors, identity=ini_aei)],
                                  clock=clock)
        ep = EndpointThread(NotifyDispatcher(on_escertke_message=terminator_handler(ter))).start()
        with OneM2MClient(proc.url, ter_aei) as c:
            c.create(cse.cse_base, ResourceType.AE, {"m2m:ae": {"rn": "ter", "api": "Nm2msec", "rr": True,
                                                                  "srv": ["3"], "poa": [ep.url]}})
            # the gateway makes the CSE's NOTIFY access-control decision (profile G4): grant both
            # Initiators, so that the refusal of the unknown one below comes from the Terminator
            acp = c.create(f"{cse.cse_base}/ter", ResourceType.ACCESS_CONTROL_POLICY, {"m2m:acp": {
                "rn": "acp", "pv": {"acr": [{"acor": [ini_aei, f"Cesc-other-{tag}"], "acop": 16},
                                            {"acor": [ter_aei], "acop": 63}]},
                "pvs": {"acr": [{"acor": [ter_aei], "acop": 63}]}}})
            c.update(f"{cse.cse_base}/ter", {"m2m:ae": {"acpi": [acp.pc["m2m:acp"]["ri"]]}})
        with OneM2MClient(proc.url, ini_aei) as c:
            c.create(cse.cse_base, ResourceType.AE, {"m2m:ae": {"rn": "ini", "api": "Nm2msec", "rr": False, "srv": ["3"]}})
        ini = InitiatingEndPoint(pki.ini, clock=clock)
        target = terminator_info(pki, address=f"{cse.cse_base}/ter")

        async def main(originator: str):
            async with AsyncOneM2MClient(proc.url, originator) as client:
                return await run_initiator(client, ini.initiate(target))

        res = asyncio.run(main(ini_aei))
        theirs = ter.keys.for_peer(ini_aei)
        assert theirs is not None and theirs.key == res.key and theirs.kid == res.kid
        # an originator the Terminator is not configured for: the refusal comes back through the gateway
        with pytest.raises(ESCertKEError) as ei:
            asyncio.run(main(f"Cesc-other-{tag}"))
        assert ei.value.reason is Reason.PEER_REFUSED and ei.value.rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
        # ACME alone refuses to carry it (no m2m:seci forwarding): the procedure fails cleanly
        ini2 = InitiatingEndPoint(pki.ini, clock=clock)

        async def direct():
            async with AsyncOneM2MClient(cse.url, ini_aei) as client:
                return await run_initiator(client, ini2.initiate(target))

        with pytest.raises(ESCertKEError) as ei:
            asyncio.run(direct())
        assert ei.value.reason is Reason.PEER_REFUSED and ei.value.rsc == RSC.BAD_REQUEST and len(ini2.keys) == 0
    finally:
        if ep is not None:
            ep.stop()
        if proc is not None:
            proc.stop()
        cse.stop()
