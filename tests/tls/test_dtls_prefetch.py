"""DTLS ``psk_prefetch`` over real UDP sockets on 127.0.0.1 (m2msec.tls.dtls; TS-0003 8.2.2.3).

The server reads the client's psk_identity from its datagrams, awaits ``psk_prefetch`` while
the datagrams are held, and only then lets the engine's synchronous PSK callback look the key
up - which then finds what the prefetch put in place.  Meanwhile the event loop serves other
sessions; a failing or too slow prefetch fails that handshake only.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest

from m2msec.tls import (
    PSKCredentials,
    Role,
    TLSConfig,
    TLSFailureReason,
    TLSHandshakeError,
    Transport,
)
from m2msec.tls.dtls import (
    HELD_DATAGRAMS_MAX,
    DTLSSession,
    open_dtls_connection,
    start_dtls_server,
)

SLOW = b"slow@maf.example.com"  # its key "arrives" after a delay
FAST = b"fast@sp.example.com"  # configured locally: no prefetch needed
BROKEN = b"broken@maf.example.com"  # the prefetch raises
NEVER = b"never@maf.example.com"  # the prefetch outlasts the handshake timeout


def client(ident: bytes, key: bytes) -> TLSConfig:
    return TLSConfig(Role.CLIENT, Transport.DTLS, psk=PSKCredentials(ident, key))


class Keys:
    """The server's key store: ``lookup`` is the synchronous PSK callback, ``prefetch`` fills it."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.local = {FAST: os.urandom(32)}
        self.remote = {SLOW: os.urandom(32), BROKEN: os.urandom(32), NEVER: os.urandom(32)}
        self.fetched: dict[bytes, bytes] = {}
        self.prefetches: list[bytes] = []
        self.lookups: list[tuple[bytes, bool]] = []  # (identity, key present)

    def lookup(self, identity: bytes, _sni: str | None) -> bytes | None:
        key = self.local.get(identity) or self.fetched.get(identity)
        self.lookups.append((identity, key is not None))
        return key

    def prefetch(self, identity: bytes) -> Any:
        if identity in self.local:
            return None  # nothing to fetch: the datagrams go straight to the engine
        self.prefetches.append(identity)

        async def fetch() -> None:
            if identity == BROKEN:
                raise OSError("the key server is unreachable")
            await asyncio.sleep(60 if identity == NEVER else self.delay)
            self.fetched[identity] = self.remote[identity]

        return fetch()

    def server(self) -> TLSConfig:
        return TLSConfig(Role.SERVER, Transport.DTLS, psk_lookup=self.lookup, psk_prefetch=self.prefetch)


async def echo(session: DTLSSession) -> None:
    while data := await session.recv(10):
        session.send(data)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


async def _roundtrip(session: DTLSSession, data: bytes) -> None:
    session.send(data)
    assert await session.recv(5) == data


def test_prefetch_runs_before_the_psk_callback_and_the_loop_keeps_serving() -> None:
    keys = Keys(delay=3.0)

    async def main() -> None:
        server = await start_dtls_server(echo, "127.0.0.1", 0, keys.server(), handshake_timeout=8)
        host, port = server.sockname
        try:
            slow = asyncio.create_task(open_dtls_connection(host, port, client(SLOW, keys.remote[SLOW]), timeout=8))
            while not keys.prefetches:
                await asyncio.sleep(0.01)
            # while the slow identity's key is being fetched, another client completes its handshake
            # and a round trip: the server's event loop is not waiting in a PSK callback
            t0 = time.monotonic()
            fast = await open_dtls_connection(host, port, client(FAST, keys.local[FAST]), timeout=5)
            await _roundtrip(fast, b"ping")
            assert time.monotonic() - t0 < 2.5 and not slow.done()
            s = await slow
            await _roundtrip(s, b"pong")
            # the callback was asked once for the slow identity, after the fetch: it found the key
            assert keys.prefetches == [SLOW]
            assert (SLOW, True) in keys.lookups and (SLOW, False) not in keys.lookups
            assert (FAST, True) in keys.lookups
            fast.close()
            s.close()
        finally:
            server.close()

    run(main())


def test_failed_prefetch_fails_that_handshake_only() -> None:
    keys = Keys(delay=0.0)

    async def main() -> None:
        server = await start_dtls_server(echo, "127.0.0.1", 0, keys.server(), handshake_timeout=5)
        host, port = server.sockname
        try:
            with pytest.raises(TLSHandshakeError) as ei:
                await open_dtls_connection(host, port, client(BROKEN, keys.remote[BROKEN]), timeout=5)
            assert ei.value.reason is TLSFailureReason.UNKNOWN_PSK_IDENTITY
            assert keys.lookups == [(BROKEN, False)]
            # the server goes on: a fetched key and a local key both work
            for ident, key in ((SLOW, keys.remote[SLOW]), (FAST, keys.local[FAST])):
                s = await open_dtls_connection(host, port, client(ident, key), timeout=5)
                await _roundtrip(s, ident)
                s.close()
        finally:
            server.close()

    run(main())


def test_wrong_key_after_a_prefetch_fails() -> None:
    keys = Keys(delay=0.1)

    async def main() -> None:
        server = await start_dtls_server(echo, "127.0.0.1", 0, keys.server(), handshake_timeout=3)
        host, port = server.sockname
        try:
            with pytest.raises(TLSHandshakeError):
                await open_dtls_connection(host, port, client(SLOW, os.urandom(32)), timeout=3)
            assert keys.prefetches == [SLOW] and keys.lookups == [(SLOW, True)]
        finally:
            server.close()

    run(main())


def test_prefetch_outlasting_the_handshake_timeout_ends_the_session() -> None:
    keys = Keys(delay=0.0)

    async def main() -> None:
        server = await start_dtls_server(echo, "127.0.0.1", 0, keys.server(), handshake_timeout=1.0)
        host, port = server.sockname
        try:
            with pytest.raises(TLSHandshakeError):
                await open_dtls_connection(host, port, client(NEVER, keys.remote[NEVER]), timeout=2.5)
            assert keys.prefetches == [NEVER]
            assert keys.lookups == []  # the engine never got the held datagrams
            await asyncio.sleep(0.1)
            assert server.sessions == {}  # forgotten, its prefetch task cancelled
        finally:
            server.close()

    run(main())


def test_held_datagrams_are_bounded() -> None:
    """A client that keeps sending while its key is fetched: at most HELD_DATAGRAMS_MAX are kept."""
    keys = Keys(delay=0.5)

    async def main() -> None:
        server = await start_dtls_server(echo, "127.0.0.1", 0, keys.server(), handshake_timeout=5)
        host, port = server.sockname
        try:
            slow = asyncio.create_task(open_dtls_connection(host, port, client(SLOW, keys.remote[SLOW]), timeout=5))
            while not keys.prefetches:
                await asyncio.sleep(0.01)
            (session,) = server.sessions.values()
            for _ in range(3 * HELD_DATAGRAMS_MAX):
                session.datagram_received(b"\x17\xfe\xfd" + bytes(30))  # junk the engine will drop
            assert session._held is not None and len(session._held) == HELD_DATAGRAMS_MAX
            s = await slow  # the real flight was held first: the handshake completes
            await _roundtrip(s, b"after")
            s.close()
        finally:
            server.close()

    run(main())
