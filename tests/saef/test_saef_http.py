"""oneM2M HTTP binding over SAEF associations: requests attributed to the peer identity (TS-0003 7.2.1),
and TS-0013 TD_M2M_SE_01 (TLS-PSK with Kpsa "123456", KpsaID "test@onem2m.com")."""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import pytest
from _saefhelp import AE2_ABS, AE_ABS, IN_ID, IN_NAME, MN_ID, SP_ID, World, clock, cse, make_world, run
from test_saef_cert import _expect_both_fail, a_to_in, in_knows_ae, in_knows_mn

from m2msec.onem2m.enums import Operation, ResourceType
from m2msec.onem2m.primitives import RequestPrimitive, ResponsePrimitive
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.saef import (
    AssociationConfiguration,
    InMemoryKpsaDirectory,
    KpsaEntry,
    OriginatorNotAuthenticated,
    PeerKind,
    SecurityContext,
    absolute_id,
    certificate_client,
    certificate_server,
    connect,
    connect_dtls,
    psk_client,
    psk_server,
    serve_dtls,
)
from m2msec.saef.framework import SAEFEndpoint
from m2msec.saef.http import SAEFHTTPClient, SAEFHTTPServer
from m2msec.tls import Transport
from m2msec.tls.profiles import EXPORTER_CONNECTION


@pytest.fixture(scope="module")
def w() -> World:
    return make_world()


class Recorder:
    """A tiny hosting-CSE handler: remembers what it was asked, answers CREATED/OK."""

    def __init__(self) -> None:
        self.seen: list[tuple[RequestPrimitive, SecurityContext]] = []

    async def __call__(self, req: RequestPrimitive, ctx: SecurityContext) -> ResponsePrimitive:
        self.seen.append((req, ctx))
        rsc = RSC.CREATED if req.op is Operation.CREATE else RSC.OK
        return ResponsePrimitive(rsc=rsc, rqi=req.rqi, rvi=req.rvi, pc={"m2m:dbg": f"hello {ctx.peer_id}"})


async def exchange(client_ep: SAEFEndpoint, server_ep: SAEFEndpoint, requests: list[RequestPrimitive],
                   **server_kw: Any) -> tuple[list[ResponsePrimitive], Recorder, SAEFHTTPServer]:
    rec = Recorder()
    async with SAEFHTTPServer(server_ep, rec, **server_kw) as srv:
        host, port = srv.address
        async with await SAEFHTTPClient.connect(client_ep, host, port) as cli:
            out = [await cli.send(r) for r in requests]  # one keep-alive connection
    return out, rec, srv


def create(fr: str | None, rqi: str = "r1") -> RequestPrimitive:
    return RequestPrimitive(op=Operation.CREATE, to="/id-in/cse-in", fr=fr, rqi=rqi, rvi="3",
                            ty=ResourceType.CONTAINER, pc={"m2m:cnt": {"rn": "c1"}})


def test_http_over_certificate_saef_attributes_requests(w: World) -> None:
    client = certificate_client(w.creds(w.ae, AE_ABS), a_to_in(w), clock=clock)
    server = certificate_server(w.creds(w.in_cse, IN_ID), [in_knows_mn(w), in_knows_ae(w)], clock=clock)
    reqs = [create(AE_ABS, "r1"),
            create("/id-in/Cae1", "r2"),  # SP-relative form of the same AE-ID
            create("Cae1", "r3"),  # AE-ID-Stem, registrar /id-in
            create(AE2_ABS, "r4"),  # another AE: impersonation attempt
            create("/id-mn", "r5"),  # a CSE-ID
            RequestPrimitive(op=Operation.RETRIEVE, to="/id-in/cse-in", fr=AE_ABS, rqi="r6", rvi="3")]
    rsps, rec, srv = run(lambda: exchange(client, server, reqs, sp_id=SP_ID, cse_id=IN_ID))
    assert [int(r.rsc) for r in rsps] == [2001, 2001, 2001, 4106, 4106, 2000]
    assert [r.rqi for r in rsps] == ["r1", "r2", "r3", "r4", "r5", "r6"]
    assert rsps[0].pc == {"m2m:dbg": f"hello {AE_ABS}"} and rsps[3].rvi == "3"
    assert "is not the identity" in rsps[3].pc["m2m:dbg"]
    # the rejected requests never reached the handler; the accepted ones carry the bound identity
    assert [r.rqi for r, _ in rec.seen] == ["r1", "r2", "r3", "r6"]
    assert {c.peer_id for _, c in rec.seen} == {AE_ABS}
    assert rec.seen[0][0].pc == {"m2m:cnt": {"rn": "c1"}} and rec.seen[0][0].ty is ResourceType.CONTAINER
    assert srv.rejections == [(AE_ABS, AE2_ABS, 4106), (AE_ABS, "/id-mn", 4106)]


