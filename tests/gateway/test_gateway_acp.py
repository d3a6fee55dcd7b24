"""Profile G4: the gateway makes the CSE's NOTIFY access-control decision for the ``m2m:seci``
Notifies it relays to AEs (TS-0001 9.6.2, TS-0004 7.3.3.15, 6.3.5.26/27).

Pure tests of :mod:`m2msec.gateway.acp` (rules, originator forms, wildcards, contexts),
then a real ACME CSE behind the `m2msec gateway` process: an AE whose ACP grants NOTIFY
to AE1 receives AE1's ESPrim Notify; AE2 without privilege gets 4103 and the AE sees
nothing (type 3 and type 5 alike); an ACP UPDATE through the gateway granting AE2 takes
effect at once (the cached ACP data is dropped); a rule for AE2 with an ``actw`` window
around "now" / three hours away, an ``acip`` list with / without 127.0.0.1, and an ``acor``
<group> with / without AE2 (resource, structured and SP-relative IDs) grant / refuse (4103).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from m2msec.gateway.acp import (
    AccessControlOperation,
    AccessControlRule,
    LocalIds,
    acor_matches,
    may_notify,
    parse_set_of_acrs,
    sp_relative,
    wildcard_match,
)
from m2msec.gateway.config import ConfigError, load_config

IDS = LocalIds(cse_id="id-in", admin="CAdmin")
NOTIFY = int(AccessControlOperation.NOTIFY)
AE = "Ctarget"


def decide(originator: str | None, pv: dict[str, Any] | None = None, *, acpi: list[str] | None = None,
           policies: dict[str, Any] | None = None, ids: LocalIds = IDS, target: str | None = AE) -> Any:
    if policies is None:
        policies = {"acp1": parse_set_of_acrs(pv)} if pv is not None else {}
    if acpi is None:
        acpi = list(policies)
    return may_notify(originator, target_id=target, acpi=acpi, policies=policies, ids=ids)


def rules(*acr: dict[str, Any]) -> dict[str, Any]:
    return {"acr": list(acr)}


# ---------------------------------------------------------------- originator forms and acor entries


def test_sp_relative_forms() -> None:
    assert sp_relative("Cae1", IDS) == "/id-in/Cae1"
    assert sp_relative("/id-in/Cae1", IDS) == "/id-in/Cae1"
    assert sp_relative("Sae1", IDS) == "/Sae1"
    assert sp_relative("/id-mn/Cx", IDS) == "/id-mn/Cx"
    assert sp_relative("//sp.example/id-in/Cae1", IDS) == "//sp.example/id-in/Cae1"  # SP-ID unknown: as written
    with_sp = LocalIds("id-in", "CAdmin", sp_id="//sp.example")
    assert sp_relative("//sp.example/id-in/Cae1", with_sp) == "/id-in/Cae1"
    assert sp_relative("//other.example/id-in/Cae1", with_sp) == "//other.example/id-in/Cae1"


def test_domain_entries_grant_every_originator_of_that_sp() -> None:
    """TS-0004 table 7.3.3.15-1 ``domain``: an M2M-SP-ID alone (wildcards allowed)."""
    with_sp = LocalIds("id-in", "CAdmin", sp_id="//sp.example")
    for originator in ("Cae1", "/id-in/Cae1", "/id-mn/Cx", "//sp.example/id-in/Cae1", "//SP.example/id-x/Cy"):
        assert acor_matches("//sp.example", originator, with_sp), originator
        assert acor_matches("//sp.example/", originator, with_sp), originator
    assert acor_matches("//*.example", "//other.example/id-x/Cae", with_sp)
    assert acor_matches("//*.example", "Cae1", with_sp)
    assert not acor_matches("//*.example", "//other.org/id-x/Cae", with_sp)
    assert not acor_matches("//sp.example", "//other.example/id-in/Cae1", with_sp)  # another SP
    assert not acor_matches("//sp.example", "//sp.example.evil/id-in/Cae1", with_sp)
    assert not acor_matches("//sp.example", "Cae1", IDS)  # our SP-ID unknown: a relative ID has no domain
    assert acor_matches("//sp.example", "//sp.example/id-in/Cae1", IDS)
    assert not acor_matches("//sp.example/id-in", "//sp.example/id-in/Cae1", with_sp)  # a CSE-ID, not a domain
    assert decide("Cae1", rules({"acor": ["//sp.example"], "acop": 16}), ids=with_sp).allowed
    assert not decide("//else.example/id-in/Cae1", rules({"acor": ["//sp.example"], "acop": 16}), ids=with_sp).allowed


def test_exact_acor_matches_every_written_form_of_the_same_id() -> None:
    for entry in ("Cae1", "/id-in/Cae1"):
        for originator in ("Cae1", "/id-in/Cae1"):
            assert acor_matches(entry, originator, IDS)
    assert not acor_matches("Cae1", "Cae2", IDS)
    assert not acor_matches("Cae1", "/id-mn/Cae1", IDS)  # an AE of another CSE is another AE
    assert not acor_matches("Cae1", "Cae1x", IDS)
    assert not acor_matches("", "Cae1", IDS)
    assert not acor_matches("Cae1", "", IDS)


def test_all_matches_anyone() -> None:
    assert acor_matches("all", "Canyone", IDS) and acor_matches("all", "/id-mn/Cx", IDS)
    assert not acor_matches("ALL", "Canyone", IDS)


@pytest.mark.parametrize(("value", "pattern", "expected"), [
    ("Cae1", "C*", True),
    ("Cae1", "*", True),
    ("", "*", True),
    ("Cae1", "C+", True),
    ("C", "C+", False),
    ("C", "C*", True),
    ("Cae1", "Cae?", True),
    ("Cae12", "Cae?", False),
    ("Cae1", "Cae[123]", True),
    ("Cae4", "Cae[123]", False),
    ("Cae4", "Cae[^123]", True),
    ("Cae1", "Cae[^123]", False),
    ("C*x", "C\\*x", True),
    ("Cax", "C\\*x", False),
    ("Cae1", "Cae[1", False),  # unclosed class: no match (ACME: False)
    ("Cae1", "Cae\\", False),  # dangling escape
    ("xCae1", "C*", False),  # whole-string match
    ("a.b", "a.b", True),
    ("axb", "a.b", False),  # '.' is literal, not a regex
])
def test_wildcards_as_acme(value: str, pattern: str, expected: bool) -> None:
    assert wildcard_match(value, pattern) is expected


def test_wildcard_acor_against_the_cse_relative_and_sp_relative_forms() -> None:
    assert acor_matches("Cgw-*", "/id-in/Cgw-7", IDS)  # ACME compares /id-in/X as X
    assert acor_matches("/id-in/C*", "Cgw-7", IDS)
    assert not acor_matches("C*", "/id-mn/Cgw-7", IDS)  # not registered here: its SP-relative form
    assert acor_matches("/id-mn/*", "/id-mn/Cgw-7", IDS)
    assert not acor_matches("/id-mn/*", "Cgw-7", IDS)


# ---------------------------------------------------------------- the decision


def test_rule_with_notify_bit_and_exact_originator_grants() -> None:
    d = decide("Cae1", rules({"acor": ["Cae1"], "acop": 2 | 16}))
    assert d.allowed and d.reason == "acp acp1 rule 0"
    assert decide("/id-in/Cae1", rules({"acor": ["Cae1"], "acop": 16})).allowed


def test_other_originator_is_denied() -> None:
    d = decide("Cae2", rules({"acor": ["Cae1"], "acop": 63}))
    assert not d.allowed and d.reason == "no accessControlRule grants NOTIFY"
    assert not bool(d)


def test_missing_notify_bit_denies() -> None:
    assert not decide("Cae1", rules({"acor": ["Cae1"], "acop": 63 & ~16})).allowed
    assert not decide("Cae1", rules({"acor": ["all"], "acop": 2})).allowed


def test_all_and_wildcard_rules_grant() -> None:
    assert decide("Cwho", rules({"acor": ["all"], "acop": 16})).allowed
    assert decide("Cfleet-17", rules({"acor": ["Cfleet-*"], "acop": 16})).allowed
    assert not decide("Cother-17", rules({"acor": ["Cfleet-*"], "acop": 16})).allowed


@pytest.mark.parametrize("acco", [
    [{"actw": ["* * * * * * *"]}],  # a window that is always open, but no request time is given
    [{"acip": {"ipv4": ["127.0.0.1"]}}],  # no peer address is given
    [{"aclr": {"accc": {"crd": [0, 0], "rd": 1}}}],  # never evaluated (fail closed)
    [],
])
def test_rule_with_context_does_not_grant_without_the_request_context(acco: list[Any]) -> None:
    """Contexts in detail: test_gateway_acco.py."""
    assert not decide("Cae1", rules({"acor": ["Cae1"], "acop": 16, "acco": acco})).allowed
    # ... unless another rule grants
    assert decide("Cae1", rules({"acor": ["Cae1"], "acop": 16, "acco": acco}, {"acor": ["all"], "acop": 16})).allowed


def test_authentication_flag_and_attribute_rules_do_not_grant() -> None:
    assert not decide("Cae1", rules({"acor": ["Cae1"], "acop": 16, "acaf": True})).allowed
    assert decide("Cae1", rules({"acor": ["Cae1"], "acop": 16, "acaf": False})).allowed
    assert not decide("Cae1", rules({"acor": ["Cae1"], "acop": 16, "aca": ["lbl"]})).allowed


@pytest.mark.parametrize(("acaf", "rq_authn", "granted"), [
    (True, True, True), (True, False, False), (False, True, True), (False, False, True), (None, False, True),
])
def test_res_authn_is_table_7_1_5_1(acaf: bool | None, rq_authn: bool, granted: bool) -> None:
    """TS-0003 7.1.5 table 7.1.5-1: acaf TRUE needs rq_authn TRUE; FALSE or absent: either."""
    acr: dict[str, Any] = {"acor": ["Cae1"], "acop": 16}
    if acaf is not None:
        acr["acaf"] = acaf
    pv = rules(acr)
    got = may_notify("Cae1", target_id=AE, acpi=["acp1"], policies={"acp1": parse_set_of_acrs(pv)}, ids=IDS,
                     authenticated=rq_authn)
    assert got.allowed is granted
    # rq_authn never widens anything else: another originator, or the attribute rule, still fail
    other = may_notify("Cae2", target_id=AE, acpi=["acp1"], policies={"acp1": parse_set_of_acrs(pv)}, ids=IDS,
                       authenticated=rq_authn)
    assert not other.allowed
    aca = rules({**acr, "aca": ["lbl"]})
    assert not may_notify("Cae1", target_id=AE, acpi=["acp1"], policies={"acp1": parse_set_of_acrs(aca)}, ids=IDS,
                          authenticated=rq_authn).allowed


def test_object_details_must_name_the_target_type() -> None:
    assert decide("Cae1", rules({"acor": ["Cae1"], "acop": 16, "acod": [{"ty": 2, "chty": [3]}]})).allowed
    assert decide("Cae1", rules({"acor": ["Cae1"], "acop": 16, "acod": [{"chty": [3]}]})).allowed
    assert not decide("Cae1", rules({"acor": ["Cae1"], "acop": 16, "acod": [{"ty": 3, "chty": [4]}]})).allowed
    assert not decide("Cae1", rules({"acor": ["Cae1"], "acop": 16, "acod": [{"ty": 2, "spty": "x", "chty": [3]}]})).allowed


def test_several_acps_any_grants() -> None:
    policies = {
        "acpA": parse_set_of_acrs(rules({"acor": ["Cae9"], "acop": 63})),
        "acpB": None,  # not retrievable: contributes nothing
        "acpC": parse_set_of_acrs(rules({"acor": ["Cae4"], "acop": 2}, {"acor": ["Cae2", "Cae3"], "acop": 16})),
    }
    d = decide("Cae3", policies=policies, acpi=["acpA", "acpB", "acpC", "acpMissing"])
    assert d.allowed and d.reason == "acp acpC rule 1"
    assert not decide("Cae4", policies=policies, acpi=["acpA", "acpB", "acpC"]).allowed  # Cae4: RETRIEVE only
    # only the ACPs named in acpi count
    assert not decide("Cae3", policies=policies, acpi=["acpA"]).allowed


def test_no_acpi_only_self_and_admin() -> None:
    assert not decide("Cae1", acpi=[], policies={}).allowed
    assert decide("Cae1", acpi=[], policies={}).reason == "target has no accessControlPolicyIDs"
    assert not decide("Cae1", acpi=None, policies={}).allowed
    assert decide(AE, acpi=[], policies={}).reason == "self"
    assert decide(f"/id-in/{AE}", acpi=[], policies={}).allowed
    for admin in ("CAdmin", "/id-in/CAdmin"):
        assert decide(admin, acpi=[], policies={}).reason == "admin"
    assert decide("/id-in", acpi=[], policies={}).reason == "cse"
    assert not decide("/id-mn", acpi=[], policies={}).allowed
    assert not decide("/id-mn/CAdmin", acpi=[], policies={}).allowed  # another CSE's admin
    assert not decide(None, acpi=[], policies={}).allowed
    assert not decide("", rules({"acor": ["all"], "acop": 16})).allowed


def test_admin_with_known_sp_id_in_absolute_form() -> None:
    ids = LocalIds("id-in", "CAdmin", sp_id="sp.example")
    assert decide("//sp.example/id-in/CAdmin", acpi=[], policies={}, ids=ids).reason == "admin"
    assert not decide("//sp.example/id-in/CAdmin", acpi=[], policies={}).allowed  # SP-ID unknown


def test_self_is_allowed_even_when_the_acp_does_not_name_it() -> None:
    assert decide(AE, rules({"acor": ["Cae1"], "acop": 16})).reason == "self"


def test_malformed_rules_are_dropped() -> None:
    parsed = parse_set_of_acrs({"acr": [
        {"acor": "Cae1", "acop": 16},  # acor not a list
        {"acor": ["Cae1"], "acop": "16"},  # acop not an int
        {"acor": ["Cae1"], "acop": True},
        {"acor": ["Cae1"], "acop": 16, "acod": {"ty": 2}},  # acod not a list
        "garbage",
        {"acor": [7, "Cae2"], "acop": 16},  # non-string entries ignored
    ]})
    assert parsed == (AccessControlRule(originators=("Cae2",), operations=16),)
    assert parse_set_of_acrs(None) == () and parse_set_of_acrs({"acr": "x"}) == () and parse_set_of_acrs([]) == ()


def test_config_enforce_acp_and_sp_id(tmp_path: Path) -> None:
    base = '[cse]\nid = "id-in"\nname = "cse-in"\n'
    p = tmp_path / "g.toml"
    p.write_text(base, encoding="utf-8")
    c = load_config(p)
    assert c.enforce_acp is True and c.sp_id is None
    p.write_text(base + 'sp_id = "//sp.example"\n[gateway]\nenforce_acp = false\n', encoding="utf-8")
    c = load_config(p)
    assert c.enforce_acp is False and c.sp_id == "//sp.example"
    p.write_text(base + '[gateway]\nenforce_acp = "no"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="enforce_acp"):
        load_config(p)
    p.write_text(base + 'sp_id = "//"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="sp_id"):
        load_config(p)


# ---------------------------------------------------------------- real ACME + gateway process

from m2msec.esprim import MemoryReceiverState, Originator, PairwiseKey, ProvisionedKeySource, Receiver, ReceiverPolicy  # noqa: E402
from m2msec.esprim.transport import OuterResponseError, SecureOriginator, SecureReceiver  # noqa: E402
from m2msec.net.acme import AcmeCSE  # noqa: E402
from m2msec.net.client import AsyncOneM2MClient, OneM2MClient  # noqa: E402
from m2msec.net.endpoint import EndpointThread  # noqa: E402
from m2msec.onem2m import Operation, RequestPrimitive, ResourceType, ResponsePrimitive, ResponseStatusCode, SecurityInfo  # noqa: E402
from m2msec.onem2m.primitives import new_request_id  # noqa: E402

from _gateway_support import GatewayProcess, write_config  # noqa: E402

RSC = ResponseStatusCode


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class AclWorld:
    acme: AcmeCSE
    gw: GatewayProcess
    trace: Path
    ae1: str
    ae2: str
    target: str  # the receiving AE's AE-ID
    target_path: str
    acp_path: str
    ep_url: str
    k1: bytes
    kid1: str
    k2: bytes
    kid2: str
    seen: list[RequestPrimitive] = field(default_factory=list)
    sit3: list[int] = field(default_factory=lambda: [0])


def _pv(notifiers: str | list[str], target: str) -> list[dict[str, Any]]:
    """Anyone may RETRIEVE the target (to read its esi); ``notifiers`` may NOTIFY it."""
    who = [notifiers] if isinstance(notifiers, str) else notifiers
    return [{"acor": ["all"], "acop": 2}, {"acor": who, "acop": 2 | 16}, {"acor": [target], "acop": 63}]


@pytest.fixture(scope="module")
def aclw(acme: AcmeCSE, tmp_path_factory: pytest.TempPathFactory, tag: str) -> Iterator[AclWorld]:
    from m2msec.store import KeyEncryptionKey

    d = tmp_path_factory.mktemp("gw-acp")
    KeyEncryptionKey.generate().write_file(d / "gateway.kek")
    config = write_config(d / "gateway.toml", cse_id=acme.cse_id, cse_name=acme.cse_name, keys=[])
    trace = d / "trace.jsonl"
    ae1, ae2, target = f"Cacl-ae1-{tag}", f"Cacl-ae2-{tag}", f"Cacl-tgt-{tag}"
    k1, k2 = os.urandom(32), os.urandom(32)
    kid1, kid2 = f"{secrets.token_hex(16)}@mef.example.com", f"{secrets.token_hex(16)}@mef.example.com"
    gw = GatewayProcess(config, acme.url, trace=trace)
    ep: EndpointThread | None = None
    try:
        # the target AE knows both keys: only the ACP stands between AE2 and it
        receiver = Receiver(
            keys=ProvisionedKeySource([PairwiseKey(kid=kid1, key=k1, peer_id=ae1),
                                       PairwiseKey(kid=kid2, key=k2, peer_id=ae2)], clock=utc_now),
            state=MemoryReceiverState(clock=utc_now), clock=utc_now, policy=ReceiverPolicy(publish_shared=False),
        )
        seen: list[RequestPrimitive] = []
        sit3 = [0]

        async def handler(req: RequestPrimitive) -> ResponsePrimitive:
            seen.append(req)
            return ResponsePrimitive(rsc=RSC.OK, rqi=req.rqi, rvi="3")

        secure = SecureReceiver(receiver, handler)
        disp = secure.dispatcher()
        on3 = disp._seci[SecurityInfo.rand_object_request().sit]

        async def count3(req: RequestPrimitive, seci: SecurityInfo) -> ResponsePrimitive:
            sit3[0] += 1
            return await on3(req, seci)

        disp._seci[SecurityInfo.rand_object_request().sit] = count3
        ep = EndpointThread(disp).start()
        rn = f"acl-tgt-{tag}"
        path = f"{acme.cse_base}/{rn}"
        for who in (ae1, ae2):
            with OneM2MClient(gw.url, who) as c:
                c.create(acme.cse_base, ResourceType.AE, {"m2m:ae": {
                    "rn": who.lower(), "api": "Nm2msec", "rr": False, "srv": ["3"]}})
        with OneM2MClient(gw.url, target) as c:
            c.create(acme.cse_base, ResourceType.AE, {"m2m:ae": {
                "rn": rn, "api": "Nm2msec", "rr": True, "srv": ["3"], "poa": [ep.url],
                "esi": secure.e2e_sec_info().to_json()}})
            acp = c.create(path, ResourceType.ACCESS_CONTROL_POLICY, {"m2m:acp": {
                "rn": "acp", "pv": {"acr": _pv(ae1, target)},
                "pvs": {"acr": [{"acor": [target], "acop": 63}]}}})
            c.update(path, {"m2m:ae": {"acpi": [acp.pc["m2m:acp"]["ri"]]}})
        yield AclWorld(acme, gw, trace, ae1, ae2, target, path, f"{path}/acp", ep.url, k1, kid1, k2, kid2, seen, sit3)
    finally:
        if ep is not None:
            ep.stop()
        gw.stop()


async def _send(w: AclWorld, sender: str, key: bytes, kid: str) -> ResponsePrimitive:
    """Type 3 (no shared rand object is published) then type 5 from ``sender`` to the target."""
    async with AsyncOneM2MClient(w.gw.url, sender) as client:
        so = SecureOriginator(client, Originator(clock=utc_now), PairwiseKey(kid=kid, key=key, peer_id=w.target))
        req = RequestPrimitive(op=Operation.NOTIFY, to=w.target_path, fr=sender, rqi=new_request_id(), rvi="3",
                               pc={"m2m:sgn": {"nev": {"rep": {"m2m:cin": {"con": "ACL-SECRET-42"}}, "net": 1}, "sur": "/x"}})
        return await so.send(req, w.target_path, w.target_path)


def _records(w: AclWorld) -> list[dict[str, Any]]:
    return [json.loads(line) for line in w.trace.read_text(encoding="utf-8").splitlines()]


def _admin_lookups(w: AclWorld) -> list[dict[str, Any]]:
    return [r for r in _records(w) if r["dir"] == "out" and r["where"].startswith(f"GET {w.acme.url}")
            and ["X-M2M-Origin", "CAdmin"] in r["headers"]]


@pytest.mark.acme
def test_granted_originator_reaches_the_ae(aclw: AclWorld) -> None:
    before, s3 = len(aclw.seen), aclw.sit3[0]
    rsp = asyncio.run(_send(aclw, aclw.ae1, aclw.k1, aclw.kid1))
    assert rsp.rsc == RSC.OK
    assert aclw.sit3[0] == s3 + 1  # type 3 passed the check too
    wheres = [r["where"] for r in _admin_lookups(aclw)]
    assert any(w.endswith(aclw.target_path) for w in wheres) and any("/acp" in w for w in wheres)
    got = aclw.seen[before:]
    assert [r.fr for r in got] == [aclw.ae1] and "ACL-SECRET-42" in json.dumps(got[0].pc)


@pytest.mark.acme
def test_ungranted_originator_gets_4103_and_the_ae_sees_nothing(aclw: AclWorld) -> None:
    asyncio.run(_send(aclw, aclw.ae1, aclw.k1, aclw.kid1))  # warm the poa/ACP cache for the target
    before, s3 = len(aclw.seen), aclw.sit3[0]
    with pytest.raises(OuterResponseError) as ei:
        asyncio.run(_send(aclw, aclw.ae2, aclw.k2, aclw.kid2))  # the type-3 request is refused
    assert ei.value.rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    # type 5 (an ESPrim Object, even a sealed one with AE2's real key) and type 6 (ESCertKE) alike
    async def sealed() -> str:
        async with AsyncOneM2MClient(aclw.gw.url, aclw.ae1) as client:  # AE1 may fetch a rand object
            so = SecureOriginator(client, Originator(clock=utc_now),
                                  PairwiseKey(kid=aclw.kid2, key=aclw.k2, peer_id=aclw.target))
            session = await so.session(aclw.target_path, aclw.target_path)
            req = RequestPrimitive(op=Operation.RETRIEVE, to=aclw.target_path, fr=aclw.ae2, rqi=new_request_id(), rvi="3")
            return so.originator.protect_request(req, session)[0]

    obj = asyncio.run(sealed())
    before, s3 = len(aclw.seen), aclw.sit3[0]
    lookups = len(_admin_lookups(aclw))
    with OneM2MClient(aclw.gw.url, aclw.ae2) as c:
        answers = [c.notify(aclw.target_path, seci.to_content(), check=False) for seci in (
            SecurityInfo.esprim(obj), SecurityInfo.escertke(b"\x16\x03\x03\x00\x01\x01"),
            SecurityInfo.rand_object_request())]
    assert [a.rsc for a in answers] == [RSC.ORIGINATOR_HAS_NO_PRIVILEGE] * 3
    assert all(a.pc == {"m2m:dbg": "originator has no NOTIFY privilege for the target"} for a in answers)
    assert aclw.sit3[0] == s3 and len(aclw.seen) == before
    assert len(_admin_lookups(aclw)) == lookups  # target and ACP came from the cache
    records = _records(aclw)
    refused = [r for r in records if r["dir"] == "refused"]
    assert len(refused) >= 4 and all(r["body"] == "" for r in refused)  # audited without content
    assert ["X-M2M-Origin", aclw.ae2] in refused[-1]["headers"] and ["X-M2M-RSC", "4103"] in refused[-1]["headers"]
    to_ae = [r for r in records if r["dir"] == "out" and aclw.ep_url in r["where"]]
    assert to_ae and not any(["X-M2M-Origin", aclw.ae2] in r["headers"] for r in to_ae)


@pytest.mark.acme
def test_acp_update_through_the_gateway_takes_effect_at_once(aclw: AclWorld) -> None:
    with OneM2MClient(aclw.gw.url, aclw.ae2) as c:
        assert c.notify(aclw.target_path, SecurityInfo.rand_object_request().to_content(),
                        check=False).rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE  # cached: denied
    with OneM2MClient(aclw.gw.url, aclw.target) as c:
        c.update(aclw.acp_path, {"m2m:acp": {"pv": {"acr": _pv([aclw.ae1, aclw.ae2], aclw.target)}}})
    try:
        before = len(aclw.seen)
        rsp = asyncio.run(_send(aclw, aclw.ae2, aclw.k2, aclw.kid2))
        assert rsp.rsc == RSC.OK and [r.fr for r in aclw.seen[before:]] == [aclw.ae2]
    finally:  # back to AE1 only (the other tests expect AE2 refused)
        with OneM2MClient(aclw.gw.url, aclw.target) as c:
            c.update(aclw.acp_path, {"m2m:acp": {"pv": {"acr": _pv(aclw.ae1, aclw.target)}}})
    with pytest.raises(OuterResponseError) as ei:
        asyncio.run(_send(aclw, aclw.ae2, aclw.k2, aclw.kid2))
    assert ei.value.rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


@pytest.mark.acme
def test_target_without_acpi_takes_only_itself_and_the_admin(aclw: AclWorld, tag: str) -> None:
    """An AE with no ACP: AE1 is refused; the admin's Notify is relayed (the AE answers it)."""
    aei = f"Cacl-open-{tag}"
    path = f"{aclw.acme.cse_base}/acl-open-{tag}"
    async def handler(req: RequestPrimitive) -> ResponsePrimitive:
        return ResponsePrimitive(rsc=RSC.OK, rqi=req.rqi, rvi="3")

    ep = EndpointThread(SecureReceiver(Receiver(
        keys=ProvisionedKeySource([], clock=utc_now), state=MemoryReceiverState(clock=utc_now), clock=utc_now,
    ), handler).dispatcher()).start()
    try:
        with OneM2MClient(aclw.gw.url, aei) as c:
            c.create(aclw.acme.cse_base, ResourceType.AE, {"m2m:ae": {
                "rn": path.rsplit("/", 1)[1], "api": "Nm2msec", "rr": True, "srv": ["3"], "poa": [ep.url]}})
        seci = SecurityInfo.rand_object_request().to_content()
        with OneM2MClient(aclw.gw.url, aclw.ae1) as c:
            assert c.notify(path, seci, check=False).rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
        for who in ("CAdmin", aei):
            with OneM2MClient(aclw.gw.url, who) as c:
                rsp = c.notify(path, seci, check=False)
            assert rsp.rsc == RSC.OK and rsp.security_info() is not None  # a type-4 answer from the AE
    finally:
        ep.stop()


