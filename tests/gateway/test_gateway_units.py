"""Pure functions and in-process state machines of the gateway and the ESPrim transport API:
e2eSecInfo mapping (TS-0004 6.3.5.52), configuration loading, SecureOriginator /
SecureReceiver over a real h11 endpoint without a CSE (TS-0003 8.4.2, TS-0004 7.6.2):
esi in object and text form, re-establishment after 4114, inner error responses sealed."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from m2msec.errors import M2MSecError, ParseError
from m2msec.esprim import MemoryReceiverState, Originator, PairwiseKey, ProvisionedKeySource, Receiver
from m2msec.esprim.errors import ESPrimNotSupported, ESPrimParseError
from m2msec.esprim.transport import OuterResponseError, SecureOriginator, SecureReceiver, esi_from_resource
from m2msec.gateway.config import ConfigError, load_config
from m2msec.gateway.esi import esi_from_cse, esi_to_cse, merge_cse_esi
from m2msec.net.client import AsyncOneM2MClient
from m2msec.net.endpoint import AEEndpoint
from m2msec.onem2m import E2ESecInfo, Operation, RequestPrimitive, ResponsePrimitive, ResponseStatusCode, SUID
from m2msec.onem2m.primitives import new_request_id

RSC = ResponseStatusCode
KID = "0123456789abcdef0123456789abcdef@mef.example.com"
ORIG = "Cunit-orig"
RECV = "/id-in/cse-in/recv"


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------- esi mapping


def test_esi_to_cse_turns_the_object_into_compact_text() -> None:
    esi = E2ESecInfo((SUID.PRE_PROVISIONED_ESPRIM,)).to_json()
    pc, changed = esi_to_cse({"m2m:ae": {"rn": "a", "esi": esi}})
    assert changed and pc == {"m2m:ae": {"rn": "a", "esi": '{"esf":[13]}'}}
    assert esi_to_cse({"m2m:ae": {"esi": "already text"}}) == ({"m2m:ae": {"esi": "already text"}}, False)
    assert esi_to_cse({"m2m:cnt": {"esi": esi}})[1] is False  # not a resource with esi
    assert esi_to_cse([1, 2])[1] is False


def test_esi_to_cse_rejects_an_invalid_object() -> None:
    with pytest.raises(ParseError) as ei:
        esi_to_cse({"m2m:ae": {"esi": {"esf": [999]}}})
    assert ei.value.rsc == RSC.BAD_REQUEST


def test_esi_from_cse_objectifies_nested_and_keeps_foreign_strings() -> None:
    text = '{"esf":[13,23]}'
    pc = {"m2m:cb": {"esi": text, "m2m:ae": [{"esi": text}, {"esi": "not json"}], "m2m:csr": {"esi": '{"x":1}'}}}
    out, changed = esi_from_cse(pc)
    assert changed
    assert out["m2m:cb"]["esi"] == {"esf": [13, 23]}
    assert out["m2m:cb"]["m2m:ae"][0]["esi"] == {"esf": [13, 23]}
    assert out["m2m:cb"]["m2m:ae"][1]["esi"] == "not json"
    assert out["m2m:cb"]["m2m:csr"]["esi"] == '{"x":1}'  # JSON, but not an e2eSecInfo
    assert pc["m2m:cb"]["esi"] == text  # input untouched
    assert esi_from_cse({"m2m:cin": {"con": "x"}}) == ({"m2m:cin": {"con": "x"}}, False)


def test_merge_cse_esi_only_on_a_cse_base() -> None:
    info = E2ESecInfo((SUID.PRE_PROVISIONED_ESPRIM,))
    assert merge_cse_esi({"m2m:cb": {"csi": "/id-in"}}, info) == ({"m2m:cb": {"csi": "/id-in", "esi": {"esf": [13]}}}, True)
    assert merge_cse_esi({"m2m:ae": {}}, info)[1] is False


def test_esi_from_resource_reads_both_forms_and_rejects_garbage() -> None:
    esi = E2ESecInfo((SUID.RSPF_ESPRIM,))
    assert esi_from_resource({"m2m:ae": {"esi": esi.to_json()}}) == esi
    assert esi_from_resource({"m2m:ae": {"esi": json.dumps(esi.to_json())}}) == esi
    assert esi_from_resource({"m2m:cb": {}}) is None
    for bad in ({"m2m:ae": {"esi": "{"}}, {"m2m:cnt": {}}, {"m2m:ae": {"esi": {"esf": "x"}}}, [1]):
        with pytest.raises(ESPrimParseError):
            esi_from_resource(bad)


# ---------------------------------------------------------------- configuration


def _cfg(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "gateway.toml"
    p.write_text('[cse]\nid = "id-in"\nname = "cse-in"\n' + body, encoding="utf-8")
    return p


def test_config_keys_from_hex_and_files(tmp_path: Path) -> None:
    raw, hexkey = os.urandom(32), os.urandom(32)
    (tmp_path / "raw.key").write_bytes(raw)
    (tmp_path / "hex.key").write_text(hexkey.hex() + "\n")
    cfg = load_config(_cfg(tmp_path, f'''
[[keys]]
kid = "a@x"
key_file = "raw.key"
peer = "Cae1"
[[keys]]
kid = "b@x"
key_file = "hex.key"
peer = "Cae2"
suid = 23
[[keys]]
kid = "c@x"
key_hex = "{hexkey.hex()}"
peer = "Cae3"
[[routes]]
csi = "id-mn"
url = "http://127.0.0.1:9/"
'''), cse_url="http://cse")
    assert [k.key for k in cfg.keys] == [raw, hexkey, hexkey]
    assert cfg.keys[1].suid == SUID.RSPF_ESPRIM and cfg.cse_base == "/id-in/cse-in" and cfg.cse_url == "http://cse"
    assert cfg.routes == {"/id-mn": "http://127.0.0.1:9"}
    assert cfg.store_url == f"sqlite://{tmp_path.resolve()}/gateway.db"
    assert hexkey.hex() not in repr(cfg) and raw.hex() not in repr(cfg)


@pytest.mark.parametrize(
    "body, needle",
    [
        ('[[keys]]\nkid = "a"\npeer = "p"\n', "exactly one of"),
        ('[[keys]]\nkid = "a"\npeer = "p"\nkey_hex = "zz"\n', "hexadecimal"),
        ('[[keys]]\nkid = "a"\npeer = "p"\nkey_file = "missing.key"\n', "cannot read"),
        ('[[keys]]\nkid = "a"\npeer = "p"\nkey_hex = "00"\nsuid = 14\n', "not an ESPrim SUID"),
        ('[[routes]]\ncsi = "/x"\n', "routes[0]"),
        ("this is = = not toml", "not TOML"),
    ],
)
def test_config_errors(tmp_path: Path, body: str, needle: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(_cfg(tmp_path, body))
    assert needle in str(ei.value)


def test_config_receiver_lifetimes(tmp_path: Path) -> None:
    cfg = load_config(_cfg(tmp_path, "[receiver]\nunique_lifetime = 600\nunique_key_period = 7200\n"))
    assert cfg.unique_lifetime == timedelta(minutes=10) and cfg.unique_key_period == timedelta(hours=2)
    assert load_config(_cfg(tmp_path, "")).unique_key_period is None  # the Receiver's default


def test_config_needs_cse_id_and_name(tmp_path: Path) -> None:
    p = tmp_path / "g.toml"
    p.write_text('[cse]\nid = "x"\n')
    with pytest.raises(ConfigError, match=r"\[cse\]"):
        load_config(p)


# ---------------------------------------------------------------- transport without a CSE


class Peer:
    """A Receiver AE serving its own resource (esi in ``esi_form``) and secured requests."""

    def __init__(self, esi_form: str = "object", handler: Any = None) -> None:
        self.key = os.urandom(32)
        self.state = MemoryReceiverState(clock=utc_now)
        self.receiver = Receiver(
            keys=ProvisionedKeySource([PairwiseKey(kid=KID, key=self.key, peer_id=ORIG)], clock=utc_now),
            state=self.state, clock=utc_now,
        )
        self.secure = SecureReceiver(self.receiver, handler or self.echo)
        self.esi_form = esi_form
        self.retrieves = 0

    async def echo(self, req: RequestPrimitive) -> ResponsePrimitive:
        return ResponsePrimitive(rsc=RSC.OK, rqi=req.rqi, pc={"m2m:dbg": f"hello {req.fr}"}, rvi="3")

    async def resource(self, req: RequestPrimitive) -> ResponsePrimitive:
        self.retrieves += 1
        esi: Any = self.secure.e2e_sec_info().to_json()
        if self.esi_form == "text":
            esi = json.dumps(esi)
        return ResponsePrimitive(rsc=RSC.OK, rqi=req.rqi, pc={"m2m:ae": {"aei": "Crecv", "esi": esi}}, rvi="3")

    def endpoint(self) -> AEEndpoint:
        return AEEndpoint(self.secure.dispatcher(on_request=self.resource))

    def originator_key(self, kid: str = KID) -> PairwiseKey:
        return PairwiseKey(kid=kid, key=self.key, peer_id=RECV)


def inner(fr: str = ORIG) -> RequestPrimitive:
    return RequestPrimitive(op=Operation.RETRIEVE, to=RECV + "/x", fr=fr, rqi=new_request_id(), rvi="3")


@pytest.mark.parametrize("form", ["object", "text"])
def test_send_reads_esi_in_either_form(form: str) -> None:
    peer = Peer(form)

    async def go() -> ResponsePrimitive:
        async with peer.endpoint() as ep, AsyncOneM2MClient(ep.url, ORIG) as client:
            so = SecureOriginator(client, Originator(clock=utc_now), peer.originator_key())
            r = await so.send(inner(), RECV, RECV)
            r2 = await so.send(inner(), RECV, RECV)
            assert so.rand_object_requests == 0 and peer.retrieves == 1  # esi read once, session reused
            assert r.pc == r2.pc  # the first answer, through the new session, is the same
            return r2

    assert asyncio.run(go()).pc == {"m2m:dbg": f"hello {ORIG}"}


def test_send_reestablishes_once_after_4114() -> None:
    """The Receiver loses its state (restart without a store): the next request gets 4114,
    the Originator re-reads esi and establishes a new session, transparently."""
    peer = Peer()

    async def go() -> None:
        async with peer.endpoint() as ep, AsyncOneM2MClient(ep.url, ORIG) as client:
            so = SecureOriginator(client, Originator(clock=utc_now), peer.originator_key())
            await so.send(inner(), RECV, RECV)
            first = so.originator.session_for(KID)
            peer.receiver._state = MemoryReceiverState(clock=utc_now)
            r = await so.send(inner(), RECV, RECV)
            assert r.rsc == RSC.OK and peer.retrieves == 2
            second = so.originator.session_for(KID)
            assert first is not None and second is not None and second.ref.rri != first.ref.rri

    asyncio.run(go())


def test_send_without_esi_is_not_supported() -> None:
    peer = Peer()

    async def no_esi(req: RequestPrimitive) -> ResponsePrimitive:
        return ResponsePrimitive(rsc=RSC.OK, rqi=req.rqi, pc={"m2m:ae": {"aei": "Crecv"}}, rvi="3")

    async def go() -> None:
        async with AEEndpoint(peer.secure.dispatcher(on_request=no_esi)) as ep, AsyncOneM2MClient(ep.url, ORIG) as client:
            so = SecureOriginator(client, Originator(clock=utc_now), peer.originator_key())
            await so.send(inner(), RECV, RECV)

    with pytest.raises(ESPrimNotSupported):
        asyncio.run(go())


def test_esi_retrieve_failure_is_an_outer_error() -> None:
    peer = Peer()

    async def denied(req: RequestPrimitive) -> ResponsePrimitive:
        return ResponsePrimitive(rsc=RSC.ORIGINATOR_HAS_NO_PRIVILEGE, rqi=req.rqi, rvi="3")

    async def go() -> None:
        async with AEEndpoint(peer.secure.dispatcher(on_request=denied)) as ep, AsyncOneM2MClient(ep.url, ORIG) as client:
            await SecureOriginator(client, Originator(clock=utc_now), peer.originator_key()).send(inner(), RECV, RECV)

    with pytest.raises(OuterResponseError) as ei:
        asyncio.run(go())
    assert ei.value.rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


@pytest.mark.parametrize("exc, rsc", [(M2MSecError("nope", rsc=RSC.NOT_FOUND), RSC.NOT_FOUND),
                                      (RuntimeError("secret detail"), RSC.INTERNAL_SERVER_ERROR)])
def test_handler_failure_is_a_sealed_inner_response(exc: Exception, rsc: RSC) -> None:
    async def failing(req: RequestPrimitive) -> ResponsePrimitive:
        raise exc

    peer = Peer(handler=failing)

    async def go() -> ResponsePrimitive:
        async with peer.endpoint() as ep, AsyncOneM2MClient(ep.url, ORIG) as client:
            return await SecureOriginator(client, Originator(clock=utc_now), peer.originator_key()).send(inner(), RECV, RECV)

    rsp = asyncio.run(go())
    assert rsp.rsc == rsc
    assert "secret detail" not in json.dumps(rsp.pc)


def test_impersonation_in_process_is_4116_without_retry() -> None:
    peer = Peer()
    calls: list[str] = []

    async def go() -> None:
        async with peer.endpoint() as ep, AsyncOneM2MClient(ep.url, ORIG) as client:
            so = SecureOriginator(client, Originator(clock=utc_now), peer.originator_key())
            try:
                await so.send(inner(fr="Csomeone-else"), RECV, RECV)
            finally:
                calls.append(str(peer.retrieves))

    with pytest.raises(OuterResponseError) as ei:
        asyncio.run(go())
    assert ei.value.rsc == RSC.ESPRIM_IMPERSONATION_ERROR and calls == ["1"]


def test_expired_key_cannot_start() -> None:
    peer = Peer()
    key = PairwiseKey(kid=KID, key=peer.key, peer_id=RECV, expires_at=utc_now() - timedelta(seconds=1))

    async def go() -> None:
        async with peer.endpoint() as ep, AsyncOneM2MClient(ep.url, ORIG) as client:
            await SecureOriginator(client, Originator(clock=utc_now), key).send(inner(), RECV, RECV)

    with pytest.raises(M2MSecError) as ei:
        asyncio.run(go())
    assert ei.value.rsc == RSC.ESPRIM_UNKNOWN_KEY_ID


# ---------------------------------------------------------------- CLI


def test_cli_refuses_a_config_without_kek(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from m2msec.gateway.cli import app

    monkeypatch.delenv("M2MSEC_KEK", raising=False)
    monkeypatch.delenv("M2MSEC_KEK_FILE", raising=False)
    cfg = _cfg(tmp_path, "")
    r = CliRunner().invoke(app, ["serve", "--config", str(cfg), "--cse", "http://127.0.0.1:9", "--listen", "127.0.0.1:0"])
    assert r.exit_code == 2 and "key-encryption key" in r.output


@pytest.mark.parametrize("listen", ["8081", "127.0.0.1:", ":80", "127.0.0.1:99999"])
def test_cli_rejects_a_bad_listen_address(tmp_path: Path, listen: str) -> None:
    from typer.testing import CliRunner

    from m2msec.gateway.cli import app

    r = CliRunner().invoke(app, ["serve", "--config", str(_cfg(tmp_path, "")), "--listen", listen])
    assert r.exit_code == 2 and "HOST:PORT" in r.output


def test_cli_needs_a_cse_url(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from m2msec.gateway.cli import app
    from m2msec.store import KeyEncryptionKey

    KeyEncryptionKey.generate().write_file(tmp_path / "k.kek")
    cfg = _cfg(tmp_path, '[store]\nkek_file = "k.kek"\n')
    r = CliRunner().invoke(app, ["serve", "--config", str(cfg), "--listen", "127.0.0.1:0"])
    assert r.exit_code == 2 and "CSE URL" in r.output
