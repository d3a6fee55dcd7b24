"""The ACME harness itself: configuration, start failures, and an MN-CSE registered to an IN-CSE (two real ACMEs)."""

from __future__ import annotations

import configparser
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from m2msec.net.acme import AcmeCSE, AcmeError
from m2msec.net.client import OneM2MClient
from m2msec.net.endpoint import EndpointThread, NotifyDispatcher
from m2msec.onem2m import RequestPrimitive, ResourceType, ResponsePrimitive, ResponseStatusCode

from _net_support import require_acme

RSC = ResponseStatusCode


def test_config_is_the_documented_headless_one(tmp_path: Path) -> None:
    cse = AcmeCSE(tmp_path, http_port=18080, allowed_csr_originators=("id-mn",))
    path = cse.write_config()
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(path)
    basic = ini["basic.config"]
    assert (basic["cseType"], basic["cseID"], basic["cseName"], basic["adminID"]) == ("IN", "id-in", "cse-in", "CAdmin")
    assert basic["networkInterface"] == basic["cseHost"] == "127.0.0.1"
    assert basic["httpPort"] == "18080" and basic["databaseType"] == "memory"
    assert ini["textui"]["enable"] == "false"
    assert ini["mqtt"]["enable"] == ini["coap"]["enable"] == ini["websocket"]["enable"] == "false"
    assert ini["logging"]["enableScreenLogging"] == "false"
    assert ini["cse.registration"]["allowedCSROriginators"] == "/id-mn"
    cmd = cse.command()
    assert cmd[1:3] == ["-m", "acmecse"] and "--headless" in cmd and "--http-wsgi" in cmd
    assert cmd[cmd.index("--http-port") + 1] == "18080" and cmd[cmd.index("--db-type") + 1] == "memory"
    assert cse.url == "http://127.0.0.1:18080" and cse.cse_base == "/id-in/cse-in" and not cse.running


