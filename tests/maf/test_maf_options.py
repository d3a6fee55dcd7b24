"""MAF-based options: ESData for three targets (SUID 34/35), ESPrim key source (33), SAEF PSK (32)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from _mafhelp import AE1, AE2, AE3, AE4, FakeClock, connected, make_service, make_store, run, running

from m2msec.esdata.api import Source, Target
from m2msec.esdata.errors import ESDataError
from m2msec.esprim.errors import UnknownKeyID
from m2msec.keys import derive_maf_pairwise_esprim_key, maf_esdata_key
from m2msec.maf.keysources import (
    MAFESDataKeySource,
    MAFESPrimKeySource,
    esdata_recipient,
    esdata_signer,
    esprim_originator_key,
    is_maf_key_id,
    saef_kpsa_entry,
)
from m2msec.onem2m.enums import SUID
from m2msec.saef import InMemoryKpsaDirectory, connect, psk_client, psk_server, serve


@pytest.fixture()
def env(tmp_path: Path):
    clock = FakeClock()
    store = make_store(tmp_path / "maf.db", clock)
    svc = make_service(store, clock)
    yield clock, store, svc
    store.close()


def test_reserved_string_derivations() -> None:
    kc = bytes(range(32))
    assert derive_maf_pairwise_esprim_key(kc) == hmac.new(kc, b"oneM2M MAF pairwiseESPrimKey", hashlib.sha256).digest()
    assert maf_esdata_key(kc, 34) == kc[:16] and maf_esdata_key(kc, 35) == kc
    with pytest.raises(ValueError):
        maf_esdata_key(kc, 33)
    with pytest.raises(ValueError):
        derive_maf_pairwise_esprim_key(kc[:16])


def test_esdata_envelope_for_three_targets(env) -> None:
    clock, store, svc = env
    payload = b'{"temperature": 21.5}'

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as src, connected(srv.port, AE2) as t2, \
                connected(srv.port, AE3) as t3, connected(srv.port, AE4) as t4:
            for c in (src, t2, t3, t4):
                await c.register(clock.now + timedelta(days=1))
            enc = await src.register_key(SUID.MAF_ESDATA_ENCRYPT, [AE2, AE3, AE4], clock.now + timedelta(hours=1))
            envelope = Source().seal(payload, serialization=1, recipients=[esdata_recipient(enc)],
                                     content_type="application/json")
            for t in (t2, t3, t4):
                ks = MAFESDataKeySource(t)
                await ks.fetch(enc.key_id)
                assert Target(ks).open(envelope).payload == payload
            # a client that is not a target cannot get the key
            outsider = MAFESDataKeySource(src)
            with pytest.raises(Exception) as ei:
                await outsider.fetch(enc.key_id)
            assert getattr(ei.value, "rsc", None) == 4103
            # a target that has not fetched cannot open
            with pytest.raises(ESDataError):
                Target(MAFESDataKeySource(t2)).open(envelope)
            # MIC with a SUID-35 key, two targets (a fresh MAF Handshake: one exporter key per session)
            await src.connect()
            sig = await src.register_key(SUID.MAF_ESDATA_SIGN, [AE2, AE3], clock.now + timedelta(hours=1))
            signed = Source().seal(payload, serialization=1, signers=[esdata_signer(sig)])
            ks3 = MAFESDataKeySource(t3)
            await ks3.fetch(sig.key_id)
            assert Target(ks3).open(signed).payload == payload
            # an encryption key cannot be used as a signing key
            with pytest.raises(Exception):
                esdata_signer(enc)

    run(main)


def test_esdata_targets_retrieve_on_demand(env) -> None:
    """Issue #6: "Targets retrieve on demand" - a Target opens an envelope without fetching first;
    the keys of other Targets it names are refused by the MAF and skipped."""
    clock, store, svc = env
    payload = b'{"alarm": "door open"}'

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as src, connected(srv.port, AE2) as t2, \
                connected(srv.port, AE3) as t3, connected(srv.port, AE4) as t4:
            for c in (src, t2, t3, t4):
                await c.register(clock.now + timedelta(days=1))
            exp = clock.now + timedelta(hours=1)
            for_t2 = await src.register_key(SUID.MAF_ESDATA_ENCRYPT, [AE2], exp)
            await src.connect()  # one exporter key per MAF Handshake
            for_t3 = await src.register_key(SUID.MAF_ESDATA_ENCRYPT, [AE3], exp)
            await src.connect()
            mic = await src.register_key(SUID.MAF_ESDATA_SIGN, [AE2, AE3], exp)
            # encrypted for two Targets with different keys; a MIC (SUID 35) for both
            envelope = Source().seal(payload, serialization="json",
                                     recipients=[esdata_recipient(for_t2), esdata_recipient(for_t3)])
            signed = Source().seal(payload, serialization=1, signers=[esdata_signer(mic)])
            for t, own in ((t2, for_t2), (t3, for_t3)):
                ks = MAFESDataKeySource(t)
                assert (await ks.open(Target(ks), envelope)).payload == payload
                assert ks.resolve(own.key_id)  # fetched on demand
                assert (await ks.open(Target(ks), signed)).payload == payload
                assert ks.resolve(mic.key_id)
                with pytest.raises(ESDataError):
                    ks.resolve((for_t3 if own is for_t2 else for_t2).key_id)  # the other Target's key: refused
            # a client that is no Target of any key: every retrieval refused -> unknown kid
            ks4 = MAFESDataKeySource(t4)
            with pytest.raises(ESDataError) as ei:
                await ks4.open(Target(ks4), envelope)
            assert set(ei.value.kids) == {for_t2.key_id, for_t3.key_id}  # type: ignore[attr-defined]

    run(main)


def test_esprim_key_source(env) -> None:
    clock, store, svc = env

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as orig, connected(srv.port, AE2) as recv, \
                connected(srv.port, AE3) as other:
            for c in (orig, recv, other):
                await c.register(clock.now + timedelta(days=1))
            reg = await orig.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + timedelta(hours=1))
            okey = esprim_originator_key(reg, AE2)
            assert okey.kid == reg.key_id and okey.key == derive_maf_pairwise_esprim_key(reg.key)
            src = MAFESPrimKeySource(recv, clock=clock)
            assert src.handles(reg.key_id) and not src.handles("abc@maf.example.com")
            with pytest.raises(UnknownKeyID):
                src.resolve(reg.key_id)  # not fetched yet
            rkey = await src.fetch(reg.key_id)
            assert rkey.key == okey.key and rkey.peer_id == AE1 and rkey.suid is SUID.MAF_ESPRIM
            assert rkey.expires_at == clock.now + timedelta(hours=1)
            assert src.resolve(reg.key_id) == rkey
            with pytest.raises(UnknownKeyID):
                await MAFESPrimKeySource(other, clock=clock).fetch(reg.key_id)  # not the target
            # an ESData key is not accepted as an ESPrim key
            ed = await orig.register_key(SUID.MAF_ESDATA_ENCRYPT, [AE2], clock.now + timedelta(hours=1),
                                         key_value=bytes(32))
            with pytest.raises(Exception) as ei:
                await src.fetch(ed.key_id)
            assert getattr(ei.value, "rsc", None) == 4102
            clock.advance(hours=2)
            with pytest.raises(UnknownKeyID):
                src.resolve(reg.key_id)  # pairwiseESPrimKeyLifetime = Kc lifetime

    run(main)


def test_saef_with_maf_key_as_psk(env) -> None:
    """A registered SUID-32 key works as the PSK of m2msec.saef.psk_client/psk_server (8.2.2.3)."""
    clock, store, svc = env

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as a, connected(srv.port, AE2) as b:
            for c in (a, b):
                await c.register(clock.now + timedelta(days=1))
            reg = await a.register_key(SUID.MAF_SAEF, [AE2], clock.now + timedelta(hours=1))
            got = await b.retrieve_key(reg.key_id)
            assert is_maf_key_id(reg.key_id, "maf.example.com")
            server_ep = psk_server(InMemoryKpsaDirectory([saef_kpsa_entry(got, AE1)]), id_b=AE2)
            seen: list[str] = []

            async def handler(reader, writer, ctx) -> None:  # type: ignore[no-untyped-def]
                seen.append(ctx.peer_id)
                writer.write(await reader.readexactly(5))
                await writer.drain()

            saef_srv = await serve(server_ep, handler)
            port = saef_srv.sockets[0].getsockname()[1]
            try:
                reader, writer, ctx = await connect(psk_client(saef_kpsa_entry(reg, AE2)), "127.0.0.1", port)
                assert ctx.peer_id == AE2 and ctx.psk_identity == reg.key_id
                writer.write(b"hello")
                assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
                writer.close()
                assert seen == [AE1]
                # a different key under the same identity fails the handshake
                from m2msec.saef import KpsaEntry
                from m2msec.tls.engine import TLSHandshakeError
                with pytest.raises(TLSHandshakeError):
                    await connect(psk_client(KpsaEntry(reg.key_id, bytes(32), peer_id=AE2)), "127.0.0.1", port)
            finally:
                saef_srv.close()
                await saef_srv.wait_closed()

    run(main)


def test_esprim_exchange_with_a_maf_key(env) -> None:
    """ESPrim phase A by the MAF option end to end: the Originator registers Kc (SUID 33), protects a
    request; the Receiver peeks the kid, fetches Kc from the MAF on first sight and opens it."""
    from m2msec.esprim import MemoryReceiverState, Originator, Receiver, ReceiverPolicy, SessionReady
    from m2msec.esprim.errors import ESPrimError
    from m2msec.onem2m import Operation, RequestPrimitive

    clock, store, svc = env

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as orig_c, connected(srv.port, AE2) as recv_c:
            for c in (orig_c, recv_c):
                await c.register(clock.now + timedelta(days=1))
            reg = await orig_c.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + timedelta(hours=1))
            keys = MAFESPrimKeySource(recv_c, clock=clock)
            receiver = Receiver(keys=keys, state=MemoryReceiverState(clock=clock), clock=clock,
                                policy=ReceiverPolicy(supported_suids=(SUID.MAF_ESPRIM,)))
            originator = Originator(clock=clock)
            step = originator.start(esprim_originator_key(reg, AE2), receiver.e2e_sec_info())
            assert isinstance(step, SessionReady)
            req = RequestPrimitive(op=Operation.RETRIEVE, to="/id-in/CAE2/cnt", fr=AE1, rqi="r1", rvi="3")
            obj, _pending = originator.protect_request(req, step.session)
            kid = Receiver.peek(obj).kid
            assert kid == reg.key_id
            with pytest.raises(ESPrimError):  # not yet fetched: unknown key id
                receiver.open_request(obj, outer_from=AE1)
            await keys.fetch(kid)
            got, _ctx = receiver.open_request(obj, outer_from=AE1)
            assert got.rqet is not None and replace(got, rqet=None) == req  # + the sealed rqet (R11)
            # impersonation: the key is bound to the Source MAF Client AE1
            req2 = RequestPrimitive(op=Operation.RETRIEVE, to="/id-in/CAE2/cnt", fr=AE3, rqi="r2", rvi="3")
            obj2, _ = originator.protect_request(req2, step.session)
            with pytest.raises(ESPrimError) as ei:
                receiver.open_request(obj2, outer_from=AE3)
            assert int(ei.value.rsc) == 4116

    run(main)


def test_targets_recheck_forgets_revoked_keys(env) -> None:
    """Profile F17 for library Targets: ``recheck()`` of the MAF ESPrim and ESData key sources asks
    the MAF again about every cached key; after ``maf revoke`` (admin) of one key it is forgotten
    (ESPrim: 4112 from then on; ESData: the envelope under it no longer opens), the others stay."""
    clock, store, svc = env
    payload = b"reading"

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as src, connected(srv.port, AE2) as tgt:
            for c in (src, tgt):
                await c.register(clock.now + timedelta(days=1))
            until = clock.now + timedelta(hours=1)
            ep1 = await src.register_key(SUID.MAF_ESPRIM, [AE2], until)
            ep2 = await src.register_key(SUID.MAF_ESPRIM, [AE2], until, key_value=os.urandom(32))
            ed = await src.register_key(SUID.MAF_ESDATA_ENCRYPT, [AE2], until, key_value=os.urandom(32))
            esprim = MAFESPrimKeySource(tgt, clock=clock)
            for reg in (ep1, ep2):
                await esprim.fetch(reg.key_id)
            esdata = MAFESDataKeySource(tgt)
            envelope = Source().seal(payload, serialization="compact", recipients=[esdata_recipient(ed)])
            assert (await esdata.open(Target(esdata), envelope)).payload == payload
            assert await esprim.recheck() == {"checked": 2, "valid": 2, "revoked": 0, "unreachable": 0}
            assert await esdata.recheck() == {"checked": 1, "valid": 1, "revoked": 0, "unreachable": 0}
            svc.revoke_key(ep1.key_id)  # `m2msec maf revoke`
            svc.revoke_key(ed.key_id)
            assert await esprim.recheck() == {"checked": 2, "valid": 1, "revoked": 1, "unreachable": 0}
            assert await esdata.recheck() == {"checked": 1, "valid": 0, "revoked": 1, "unreachable": 0}
            with pytest.raises(UnknownKeyID):
                esprim.resolve(ep1.key_id)
            assert esprim.resolve(ep2.key_id).kid == ep2.key_id
            with pytest.raises(ESDataError):
                Target(esdata).open(envelope)

    run(main)
