"""Provisioned Symmetric Key SAEF (TS-0003 8.2.2.1) over real TCP/UDP sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from _saefhelp import AE_ABS, IN_ID, MN_ID, run

from m2msec.errors import IdentifierError
from m2msec.saef import (
    KPSA_NAMESPACE,
    InMemoryKpsaDirectory,
    KpsaEntry,
    PeerKind,
    SAEFError,
    StoreKpsaDirectory,
    psk_client,
    psk_server,
)
from m2msec.saef.framework import SAEFEndpoint
from m2msec.store import KeyEncryptionKey, open_store
from m2msec.tls import TLSFailureReason, TLSHandshakeError, Transport
from m2msec.tls.profiles import EXPORTER_CONNECTION

from test_saef_cert import _expect_both_fail, session  # noqa: E402  (shared socket helpers)

KPSA_ID = "ae1-kpsa@sp.m2m.example.com"
KPSA = bytes(range(32))
TRANSPORTS = [Transport.TLS, Transport.DTLS]


def directory() -> InMemoryKpsaDirectory:
    return InMemoryKpsaDirectory([
        KpsaEntry(KPSA_ID, KPSA, peer_id=AE_ABS, peer_kind=PeerKind.AE),
        KpsaEntry("mn-kpsa@sp.m2m.example.com", b"\x01" * 16, peer_id=MN_ID, peer_kind=PeerKind.CSE),
        KpsaEntry("anonymous@sp.m2m.example.com", b"\x02" * 16),
    ])


def client_for(kpsa_id: str, key: bytes, transport: Transport) -> SAEFEndpoint:
    return psk_client(KpsaEntry(kpsa_id, key), id_b=IN_ID, id_a=AE_ABS, transport=transport)


@pytest.mark.parametrize("transport", TRANSPORTS, ids=["tls", "dtls"])
def test_psk_saef_binds_configured_identity(transport: Transport) -> None:
    server = psk_server(directory(), id_b=IN_ID, transport=transport)
    cctx, sctx, echoed = run(lambda: session(client_for(KPSA_ID, KPSA, transport), server))
    assert echoed == b"hello over SAEF"
    assert cctx.peer_id == IN_ID and cctx.psk_identity == KPSA_ID and cctx.framework == "psk"
    assert sctx.peer_id == AE_ABS and sctx.peer_kind is PeerKind.AE and sctx.psk_identity == KPSA_ID
    assert sctx.credential_id == cctx.credential_id == f"12-{KPSA_ID}"
    assert cctx.cipher == sctx.cipher == ("PSK-AES128-CBC-SHA256" if transport is Transport.TLS else "PSK-AES128-CCM8")
    k1, k2 = cctx.export_onem2m_key(EXPORTER_CONNECTION), sctx.export_onem2m_key(EXPORTER_CONNECTION)
    assert k1 == k2 and len(k1[0]) == 32 and len(k1[1]) == 16
    assert sctx.verified_chain == () and "hidden" not in repr(sctx) and KPSA.hex() not in repr(sctx)


def test_psk_without_configured_identity_binds_credential_id() -> None:
    server = psk_server(directory(), id_b=IN_ID)
    _, sctx, _ = run(lambda: session(client_for("anonymous@sp.m2m.example.com", b"\x02" * 16, Transport.TLS), server))
    assert sctx.peer_id == "12-anonymous@sp.m2m.example.com"  # 8.2.2.1 / 10.4 Credential-ID


@pytest.mark.parametrize("transport", TRANSPORTS, ids=["tls", "dtls"])
def test_unknown_kpsa_id(transport: Transport) -> None:
    server = psk_server(directory(), id_b=IN_ID, transport=transport)
    client_err, server_err = _expect_both_fail(client_for("stranger@sp.m2m.example.com", KPSA, transport), server)
    assert isinstance(server_err, TLSHandshakeError) and server_err.reason is TLSFailureReason.UNKNOWN_PSK_IDENTITY
    assert client_err.reason is TLSFailureReason.UNKNOWN_PSK_IDENTITY


def test_wrong_kpsa_tls() -> None:
    server = psk_server(directory(), id_b=IN_ID)
    client_err, server_err = _expect_both_fail(client_for(KPSA_ID, bytes(32), Transport.TLS), server)
    assert isinstance(server_err, TLSHandshakeError) and server_err.reason is TLSFailureReason.PSK_MISMATCH
    assert client_err.reason is TLSFailureReason.PSK_MISMATCH


def test_wrong_kpsa_dtls_times_out_on_both_sides() -> None:
    """DTLS discards records that fail authentication (RFC 6347 4.1.2.7): no alert, both sides time out."""
    server = psk_server(directory(), id_b=IN_ID, transport=Transport.DTLS)
    client_err, server_err = _expect_both_fail(client_for(KPSA_ID, bytes(32), Transport.DTLS), server, timeout=1.5)
    assert isinstance(server_err, TLSHandshakeError) and server_err.reason is TLSFailureReason.TIMEOUT
    assert client_err.reason is TLSFailureReason.TIMEOUT


def test_malformed_kpsa_id_from_client_is_unknown() -> None:
    """An identity that is not a 10.5 KpsaID never reaches the directory."""
    from m2msec.tls import PSKCredentials, Role, TLSConfig

    looked: list[str] = []

    class Spy(InMemoryKpsaDirectory):
        def lookup(self, kpsa_id: str) -> KpsaEntry | None:
            looked.append(kpsa_id)
            return super().lookup(kpsa_id)

    server = psk_server(Spy(), id_b=IN_ID)
    bad = SAEFEndpoint("psk", server.local_role, TLSConfig(role=Role.CLIENT, psk=PSKCredentials(b"no-at-sign", KPSA)),
                       lambda e: None)  # type: ignore[arg-type,return-value]
    _, server_err = _expect_both_fail(bad, server)
    assert isinstance(server_err, TLSHandshakeError) and server_err.reason is TLSFailureReason.UNKNOWN_PSK_IDENTITY
    assert looked == []


def test_store_backed_directory(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'b.db'}", KeyEncryptionKey.generate())
    try:
        d = StoreKpsaDirectory(store)
        d.add(KpsaEntry(KPSA_ID, KPSA, peer_id=AE_ABS, peer_kind=PeerKind.AE))
        cred = store.get_credential(KPSA_NAMESPACE, KPSA_ID)
        assert cred.secret == KPSA and cred.metadata == {"peer_id": AE_ABS, "peer_kind": "AE"}
        server = psk_server(d, id_b=IN_ID)
        _, sctx, _ = run(lambda: session(client_for(KPSA_ID, KPSA, Transport.TLS), server))
        assert sctx.peer_id == AE_ABS
        # deleting the Kpsa revokes it for later handshakes
        store.delete_credential(KPSA_NAMESPACE, KPSA_ID)
        client_err, _ = _expect_both_fail(client_for(KPSA_ID, KPSA, Transport.TLS), server)
        assert client_err.reason is TLSFailureReason.UNKNOWN_PSK_IDENTITY
    finally:
        store.close()


def test_bind_fails_when_kpsa_removed_mid_handshake() -> None:
    d = directory()
    server = psk_server(d, id_b=IN_ID)

    async def go() -> list[BaseException]:
        errors: list[BaseException] = []
        ran: list[Any] = []

        async def handler(*args: Any) -> None:
            ran.append(args)

        from m2msec.saef import connect, serve

        srv = await serve(server, handler, on_error=lambda e, _p: errors.append(e))
        try:
            orig = d.lookup

            def vanish(kid: str) -> KpsaEntry | None:  # first lookup (handshake) succeeds, the bind one fails
                d.lookup = orig  # type: ignore[method-assign]
                d.remove(KPSA_ID)
                return orig(kid) if kid != KPSA_ID else KpsaEntry(KPSA_ID, KPSA)

            d.lookup = vanish  # type: ignore[method-assign]
            _, w_, _ = await connect(client_for(KPSA_ID, KPSA, Transport.TLS), "127.0.0.1",
                                     srv.sockets[0].getsockname()[1])
            for _ in range(50):
                if errors:
                    break
                await asyncio.sleep(0.02)
            w_.close()
        finally:
            srv.close()
        assert not ran
        return errors

    errors = run(go)
    assert len(errors) == 1 and isinstance(errors[0], SAEFError)


def test_kpsa_entry_rules() -> None:
    e = KpsaEntry.from_hex("test@onem2m.com", "123456")
    assert e.kpsa == b"\x12\x34\x56" and "123456" not in repr(e) and "kpsa=" not in repr(e)
    assert KpsaEntry.from_text("test@onem2m.com", "123456").kpsa == b"123456"
    with pytest.raises(IdentifierError):
        KpsaEntry("no-issuer", KPSA)
    with pytest.raises(ValueError):
        KpsaEntry("a@b.example", b"")
    with pytest.raises(ValueError, match="IdB"):
        psk_client(KpsaEntry("a@b.example", KPSA))
