"""The MAF's listener limits (maf.toml max_connections / max_connections_per_ip) and the rate of
audit records for failed MAF Handshakes, with a real MAF server and real clients on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _conn_reset import wait_until, was_reset
from _mafhelp import AE1, FakeClock, connected, make_service, make_store, run, running

from m2msec.maf import MAFService
from m2msec.maf.server import HANDSHAKE_AUDIT_RATE, HandshakeAuditThrottle
from m2msec.net.connlimits import ConnectionLimits


def _handshake_rows(service: MAFService) -> list[Any]:
    return [e for e in service.store.list_audit(limit=None, actor="maf", newest_first=False) if e.action == "handshake"]


async def _garbage_handshake(port: int) -> None:
    """A TCP client that sends no TLS at all: the MAF Handshake fails at once."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: maf\r\n\r\n")
    await writer.drain()
    try:
        await asyncio.wait_for(reader.read(), 5)  # the alert, then the close
    except ConnectionResetError:
        pass
    writer.close()


def test_throttle_bucket() -> None:
    now = [0.0]
    t = HandshakeAuditThrottle(rate=10, clock=lambda: now[0])
    assert [t.take() for _ in range(10)] == [0] * 10  # a burst of 10 is written
    assert [t.take() for _ in range(5)] == [None] * 5  # then counted
    now[0] += 0.1  # one token back
    assert t.take() == 5  # the record written says how many were left out before it
    assert t.take() is None
    now[0] += 100  # refills to the burst, not beyond
    assert [t.take() for _ in range(10)] == [1] + [0] * 9
    assert t.take() is None


def test_connections_over_the_per_ip_limit_are_reset_unaudited_and_clients_still_served(tmp_path: Path) -> None:
    clock = FakeClock()
    svc = make_service(make_store(tmp_path / "maf.db", clock), clock)

    async def main() -> None:
        async with running(svc, limits=ConnectionLimits(10, 2)) as srv:
            gate = srv.connections
            idle_r, idle_w = await asyncio.open_connection("127.0.0.1", srv.port)  # one idle, admitted
            await wait_until(lambda: gate.open == 1, "the idle connection to be admitted")
            async with connected(srv.port, AE1) as client:  # the second slot: a real MAF Client
                assert gate.open == 2
                r, w = await asyncio.open_connection("127.0.0.1", srv.port)  # a third: reset, no TLS
                assert await was_reset(r)
                w.close()
                assert gate.refused_per_source == 1
                # the authenticated client is unaffected: it registers and reads its configuration
                await client.register(clock() + timedelta(days=1))
                assert (await client.retrieve_configuration())["httpPort"] == 8443
            assert _handshake_rows(svc) == []  # the reset connection left no audit record
            idle_w.close()
            await wait_until(lambda: len(_handshake_rows(svc)) == 1, "the idle connection's handshake record")
            row = _handshake_rows(svc)[0]
            assert row.outcome == "refused" and "not_audited_before" not in row.details

    run(main)


def test_failed_handshakes_are_audited_at_a_bounded_rate_and_the_gap_is_reported(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="m2msec.maf.server")
    clock = FakeClock()
    svc = make_service(make_store(tmp_path / "maf.db", clock), clock)
    now = [0.0]

    async def main() -> None:
        async with running(svc) as srv:
            srv._handshake_audit = HandshakeAuditThrottle(clock=lambda: now[0])  # frozen: no refill
            for _ in range(25):
                await _garbage_handshake(srv.port)
            await wait_until(lambda: srv._handshake_audit.left_out == 25 - int(HANDSHAKE_AUDIT_RATE),
                        "every failure to be counted")
            rows = _handshake_rows(svc)
            assert len(rows) == int(HANDSHAKE_AUDIT_RATE)  # a flood writes at most the burst
            now[0] += 1.0
            await _garbage_handshake(srv.port)
            await wait_until(lambda: len(_handshake_rows(svc)) == len(rows) + 1, "the next record")
            last = _handshake_rows(svc)[-1]
            assert last.details["not_audited_before"] == 15
            assert last.subject == "127.0.0.1" and last.outcome == "refused"
            # the INFO lines follow the same bucket: 10 lines for the flood, the next one counts the gap
            lines = [r.getMessage() for r in caplog.records if "MAF Handshake with" in r.getMessage()]
            assert len(lines) == int(HANDSHAKE_AUDIT_RATE) + 1
            assert lines[-1].endswith("(15 earlier failures not logged or audited)")

    run(main)