# ---------------------------------------------------------------- transit: the originator in SP-relative form


@pytest.mark.parametrize(("sent", "relayed"), [("Cae1", "/id-in/Cae1"), ("Sae1", "/Sae1"), ("/id-in/Cae1", "/id-in/Cae1")])
def test_routed_notify_carries_the_originator_in_sp_relative_form(sent: str, relayed: str) -> None:
    """A Notify routed to another CSE's gateway: a CSE-relative From becomes SP-relative, so
    the next gateway's access-control check does not read it as one of its own AEs."""
    import http.server
    import threading

    from m2msec.gateway.server import Gateway

    got: list[str | None] = []

    class Peer(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            got.append(self.headers.get("X-M2M-Origin"))
            self.send_response(200)
            for k, v in (("X-M2M-RSC", "2000"), ("X-M2M-RI", self.headers.get("X-M2M-RI", "")), ("Content-Length", "0")):
                self.send_header(k, v)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    peer = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Peer)
    threading.Thread(target=peer.serve_forever, daemon=True).start()
    try:
        receiver = Receiver(keys=ProvisionedKeySource([], clock=utc_now), state=MemoryReceiverState(clock=utc_now),
                            clock=utc_now)

        async def go() -> ResponsePrimitive:
            async with Gateway(cse_url="http://127.0.0.1:9", cse_id="id-in", cse_name="cse-in", receiver=receiver,
                               routes={"/id-mn": f"http://127.0.0.1:{peer.server_address[1]}"}) as gw:
                async with AsyncOneM2MClient(gw.url, sent) as c:
                    return await c.notify("/id-mn/cse-mn/Cfar", SecurityInfo.rand_object_request().to_content(),
                                          check=False)

        assert asyncio.run(go()).rsc == RSC.OK
        assert got == [relayed]
    finally:
        peer.shutdown()
        peer.server_close()