def test_constructor_and_config_rejections(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        AcmeCSE(tmp_path, cse_id="id/in")
    with pytest.raises(ValueError):
        AcmeCSE(tmp_path, cse_type="MN")  # an MN needs a registrar
    with pytest.raises(ValueError):
        AcmeCSE(tmp_path, cse_type="XX")  # type: ignore[arg-type]
    with pytest.raises(AcmeError):
        AcmeCSE(tmp_path, http_port=1, extra_config={"cse": {"x": "${injected}"}}).write_config()
    with pytest.raises(AcmeError):
        AcmeCSE(tmp_path).url  # no port before start


@pytest.mark.acme
def test_start_failure_reports_the_console(tmp_path: Path) -> None:
    require_acme()
    cse = AcmeCSE(tmp_path, extra_config={"cse.registration": {"allowedCSROriginators": "not-a-cse-id"}}, startup_timeout=20)
    with pytest.raises(AcmeError) as ei:
        cse.start()
    assert "exited" in str(ei.value) or "did not answer" in str(ei.value)
    assert not cse.running


@pytest.mark.acme
def test_port_in_use_fails_cleanly(tmp_path: Path) -> None:
    require_acme()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        cse = AcmeCSE(tmp_path, http_port=s.getsockname()[1], startup_timeout=8)
        with pytest.raises(AcmeError):
            cse.start()
    assert not cse.running


# ---------------------------------------------------------------- MN-CSE registered to IN-CSE


@dataclass
class Pair:
    inc: AcmeCSE
    mn: AcmeCSE


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    require_acme()
    inc = AcmeCSE(tmp_path_factory.mktemp("in"), allowed_csr_originators=("id-mn",))
    with inc:
        mn = AcmeCSE(tmp_path_factory.mktemp("mn"), cse_id="id-mn", cse_name="cse-mn", cse_type="MN", registrar=inc)
        with mn:
            yield Pair(inc, mn)


@pytest.mark.acme
def test_mn_registers_to_in(pair: Pair) -> None:
    with OneM2MClient(pair.inc.url, "CAdmin") as admin:
        csr = admin.retrieve(f"{pair.inc.cse_base}/id-mn").pc["m2m:csr"]
    assert csr["csi"] == "/id-mn"
    assert csr["poa"] == [pair.mn.url]
    assert csr["cb"] == "/id-mn/cse-mn"
    with OneM2MClient(pair.mn.url, "CAdmin") as admin:
        csr = admin.retrieve(f"{pair.mn.cse_base}/id-in").pc["m2m:csr"]
    assert csr["csi"] == "/id-in"


@pytest.mark.acme
def test_notify_across_two_cses_reaches_the_ae_at_the_in(pair: Pair) -> None:
    """AE-b (registered at the MN) notifies AE-a (registered at the IN) through MN -> IN."""
    tag = secrets.token_hex(3)
    received: list[RequestPrimitive] = []

    async def on_sgn(req: RequestPrimitive) -> ResponsePrimitive:
        received.append(req)
        return ResponsePrimitive(rsc=RSC.OK, rqi=req.rqi, pc={"m2m:dbg": "ae-a"})

    with EndpointThread(NotifyDispatcher(on_notification=on_sgn)) as ep, OneM2MClient(
        pair.inc.url, f"Cm2msec-a-{tag}"
    ) as a, OneM2MClient(pair.mn.url, f"Cm2msec-b-{tag}") as b:
        a.create(pair.inc.cse_base, ResourceType.AE,
                 {"m2m:ae": {"rn": "ae-a", "api": "Nm2msec", "rr": True, "srv": ["3"], "poa": [ep.url]}})
        b.create(pair.mn.cse_base, ResourceType.AE,
                 {"m2m:ae": {"rn": "ae-b", "api": "Nm2msec", "rr": True, "srv": ["3"]}})
        b_sp = f"/id-mn/{b.originator}"
        acp = a.create(f"{pair.inc.cse_base}/ae-a", ResourceType.ACCESS_CONTROL_POLICY, {"m2m:acp": {
            "rn": "acp", "pv": {"acr": [{"acor": [b_sp], "acop": 16}, {"acor": [a.originator], "acop": 63}]},
            "pvs": {"acr": [{"acor": [a.originator], "acop": 63}]}}})
        a.update(f"{pair.inc.cse_base}/ae-a", {"m2m:ae": {"acpi": [acp.pc["m2m:acp"]["ri"]]}})
        content = {"m2m:sgn": {"nev": {"rep": {"hop": 2}, "net": 1}, "sur": "/id-mn/sub"}}
        rsp = b.notify(f"{pair.inc.cse_base}/ae-a", content)
    assert rsp.rsc == RSC.OK and rsp.pc == {"m2m:dbg": "ae-a"}
    (got,) = received
    assert got.fr == b_sp  # the MN gives the originator its SP-relative form
    assert got.to == "/id-in/cse-in/ae-a"
    assert got.pc == content


@pytest.mark.acme
def test_esi_as_object_with_patched_attribute_policy(tmp_path: Path) -> None:
    """Option for the gateway: ACME with esi retyped to an object accepts the standard m2m:e2eSecInfo."""
    require_acme()
    from datetime import datetime, timedelta, timezone

    from m2msec.onem2m import SUID, E2ESecInfo, new_receiver_rand_object

    expiry = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=1)
    esi = E2ESecInfo((SUID.PRE_PROVISIONED_ESPRIM,), shared_rand_object=new_receiver_rand_object(expiry=expiry))
    with AcmeCSE(tmp_path, esi_as_object=True) as cse, OneM2MClient(cse.url, "Cm2msec-esi") as c:
        assert (tmp_path / "acme-init-esi-object" / "attributePolicies.ap").exists()
        created = c.create(cse.cse_base, ResourceType.AE, {"m2m:ae": {
            "rn": "esi-ae", "api": "Nm2msec", "rr": False, "srv": ["3"], "esi": esi.to_json()}})
        assert created.e2e_sec_info(clock=datetime.now(timezone.utc)) == esi
        back = c.retrieve(f"{cse.cse_base}/esi-ae")
        assert back.e2e_sec_info(clock=datetime.now(timezone.utc)) == esi
        refused = c.update(f"{cse.cse_base}/esi-ae", {"m2m:ae": {"esi": "a string"}}, check=False)
        assert refused.rsc == RSC.BAD_REQUEST


def test_esi_as_object_excludes_an_explicit_init_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        AcmeCSE(tmp_path, esi_as_object=True, init_directory=tmp_path)
