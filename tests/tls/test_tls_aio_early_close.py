"""Regression: a server that closes right after the handshake (Finished and close_notify
arrive in one TCP segment) must not make the client report a failed handshake."""

from __future__ import annotations

import asyncio

from m2msec import keys
from m2msec.tls import PSKCredentials, Role, TLSConfig
from m2msec.tls.aio import open_connection, start_server


def test_client_sees_handshake_when_server_closes_at_once() -> None:
    key = bytes(range(32))
    server_export: list[bytes] = []

    async def handler(reader, writer) -> None:  # type: ignore[no-untyped-def]
        server_export.append(writer.engine.export_keying_material(keys.LABEL_BOOTSTRAP, 48))
        writer.close()

    async def main() -> bytes:
        server = await start_server(
            handler, "127.0.0.1", 0, TLSConfig(Role.SERVER, psk_lookup=lambda i, sni: key if i == b"id@x.example" else None)
        )
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await open_connection(
                "127.0.0.1", port, TLSConfig(Role.CLIENT, psk=PSKCredentials(b"id@x.example", key))
            )
            exported = writer.engine.export_keying_material(keys.LABEL_BOOTSTRAP, 48)
            assert await reader.read() == b""  # close_notify, then EOF
            writer.close()
            return exported

    for _ in range(5):  # the race needs both records in one segment; repeat to make that likely
        exported = asyncio.run(asyncio.wait_for(main(), 20))
        assert exported == server_export[-1]
