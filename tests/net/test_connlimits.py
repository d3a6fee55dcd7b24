"""Connection limits of the TLS listeners (m2msec.net.connlimits, m2msec.tls.aio.start_server).

Pure functions and the gate's bookkeeping first, then a real TLS-PSK listener on 127.0.0.1:
idle TCP connections from one source fill its per-source limit, the next one from that source
is reset before any TLS byte while another source (127.0.0.2: Linux routes all of 127/8 to
the loopback) still completes a handshake, the total limit holds across sources, nothing of a
refused connection reaches the handler or ``on_handshake_error``, and closing connections frees
their slots.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import pytest
from _conn_reset import wait_until, was_reset

from m2msec.net.connlimits import (
    DEFAULT_MAX_PER_SOURCE,
    MAX_CONNECTIONS_LIMIT,
    PROCESS_BUDGET,
    ConnectionGate,
    ConnectionLimits,
    ProcessBudget,
    default_max_connections,
    source_key,
)
from m2msec.tls import PSKCredentials, Role, TLSConfig
from m2msec.tls.aio import TLSStreamWriter, open_connection, start_server

IDENT = b"limits@example.com"
KEY = bytes(range(32))


# ------------------------------------------------------------------ pure functions


@pytest.mark.parametrize(("peer", "key"), [
    (("192.0.2.7", 4242), "192.0.2.7"),
    (("2001:db8:1:2::7", 4242, 0, 0), "2001:db8:1:2::/64"),
    (("2001:db8:1:2:ffff:ffff:ffff:1", 1, 0, 0), "2001:db8:1:2::/64"),  # same /64: one source
    (("2001:db8:1:3::7", 1, 0, 0), "2001:db8:1:3::/64"),  # the next /64: another source
    (("::ffff:192.0.2.7", 1, 0, 0), "192.0.2.7"),  # IPv4-mapped counts as the IPv4 address
    (("fe80::1%eth0", 1, 0, 2), "fe80::/64"),  # a zone is not part of the source
    (("not-an-address", 1), "?"),
    ("/run/m2msec.sock", "?"),  # a Unix socket's peername
    (None, "?"),
])
def test_source_key(peer: Any, key: str) -> None:
    assert source_key(peer) == key


@pytest.mark.parametrize("bad", [0, -1, MAX_CONNECTIONS_LIMIT + 1, True, 2.5, "10", None])
def test_limits_refuse_values_out_of_range(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_connections must be an integer from 1"):
        ConnectionLimits(bad)
    with pytest.raises(ValueError, match="max_connections_per_ip must be an integer from 1"):
        ConnectionLimits(10, bad)
    with pytest.raises(ValueError, match="max_connections_per_ip"):
        ConnectionLimits.from_toml({"max_connections_per_ip": bad})


def test_limits_from_toml_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ConnectionLimits.from_toml({"max_connections": 7, "max_connections_per_ip": 3}) == ConnectionLimits(7, 3)
    assert ConnectionLimits.from_toml({}) == ConnectionLimits(default_max_connections(), DEFAULT_MAX_PER_SOURCE)
    monkeypatch.setattr(resource, "getrlimit", lambda _r: (1024, 4096))
    assert default_max_connections() == 960  # the open-file limit minus 64: fds left for the store, logs
    monkeypatch.setattr(resource, "getrlimit", lambda _r: (65536, 65536))
    assert default_max_connections() == 1024
    monkeypatch.setattr(resource, "getrlimit", lambda _r: (40, 40))
    assert default_max_connections() == 16
    monkeypatch.setattr(resource, "getrlimit", lambda _r: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert default_max_connections() == 1024


def test_gate_counts_per_source_and_in_total() -> None:
    gate = ConnectionGate(ConnectionLimits(4, 2), name="test")
    a1, a2 = gate.admit(("10.0.0.1", 1)), gate.admit(("10.0.0.1", 2))
    assert a1 == a2 == "10.0.0.1"
    assert gate.admit(("10.0.0.1", 3)) is None  # per source
    assert gate.refused == gate.refused_per_source == 1
    assert gate.admit(("10.0.0.2", 1)) == "10.0.0.2"
    assert gate.admit(("2001:db8::1", 1, 0, 0)) == "2001:db8::/64"
    assert gate.open == 4
    assert gate.admit(("10.0.0.3", 1)) is None  # in total: a fresh source does not help
    assert (gate.refused, gate.refused_per_source) == (2, 1)
    gate.release("10.0.0.1")
    assert gate.open_from("10.0.0.1") == 1
    assert gate.admit(("10.0.0.3", 1)) == "10.0.0.3"  # a freed slot is usable by anyone
    for key in ("10.0.0.1", "10.0.0.2", "2001:db8::/64", "10.0.0.3"):
        gate.release(key)
    assert gate.open == 0 and gate.open_from("10.0.0.1") == 0
    with pytest.raises(RuntimeError, match="not admitted"):
        gate.release("10.0.0.1")
    assert "open=0/4" in repr(gate) and "refused=2" in repr(gate)


def test_refusals_are_logged_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    gate = ConnectionGate(ConnectionLimits(1, 1), name="MAF test", log_interval=60, clock=lambda: now[0])
    assert gate.admit(("10.0.0.1", 1)) is not None
    with caplog.at_level(logging.WARNING, logger="m2msec.net.connlimits"):
        for _ in range(50):
            assert gate.admit(("10.0.0.9", 1)) is None
        now[0] += 59
        assert gate.admit(("10.0.0.9", 1)) is None
        now[0] += 1
        assert gate.admit(("10.0.0.8", 1)) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # 52 refusals, two lines
    assert "MAF test: refused 1 connection(s)" in lines[0] and "10.0.0.9" in lines[0]
    assert "refused 51 connection(s)" in lines[1] and "latest from 10.0.0.8" in lines[1]
    assert gate.refused == 52


# ------------------------------------------------------------------ a real listener


def _server_config() -> TLSConfig:
    return TLSConfig(role=Role.SERVER, psk_lookup=lambda ident, _sni: KEY if ident == IDENT else None)


def _client_config() -> TLSConfig:
    return TLSConfig(role=Role.CLIENT, psk=PSKCredentials(IDENT, KEY))


async def _idle_tcp(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _still_open(reader: asyncio.StreamReader) -> bool:
    return not await was_reset(reader, 0.3)  # the server is waiting for a ClientHello: admitted


async def _echo_once(port: int, source: str) -> bytes:
    reader, writer = await open_connection("127.0.0.1", port, _client_config(), local_addr=(source, 0), timeout=5)
    try:
        writer.write(b"ping")
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(4), 5)
    finally:
        writer.close()


async def _wait_open(gate: ConnectionGate, n: int) -> None:
    await wait_until(lambda: gate.open == n, f"{n} open connections (have {gate.open})")


def test_listener_resets_connections_over_the_limits_before_tls() -> None:
    async def main() -> None:
        handled: list[Any] = []
        errors: list[Any] = []

        async def handler(reader: asyncio.StreamReader, writer: TLSStreamWriter) -> None:
            handled.append(writer.get_extra_info("peername")[0])
            data = await reader.read(4)
            writer.write(data.upper())
            await writer.drain()
            await reader.read()  # until the client closes

        # no eviction within this test (see the eviction tests below)
        gate = ConnectionGate(ConnectionLimits(3, 2), name="test listener", evict_after=3600)
        server = await start_server(handler, "127.0.0.1", 0, _server_config(), limits=gate,
                                    on_handshake_error=lambda e, p: errors.append((e, p)))
        port = server.sockets[0].getsockname()[1]
        idle = []
        try:
            # two idle TCP connections fill 127.0.0.1's share; they are admitted (waiting for TLS)
            for _ in range(2):
                idle.append(await _idle_tcp(port))
            assert all([await _still_open(r) for r, _w in idle])
            await _wait_open(gate, 2)
            # the third from the same source is reset before any TLS byte
            r3, w3 = await _idle_tcp(port)
            assert await was_reset(r3)
            w3.close()
            assert (gate.refused, gate.refused_per_source) == (1, 1)
            # another source still gets a complete TLS-PSK session (the listener's last slot)
            assert await _echo_once(port, "127.0.0.2") == b"PING"
            assert handled == ["127.0.0.2"]
            # with 127.0.0.2's session open the total is full: a third source is reset too
            reader, writer = await open_connection("127.0.0.1", port, _client_config(),
                                                   local_addr=("127.0.0.2", 0), timeout=5)
            await _wait_open(gate, 3)
            r4, w4 = await _idle_tcp(port, "127.0.0.3")
            assert await was_reset(r4)
            w4.close()
            assert (gate.refused, gate.refused_per_source) == (2, 1)
            # refused connections never reached the handler or the handshake-error hook
            assert handled == ["127.0.0.2", "127.0.0.2"] and errors == []
            writer.close()
            # closing the idle connections frees 127.0.0.1's share: a session from there works
            for _r, w in idle:
                w.close()
            await _wait_open(gate, 0)
            assert await _echo_once(port, "127.0.0.1") == b"PING"
            assert len(errors) == 2  # the two idle ones: "connection lost during the handshake"
        finally:
            for _r, w in idle:
                w.close()
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_listener_applies_default_limits_when_none_are_given() -> None:
    """``start_server`` without ``limits`` still has a gate with the defaults (1024 / 128)."""
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: TLSStreamWriter) -> None:
            await reader.read()

        server = await start_server(handler, "127.0.0.1", 0, _server_config())
        port = server.sockets[0].getsockname()[1]
        conns = []
        try:
            for _ in range(DEFAULT_MAX_PER_SOURCE):
                conns.append(await _idle_tcp(port, "127.0.0.5"))
            assert await _still_open(conns[-1][0])
            extra = await _idle_tcp(port, "127.0.0.5")
            assert await was_reset(extra[0])
            extra[1].close()
        finally:
            for _r, w in conns:
                w.close()
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_full_gate_evicts_the_oldest_stale_handshake_only() -> None:
    now = [0.0]
    gate = ConnectionGate(ConnectionLimits(3, 2), name="t", clock=lambda: now[0], evict_after=1.0)
    evicted: list[str] = []
    tokens = {}
    for i, src in enumerate(("10.0.0.1", "10.0.0.2", "10.0.0.3")):
        key = gate.admit((src, 1000 + i))
        assert key == src
        tokens[src] = gate.handshaking(key, lambda s=src: evicted.append(s))
        now[0] += 0.1
    # full, and the oldest handshake is younger than evict_after: refused, nobody evicted
    assert gate.admit(("10.0.0.4", 1)) is None and evicted == [] and gate.refused == 1
    now[0] = 1.05  # 10.0.0.1's handshake is now 1.05 s old, the others younger
    assert gate.admit(("10.0.0.4", 1)) == "10.0.0.4"
    assert evicted == ["10.0.0.1"] and gate.evicted == 1 and gate.open == 3
    assert gate.open_from("10.0.0.1") == 0 and gate.in_handshake == 2
    # established sessions are never evicted: the two left complete their handshakes
    gate.handshake_over(tokens["10.0.0.2"])
    gate.handshake_over(tokens["10.0.0.3"])
    now[0] = 100.0
    assert gate.admit(("10.0.0.5", 1)) is None and evicted == ["10.0.0.1"]
    # and the per-source limit never evicts
    gate2 = ConnectionGate(ConnectionLimits(10, 1), name="t2", clock=lambda: now[0], evict_after=0.0)
    k = gate2.admit(("10.0.0.1", 1))
    gate2.handshaking(k, lambda: evicted.append("wrong"))
    assert gate2.admit(("10.0.0.1", 2)) is None and gate2.evicted == 0 and evicted == ["10.0.0.1"]


def test_server_wait_neither_counts_nor_lets_a_handshake_be_evicted() -> None:
    """A handshake waiting for the server's own work (a MEF fetch, an OCSP check) is not
    evicted, and that wait does not count towards evict_after once it is over."""
    now = [0.0]
    gate = ConnectionGate(ConnectionLimits(2, 2), name="t", clock=lambda: now[0], evict_after=1.0)
    evicted: list[str] = []
    busy = gate.handshaking(gate.admit(("10.0.0.1", 1)), lambda: evicted.append("busy"))  # type: ignore[arg-type]
    now[0] = 0.2
    gate.server_busy(busy)
    gate.handshaking(gate.admit(("10.0.0.2", 1)), lambda: evicted.append("idle"))  # type: ignore[arg-type]
    assert gate.in_handshake == 2
    now[0] = 5.0  # the waiting one is the oldest by far, but the server keeps it waiting
    assert gate.admit(("10.0.0.3", 1)) == "10.0.0.3" and evicted == ["idle"]
    now[0] = 10.0
    assert gate.admit(("10.0.0.4", 1)) is None and evicted == ["idle"]  # only server waits and a slot taken
    gate.server_done(busy)  # 0.2 s of its own waiting so far: young again
    assert gate.admit(("10.0.0.4", 1)) is None and evicted == ["idle"]
    now[0] = 10.81  # 0.2 + 0.81 s waiting for its client
    assert gate.admit(("10.0.0.4", 1)) == "10.0.0.4" and evicted == ["idle", "busy"]
    assert gate.in_handshake == 0 and gate.open == 2
    # a finished handshake leaves no trace in either table
    gate2 = ConnectionGate(ConnectionLimits(2, 2), name="t2", clock=lambda: now[0])
    t = gate2.handshaking(gate2.admit(("10.0.0.1", 1)), lambda: None)  # type: ignore[arg-type]
    gate2.server_busy(t)
    gate2.handshake_over(t)
    gate2.server_done(t)
    assert gate2.in_handshake == 0


def test_listener_keeps_a_handshake_the_server_makes_wait() -> None:
    """A real listener with a slow ``psk_prefetch`` (as the MAF's Km fetch from a slow MEF):
    when it is full, the idle connection is evicted, not the client whose handshake waits for
    the server; that client then completes its handshake."""
    slow_ident = b"slow@example.com"

    async def main() -> None:
        release = asyncio.Event()
        prefetching = asyncio.Event()

        async def fetch() -> None:
            prefetching.set()
            await release.wait()

        def prefetch(identity: bytes) -> Any:
            return fetch() if identity == slow_ident else None

        async def handler(reader: asyncio.StreamReader, writer: TLSStreamWriter) -> None:
            data = await reader.read(4)
            writer.write(data.upper())
            await writer.drain()
            await reader.read()

        cfg = TLSConfig(role=Role.SERVER, psk_prefetch=prefetch,
                        psk_lookup=lambda ident, _sni: KEY if ident in (IDENT, slow_ident) else None)
        gate = ConnectionGate(ConnectionLimits(2, 2), name="test listener", evict_after=0.4)
        server = await start_server(handler, "127.0.0.1", 0, cfg, limits=gate)
        port = server.sockets[0].getsockname()[1]
        slow = asyncio.create_task(open_connection(
            "127.0.0.1", port, TLSConfig(role=Role.CLIENT, psk=PSKCredentials(slow_ident, KEY)),
            local_addr=("127.0.0.1", 0), timeout=8))
        idle = None
        try:
            await asyncio.wait_for(prefetching.wait(), 5)
            idle = await _idle_tcp(port, "127.0.0.2")
            await _wait_open(gate, 2)
            await asyncio.sleep(0.6)  # both older than evict_after
            assert await _echo_once(port, "127.0.0.3") == b"PING"
            assert gate.evicted == 1 and await was_reset(idle[0])  # the idle one made room
            assert not slow.done()
            release.set()
            reader, writer = await asyncio.wait_for(slow, 5)
            writer.write(b"late")
            await writer.drain()
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"LATE"
            writer.close()
        finally:
            release.set()
            if idle is not None:
                idle[1].close()
            if not slow.done():
                slow.cancel()
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_listener_full_of_idle_connections_still_admits_a_client() -> None:
    """Idle TCP connections from several sources fill the listener; after evict_after a genuine
    TLS-PSK client gets in (the oldest idle one is reset, silently: no handshake-error report);
    a listener full of *established* sessions still refuses."""
    async def main() -> None:
        errors: list[Any] = []

        async def handler(reader: asyncio.StreamReader, writer: TLSStreamWriter) -> None:
            data = await reader.read(4)
            writer.write(data.upper())
            await writer.drain()
            await reader.read()

        gate = ConnectionGate(ConnectionLimits(3, 2), name="test listener", evict_after=0.6)
        server = await start_server(handler, "127.0.0.1", 0, _server_config(), limits=gate,
                                    on_handshake_error=lambda e, p: errors.append((e, p)))
        port = server.sockets[0].getsockname()[1]
        idle = []
        sessions = []
        try:
            for src in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
                idle.append(await _idle_tcp(port, src))
                await _wait_open(gate, len(idle))
            # at once: the handshakes are young, the new one is refused
            r, w = await _idle_tcp(port, "127.0.0.4")
            assert await was_reset(r)
            w.close()
            await asyncio.sleep(0.65)
            assert await _echo_once(port, "127.0.0.4") == b"PING"
            assert gate.evicted == 1
            assert await was_reset(idle[0][0])  # the oldest (127.0.0.1) made room
            assert await _still_open(idle[1][0]) and await _still_open(idle[2][0])
            assert errors == []  # an eviction is not a handshake failure
            await _wait_open(gate, 2)
            # now fill the listener with established sessions: nothing to evict, refused
            for _r, w2 in idle[1:]:
                w2.close()
            await _wait_open(gate, 0)
            for src in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
                sessions.append(await open_connection("127.0.0.1", port, _client_config(),
                                                      local_addr=(src, 0), timeout=5))
            await _wait_open(gate, 3)
            await asyncio.sleep(0.65)
            r, w = await _idle_tcp(port, "127.0.0.4")
            assert await was_reset(r)
            w.close()
            assert gate.evicted == 1
        finally:
            for _r, w in idle + sessions:
                w.close()
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_listeners_of_one_process_share_its_open_file_budget() -> None:
    """Two listeners (say the MEF's TLS port and its crl_port) each under its own limit together
    stop at the process budget; a slot freed on one is usable by the other."""
    budget = ProcessBudget(limit=lambda: 3)
    tls = ConnectionGate(ConnectionLimits(10, 10), name="tls", budget=budget, evict_after=3600)
    crl = ConnectionGate(ConnectionLimits(10, 10), name="crl", budget=budget)
    a1, a2 = tls.admit(("10.0.0.1", 1)), tls.admit(("10.0.0.2", 1))
    assert crl.admit(("10.0.0.3", 1)) == "10.0.0.3"
    assert crl.admit(("10.0.0.4", 1)) is None and crl.refused == 1  # crl's own limit is 10
    assert tls.admit(("10.0.0.5", 1)) is None and budget.open == 3
    assert a1 is not None and a2 is not None
    tls.release(a1)
    assert budget.open == 2 and crl.admit(("10.0.0.4", 1)) == "10.0.0.4"
    # a stale handshake of the admitting listener makes room under a full budget
    now = [0.0]
    hs = ConnectionGate(ConnectionLimits(10, 10), name="hs", budget=ProcessBudget(limit=lambda: 1),
                        clock=lambda: now[0], evict_after=1.0)
    gone: list[int] = []
    hs.handshaking(hs.admit(("10.0.0.1", 1)), lambda: gone.append(1))  # type: ignore[arg-type]
    assert hs.admit(("10.0.0.2", 1)) is None
    now[0] = 2.0
    assert hs.admit(("10.0.0.2", 1)) == "10.0.0.2" and gone == [1] and hs.budget.open == 1


def test_default_process_budget_follows_the_open_file_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = None if soft == resource.RLIM_INFINITY else max(16, soft - 64)
    assert PROCESS_BUDGET.limit() == expected
    assert ConnectionGate().budget is PROCESS_BUDGET
