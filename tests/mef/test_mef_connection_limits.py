"""The MEF's listener limits (mef.toml max_connections / max_connections_per_ip) and its bounded
record of failed handshakes, with a real MEF server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path

from _conn_reset import wait_until, was_reset
from _mefhelp import Clock, configure_default, make_state, run

from m2msec.mef import MEFServer
from m2msec.net.connlimits import ConnectionLimits


async def _garbage(host: str, port: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"\x16\x03\x01\x00\x05hello")  # a TLS record header, then nonsense
    await writer.drain()
    try:
        await asyncio.wait_for(reader.read(), 5)  # the alert, then the close
    except ConnectionResetError:
        pass
    writer.close()


def test_mef_resets_connections_over_the_per_ip_limit(tmp_path: Path) -> None:
    clock = Clock()
    state = make_state(tmp_path, clock)
    configure_default(state)
    server = MEFServer(state, limits=ConnectionLimits(8, 1))

    async def main() -> None:
        host, port = await server.start()
        try:
            r1, w1 = await asyncio.open_connection(host, port)  # admitted, waits for TLS
            await wait_until(lambda: server.connections.open == 1, "the first connection to be admitted")
            r2, w2 = await asyncio.open_connection(host, port)
            assert await was_reset(r2)  # reset before any TLS: nothing recorded
            w2.close()
            assert server.connections.refused_per_source == 1
            assert server.handshake_errors == []
            w1.close()
        finally:
            await server.close()

    run(main)


def test_mef_keeps_only_the_latest_handshake_failures(tmp_path: Path) -> None:
    clock = Clock()
    state = make_state(tmp_path, clock)
    configure_default(state)
    server = MEFServer(state, max_records=5)
    appended: list[int] = []

    class Counting(list[BaseException]):
        def append(self, item: BaseException) -> None:
            appended.append(1)
            super().append(item)

    server.handshake_errors = Counting()

    async def main() -> None:
        host, port = await server.start()
        try:
            for _ in range(8):
                await _garbage(host, port)
            await wait_until(lambda: len(appended) == 8, "every failure to be recorded")
            assert len(server.handshake_errors) == 5  # a flood does not grow a long-running MEF
        finally:
            await server.close()

    run(main)
