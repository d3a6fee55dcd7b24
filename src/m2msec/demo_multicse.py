"""Demo step: ESPrim across two CSEs, each fronted by its own ``m2msec gateway``.

TS-0003 8.4 (ESPrim, phases B and C), TS-0004 7.5.1.2.11/13 and 7.6.2 (the ESPrim Object
carried in a Notify, outer error responses of table 7.6.2-1), TS-0004 7.3.3.15 (the
Notify privilege checked for the target, profile G4).  Topology, as in
``tests/gateway/test_gateway_multicse.py`` (profile G1-G6)::

    AE1 --> MN gateway --> ACME MN-CSE (/id-mn, registered to /id-in)
                 |  [[routes]] /id-in
                 v
            IN gateway --> ACME IN-CSE (/id-in)        AE2's poa (ESPrim Receiver)
                 |_____________________________________________^

AE1 registers on the MN-CSE, AE2 on the IN-CSE with an ``<accessControlPolicy>`` that lets
anyone RETRIEVE it (its ``esi`` is public) and only AE1 NOTIFY it.  AE1 reads AE2's
``e2eSecInfo`` through the MN-CSE (which retargets the RETRIEVE along its ``<remoteCSE>``),
then sends ESPrim-protected requests: the ``m2m:seci`` Notify goes MN gateway -> IN gateway
-> AE2's poa, so neither CSE ever receives it.  The step then shows two refusals: a
tampered ESPrim Object (4115 from AE2's Receiver, relayed unchanged) and an AE on the
MN-CSE without the NOTIFY privilege (4103 from the IN gateway, AE2 never contacted).

Everything is read back from the gateways' traces (what went on the wire), not assumed.
Both ACME processes are stopped, and the gateways and the endpoint closed, on success and
on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from m2msec.net.acme import AcmeCSE

__all__ = ["run_esprim_across_cses"]

TraceRows = list[tuple[str, str]]

IN_ID, IN_NAME = "id-in", "cse-in"
MN_ID, MN_NAME = "id-mn", "cse-mn"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def run_esprim_across_cses(workdir: Path) -> TraceRows:
    """Start an IN- and an MN-CSE (ACME) with one gateway each, run AE1 (MN) -> AE2 (IN)
    ESPrim exchanges and two refusals; return the rows the demo prints.

    Raises RuntimeError if anything does not come out as expected."""
    from m2msec.net.acme import AcmeCSE, acme_available

    if not acme_available():
        raise RuntimeError("the ACME CSE is not installed: pip install 'm2msec[demo]' (or acmecse)")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with AcmeCSE(workdir / "acme-in", cse_id=IN_ID, cse_name=IN_NAME, allowed_csr_originators=(MN_ID,)) as cse_in:
        with AcmeCSE(workdir / "acme-mn", cse_id=MN_ID, cse_name=MN_NAME, cse_type="MN", registrar=cse_in) as cse_mn:
            gateway_log = logging.getLogger("m2msec.gateway.server")
            capture = _Capture()
            gateway_log.addFilter(capture)
            try:
                return asyncio.run(asyncio.wait_for(_run(cse_in, cse_mn, workdir, capture), 60))
            finally:
                gateway_log.removeFilter(capture)


@dataclass
class _AE2Log:
    """What reached AE2: every outer request at its poa, every decrypted inner request."""

    outer: list[str] = field(default_factory=list)  # securityInfoType or "-" per outer request
    inner: list[Any] = field(default_factory=list)


class _Capture(logging.Filter):
    """Keeps the gateway's log records (e.g. the expected 4103 refusal) out of the demo's
    table; the step shows them in its rows instead."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.messages.append(record.getMessage())
        return False


