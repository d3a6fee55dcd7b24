"""MAF-based SAEF (TS-0003 8.2.2.3) over real sockets with a real MAF process.

Entity A registers a SUID-32 key for Entity B (exporter option) and opens a TLS-PSK association
with psk_identity = the Key Identifier; Entity B (an SAEF HTTP server) retrieves Kc from the MAF
during the handshake (:class:`MAFKpsaDirectory`) and binds the context to the Source MAF Client
ID; a oneM2M request over the association is attributed to A.  Rejections: a request whose From
is not A (4106), a non-target's retrieval (4103), a wrong Kc, a key identifier the MAF never
issued, a key of another SUID, and a key whose lifetime is over all fail the handshake.
The same over DTLS, where the listener's prefetch holds the client's datagrams instead.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _mafproc import MAF_FQDN, MAFProcess, utc_now

from m2msec.maf import MAFClient
from m2msec.maf.client import MAFResponseError
from m2msec.maf.keysources import MAFKpsaDirectory, saef_kpsa_entry
from m2msec.onem2m import Operation, RequestPrimitive, ResponsePrimitive, ResponseStatusCode
from m2msec.onem2m.enums import SUID
from m2msec.saef import KpsaEntry, SecurityContext, psk_client, psk_server
from m2msec.saef.framework import connect_dtls, serve_dtls
from m2msec.saef.http import SAEFHTTPClient, SAEFHTTPServer
from m2msec.tls.dtls import DTLSSession
from m2msec.tls.engine import TLSHandshakeError
from m2msec.tls.profiles import Transport

RSC = ResponseStatusCode
A, B, C = "CsaefA", "/id-in-b", "CsaefC"


@pytest.fixture(scope="module")
def maf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MAFProcess]:
    tag = secrets.token_hex(3)
    proc = MAFProcess(tmp_path_factory.mktemp("maf-saef"),
                      {cid: (f"{n}{tag}@{MAF_FQDN}", os.urandom(32)) for n, cid in (("a", A), ("b", B), ("c", C))})

    async def register() -> None:
        for cid in (A, B, C):
            async with MAFClient(proc.client_config(cid)) as c:
                await c.register(utc_now() + timedelta(days=1))

    asyncio.run(asyncio.wait_for(register(), 20))
    yield proc
    proc.stop()


class _Clock:
    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> Any:
        return utc_now() + self.offset


@pytest.mark.parametrize("prefetch", [False, True], ids=["callback-retrieves", "prefetch"])
def test_maf_saef_request_is_attributed_to_entity_a(maf: MAFProcess, prefetch: bool) -> None:
    """``prefetch``: Entity B's listener retrieves before the PSK callback
    (``psk_server(directory, prefetch=directory.prefetch)``): the callback never waits for the MAF."""
    seen: list[tuple[str, str | None]] = []

    async def handler(req: RequestPrimitive, ctx: SecurityContext) -> ResponsePrimitive:
        seen.append((ctx.peer_id, req.fr))
        return ResponsePrimitive(rsc=RSC.OK, rqi=req.rqi, rvi=req.rvi, pc={"m2m:cb": {"csi": B}})

    clock = _Clock()
    directory = MAFKpsaDirectory(maf.client_config(B), clock=clock, negative_ttl=0.0)

    async def main() -> None:
        async with MAFClient(maf.client_config(A)) as a:
            reg = await a.register_key(SUID.MAF_SAEF, [B], utc_now() + timedelta(hours=1))
            await a.connect()  # one exporter key per MAF session
            esprim = await a.register_key(SUID.MAF_ESPRIM, [B], utc_now() + timedelta(hours=1))
        assert reg.key_id.endswith(f"@{MAF_FQDN}")
        server = SAEFHTTPServer(psk_server(directory, id_b=B, prefetch=directory.prefetch if prefetch else None),
                                handler)
        host, port = await server.start()
        try:
            async with await SAEFHTTPClient.connect(psk_client(saef_kpsa_entry(reg, B)), host, port) as client:
                assert client.context.peer_id == B and client.context.psk_identity == reg.key_id
                rsp = await client.send(RequestPrimitive(op=Operation.RETRIEVE, to=B, fr=A, rqi="r1", rvi="3"))
                assert rsp.rsc == RSC.OK and rsp.pc == {"m2m:cb": {"csi": B}}
                # a From that is not the identity the MAF bound to Kc: 4106, the handler never sees it
                rsp = await client.send(RequestPrimitive(op=Operation.RETRIEVE, to=B, fr=C, rqi="r2", rvi="3"))
                assert rsp.rsc == RSC.ORIGINATOR_NOT_AUTHENTICATED
            assert seen == [(A, A)]
            assert server.rejections == [(A, C, int(RSC.ORIGINATOR_NOT_AUTHENTICATED))]
            assert directory.retrievals == 1
            # a second association within the Kc lifetime: no new retrieval
            async with await SAEFHTTPClient.connect(psk_client(saef_kpsa_entry(reg, B)), host, port) as client:
                rsp = await client.send(RequestPrimitive(op=Operation.RETRIEVE, to=B, fr=A, rqi="r3", rvi="3"))
                assert rsp.rsc == RSC.OK
            assert directory.retrievals == 1 and seen[-1] == (A, A)

            refused: list[KpsaEntry] = [
                KpsaEntry(reg.key_id, bytes(32), peer_id=B),  # wrong Kc under the right identity
                KpsaEntry(f"{secrets.token_hex(16)}@{MAF_FQDN}", os.urandom(32), peer_id=B),  # never issued
                KpsaEntry(esprim.key_id, esprim.key, peer_id=B),  # an ESPrim key is not an SAEF key
            ]
            for entry in refused:
                with pytest.raises(TLSHandshakeError):
                    await SAEFHTTPClient.connect(psk_client(entry), host, port, timeout=5)
            # the wrong Kc needed no new retrieval (cached), the other two one each
            assert directory.retrievals == 3
            assert directory.blocking_retrievals == (0 if prefetch else 3)
            assert directory.lookup(refused[1].kpsa_id) is None and directory.lookup(refused[2].kpsa_id) is None
            # Kc Lifetime over: Entity B fails the handshake (8.2.2.3)
            clock.offset = timedelta(hours=2)
            with pytest.raises(TLSHandshakeError):
                await SAEFHTTPClient.connect(psk_client(saef_kpsa_entry(reg, B)), host, port, timeout=5)
            assert len(seen) == 2
        finally:
            await server.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        directory.close()


def test_non_target_cannot_retrieve_the_saef_key(maf: MAFProcess) -> None:
    async def main() -> None:
        async with MAFClient(maf.client_config(A)) as a:
            reg = await a.register_key(SUID.MAF_SAEF, [B], utc_now() + timedelta(hours=1))
        async with MAFClient(maf.client_config(C)) as c:
            with pytest.raises(MAFResponseError) as ei:
                await c.retrieve_key(reg.key_id)
            assert ei.value.rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
        directory = MAFKpsaDirectory(maf.client_config(C), clock=utc_now)
        try:
            assert await asyncio.to_thread(directory.lookup, reg.key_id) is None
        finally:
            directory.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_directory_ignores_other_issuers(tmp_path: Path, maf: MAFProcess) -> None:
    directory = MAFKpsaDirectory(maf.client_config(B), clock=utc_now)
    try:
        assert directory.lookup("00112233445566778899aabbccddeeff@other.example.com") is None
        assert directory.retrievals == 0
        assert "maf.example.com" in repr(directory)
    finally:
        directory.close()


@pytest.mark.parametrize("prefetch", [False, True], ids=["callback-retrieves", "prefetch"])
def test_maf_saef_over_dtls(maf: MAFProcess, prefetch: bool) -> None:
    """The MAF-based SAEF over DTLS (TS-0003 8.2.2.3, 10.2.1): Entity B's DTLS listener retrieves Kc
    for the psk_identity; with ``prefetch`` the retrieval runs while the client's datagrams are held
    and the PSK callback never waits (``blocking_retrievals`` stays 0).  Refused: a wrong Kc, a key
    identifier the MAF never issued."""
    directory = MAFKpsaDirectory(maf.client_config(B), clock=utc_now, negative_ttl=0.0)
    bound: list[SecurityContext] = []

    async def echo(session: DTLSSession, ctx: SecurityContext) -> None:
        bound.append(ctx)
        while data := await session.recv(10):
            session.send(data)

    async def main() -> None:
        async with MAFClient(maf.client_config(A)) as a:
            reg = await a.register_key(SUID.MAF_SAEF, [B], utc_now() + timedelta(hours=1))
        endpoint = psk_server(directory, id_b=B, transport=Transport.DTLS,
                              prefetch=directory.prefetch if prefetch else None)
        server = await serve_dtls(endpoint, echo, handshake_timeout=8)
        host, port = server.sockname
        try:
            entry = saef_kpsa_entry(reg, B)
            session, ctx = await connect_dtls(psk_client(entry, transport=Transport.DTLS), host, port, timeout=8)
            assert ctx.peer_id == B and ctx.psk_identity == reg.key_id
            session.send(b"request from A")
            assert await session.recv(5) == b"request from A"
            session.close()
            assert [c.peer_id for c in bound] == [A]  # Entity B's context: the Source MAF Client ID
            for wrong in (KpsaEntry(reg.key_id, bytes(32), peer_id=B),
                          KpsaEntry(f"{secrets.token_hex(16)}@{MAF_FQDN}", os.urandom(32), peer_id=B)):
                with pytest.raises(TLSHandshakeError):
                    await connect_dtls(psk_client(wrong, transport=Transport.DTLS), host, port, timeout=3)
            assert len(bound) == 1
            assert directory.retrievals == 2  # the wrong Kc found the cached entry
            assert directory.blocking_retrievals == (0 if prefetch else 2)
        finally:
            server.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        directory.close()
