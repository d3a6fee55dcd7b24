"""Profile G4/G7: access-control contexts (``acco``: ``actw`` time windows, ``acip`` IP
addresses; TS-0003 7.1.5 ``res_ctxts``) and <group> originators in ``acor`` (TS-0004
7.3.3.15), decided by :mod:`m2msec.gateway.acp` with the request time, the peer address and
the group members injected."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timezone
from typing import Any

import pytest

from m2msec.gateway.acp import (
    AccessControlContext,
    LocalIds,
    context_matches,
    group_candidates,
    group_lookup_id,
    is_local_resource_id,
    may_notify,
    parse_context,
    parse_set_of_acrs,
    peer_address,
)

IDS = LocalIds(cse_id="id-in", admin="CAdmin")
NOON = datetime(2024, 3, 4, 12, 0, 0, tzinfo=timezone.utc)  # a Monday
NIGHT = datetime(2024, 3, 4, 23, 0, 0, tzinfo=timezone.utc)
LOCAL = "127.0.0.1"
OFFICE_HOURS = "* * 8-17 * * 1-5 *"


def decide(originator: str, *acr: dict[str, Any], when: datetime | None = NOON, peer: Any = LOCAL,
           groups: dict[str, Any] | None = None, ids: LocalIds = IDS) -> Any:
    policies = {"acp1": parse_set_of_acrs({"acr": list(acr)})}
    return may_notify(originator, target_id="Ctarget", acpi=["acp1"], policies=policies, ids=ids,
                      when=when, peer=peer, groups=groups)


def rule(acco: Any = None, acor: list[str] | None = None, acop: int = 16, **more: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"acor": acor or ["Cae1"], "acop": acop, **more}
    if acco is not None:
        r["acco"] = acco
    return r


# ---------------------------------------------------------------- actw


def test_time_window_grants_inside_and_denies_outside() -> None:
    r = rule([{"actw": [OFFICE_HOURS]}])
    assert decide("Cae1", r, when=NOON).allowed
    d = decide("Cae1", r, when=NIGHT)
    assert not d.allowed and d.reason == "no accessControlRule grants NOTIFY"
    assert not decide("Cae1", r, when=datetime(2024, 3, 3, 12, tzinfo=timezone.utc)).allowed  # Sunday
    assert not decide("Cae2", r, when=NOON).allowed  # the window does not widen acor


def test_one_window_of_several_suffices_and_malformed_ones_never_match() -> None:
    r = rule([{"actw": ["* * 22-23 * * * *", "not a schedule", OFFICE_HOURS]}])
    assert decide("Cae1", r, when=NOON).allowed and decide("Cae1", r, when=NIGHT).allowed
    bad = rule([{"actw": ["* * * * * *", "* * 25 * * * *", 7, None]}])  # six fields, hour 25, non-strings
    assert not decide("Cae1", bad, when=NOON).allowed


def test_window_needs_a_request_time() -> None:
    assert not decide("Cae1", rule([{"actw": ["* * * * * * *"]}]), when=None).allowed


@pytest.mark.parametrize("actw", [[], "* * * * * * *", {"x": 1}, None])
def test_empty_or_mistyped_window_list_never_matches(actw: Any) -> None:
    assert not decide("Cae1", rule([{"actw": actw}])).allowed


# ---------------------------------------------------------------- acip


@pytest.mark.parametrize(("acip", "peer", "expected"), [
    ({"ipv4": ["127.0.0.1"]}, "127.0.0.1", True),
    ({"ipv4": ["127.0.0.0/8"]}, "127.9.8.7", True),
    ({"ipv4": ["10.0.0.0/8", "192.168.1.0/24"]}, "192.168.1.77", True),
    ({"ipv4": ["10.0.0.0/8"]}, "127.0.0.1", False),
    ({"ipv4": ["127.0.0.2"]}, "127.0.0.1", False),
    ({"ipv6": ["::1"]}, "::1", True),
    ({"ipv6": ["2001:db8::/32"]}, "2001:db8:1::5", True),
    ({"ipv6": ["2001:db8::/32"]}, "2001:db9::5", False),
    ({"ipv6": ["::1"]}, "127.0.0.1", False),  # an IPv6 list does not take an IPv4 peer
    ({"ipv4": ["127.0.0.1"]}, "::1", False),
    ({"ipv4": ["127.0.0.0/8"]}, "::ffff:127.0.0.1", True),  # IPv4-mapped peer on a dual-stack socket
    ({"ipv6": ["::ffff:0:0/96"]}, "::ffff:127.0.0.1", True),
    ({"ipv4": ["10.0.0.0/8"], "ipv6": ["::1"]}, "::1", True),  # either list
    ({"ipv6": ["fe80::/10"]}, "fe80::1%eth0", True),  # zone of the peer dropped
    ({"ipv4": ["127.0.0.1"]}, "[127.0.0.1]", False),  # brackets are for IPv6 only: not an address
    ({"ipv6": ["::1"]}, "[::1]", True),
])
def test_ip_address_lists(acip: dict[str, Any], peer: str, expected: bool) -> None:
    assert decide("Cae1", rule([{"acip": acip}]), peer=peer).allowed is expected


@pytest.mark.parametrize("entry", [
    "127.0.0.1/24",  # host bits set
    "127.0.0.0/255.0.0.0",  # netmask form, not a CIDR prefix
    "127.0.0.0/0.255.255.255",  # hostmask form
    "127.000.000.001",  # leading zeros
    "127.0.0.1 ", " 127.0.0.1", "127.0.0.1/33", "127.0.0.1/", "127.0.0.1/+8", "localhost", "", "::1",
])
def test_malformed_ipv4_entries_never_match(entry: str) -> None:
    r = rule([{"acip": {"ipv4": [entry]}}])
    assert not decide("Cae1", r, peer="127.0.0.1").allowed
    # ... but a good entry beside it still does
    assert decide("Cae1", rule([{"acip": {"ipv4": [entry, "127.0.0.1"]}}]), peer="127.0.0.1").allowed


@pytest.mark.parametrize("entry", ["::1/129", "fe80::1%eth0", "::1/64", "127.0.0.1", "gggg::1", 1])
def test_malformed_ipv6_entries_never_match(entry: Any) -> None:
    assert not decide("Cae1", rule([{"acip": {"ipv6": [entry]}}]), peer="::1").allowed


@pytest.mark.parametrize("acip", [{}, {"ipv4": []}, {"ipv4": "127.0.0.1"}, {"ipv4": ["127.0.0.1"], "ipv5": []},
                                  ["127.0.0.1"], "127.0.0.1", {"ipv4Addresses": ["127.0.0.1"]}])
def test_empty_or_malformed_acip_never_matches(acip: Any) -> None:
    assert not decide("Cae1", rule([{"acip": acip}]), peer="127.0.0.1").allowed


@pytest.mark.parametrize("peer", [None, "", "unix-socket", "not-an-ip"])
def test_no_peer_address_no_ip_match(peer: Any) -> None:
    assert not decide("Cae1", rule([{"acip": {"ipv4": ["0.0.0.0/0"]}}]), peer=peer).allowed


def test_peer_address_forms() -> None:
    assert peer_address("127.0.0.1") == ipaddress.ip_address("127.0.0.1")
    assert peer_address("[::1]") == ipaddress.ip_address("::1")
    assert peer_address("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    assert peer_address(ipaddress.ip_address("::1")) == ipaddress.ip_address("::1")
    assert peer_address("example.org") is None and peer_address(None) is None and peer_address(("127.0.0.1", 1)) is None


# ---------------------------------------------------------------- combining members and contexts


def test_members_of_one_context_and() -> None:
    r = rule([{"actw": [OFFICE_HOURS], "acip": {"ipv4": ["127.0.0.0/8"]}}])
    assert decide("Cae1", r, when=NOON, peer="127.0.0.1").allowed
    assert not decide("Cae1", r, when=NIGHT, peer="127.0.0.1").allowed
    assert not decide("Cae1", r, when=NOON, peer="10.1.1.1").allowed


def test_contexts_of_one_rule_or() -> None:
    r = rule([{"actw": [OFFICE_HOURS]}, {"acip": {"ipv4": ["10.0.0.0/8"]}}])
    assert decide("Cae1", r, when=NOON, peer="192.0.2.1").allowed  # the window
    assert decide("Cae1", r, when=NIGHT, peer="10.1.1.1").allowed  # the address
    assert not decide("Cae1", r, when=NIGHT, peer="192.0.2.1").allowed


@pytest.mark.parametrize("member", [
    {"aclr": {"accc": ["DE"]}},
    {"aclr": {"accr": [52.5, 13.4, 1000.0]}},
    {"acui": ["user1"]},
    {"acec": [{"sbjt": 1, "thld": 2, "thldOp": 1}]},
    {"acl": 5},
    {"somethingNew": True},
])
def test_members_the_gateway_cannot_evaluate_make_the_context_fail_closed(member: dict[str, Any]) -> None:
    assert not decide("Cae1", rule([member])).allowed
    # not even together with a member that matches (ACME would grant on both)
    assert not decide("Cae1", rule([{"actw": ["* * * * * * *"], **member}])).allowed
    # another context of the same rule still may
    assert decide("Cae1", rule([member, {"actw": ["* * * * * * *"]}])).allowed


@pytest.mark.parametrize("acco", [[], [{}], ["garbage"], [None]])
def test_empty_context_list_or_context_matches_nothing(acco: list[Any]) -> None:
    assert not decide("Cae1", rule(acco)).allowed
    assert decide("Cae1", rule(acco), rule(acor=["all"])).allowed  # another rule may grant


def test_acco_not_a_list_drops_the_rule_and_null_means_absent() -> None:
    assert parse_set_of_acrs({"acr": [rule({"actw": ["* * * * * * *"]})]}) == ()
    assert decide("Cae1", {"acor": ["Cae1"], "acop": 16, "acco": None}).allowed


def test_context_does_not_lift_the_other_restrictions() -> None:
    ok = [{"actw": ["* * * * * * *"]}]
    assert not decide("Cae1", rule(ok, acop=2)).allowed  # no NOTIFY bit
    assert not decide("Cae1", rule(ok, acaf=True)).allowed
    assert not decide("Cae1", rule(ok, aca=["lbl"])).allowed
    assert not decide("Cae1", rule(ok, acod=[{"ty": 3, "chty": [4]}])).allowed
    assert decide("Cae1", rule(ok, acod=[{"ty": 2, "chty": [4]}])).allowed


def test_parse_context_shapes() -> None:
    c = parse_context({"actw": ["* * * * * * *", "bad"], "acip": {"ipv4": ["10.0.0.0/8", "x"], "ipv6": ["::1"]}})
    assert c.windows is not None and c.windows[1] is None and c.unevaluable == ()
    assert c.networks == (ipaddress.ip_network("10.0.0.0/8"), None, ipaddress.ip_network("::1"))
    assert parse_context({"aclr": {}, "acip": {"ipv6": ["::1"], "zz": 1}}).unevaluable == ("aclr", "acip/zz")
    assert not context_matches(AccessControlContext(), when=NOON, peer=ipaddress.ip_address(LOCAL))


# ---------------------------------------------------------------- <group> originators


GRP = "grp-1234"


def test_group_member_is_granted() -> None:
    r = rule(acor=[GRP])
    for members in (["Cae1", "Cae2"], ["/id-in/Cae1"]):
        for originator in ("Cae1", "/id-in/Cae1"):
            d = decide(originator, r, groups={GRP: members})
            assert d.allowed and d.reason == f"acp acp1 rule 0 via group {GRP}"


def test_non_member_unretrievable_or_non_group_grants_nothing() -> None:
    r = rule(acor=[GRP])
    assert not decide("Cae3", r, groups={GRP: ["Cae1", "Cae2"]}).allowed
    assert not decide("Cae1", r, groups={GRP: None}).allowed  # not retrievable / not a <group>
    assert not decide("Cae1", r, groups={}).allowed
    assert not decide("Cae1", r).allowed
    assert not decide("Cae1", r, groups={GRP: []}).allowed
    assert not decide("/id-mn/Cae1", r, groups={GRP: ["Cae1"]}).allowed  # another CSE's Cae1


def test_group_members_are_ids_not_patterns_and_not_expanded() -> None:
    r = rule(acor=[GRP])
    assert not decide("Cae1", r, groups={GRP: ["C*"]}).allowed
    assert not decide("Cae1", r, groups={GRP: ["all"]}).allowed
    # a nested group: its members are not looked at (one level)
    assert not decide("Cae1", r, groups={GRP: ["grp-inner"], "grp-inner": ["Cae1"]}).allowed


def test_group_rule_still_needs_the_bit_and_the_context() -> None:
    assert not decide("Cae1", rule(acor=[GRP], acop=2), groups={GRP: ["Cae1"]}).allowed
    r = rule([{"actw": [OFFICE_HOURS]}], acor=[GRP])
    assert decide("Cae1", r, when=NOON, groups={GRP: ["Cae1"]}).allowed
    assert not decide("Cae1", r, when=NIGHT, groups={GRP: ["Cae1"]}).allowed


def candidates(originator: str, *acr: dict[str, Any], ids: LocalIds = IDS, **kw: Any) -> tuple[str, ...]:
    return group_candidates(originator, acpi=["acp1"], policies={"acp1": parse_set_of_acrs({"acr": list(acr)})},
                            ids=ids, when=kw.pop("when", NOON), peer=kw.pop("peer", ipaddress.ip_address(LOCAL)), **kw)


def test_group_candidates_are_the_local_ids_of_rules_that_would_grant() -> None:
    assert candidates("Cae9", rule(acor=[GRP, "/id-in/grp-2", "cse-in/ae/grp", "all-but", "Cx*", "/id-mn/grp-3",
                                         "//sp.example/id-in/grp-4", "/id-in", "Cae1", "/id-in/Cae1x", "/id-in/Cae1/grp"])) == (
        GRP, "/id-in/grp-2", "cse-in/ae/grp", "all-but", "/id-in/Cae1/grp")
    assert candidates("Cae9", rule(acor=[GRP, "all"])) == ()  # "all" grants directly
    # a rule that grants directly: nothing to look up
    assert candidates("Cae1", rule(acor=["Cae1"]), rule(acor=[GRP])) == ()
    # rules that cannot grant anyway are not looked at
    assert candidates("Cae9", rule(acor=[GRP], acop=2)) == ()
    assert candidates("Cae9", rule([{"actw": [OFFICE_HOURS]}], acor=[GRP]), when=NIGHT) == ()
    assert candidates("Cae9", rule(acor=[GRP], acaf=True)) == ()
    # duplicates once, at most `limit`
    assert candidates("Cae9", rule(acor=[GRP, GRP]), rule(acor=[GRP, "g2"])) == (GRP, "g2")
    assert candidates("Cae9", rule(acor=[f"g{i}" for i in range(40)])) == tuple(f"g{i}" for i in range(16))
    assert candidates("Cae9", rule(acor=[f"g{i}" for i in range(5)]), limit=2) == ("g0", "g1")
    assert group_candidates(None, acpi=["acp1"], policies={}, ids=IDS) == ()
    assert group_candidates("Cae9", acpi=[], policies={}, ids=IDS) == ()


def test_local_resource_ids_and_lookup_form() -> None:
    with_sp = LocalIds("id-in", "CAdmin", sp_id="sp.example")
    assert is_local_resource_id("//sp.example/id-in/grp-4", with_sp)
    assert not is_local_resource_id("//sp.example/id-in/grp-4", IDS)  # SP-ID unknown
    assert not is_local_resource_id("//other.example/id-in/grp-4", with_sp)
    assert group_lookup_id("//sp.example/id-in/grp-4", with_sp) == "/id-in/grp-4"
    assert group_lookup_id("cse-in/ae/grp", IDS) == "cse-in/ae/grp"
    assert group_lookup_id("/id-in/grp-2", IDS) == "/id-in/grp-2"
    for entry in ("all", "", "a b", "C?", "/Sae1", "Sae1", "/id-in/", "/id-in", "Cae1", "Cgrp", "/id-in/Cae1"):
        assert not is_local_resource_id(entry, IDS), entry


def test_group_decision_end_to_end_of_the_pure_functions() -> None:
    """What the gateway does: candidates, then the decision with their members."""
    acr = [rule(acor=["Cae1"]), rule([{"acip": {"ipv4": ["127.0.0.0/8"]}}], acor=[GRP])]
    wanted = candidates("Cae5", *acr)
    assert wanted == (GRP,)
    assert decide("Cae5", *acr, groups={GRP: ["Cae5"]}).allowed
    assert not decide("Cae5", *acr, groups={GRP: ["Cae5"]}, peer="192.0.2.1").allowed


# ---------------------------------------------------------------- the gateway in-process, a scripted CSE


import asyncio  # noqa: E402
import http.server  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from m2msec.esprim import MemoryReceiverState, ProvisionedKeySource, Receiver  # noqa: E402
from m2msec.gateway.server import Gateway  # noqa: E402
from m2msec.net.client import AsyncOneM2MClient  # noqa: E402
from m2msec.onem2m import SecurityInfo  # noqa: E402
from m2msec.onem2m.rsc import ResponseStatusCode as RSC  # noqa: E402


@dataclass
class Scripted:
    """A CSE that answers RETRIEVEs from ``resources`` (path -> JSON, or "drop" to close the
    connection), and an AE that answers every Notify with 2000."""

    resources: dict[str, Any]
    cse_url: str = ""
    ae_url: str = ""
    gets: list[tuple[str, str | None]] = field(default_factory=list)
    notifies: list[str | None] = field(default_factory=list)


def _server(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.ThreadingHTTPServer:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return srv


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    world = Scripted(resources={})

    def reply(h: http.server.BaseHTTPRequestHandler, status: int, rsc: int, body: bytes) -> None:
        h.send_response(status)
        for k, v in (("X-M2M-RSC", str(rsc)), ("X-M2M-RI", h.headers.get("X-M2M-RI", "")),
                     ("Content-Type", "application/json"), ("Content-Length", str(len(body)))):
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    class Cse(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            world.gets.append((self.path, self.headers.get("X-M2M-Origin")))
            res = world.resources.get(self.path)
            if res == "drop":
                self.close_connection = True
                self.connection.close()
                return
            if res is None:
                reply(self, 404, 4004, b'{"m2m:dbg":"not found"}')
            else:
                reply(self, 200, 2000, json.dumps(res).encode())

        def log_message(self, *args: object) -> None:
            pass

    class Ae(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            world.notifies.append(self.headers.get("X-M2M-Origin"))
            reply(self, 200, 2000, b"")

        def log_message(self, *args: object) -> None:
            pass

    cse, ae = _server(Cse), _server(Ae)
    world.cse_url = f"http://127.0.0.1:{cse.server_address[1]}"
    world.ae_url = f"http://127.0.0.1:{ae.server_address[1]}"
    world.resources["/cse-in/tgt"] = {"m2m:ae": {"aei": "Ctgt", "ri": "Ctgt", "poa": [world.ae_url], "acpi": ["acp1"]}}
    try:
        yield world
    finally:
        for s in (cse, ae):
            s.shutdown()
            s.server_close()


def _pv(*acr: dict[str, Any]) -> dict[str, Any]:
    return {"m2m:acp": {"ri": "acp1", "pv": {"acr": list(acr)}}}


def _gateway(world: Scripted, clock: Any) -> Gateway:
    receiver = Receiver(keys=ProvisionedKeySource([], clock=clock), state=MemoryReceiverState(clock=clock), clock=clock)
    return Gateway(cse_url=world.cse_url, cse_id="id-in", cse_name="cse-in", receiver=receiver, clock=clock)


async def _notify(gw: Gateway, originator: str) -> int:
    async with AsyncOneM2MClient(gw.url, originator) as c:
        rsp = await c.notify("cse-in/tgt", SecurityInfo.rand_object_request().to_content(), check=False)
    return int(rsp.rsc)


def test_gateway_uses_its_injected_clock_for_windows(scripted: Scripted) -> None:
    scripted.resources["/acp1"] = _pv({"acor": ["Cae1"], "acop": 16, "acco": [{"actw": [OFFICE_HOURS]}]})
    now = [NOON]

    async def go() -> list[int]:
        async with _gateway(scripted, lambda: now[0]) as gw:
            first = await _notify(gw, "Cae1")
            now[0] = NIGHT
            second = await _notify(gw, "Cae1")
            return [first, second]

    assert asyncio.run(go()) == [RSC.OK, RSC.ORIGINATOR_HAS_NO_PRIVILEGE]
    assert scripted.notifies == ["Cae1"]


def test_gateway_passes_the_tcp_peer_and_handle_takes_one(scripted: Scripted) -> None:
    scripted.resources["/acp1"] = _pv({"acor": ["Cae1"], "acop": 16, "acco": [{"acip": {"ipv4": ["127.0.0.1"]}}]})
    body = json.dumps(SecurityInfo.rand_object_request().to_content()).encode()
    headers = [("X-M2M-Origin", "Cae1"), ("X-M2M-RI", "r1"), ("X-M2M-RVI", "3"),
               ("Content-Type", "application/json")]

    async def go() -> list[int]:
        async with _gateway(scripted, lambda: NOON) as gw:
            over_tcp = await _notify(gw, "Cae1")
            direct = [(await gw.handle("POST", "/cse-in/tgt", headers, body, peer=p))[0] for p in ("10.1.2.3", None)]
            return [over_tcp, *direct]

    assert asyncio.run(go()) == [RSC.OK, 403, 403]
    assert scripted.notifies == ["Cae1"]


def test_gateway_retrieves_groups_as_the_admin_and_caches_them(scripted: Scripted) -> None:
    scripted.resources["/acp1"] = _pv({"acor": ["Cae1"], "acop": 16}, {"acor": ["grp1", "grp-missing"], "acop": 16})
    scripted.resources["/grp1"] = {"m2m:grp": {"ri": "grp1", "mt": 2, "mid": ["Cae7", "/id-in/Cae8"]}}

    async def go() -> list[int]:
        async with _gateway(scripted, lambda: NOON) as gw:
            return [await _notify(gw, who) for who in ("Cae7", "Cae8", "Cae9", "Cae1")]

    assert asyncio.run(go()) == [RSC.OK, RSC.OK, RSC.ORIGINATOR_HAS_NO_PRIVILEGE, RSC.OK]
    group_gets = [g for g in scripted.gets if g[0] in ("/grp1", "/grp-missing")]
    assert group_gets == [("/grp1", "CAdmin"), ("/grp-missing", "CAdmin")]  # once each, cached; none for Cae1
    assert scripted.notifies == ["Cae7", "Cae8", "Cae1"]


def test_gateway_group_that_is_not_a_group_grants_nothing(scripted: Scripted) -> None:
    scripted.resources["/acp1"] = _pv({"acor": ["ae-res"], "acop": 16})
    scripted.resources["/ae-res"] = {"m2m:ae": {"ri": "ae-res", "mid": ["Cae7"]}}  # not an m2m:grp

    async def go() -> int:
        async with _gateway(scripted, lambda: NOON) as gw:
            return await _notify(gw, "Cae7")

    assert asyncio.run(go()) == RSC.ORIGINATOR_HAS_NO_PRIVILEGE and scripted.notifies == []


def test_gateway_cse_unreachable_during_group_lookup_is_5103(scripted: Scripted) -> None:
    scripted.resources["/acp1"] = _pv({"acor": ["grp1"], "acop": 16})
    scripted.resources["/grp1"] = "drop"

    async def go() -> int:
        async with _gateway(scripted, lambda: NOON) as gw:
            return await _notify(gw, "Cae7")

    assert asyncio.run(go()) == RSC.TARGET_NOT_REACHABLE and scripted.notifies == []


def test_gateway_looks_up_no_group_for_self_admin_or_a_direct_grant(scripted: Scripted) -> None:
    scripted.resources["/acp1"] = _pv({"acor": ["Cae1", "grp1"], "acop": 16})
    scripted.resources["/grp1"] = {"m2m:grp": {"ri": "grp1", "mt": 2, "mid": ["Cae7"]}}

    async def go() -> list[int]:
        async with _gateway(scripted, lambda: NOON) as gw:
            return [await _notify(gw, who) for who in ("CAdmin", "Ctgt", "Cae1")]

    assert asyncio.run(go()) == [RSC.OK] * 3
    assert not [g for g in scripted.gets if g[0] == "/grp1"]


def test_gateway_acaf_grants_only_on_a_saef_association(scripted: Scripted) -> None:
    """accessControlAuthenticationFlag (TS-0003 7.1.5 table 7.1.5-1): a rule with ``acaf`` true
    grants NOTIFY to an AE whose Notify came on a SAEF association of the gateway's listener
    (a real TLS-PSK handshake, its From checked against the association: rq_authn TRUE), not to
    the same AE-ID on the plain listener; an association of another AE gets nothing from it."""
    import os

    from m2msec.gateway.config import SAEFConfig
    from m2msec.gateway.saef import SAEFListener, build_endpoint
    from m2msec.onem2m import Operation, RequestPrimitive
    from m2msec.saef import KpsaEntry, psk_client
    from m2msec.saef.http import SAEFHTTPClient

    scripted.resources["/acp1"] = _pv({"acor": ["Cae1"], "acop": 16, "acaf": True})
    entries = {who: (f"{who.lower()}@sp.m2m.example.com", os.urandom(32)) for who in ("Cae1", "Cae2")}
    cfg = SAEFConfig(host="127.0.0.1", port=0,
                     psk=tuple(KpsaEntry(kid, key, peer_id=who) for who, (kid, key) in entries.items()))

    async def over_saef(lst: SAEFListener, who: str) -> int:
        kid, key = entries[who]
        async with await SAEFHTTPClient.connect(psk_client(KpsaEntry(kid, key), id_b="/id-in"),
                                                lst.host, lst.port) as c:
            rsp = await c.send(RequestPrimitive(op=Operation.NOTIFY, to="cse-in/tgt", fr=who, rqi=f"r-{who}",
                                                rvi="3", pc=SecurityInfo.rand_object_request().to_content()))
        return int(rsp.rsc)

    async def go() -> list[int]:
        async with _gateway(scripted, lambda: NOON) as gw, \
                SAEFListener(gw, build_endpoint(cfg, clock=lambda: NOON)) as lst:
            return [await _notify(gw, "Cae1"), await over_saef(lst, "Cae1"), await over_saef(lst, "Cae2")]

    assert asyncio.run(go()) == [RSC.ORIGINATOR_HAS_NO_PRIVILEGE, RSC.OK, RSC.ORIGINATOR_HAS_NO_PRIVILEGE]
    assert scripted.notifies == ["Cae1"]