# ---------------------------------------------------------------- contexts and <group> originators, end to end


def _set_notifier_rule(w: AclWorld, notifier_rule: dict[str, Any]) -> None:
    """pv = anyone may RETRIEVE, AE1 may NOTIFY, ``notifier_rule``, the target all (via the gateway,
    which drops its cached ACP data)."""
    pv = _pv(w.ae1, w.target) + [notifier_rule]
    with OneM2MClient(w.gw.url, w.target) as c:
        c.update(w.acp_path, {"m2m:acp": {"pv": {"acr": pv}}})


def _restore(w: AclWorld) -> None:
    with OneM2MClient(w.gw.url, w.target) as c:
        c.update(w.acp_path, {"m2m:acp": {"pv": {"acr": _pv(w.ae1, w.target)}}})


def _ae2_outcome(w: AclWorld) -> int:
    """AE2 sends type 3 + type 5 to the target: the final RSC (the AE answered) or the refusal."""
    before = len(w.seen)
    try:
        rsp = asyncio.run(_send(w, w.ae2, w.k2, w.kid2))
    except OuterResponseError as exc:
        assert len(w.seen) == before  # refused before the AE
        return int(exc.rsc)
    assert [r.fr for r in w.seen[before:]] == [w.ae2]
    return int(rsp.rsc)


