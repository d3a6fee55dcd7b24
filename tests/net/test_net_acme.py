"""oneM2M over a real CSE: ACME (PyPI acmecse) with two AEs whose pointOfAccess are our endpoints.

Besides checking our client/endpoint against ACME, these tests pin down what
ACME 2026.5.3 does with the security content of TS-0004 7.5.1.2.11-13 / 6.3.5.52,
because the ``m2msec gateway`` is designed around it:

* NOTIFY whose Content is ``m2m:seci``          -> 4000 "Not a NOTIFY request or response"
* NOTIFY ``m2m:sgn`` to the ``<CSEBase>``        -> 4000 "Cannot notify own CSEBase resource"
* NOTIFY ``m2m:sgn`` with ``m2m:seci`` inside nev.rep -> forwarded verbatim
* ``esi`` as a JSON object on <AE> create/update -> 4000 (ACME types it as a string)
* ``esi`` as a string                           -> stored and returned verbatim
* the AE's NOTIFY response: rsc and Content are relayed (also ``m2m:seci`` Content)
  if ACME knows the RSC; ESPrim RSCs (4111-4116, 5210/5211) become 5103
* a forwarded NOTIFY keeps the originator's rqi; From becomes ``/id-in/<AE-ID>``
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import httpx
import pytest

from m2msec.net.acme import AcmeCSE, acme_version
from m2msec.net.client import OneM2MClient, OneM2MResponseError
from m2msec.net.endpoint import EndpointThread, NotifyDispatcher
from m2msec.onem2m import (
    ContentInfo,
    E2ESecInfo,
    Operation,
    RequestPrimitive,
    ResourceType,
    ResponsePrimitive,
    ResponseStatusCode,
    SecurityInfo,
    SUID,
    new_receiver_rand_object,
)

pytestmark = pytest.mark.acme

ACP_NOTIFY = 16  # m2m:accessControlOperations NOTIFY bit
ACP_ALL = 63


def _sgn(rep: Any) -> dict[str, Any]:
    """A minimal m2m:notification (ACME validates nev.net and sur)."""
    return {"m2m:sgn": {"nev": {"rep": rep, "net": 1}, "sur": "/id-in/subscription-placeholder"}}


@dataclass
class Recorder:
    """AE endpoint behaviour: records what arrives, answers with ``reply``."""

    received: list[RequestPrimitive] = field(default_factory=list)
    reply: Callable[[RequestPrimitive], ResponsePrimitive] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def on_notification(self, req: RequestPrimitive) -> ResponsePrimitive:
        with self.lock:
            self.received.append(req)
        if self.reply is not None:
            return self.reply(req)
        return ResponsePrimitive(rsc=ResponseStatusCode.OK, rqi=req.rqi, pc={"m2m:dbg": "ae2 says hello"})

    def take(self) -> list[RequestPrimitive]:
        with self.lock:
            out, self.received = self.received, []
        return out


@dataclass
class World:
    acme: AcmeCSE
    ae1: OneM2MClient
    ae2: OneM2MClient
    admin: OneM2MClient
    ep1: EndpointThread
    ep2: EndpointThread
    rec1: Recorder
    rec2: Recorder
    ae1_path: str
    ae2_path: str


@pytest.fixture(scope="module")
def world(acme: AcmeCSE) -> Iterator[World]:
    tag = secrets.token_hex(3)
    rec1, rec2 = Recorder(), Recorder()
    with EndpointThread(NotifyDispatcher(on_notification=rec1.on_notification)) as ep1, EndpointThread(
        NotifyDispatcher(on_notification=rec2.on_notification)
    ) as ep2:
        ae1 = OneM2MClient(acme.url, f"Cm2msec-ae1-{tag}")
        ae2 = OneM2MClient(acme.url, f"Cm2msec-ae2-{tag}")
        admin = OneM2MClient(acme.url, acme.admin_originator)
        for client, name, ep in ((ae1, "ae1", ep1), (ae2, "ae2", ep2)):
            rsp = client.create(
                acme.cse_base,
                ResourceType.AE,
                {"m2m:ae": {"rn": name, "api": "Nm2msec", "rr": True, "srv": ["3"], "poa": [ep.url]}},
            )
            assert rsp.rsc == ResponseStatusCode.CREATED
            assert rsp.pc["m2m:ae"]["aei"] == client.originator
        ae2_path = f"{acme.cse_base}/ae2"
        acp = ae2.create(
            ae2_path,
            ResourceType.ACCESS_CONTROL_POLICY,
            {
                "m2m:acp": {
                    "rn": "acp-notify",
                    "pv": {
                        "acr": [
                            {"acor": [ae1.originator], "acop": ACP_NOTIFY},
                            {"acor": [ae2.originator], "acop": ACP_ALL},
                        ]
                    },
                    "pvs": {"acr": [{"acor": [ae2.originator], "acop": ACP_ALL}]},
                }
            },
        )
        ae2.update(ae2_path, {"m2m:ae": {"acpi": [acp.pc["m2m:acp"]["ri"]]}})
        try:
            yield World(acme, ae1, ae2, admin, ep1, ep2, rec1, rec2, f"{acme.cse_base}/ae1", ae2_path)
        finally:
            for c in (ae1, ae2, admin):
                c.close()


# ---------------------------------------------------------------- basics


def test_acme_version_is_the_measured_one(acme: AcmeCSE) -> None:
    assert acme_version() is not None
    assert acme_version().startswith("2026.")  # type: ignore[union-attr]


def test_cse_base_retrieve_through_client(world: World) -> None:
    rsp = world.admin.retrieve(world.acme.cse_base)
    assert rsp.rsc == ResponseStatusCode.OK
    cb = rsp.pc["m2m:cb"]
    assert cb["csi"] == "/id-in" and cb["rn"] == "cse-in"
    assert "3" in cb["srv"]
    assert rsp.rvi == "3"  # ACME echoes the request's release version


def test_cse_relative_and_sp_relative_addressing_agree(world: World) -> None:
    sp = world.ae1.retrieve(world.ae1_path).pc
    cse_rel = world.ae1.retrieve("cse-in/ae1").pc  # CSE-relative -> "/cse-in/ae1" path
    assert sp == cse_rel


def test_registered_ae_carries_our_endpoint_as_poa(world: World) -> None:
    ae = world.ae2.retrieve(world.ae2_path).pc["m2m:ae"]
    assert ae["poa"] == [world.ep2.url]
    assert ae["acpi"]


def test_retrieve_missing_resource_raises_with_rsc(world: World) -> None:
    with pytest.raises(OneM2MResponseError) as ei:
        world.ae1.retrieve(f"{world.acme.cse_base}/does-not-exist")
    assert ei.value.rsc == ResponseStatusCode.NOT_FOUND
    assert ei.value.response.rsc == ResponseStatusCode.NOT_FOUND
    rsp = world.ae1.retrieve(f"{world.acme.cse_base}/does-not-exist", check=False)
    assert rsp.rsc == ResponseStatusCode.NOT_FOUND and isinstance(rsp.pc["m2m:dbg"], str)


def test_duplicate_ae_registration_is_refused(world: World) -> None:
    rsp = world.ae1.create(
        world.acme.cse_base,
        ResourceType.AE,
        {"m2m:ae": {"rn": "ae1-again", "api": "Nm2msec", "rr": True, "srv": ["3"]}},
        check=False,
    )
    assert rsp.rsc == ResponseStatusCode.ORIGINATOR_HAS_ALREADY_REGISTERED


# ---------------------------------------------------------------- container / contentInstance


def test_content_instance_with_cnf_is_stored_byte_for_byte(world: World) -> None:
    cnt = f"{world.ae1_path}/cnt-{secrets.token_hex(2)}"
    world.ae1.create(world.ae1_path, ResourceType.CONTAINER, {"m2m:cnt": {"rn": cnt.rsplit("/", 1)[1]}})
    # a JOSE-compact-looking value plus characters that JSON escapes or normalisers touch
    con = "eyJhbGciOiJkaXIiLCJlbmMiOiJBMTI4R0NNIn0..aGVsbG8.d29ybGQ.dGFn" + ' "\\/\u00e9\u2028\U0001f512 \t'
    cnf = "application/json:0:1"
    created = world.ae1.create(cnt, ResourceType.CONTENT_INSTANCE, {"m2m:cin": {"cnf": cnf, "con": con}})
    assert created.rsc == ResponseStatusCode.CREATED
    name = created.pc["m2m:cin"]["rn"]
    for path in (f"{cnt}/{name}", f"{cnt}/la"):
        cin = world.ae1.retrieve(path).pc["m2m:cin"]
        assert cin["con"] == con
        assert cin["cnf"] == cnf
        assert cin["con"].encode("utf-8") == con.encode("utf-8")
    assert ContentInfo.parse(cnf).format() == cnf
    # the raw HTTP body carries the same code points (independent of our client)
    r = httpx.get(
        f"{world.acme.url}/~{cnt}/la",
        headers={"X-M2M-Origin": world.ae1.originator, "X-M2M-RI": "raw", "X-M2M-RVI": "3", "Accept": "application/json"},
    )
    assert json.loads(r.content)["m2m:cin"]["con"] == con


def test_content_instance_with_malformed_cnf_is_refused(world: World) -> None:
    cnt = f"{world.ae1_path}/cnt-bad-{secrets.token_hex(2)}"
    world.ae1.create(world.ae1_path, ResourceType.CONTAINER, {"m2m:cnt": {"rn": cnt.rsplit("/", 1)[1]}})
    rsp = world.ae1.create(
        cnt, ResourceType.CONTENT_INSTANCE, {"m2m:cin": {"cnf": "application/json:9", "con": "x"}}, check=False
    )
    assert rsp.rsc == ResponseStatusCode.BAD_REQUEST


# ---------------------------------------------------------------- NOTIFY through the CSE


def test_notify_sgn_reaches_ae2_with_from_rewritten_and_response_relayed(world: World) -> None:
    world.rec2.take()
    content = _sgn({"m2m:cin": {"con": "x"}})
    req = world.ae1.build(Operation.NOTIFY, world.ae2_path, pc=content)
    rsp = world.ae1.send(req)
    assert rsp.rsc == ResponseStatusCode.OK
    assert rsp.rqi == req.rqi
    assert rsp.pc == {"m2m:dbg": "ae2 says hello"}  # the AE's response Content comes back
    (got,) = world.rec2.take()
    assert got.fr == f"/id-in/{world.ae1.originator}"  # SP-relative form (DESIGN.md section 3)
    assert got.to == world.ae2_path  # /id-in/cse-in/ae2 via path "/~/id-in/cse-in/ae2"
    assert got.rqi == req.rqi  # ACME keeps the originator's Request Identifier
    assert got.pc == content
    assert got.rvi == "3"
    assert got.ot is not None  # ACME adds an originating timestamp


def _notify_with_ae2_answering(world: World, rsc: int) -> ResponsePrimitive:
    world.rec2.reply = lambda req: ResponsePrimitive(rsc=rsc, rqi=req.rqi, pc={"m2m:dbg": "from ae2"})
    try:
        return world.ae1.notify(world.ae2_path, _sgn(1), check=False)
    finally:
        world.rec2.reply = None


def test_notify_error_rsc_known_to_acme_is_relayed(world: World) -> None:
    for rsc in (ResponseStatusCode.BAD_REQUEST, ResponseStatusCode.ORIGINATOR_HAS_NO_PRIVILEGE):
        rsp = _notify_with_ae2_answering(world, rsc)
        assert rsp.rsc == rsc
        assert rsp.pc == {"m2m:dbg": "from ae2"}


@pytest.mark.parametrize(
    "rsc",
    [
        ResponseStatusCode.ESPRIM_UNSUPPORTED_OPTION,
        ResponseStatusCode.ESPRIM_UNKNOWN_KEY_ID,
        ResponseStatusCode.ESPRIM_BAD_MAC,
        ResponseStatusCode.ESPRIM_DECRYPTION_ERROR,
    ],
)
def test_notify_esprim_rsc_from_ae_becomes_target_not_reachable(world: World, rsc: ResponseStatusCode) -> None:
    """ACME 2026.5.3 has no ESPrim RSCs (4111-4116, 5210/5211) in its enumeration: it
    fails to parse the AE's X-M2M-RSC and answers the originator 5103 instead."""
    rsp = _notify_with_ae2_answering(world, rsc)
    assert rsp.rsc == ResponseStatusCode.TARGET_NOT_REACHABLE
    assert rsp.pc == {"m2m:dbg": "target not reachable"}