def _trace(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _seci_out(entries: list[dict[str, Any]], url: str) -> list[dict[str, Any]]:
    """The ``m2m:seci`` sit-5 requests a gateway sent to ``url``, as parsed ``m2m:seci`` bodies."""
    found = []
    for e in entries:
        if e.get("dir") != "out" or not str(e.get("where", "")).split(" ", 1)[-1].startswith(url):
            continue
        body = e.get("body", "")
        if '"m2m:seci"' in body:
            seci = json.loads(body).get("m2m:seci", {})
            if seci.get("sit") == 5:
                found.append(seci)
    return found


def _to(entries: list[dict[str, Any]], url: str) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("dir") == "out" and str(e.get("where", "")).split(" ", 1)[-1].startswith(url)]


def _response_rsc(entries: list[dict[str, Any]], url: str) -> str | None:
    """X-M2M-RSC of the first response a gateway received from ``url``."""
    for e in entries:
        if e.get("dir") == "in" and str(e.get("where", "")).split(" ", 1)[-1].startswith(url):
            return next((v for k, v in e.get("headers", []) if k.lower() == "x-m2m-rsc"), None)
    return None


def _tamper(esprim_object: str) -> str:
    """Flip one bit of the ciphertext of a JWE compact ESPrim Object."""
    from m2msec.esprim.jwe import b64url_decode, b64url_encode

    parts = esprim_object.split(".")
    ct = bytearray(b64url_decode(parts[3], "ciphertext"))
    ct[len(ct) // 2] ^= 0x01
    parts[3] = b64url_encode(bytes(ct))
    return ".".join(parts)


async def _run(cse_in: AcmeCSE, cse_mn: AcmeCSE, workdir: Path, capture: _Capture) -> TraceRows:  # noqa: C901, PLR0915 - a linear script
    from m2msec.esprim import MemoryReceiverState, Originator, PairwiseKey, ProvisionedKeySource, Receiver
    from m2msec.esprim.transport import OuterResponseError, SecureOriginator, SecureReceiver
    from m2msec.gateway import GatewayConfig
    from m2msec.gateway.app import build
    from m2msec.net.client import AsyncOneM2MClient
    from m2msec.net.endpoint import AEEndpoint
    from m2msec.onem2m import Operation, RequestPrimitive, ResourceType, ResponsePrimitive
    from m2msec.onem2m import ResponseStatusCode as RSC
    from m2msec.onem2m.primitives import new_request_id
    from m2msec.onem2m.security import SecurityInfo
    from m2msec.store import KeyEncryptionKey, open_store

    tag = secrets.token_hex(3)
    ae1, ae2, ae3 = f"Cmc-ae1-{tag}", f"Cmc-ae2-{tag}", f"Cmc-intruder-{tag}"
    ae1_sp, ae3_sp = f"/{MN_ID}/{ae1}", f"/{MN_ID}/{ae3}"  # their IDs as seen from the IN-CSE's side
    ae2_path = f"{cse_in.cse_base}/mc-ae2-{tag}"
    # Phase A (pre-provisioned, SUID 13): the pairwiseESPrimKey AE1 <-> AE2; the Receiver binds
    # it to AE1's SP-relative AE-ID, the inner From it must carry (impersonation check).
    kid, key = f"{secrets.token_hex(16)}@mef.m2msec.example", os.urandom(32)
    secret_alarm = f"SECRET-ALARM-{secrets.token_hex(4)}"
    secret_reading = f"SECRET-READING-{secrets.token_hex(4)}"
    plaintexts = (secret_alarm, secret_reading)
    trace_in, trace_mn = workdir / "gateway-in-trace.jsonl", workdir / "gateway-mn-trace.jsonl"
    for p in (trace_in, trace_mn):
        p.unlink(missing_ok=True)

    rows: TraceRows = [
        ("IN-CSE", f"ACME {cse_in.cse_base} at {cse_in.url}"),
        ("MN-CSE", f"ACME {cse_mn.cse_base} at {cse_mn.url}, registered to {cse_in.csi} "
                   f"(<remoteCSE> {cse_in.cse_base}/{MN_ID})"),
    ]
    # every store, gateway and endpoint opened is closed on the way out, whatever fails
    async with contextlib.AsyncExitStack() as stack:
        store_in = open_store(f"sqlite:///{workdir}/gateway-in.db", KeyEncryptionKey.generate())
        stack.callback(store_in.close)
        gw_in, _ = build(GatewayConfig(cse_id=IN_ID, cse_name=IN_NAME, cse_url=cse_in.url, trace_file=trace_in),
                         store=store_in)
        await stack.enter_async_context(gw_in)
        store_mn = open_store(f"sqlite:///{workdir}/gateway-mn.db", KeyEncryptionKey.generate())
        stack.callback(store_mn.close)
        gw_mn, _ = build(GatewayConfig(cse_id=MN_ID, cse_name=MN_NAME, cse_url=cse_mn.url, trace_file=trace_mn,
                                       routes={cse_in.csi: gw_in.url}), store=store_mn)
        await stack.enter_async_context(gw_mn)
        rows.append(("IN gateway", f"{gw_in.url} -> IN-CSE"))
        rows.append(("MN gateway", f"{gw_mn.url} -> MN-CSE; [[routes]] {cse_in.csi} -> {gw_in.url}"))

        # ---- AE2 on the IN-CSE: an ESPrim Receiver behind its own poa
        seen = _AE2Log()

        async def ae2_app(req: RequestPrimitive) -> ResponsePrimitive:
            seen.inner.append(req)
            if req.op is Operation.NOTIFY:
                return ResponsePrimitive(rsc=RSC.OK, rqi=req.rqi, rvi="3")
            return ResponsePrimitive(rsc=RSC.OK, rqi=req.rqi, rvi="3", pc={"m2m:cin": {"con": secret_reading}})

        receiver = Receiver(
            keys=ProvisionedKeySource([PairwiseKey(kid=kid, key=key, peer_id=ae1_sp)], clock=_now),
            state=MemoryReceiverState(clock=_now), clock=_now,
        )
        secure_ae2 = SecureReceiver(receiver, ae2_app)
        dispatch = secure_ae2.dispatcher()

        async def ae2_poa(req: RequestPrimitive) -> ResponsePrimitive:
            seci = req.pc.get("m2m:seci") if isinstance(req.pc, dict) else None
            seen.outer.append(str(seci.get("sit")) if isinstance(seci, dict) else "-")
            return await dispatch(req)

        endpoint = await stack.enter_async_context(AEEndpoint(ae2_poa))
        gw_in_url, ep_url = gw_in.url, endpoint.url

        async with AsyncOneM2MClient(gw_in.url, ae2) as c2:
            await c2.create(cse_in.cse_base, ResourceType.AE, {"m2m:ae": {
                "rn": ae2_path.rsplit("/", 1)[1], "api": "Nm2msec-demo", "rr": True, "srv": ["3"],
                "poa": [endpoint.url], "esi": secure_ae2.e2e_sec_info().to_json()}})
            acp = await c2.create(ae2_path, ResourceType.ACCESS_CONTROL_POLICY, {"m2m:acp": {
                "rn": "acp", "pv": {"acr": [{"acor": ["all"], "acop": 2}, {"acor": [ae1_sp], "acop": 16},
                                            {"acor": [ae2], "acop": 63}]},
                "pvs": {"acr": [{"acor": [ae2], "acop": 63}]}}})
            await c2.update(ae2_path, {"m2m:ae": {"acpi": [acp.pc["m2m:acp"]["ri"]]}})
        rows.append(("AE2 (on the IN-CSE)", f"{ae2_path}, poa {endpoint.url}"))
        rows.append(("  its ACP", f"RETRIEVE: all (esi is public); NOTIFY: only {ae1_sp}"))

        async with AsyncOneM2MClient(gw_mn.url, ae1) as c1, AsyncOneM2MClient(gw_mn.url, ae3) as c3:
            await c1.create(cse_mn.cse_base, ResourceType.AE, {"m2m:ae": {
                "rn": f"mc-ae1-{tag}", "api": "Nm2msec-demo", "rr": False, "srv": ["3"]}})
            await c3.create(cse_mn.cse_base, ResourceType.AE, {"m2m:ae": {
                "rn": f"mc-intruder-{tag}", "api": "Nm2msec-demo", "rr": False, "srv": ["3"]}})
            rows.append(("AE1 (on the MN-CSE)", f"{ae1_sp}, registered through the MN gateway"))

            def inner(op: Operation, **kw: Any) -> RequestPrimitive:
                return RequestPrimitive(op=op, to=ae2_path, fr=ae1_sp, rqi=new_request_id(), rvi="3", **kw)

            # ---- AE1 -> AE2, ESPrim-protected, through both gateways
            to_ae2 = SecureOriginator(c1, Originator(clock=_now), PairwiseKey(kid=kid, key=key, peer_id=ae2_path))
            note = inner(Operation.NOTIFY, pc={"m2m:sgn": {"nev": {"rep": {"alarm": secret_alarm}, "net": 3},
                                                             "sur": f"{cse_mn.cse_base}/mc-ae1-{tag}/sub"}})
            rsp_note = await to_ae2.send(note, ae2_path, ae2_path)
            rsp_get = await to_ae2.send(inner(Operation.RETRIEVE), ae2_path, ae2_path)
            got = rsp_get.pc.get("m2m:cin", {}).get("con") if isinstance(rsp_get.pc, dict) else None
            if rsp_note.rsc != RSC.OK or rsp_get.rsc != RSC.OK or got != secret_reading:
                raise RuntimeError(f"AE1 -> AE2 failed: {int(rsp_note.rsc)}, {int(rsp_get.rsc)} {rsp_get.pc}")
            if len(seen.inner) != 2 or seen.inner[0].op is not Operation.NOTIFY:
                raise RuntimeError(f"AE2 did not receive the two inner requests: {seen.inner}")
            first = seen.inner[0]
            alarm = first.pc["m2m:sgn"]["nev"]["rep"]["alarm"] if isinstance(first.pc, dict) else None
            if alarm != secret_alarm or first.fr != ae1_sp:
                raise RuntimeError("AE2 decrypted an unexpected inner request")
            rows.append(("AE2's esi read through", f"the MN-CSE's retargeting (shared rand object; type-3 "
                                                  f"requests sent: {to_ae2.rand_object_requests})"))

            # ---- refusal 1: a tampered ESPrim Object (bit flipped in the ciphertext)
            session = await to_ae2.session(ae2_path, ae2_path)
            obj, pending = to_ae2.originator.protect_request(inner(Operation.RETRIEVE), session)
            bad = RequestPrimitive.notify_security_info(
                to=ae2_path, fr=ae1, seci=SecurityInfo.esprim(_tamper(obj)), rqi=new_request_id())
            rsp_bad = await c1.send(bad)
            to_ae2.originator.handle_error(pending, int(rsp_bad.rsc))
            if rsp_bad.rsc != RSC.ESPRIM_BAD_MAC or len(seen.inner) != 2:
                raise RuntimeError(f"a tampered ESPrim Object was not refused with 4115: {int(rsp_bad.rsc)}")

            # ---- refusal 2: an AE of the MN-CSE without NOTIFY privilege on AE2
            outer_before = len(seen.outer)
            intruder = SecureOriginator(c3, Originator(clock=_now), PairwiseKey(
                kid=f"{secrets.token_hex(16)}@mef.m2msec.example", key=os.urandom(32), peer_id=ae2_path))
            try:
                await intruder.send(RequestPrimitive(op=Operation.RETRIEVE, to=ae2_path, fr=ae3_sp,
                                                     rqi=new_request_id(), rvi="3"), ae2_path, ae2_path)
                refused_rsc = int(RSC.OK)
            except OuterResponseError as exc:
                refused_rsc = int(exc.response.rsc)
            if refused_rsc != RSC.ORIGINATOR_HAS_NO_PRIVILEGE or len(seen.outer) != outer_before:
                raise RuntimeError(f"an AE without NOTIFY privilege was not refused with 4103: {refused_rsc}")

    # ---- what went on the wire, read back from both gateways' traces
    t_in, t_mn = _trace(trace_in), _trace(trace_mn)
    hop1 = _seci_out(t_mn, gw_in_url)  # MN gateway -> IN gateway
    hop2 = _seci_out(t_in, ep_url)  # IN gateway -> AE2's poa
    to_in, to_mn = _to(t_in, cse_in.url), _to(t_mn, cse_mn.url)
    to_cses = to_in + to_mn
    if len(hop1) < 3 or len(hop2) != 3:  # note, retrieve, tampered (the intruder's stops at the IN gateway)
        raise RuntimeError(f"the m2m:seci Notifies did not take MN gateway -> IN gateway -> AE2: {len(hop1)}, {len(hop2)}")
    if hop1[0]["epo"] != hop2[0]["epo"]:
        raise RuntimeError("the ESPrim Object changed between the gateways")
    outer_rsc = _response_rsc(t_in, ep_url)
    if outer_rsc != str(int(RSC.OK)):
        raise RuntimeError(f"AE2's outer response RSC was {outer_rsc}")
    if not any(e["where"].startswith(f"GET {cse_mn.url}/~{ae2_path}") for e in to_mn):
        raise RuntimeError("AE2's e2eSecInfo was not read through the MN-CSE")
    if any('"m2m:seci"' in e.get("body", "") for e in to_cses):
        raise RuntimeError("a CSE received an m2m:seci message")
    leaked = [s for s in plaintexts if any(s in json.dumps(e) for e in t_in + t_mn)]
    if leaked:
        raise RuntimeError(f"plaintext of the AE1 <-> AE2 exchange seen by a gateway: {leaked}")
    refused_in_trace = [e for e in t_in if e.get("dir") == "refused"]
    if not refused_in_trace:
        raise RuntimeError("the IN gateway's trace has no refusal entry")
    reason = next((m.split(": ", 1)[-1] for m in capture.messages if m.startswith("refused m2m:seci NOTIFY")), "")

    header = Receiver.peek(hop1[0]["epo"])
    rows += [
        ("AE1 -> AE2  NOTIFY (inner)", "m2m:seci Notify AE1 -> MN gateway -> IN gateway -> AE2's poa; no CSE saw it"),
        ("  ESPrim Object on the wire", f"JWE compact, {len(hop1[0]['epo'])} characters, enc {header.enc}, "
                                        f"kid {header.kid[:8]}…@{header.kid.split('@', 1)[1]}, identical on both hops"),
        ("  decrypted at AE2", f"{first.op.name} from {first.fr}, alarm {alarm}"),
        ("  outer response", f"{outer_rsc} with a sealed m2m:seci response, back the same way"),
        ("  inner response at AE1", f"{int(rsp_note.rsc)} {RSC(rsp_note.rsc).name}, opened and verified by AE1"),
        ("AE1 -> AE2  RETRIEVE (inner)", f"{int(rsp_get.rsc)} {RSC(rsp_get.rsc).name}, reading {got} (sealed for AE1)"),
        ("what the two CSEs received", f"IN-CSE {len(to_in)}, MN-CSE {len(to_mn)} requests; m2m:seci in none, "
                                       f"AE1 <-> AE2 values in none"),
        ("refused: tampered ESPrim Object", f"{int(rsp_bad.rsc)} {RSC(rsp_bad.rsc).name} from AE2's Receiver; "
                                            f"its application not called"),
        ("refused: AE without NOTIFY privilege", f"{refused_rsc} {RSC(refused_rsc).name} from the IN gateway "
                                                 f"({reason or 'no reason logged'}); AE2 not contacted"),
    ]
    return rows