@pytest.mark.acme
def test_time_window_context_end_to_end(aclw: AclWorld) -> None:
    """An ``actw`` window that contains the gateway's "now" grants AE2's ESPrim Notify; one
    three hours away refuses it with 4103 (the test must not run across three hours)."""
    h = utc_now().hour
    inside = f"* * {h},{(h + 1) % 24} * * * *"
    outside = f"* * {(h + 3) % 24} * * * *"
    try:
        _set_notifier_rule(aclw, {"acor": [aclw.ae2], "acop": 16, "acco": [{"actw": [inside]}]})
        with OneM2MClient(aclw.gw.url, aclw.target) as c:  # the CSE keeps the context as written (the gateway reads it back)
            assert c.retrieve(aclw.acp_path).pc["m2m:acp"]["pv"]["acr"][-1]["acco"] == [{"actw": [inside]}]
        assert _ae2_outcome(aclw) == RSC.OK
        _set_notifier_rule(aclw, {"acor": [aclw.ae2], "acop": 16, "acco": [{"actw": [outside]}]})
        assert _ae2_outcome(aclw) == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
        # the same window with an unevaluable location region beside it: fail closed
        _set_notifier_rule(aclw, {"acor": [aclw.ae2], "acop": 16,
                                  "acco": [{"actw": [inside], "aclr": {"accc": ["DE"]}}]})
        assert _ae2_outcome(aclw) == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    finally:
        _restore(aclw)
    assert _ae2_outcome(aclw) == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


