"""Demo step: ESPrim through a real CSE (ACME) fronted by ``m2msec gateway``.

TS-0003 8.4 (ESPrim), TS-0004 7.5.1.2.11/13 and 7.6.2 (transport in Notify).  Starts an
ACME IN-CSE on 127.0.0.1, the gateway in front of it (with a trace of every message it
forwards), and two AEs with their own HTTP endpoints; then

- AE1 -> the CSE itself as ESPrim Target (through the gateway): CREATE, RETRIEVE, UPDATE,
  DELETE of a container, using the CSE's *shared* receiverESPrimRandObject from the
  CSEBase's e2eSecInfo;
- what a CSE on the path can try with a captured object: replaying it (4105, executed once,
  R10), or withholding it past the Request Expiration Timestamp sealed in it (4008, R11);
- AE1 -> AE2 through gateway + ACME: NOTIFY and RETRIEVE, AE2 publishing no shared rand
  object, so AE1 asks for one *on request* (securityInfoType 3/4);

and finally checks that the secret values never appear in what the gateway forwarded.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path

TraceRows = list[tuple[str, str]]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def run_esprim_through_cse(workdir: Path) -> TraceRows:
    from m2msec.net.acme import AcmeCSE, acme_available

    if not acme_available():
        raise RuntimeError("the ACME CSE is not installed: pip install 'm2msec[demo]' (or acmecse)")
    with AcmeCSE(workdir / "acme") as acme:
        return asyncio.run(asyncio.wait_for(_run(acme, workdir), 120))


async def _run(acme: object, workdir: Path) -> TraceRows:  # noqa: C901 - a linear script
    from m2msec.esprim import MemoryReceiverState, Originator, PairwiseKey, ProvisionedKeySource, Receiver
    from m2msec.esprim.receiver import ReceiverPolicy
    from m2msec.esprim.transport import SecureOriginator, SecureReceiver
    from m2msec.gateway import GatewayConfig
    from m2msec.gateway.app import build
    from m2msec.gateway.config import KeyEntry
    from m2msec.net.acme import AcmeCSE
    from m2msec.net.client import AsyncOneM2MClient
    from m2msec.net.endpoint import AEEndpoint
    from m2msec.onem2m import Operation, RequestPrimitive, ResourceType, ResponsePrimitive, SecurityInfo
    from m2msec.onem2m import ResponseStatusCode as RSC
    from m2msec.onem2m.primitives import new_request_id
    from m2msec.store import KeyEncryptionKey, open_store

    assert isinstance(acme, AcmeCSE)
    tag = secrets.token_hex(2)
    ae1, ae2 = f"Cdemo-ae1-{tag}", f"Cdemo-ae2-{tag}"
    # Phase A (pre-provisioned, SUID 13): one pairwiseESPrimKey AE1<->CSE, one AE1<->AE2.
    kid_cse, key_cse = f"{secrets.token_hex(16)}@mef.m2msec.example", os.urandom(32)
    kid_12, key_12 = f"{secrets.token_hex(16)}@mef.m2msec.example", os.urandom(32)
    secret_label = f"SECRET-LABEL-{secrets.token_hex(4)}"
    secret_reading = f"SECRET-READING-{secrets.token_hex(4)}"
    secret_alarm = f"SECRET-ALARM-{secrets.token_hex(4)}"
    trace_file = workdir / "gateway-trace.jsonl"

    config = GatewayConfig(
        cse_id=acme.cse_id, cse_name=acme.cse_name, cse_url=acme.url, trace_file=trace_file,
        keys=(KeyEntry(kid=kid_cse, key=key_cse, peer=ae1),),
    )
    gateway, store = build(config, store=open_store(f"sqlite:///{workdir}/gateway.db", KeyEncryptionKey.generate()))
    await gateway.start()
    rows: TraceRows = [("CSE", f"ACME {acme.cse_id} at {acme.url}"), ("gateway", f"{gateway.url} (trace: {trace_file.name})")]
    endpoint = None
    endpoint_url = ""
    try:
        # ---- AE2: serves its handler secured; publishes no shared rand object (on-request path)
        notified: list[str] = []

        async def ae2_handler(req: RequestPrimitive) -> ResponsePrimitive:
            if req.op is Operation.NOTIFY:
                notified.append(str(req.pc))
                return ResponsePrimitive(rsc=RSC.OK, rqi=req.rqi, rvi="3")
            return ResponsePrimitive(rsc=RSC.OK, rqi=req.rqi, rvi="3", pc={"m2m:cin": {"con": secret_reading}})

        receiver = Receiver(
            keys=ProvisionedKeySource([PairwiseKey(kid=kid_12, key=key_12, peer_id=ae1)], clock=_now),
            state=MemoryReceiverState(clock=_now), clock=_now, policy=ReceiverPolicy(publish_shared=False),
        )
        secure_ae2 = SecureReceiver(receiver, ae2_handler)
        endpoint = await AEEndpoint(secure_ae2.dispatcher()).start()
        endpoint_url = endpoint.url
        cb = acme.cse_base
        ae1_path, ae2_path = f"{cb}/demo-ae1-{tag}", f"{cb}/demo-ae2-{tag}"

        async with AsyncOneM2MClient(gateway.url, ae2) as c2:
            await c2.create(cb, ResourceType.AE, {"m2m:ae": {
                "rn": ae2_path.rsplit("/", 1)[1], "api": "Ndemo", "rr": True, "srv": ["3"], "poa": [endpoint.url],
                "esi": secure_ae2.e2e_sec_info().to_json()}})
            acp = await c2.create(ae2_path, ResourceType.ACCESS_CONTROL_POLICY, {"m2m:acp": {
                "rn": "acp", "pv": {"acr": [{"acor": [ae1], "acop": 2 | 16}, {"acor": [ae2], "acop": 63}]},
                "pvs": {"acr": [{"acor": [ae2], "acop": 63}]}}})
            await c2.update(ae2_path, {"m2m:ae": {"acpi": [acp.pc["m2m:acp"]["ri"]]}})
        rows.append(("AE2 registered", f"{ae2} (poa {endpoint.url}, e2eSecInfo without shared rand object)"))

        async with AsyncOneM2MClient(gateway.url, ae1) as client:
            await client.create(cb, ResourceType.AE, {"m2m:ae": {
                "rn": ae1_path.rsplit("/", 1)[1], "api": "Ndemo", "rr": False, "srv": ["3"]}})
            rows.append(("AE1 registered", ae1))

            def inner(op: Operation, to: str, **kw: object) -> RequestPrimitive:
                return RequestPrimitive(op=op, to=to, fr=ae1, rqi=new_request_id(), rvi="3", **kw)  # type: ignore[arg-type]

            # ---- AE1 -> the CSE as ESPrim Target (shared rand object from the CSEBase's esi)
            to_cse = SecureOriginator(client, Originator(clock=_now), PairwiseKey(kid=kid_cse, key=key_cse, peer_id=acme.csi))
            cnt = f"{ae1_path}/secret-cnt"
            steps = [
                inner(Operation.CREATE, ae1_path, ty=ResourceType.CONTAINER, pc={"m2m:cnt": {"rn": "secret-cnt"}}),
                inner(Operation.RETRIEVE, cnt),
                inner(Operation.UPDATE, cnt, pc={"m2m:cnt": {"lbl": [secret_label]}}),
                inner(Operation.DELETE, cnt),
            ]
            expected = [RSC.CREATED, RSC.OK, RSC.UPDATED, RSC.DELETED]
            for req, want in zip(steps, expected):
                rsp = await to_cse.send(req, cb, cb)
                if rsp.rsc != want:
                    raise RuntimeError(f"{req.op.name} {req.to}: got {int(rsp.rsc)}, expected {int(want)}")
                rows.append((f"AE1 -> CSE  {req.op.name:8}", f"{req.to} -> {int(rsp.rsc)} {RSC(rsp.rsc).name}"))
            rows.append(("  rand object", f"shared (type-3 requests sent: {to_cse.rand_object_requests})"))

            # ---- what a CSE on the path can try with an object it captured
            once = inner(Operation.CREATE, ae1_path, ty=ResourceType.CONTAINER, pc={"m2m:cnt": {"rn": "once-cnt"}})
            obj, _ = to_cse.originator.protect_request(once, await to_cse.session(cb, cb))
            outer = RequestPrimitive.notify_security_info(to=cb, fr=ae1, seci=SecurityInfo.esprim(obj))
            first, again = await client.send(outer), await client.send(outer)
            if first.rsc != RSC.OK or again.rsc != RSC.CONFLICT:
                raise RuntimeError(f"replayed ESPrim Object: {int(first.rsc)}, then {int(again.rsc)} (expected 2000, 4105)")
            rows.append(("  captured object, replayed", f"first -> {int(first.rsc)}, same bytes again -> "
                                                        f"{int(again.rsc)} {again.rsc.name} (executed once)"))
            # sealed six minutes ago (its Originator's clock says so) and withheld since: its
            # inner request's rqet (now + 5 min at sealing, R11) has passed
            then = SecureOriginator(client, Originator(clock=lambda: _now() - timedelta(minutes=6)),
                                    PairwiseKey(kid=kid_cse, key=key_cse, peer_id=acme.csi))
            late_req = inner(Operation.CREATE, ae1_path, ty=ResourceType.CONTAINER, pc={"m2m:cnt": {"rn": "late-cnt"}})
            obj, _ = then.originator.protect_request(late_req, await then.session(cb, cb))
            late = await client.send(RequestPrimitive.notify_security_info(to=cb, fr=ae1, seci=SecurityInfo.esprim(obj)))
            if late.rsc != RSC.REQUEST_TIMEOUT:
                raise RuntimeError(f"withheld ESPrim Object answered {int(late.rsc)}, expected 4008")
            rows.append(("  withheld 6 min, then sent", f"-> {int(late.rsc)} {late.rsc.name} (past its sealed rqet; "
                                                       "not executed)"))

            # ---- AE1 -> AE2 through gateway + ACME (on-request rand object)
            to_ae2 = SecureOriginator(client, Originator(clock=_now), PairwiseKey(kid=kid_12, key=key_12, peer_id=ae2))
            note = inner(Operation.NOTIFY, ae2_path, pc={"m2m:sgn": {"nev": {"rep": {"alarm": secret_alarm}, "net": 3},
                                                                   "sur": f"{ae1_path}/sub"}})
            rsp = await to_ae2.send(note, ae2_path, ae2_path)
            rows.append(("AE1 -> AE2  NOTIFY", f"{ae2_path} -> {int(rsp.rsc)}; AE2 got the alarm: {secret_alarm in ''.join(notified)}"))
            rsp = await to_ae2.send(inner(Operation.RETRIEVE, ae2_path + "/temperature"), ae2_path, ae2_path)
            got = rsp.pc.get("m2m:cin", {}).get("con") if isinstance(rsp.pc, dict) else None
            if rsp.rsc != RSC.OK or got != secret_reading or not notified:
                raise RuntimeError(f"AE1 -> AE2 failed: {int(rsp.rsc)} {rsp.pc}")
            rows.append(("AE1 -> AE2  RETRIEVE", f"-> {int(rsp.rsc)}, reading {got}"))
            rows.append(("  rand object", f"on request (type-3 requests sent: {to_ae2.rand_object_requests})"))
            if to_ae2.rand_object_requests < 1 or to_cse.rand_object_requests != 0:
                raise RuntimeError("rand object paths not as expected")
    finally:
        await gateway.close()
        store.close()
        if endpoint is not None:
            await asyncio.sleep(0.1)
            await endpoint.close()

    trace = trace_file.read_text(encoding="utf-8") if trace_file.exists() else ""
    # AE-to-AE values must never appear in clear; the container label was meant for the CSE
    # (it is the ESPrim Target of those requests), so the gateway hands it to ACME in clear.
    leaked = [s for s in (secret_reading, secret_alarm) if s in trace]
    if not trace or leaked:
        raise RuntimeError(f"gateway trace missing or shows AE-to-AE plaintext: {leaked}")
    rows.append(("what the gateway forwarded", f"{trace.count(chr(10))} HTTP messages"))
    sample = _esprim_sample(trace, endpoint_url)
    if sample:
        rows.append(("  e.g. the NOTIFY to AE2's poa", sample))
    rows.append(("  AE1<->AE2 values in them", "none (ciphertext only; ACME never received those Notifies)"))
    rows.append(("  CSE-targeted label", "decrypted by the gateway for ACME, as the CSE is that exchange's Target"
                 if secret_label in trace else "not seen"))
    return rows


def _esprim_sample(trace: str, poa: str) -> str:
    """The first ESPrim Object the gateway forwarded to ``poa``, shortened for display."""
    import json

    for line in trace.splitlines():
        entry = json.loads(line)
        if entry.get("dir") == "out" and poa and poa in entry.get("where", "") and '"epo"' in entry.get("body", ""):
            seci = json.loads(entry["body"]).get("m2m:seci", {})
            epo = str(seci.get("epo", ""))
            return f'{{"m2m:seci": {{"sit": {seci.get("sit")}, "epo": "{epo[:40]}…{epo[-12:]}"}}}}'
    return ""