def test_status_line_and_headers_of_a_rejection(w: World) -> None:
    """A raw h11 client sees HTTP 403 + X-M2M-RSC 4106 (TS-0009 table 6.3.2-1)."""
    client = certificate_client(w.creds(w.ae, AE_ABS), a_to_in(w), clock=clock)
    server = certificate_server(w.creds(w.in_cse, IN_ID), [in_knows_ae(w)], clock=clock)

    async def go() -> tuple[int, dict[bytes, bytes]]:
        async with SAEFHTTPServer(server, Recorder()) as srv:
            reader, writer, _ = await connect(client, *srv.address)
            conn = h11.Connection(h11.CLIENT)
            writer.write(conn.send(h11.Request(method="GET", target="/~/id-in/cse-in", headers=[
                ("Host", "x"), ("X-M2M-Origin", AE2_ABS), ("X-M2M-RI", "raw-1"), ("X-M2M-RVI", "3")])))
            writer.write(conn.send(h11.EndOfMessage()))
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(ev, h11.Response):
                    writer.close()
                    return ev.status_code, dict(ev.headers)

    status, headers = run(go)
    assert status == 403 and headers[b"x-m2m-rsc"] == b"4106" and headers[b"x-m2m-ri"] == b"raw-1"


def test_bad_http_requests_get_onem2m_errors(w: World) -> None:
    client = certificate_client(w.creds(w.ae, AE_ABS), a_to_in(w), clock=clock)
    server = certificate_server(w.creds(w.in_cse, IN_ID), [in_knows_ae(w)], clock=clock)

    async def handler_fails(req: RequestPrimitive, ctx: SecurityContext) -> ResponsePrimitive:
        raise RuntimeError("boom")

    async def go() -> list[tuple[int, bytes | None]]:
        out: list[tuple[int, bytes | None]] = []
        async with SAEFHTTPServer(server, handler_fails) as srv:
            reader, writer, _ = await connect(client, *srv.address)
            conn = h11.Connection(h11.CLIENT)
            xml = [("X-M2M-RI", "4"), ("Content-Type", "application/xml; ty=3"), ("Content-Length", "4")]
            for method, hdrs, body in (("PATCH", [("X-M2M-RI", "1")], b""), ("GET", [], b""),
                                       ("GET", [("X-M2M-RI", "3"), ("X-M2M-Origin", AE_ABS)], b""),
                                       ("POST", xml, b"<x/>")):
                writer.write(conn.send(h11.Request(method=method, target="/cse-in", headers=[("Host", "x"), *hdrs])))
                if body:
                    writer.write(conn.send(h11.Data(data=body)))
                writer.write(conn.send(h11.EndOfMessage()))
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        conn.receive_data(await reader.read(65536))
                    elif isinstance(ev, h11.Response):
                        out.append((ev.status_code, dict(ev.headers).get(b"x-m2m-rsc")))
                    elif isinstance(ev, h11.EndOfMessage):
                        conn.start_next_cycle()
                        break
            writer.close()
        return out

    # unknown method and missing X-M2M-RI: BAD_REQUEST (net.http_binding); handler crash: 5000; XML: 4015
    assert run(go) == [(400, b"4000"), (400, b"4000"), (500, b"5000"), (415, b"4015")]