@pytest.mark.acme
def test_ip_address_context_end_to_end(aclw: AclWorld) -> None:
    """``acip`` is matched against the TCP peer of the gateway (127.0.0.1 here)."""
    try:
        _set_notifier_rule(aclw, {"acor": [aclw.ae2], "acop": 16,
                                  "acco": [{"acip": {"ipv4": ["10.0.0.0/8", "127.0.0.1"]}}]})
        assert _ae2_outcome(aclw) == RSC.OK
        _set_notifier_rule(aclw, {"acor": [aclw.ae2], "acop": 16, "acco": [{"acip": {"ipv4": ["10.0.0.0/8"]}}]})
        assert _ae2_outcome(aclw) == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
        # two contexts: the excluded block OR 127.0.0.0/8
        _set_notifier_rule(aclw, {"acor": [aclw.ae2], "acop": 16, "acco": [
            {"acip": {"ipv4": ["10.0.0.0/8"]}}, {"acip": {"ipv4": ["127.0.0.0/8"]}}]})
        assert _ae2_outcome(aclw) == RSC.OK
    finally:
        _restore(aclw)


@pytest.mark.acme
def test_group_originator_end_to_end(aclw: AclWorld) -> None:
    """An ``acor`` entry naming a <group> (resource ID, or structured ID) grants its members:
    the gateway retrieves the group as the admin; a group without AE2 or a missing one does not."""
    base = aclw.acme.cse_base
    with OneM2MClient(aclw.gw.url, "CAdmin") as c:
        ae1_ri = c.retrieve(f"{base}/{aclw.ae1.lower()}").pc["m2m:ae"]["ri"]
        ae2_ri = c.retrieve(f"{base}/{aclw.ae2.lower()}").pc["m2m:ae"]["ri"]
        both = c.create(aclw.target_path, ResourceType.GROUP, {"m2m:grp": {
            "rn": "notifiers", "mt": int(ResourceType.AE), "mnm": 10, "mid": [ae1_ri, ae2_ri]}}).pc["m2m:grp"]
        only1 = c.create(aclw.target_path, ResourceType.GROUP, {"m2m:grp": {
            "rn": "only-ae1", "mt": int(ResourceType.AE), "mnm": 10, "mid": [ae1_ri]}}).pc["m2m:grp"]
    try:
        assert both["ri"].startswith("grp") and not both["ri"].startswith("C")
        lookups = len(_admin_lookups(aclw))
        _set_notifier_rule(aclw, {"acor": [both["ri"]], "acop": 16})
        assert _ae2_outcome(aclw) == RSC.OK
        group_gets = [r for r in _admin_lookups(aclw)[lookups:] if r["where"].endswith("/" + both["ri"])]
        assert group_gets, "the gateway retrieves the group as the admin"
        _set_notifier_rule(aclw, {"acor": [f"{base}/{aclw.target_path.rsplit('/', 1)[1]}/notifiers"], "acop": 16})
        assert _ae2_outcome(aclw) == RSC.OK  # structured ID
        _set_notifier_rule(aclw, {"acor": [f"/{aclw.acme.cse_id.strip('/')}/{both['ri']}"], "acop": 16})
        assert _ae2_outcome(aclw) == RSC.OK  # SP-relative resource ID
        for acor in ([only1["ri"]], ["grp-does-not-exist"], [f"/{aclw.acme.cse_id.strip('/')}/{only1['ri']}"]):
            _set_notifier_rule(aclw, {"acor": acor, "acop": 16})
            assert _ae2_outcome(aclw) == RSC.ORIGINATOR_HAS_NO_PRIVILEGE, acor
        # the group with a context: inside the IP block only
        _set_notifier_rule(aclw, {"acor": [both["ri"]], "acop": 16, "acco": [{"acip": {"ipv4": ["10.0.0.0/8"]}}]})
        assert _ae2_outcome(aclw) == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    finally:
        _restore(aclw)
        with OneM2MClient(aclw.gw.url, "CAdmin") as c:
            for g in (both, only1):
                c.delete(g["ri"], check=False)