def test_notify_response_with_originating_timestamp_is_relayed(world: World) -> None:
    """ACME parses the AE's X-M2M-OT with isodate: the oneM2M basic format with a comma fraction passes."""
    ot = datetime(2026, 11, 26, 10, 0, 0, 250000, tzinfo=timezone.utc)
    world.rec2.reply = lambda req: ResponsePrimitive(rsc=ResponseStatusCode.OK, rqi=req.rqi, ot=ot)
    try:
        rsp = world.ae1.notify(world.ae2_path, _sgn(1))
    finally:
        world.rec2.reply = None
    assert rsp.rsc == ResponseStatusCode.OK


def test_ae_response_not_echoing_ri_is_refused_by_acme(world: World, tmp_path_factory: pytest.TempPathFactory) -> None:
    """DESIGN.md section 3: ACME requires the AE's response to echo X-M2M-RI (else 4000 to the originator)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class WrongRI(BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("X-M2M-RSC", "2000")
            self.send_header("X-M2M-RI", "not-" + self.headers.get("X-M2M-RI", ""))
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), WrongRI)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    tag = secrets.token_hex(3)
    try:
        with OneM2MClient(world.acme.url, f"Cm2msec-ae3-{tag}") as ae3:
            path = f"{world.acme.cse_base}/ae3-{tag}"
            ae3.create(world.acme.cse_base, ResourceType.AE, {"m2m:ae": {
                "rn": f"ae3-{tag}", "api": "Nm2msec", "rr": True, "srv": ["3"],
                "poa": [f"http://127.0.0.1:{server.server_address[1]}"]}})
            acp = ae3.create(path, ResourceType.ACCESS_CONTROL_POLICY, {"m2m:acp": {
                "rn": "acp", "pv": {"acr": [{"acor": [world.ae1.originator], "acop": ACP_NOTIFY},
                                           {"acor": [ae3.originator], "acop": ACP_ALL}]},
                "pvs": {"acr": [{"acor": [ae3.originator], "acop": ACP_ALL}]}}})
            ae3.update(path, {"m2m:ae": {"acpi": [acp.pc["m2m:acp"]["ri"]]}})
            rsp = world.ae1.notify(path, _sgn(1), check=False)
    finally:
        server.shutdown()
        server.server_close()
    assert rsp.rsc == ResponseStatusCode.BAD_REQUEST
    assert "request identifier" in rsp.pc["m2m:dbg"]


def test_notify_response_carrying_seci_is_relayed(world: World) -> None:
    ero = new_receiver_rand_object(expiry=datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=1))
    seci = SecurityInfo.rand_object_response(ero)
    world.rec2.reply = lambda req: ResponsePrimitive.with_security_info(req, seci)
    try:
        rsp = world.ae1.notify(world.ae2_path, _sgn(1))
    finally:
        world.rec2.reply = None
    assert rsp.security_info() == seci


def test_notify_without_acp_grant_is_refused_by_acme(world: World) -> None:
    world.rec1.take()
    rsp = world.ae2.notify(world.ae1_path, _sgn(1), check=False)  # AE1 has no ACP for AE2
    assert rsp.rsc == ResponseStatusCode.ORIGINATOR_HAS_NO_PRIVILEGE
    assert world.rec1.take() == []


def test_acme_rejects_notify_with_seci_content(world: World) -> None:
    """The fact that makes the gateway necessary: ACME only forwards m2m:sgn / m2m:rsp."""
    world.rec2.take()
    for seci in (SecurityInfo.rand_object_request(), SecurityInfo.esprim("aGVhZGVy..aXY.Y3Q.dGFn")):
        rsp = world.ae1.notify(world.ae2_path, seci.to_content(), check=False)
        assert rsp.rsc == ResponseStatusCode.BAD_REQUEST
        assert rsp.pc == {"m2m:dbg": "Not a NOTIFY request or response"}
    assert world.rec2.take() == []


def test_acme_forwards_seci_wrapped_in_a_notification_verbatim(world: World) -> None:
    world.rec2.take()
    inner = SecurityInfo.escertke(b"\x16\x03\x03\x00\x01\x01").to_content()
    rsp = world.ae1.notify(world.ae2_path, _sgn(inner))
    assert rsp.rsc == ResponseStatusCode.OK
    (got,) = world.rec2.take()
    assert got.pc["m2m:sgn"]["nev"]["rep"] == inner


def test_acme_rejects_sgn_next_to_seci(world: World) -> None:
    content = {**_sgn(1), **SecurityInfo.rand_object_request().to_content()}
    rsp = world.ae1.notify(world.ae2_path, content, check=False)
    assert rsp.rsc == ResponseStatusCode.BAD_REQUEST
    assert "exactly one element" in rsp.pc["m2m:dbg"]


def test_acme_rejects_notify_to_its_cse_base(world: World) -> None:
    rsp = world.ae1.notify(world.acme.cse_base, _sgn(1), check=False)
    assert rsp.rsc == ResponseStatusCode.BAD_REQUEST
    assert rsp.pc == {"m2m:dbg": "Cannot notify own CSEBase resource"}
    rsp = world.ae1.notify(world.acme.cse_base, SecurityInfo.rand_object_request().to_content(), check=False)
    assert rsp.rsc == ResponseStatusCode.BAD_REQUEST
    assert rsp.pc == {"m2m:dbg": "Not a NOTIFY request or response"}


# ---------------------------------------------------------------- e2eSecInfo on <AE>


def test_esi_as_object_is_refused_on_create_and_update(world: World) -> None:
    esi = E2ESecInfo((SUID.PRE_PROVISIONED_ESPRIM,)).to_json()
    c = OneM2MClient(world.acme.url, f"Cm2msec-esi-{secrets.token_hex(3)}")
    with c:
        rsp = c.create(
            world.acme.cse_base,
            ResourceType.AE,
            {"m2m:ae": {"rn": c.originator, "api": "Nm2msec", "rr": False, "srv": ["3"], "esi": esi}},
            check=False,
        )
        assert rsp.rsc == ResponseStatusCode.BAD_REQUEST
        assert "expected type: string" in rsp.pc["m2m:dbg"]
    rsp = world.ae1.update(world.ae1_path, {"m2m:ae": {"esi": esi}}, check=False)
    assert rsp.rsc == ResponseStatusCode.BAD_REQUEST
    assert "esi" in rsp.pc["m2m:dbg"]


def test_esi_as_string_is_stored_verbatim(world: World) -> None:
    esi_text = E2ESecInfo((SUID.PRE_PROVISIONED_ESPRIM, SUID.CERTIFICATE_ESPRIM)).to_json_bytes().decode()
    c = OneM2MClient(world.acme.url, f"Cm2msec-esi-{secrets.token_hex(3)}")
    with c:
        rsp = c.create(
            world.acme.cse_base,
            ResourceType.AE,
            {"m2m:ae": {"rn": c.originator, "api": "Nm2msec", "rr": False, "srv": ["3"], "esi": esi_text}},
        )
        assert rsp.pc["m2m:ae"]["esi"] == esi_text
        back = c.retrieve(f"{world.acme.cse_base}/{c.originator}").pc["m2m:ae"]["esi"]
        assert back == esi_text
        assert E2ESecInfo.from_json_bytes(back).supported_features == (SUID.PRE_PROVISIONED_ESPRIM, SUID.CERTIFICATE_ESPRIM)
    updated = world.ae1.update(world.ae1_path, {"m2m:ae": {"esi": esi_text}})
    assert updated.pc["m2m:ae"]["esi"] == esi_text
    # our strict reader refuses the string form, which is why the gateway has to translate it
    from m2msec.errors import ParseError

    with pytest.raises(ParseError):
        ResponsePrimitive(rsc=2000, rqi="x", pc=updated.pc).e2e_sec_info()