def test_cse_peer_forwarding_policy(w: World) -> None:
    """TS-0003 7.2.1 NOTE: with allow_cse_forwarding a CSE peer may relay other originators; an AE may not."""
    assoc = AssociationConfiguration.entity_a(id_a=MN_ID, id_b=IN_ID, cert_name_b=cse(IN_NAME),
                                              root_of_trust_b=[w.root])
    mn = certificate_client(w.creds(w.mn_cse, MN_ID), assoc, clock=clock)
    server = certificate_server(w.creds(w.in_cse, IN_ID), [in_knows_mn(w), in_knows_ae(w)], clock=clock)
    relayed = create(f"{MN_ID}/Cdevice", "relay")
    strict, _, _ = run(lambda: exchange(mn, server, [relayed, create(MN_ID, "own")], sp_id=SP_ID))
    assert [int(r.rsc) for r in strict] == [4106, 2001]
    relaxed, rec, _ = run(lambda: exchange(mn, server, [relayed], sp_id=SP_ID, allow_cse_forwarding=True))
    assert int(relaxed[0].rsc) == 2001 and rec.seen[0][1].peer_id == MN_ID and rec.seen[0][1].peer_kind is PeerKind.CSE
    ae_client = certificate_client(w.creds(w.ae, AE_ABS), a_to_in(w), clock=clock)
    still, _, _ = run(lambda: exchange(ae_client, server, [create(AE2_ABS)], sp_id=SP_ID, allow_cse_forwarding=True))
    assert int(still[0].rsc) == 4106


def test_absolute_id_and_check_originator_unit() -> None:
    assert absolute_id("Cae1", sp_id="m2m.example.com", cse_id="/id-in") == AE_ABS
    assert absolute_id("/id-in/Cae1", sp_id=SP_ID) == AE_ABS
    assert absolute_id("Sae9", sp_id=SP_ID) == f"{SP_ID}/Sae9"
    assert absolute_id(AE_ABS) == AE_ABS and absolute_id("Cae1") == "Cae1"
    ctx = SecurityContext(framework="psk", local_role=None, tls_role=None, transport=Transport.TLS,  # type: ignore[arg-type]
                          peer_id=AE_ABS, credential_id="12-x@y.example")
    ctx.check_originator(None)
    ctx.check_originator("/id-in/Cae1", sp_id=SP_ID)
    with pytest.raises(OriginatorNotAuthenticated) as ei:
        ctx.check_originator("/id-in/Cae1")  # without the SP-ID the forms cannot be equated
    assert ei.value.rsc is RSC.ORIGINATOR_NOT_AUTHENTICATED


# ------------------------------------------------------------------ TS-0013 TD_M2M_SE_01

TD_ID = "test@onem2m.com"
TD_AE = "/id-in/Ctd01"


@pytest.mark.parametrize(("server_key", "client_key"), [
    (KpsaEntry.from_hex(TD_ID, "123456"), KpsaEntry.from_hex(TD_ID, "123456")),
    (KpsaEntry.from_text(TD_ID, "123456"), KpsaEntry.from_text(TD_ID, "123456")),
    (KpsaEntry.from_text(TD_ID, "123456"), KpsaEntry.from_hex(TD_ID, "313233343536")),
], ids=["hex", "text", "text=hex"])
def test_td_m2m_se_01_tls_psk_then_http(server_key: KpsaEntry, client_key: KpsaEntry) -> None:
    directory = InMemoryKpsaDirectory([KpsaEntry(TD_ID, server_key.kpsa, peer_id=TD_AE, peer_kind=PeerKind.AE)])
    server = psk_server(directory, id_b=IN_ID)
    client = psk_client(client_key, id_b=IN_ID, id_a=TD_AE)
    reqs = [create(TD_AE, "td-1"), create("/id-in/Cother", "td-2")]

    async def go() -> tuple[list[ResponsePrimitive], Recorder, SecurityContext]:
        rec = Recorder()
        async with SAEFHTTPServer(server, rec, sp_id=SP_ID) as srv:
            async with await SAEFHTTPClient.connect(client, *srv.address) as cli:
                out = [await cli.send(r) for r in reqs]
                cctx = cli.context
        return out, rec, cctx

    rsps, rec, cctx = run(go)
    assert cctx.cipher == "PSK-AES128-CBC-SHA256" and cctx.psk_identity == TD_ID and cctx.peer_id == IN_ID
    assert [int(r.rsc) for r in rsps] == [2001, 4106]
    (req, sctx), = rec.seen
    assert req.fr == TD_AE and sctx.peer_id == TD_AE and sctx.psk_identity == TD_ID
    assert sctx.cipher == "PSK-AES128-CBC-SHA256"


def test_td_m2m_se_01_hex_and_text_are_different_keys() -> None:
    directory = InMemoryKpsaDirectory([KpsaEntry.from_text(TD_ID, "123456", peer_id=TD_AE)])
    client_err, _ = _expect_both_fail(psk_client(KpsaEntry.from_hex(TD_ID, "123456"), id_b=IN_ID),
                                      psk_server(directory))
    assert client_err.reason.value == "PSK_MISMATCH"


@pytest.mark.parametrize("as_text", [False, True], ids=["hex", "text"])
def test_td_m2m_se_01_dtls_ccm8(as_text: bool) -> None:
    """DTLS variant: TLS_PSK_WITH_AES_128_CCM_8, then a request primitive (TS-0004 8.4 JSON) over the session."""
    entry = KpsaEntry.from_text(TD_ID, "123456") if as_text else KpsaEntry.from_hex(TD_ID, "123456")
    directory = InMemoryKpsaDirectory([KpsaEntry(TD_ID, entry.kpsa, peer_id=TD_AE, peer_kind=PeerKind.AE)])
    server = psk_server(directory, id_b=IN_ID, transport=Transport.DTLS)
    client = psk_client(entry, id_b=IN_ID, transport=Transport.DTLS)

    async def go() -> tuple[SecurityContext, SecurityContext, ResponsePrimitive]:
        got: asyncio.Future[SecurityContext] = asyncio.get_running_loop().create_future()

        async def handler(sess: Any, ctx: SecurityContext) -> None:
            got.set_result(ctx)
            req = RequestPrimitive.from_json_bytes(await sess.recv(5))
            try:
                ctx.check_originator(req.fr, sp_id=SP_ID)
                rsc = RSC.CREATED
            except OriginatorNotAuthenticated as exc:
                rsc = exc.rsc
            sess.send(ResponsePrimitive(rsc=rsc, rqi=req.rqi).to_json_bytes())

        srv = await serve_dtls(server, handler)
        try:
            sess, cctx = await connect_dtls(client, "127.0.0.1", srv.sockname[1])
            sess.send(create(TD_AE, "d-1").to_json_bytes())
            rsp = ResponsePrimitive.from_json_bytes(await sess.recv(5))
            sctx = await got
            assert cctx.export_onem2m_key(EXPORTER_CONNECTION) == sctx.export_onem2m_key(EXPORTER_CONNECTION)
            sess.close()
        finally:
            srv.close()
        return cctx, sctx, rsp

    cctx, sctx, rsp = run(go)
    assert cctx.cipher == sctx.cipher == "PSK-AES128-CCM8"
    assert sctx.peer_id == TD_AE and sctx.psk_identity == TD_ID and int(rsp.rsc) == 2001 and rsp.rqi == "d-1"


def test_http_server_refuses_dtls_endpoint() -> None:
    ep = psk_server(InMemoryKpsaDirectory(), transport=Transport.DTLS)
    with pytest.raises(ValueError, match="TLS"):
        SAEFHTTPServer(ep, Recorder())

