"""RSPF-provisioned ESData keys (SUID 24/25, TS-0003 8.5.2.2.2, 8.3.2.1, 10.3.7) against a real
MEF (own thread): an Enrolee seals and MICs with keys derived from its Ke and named by its KeID;
the Target's MEFESDataKeySource fetches both keys of that one KeID on first sight and resolves
them by usage; a SUID the MEF does not grant, a revoked Enrolee, a wrong key, the lifetime, the
re-check (profile M29), JOSE and XML."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mefhelp import MEF_FQDN, Clock, ThreadedMEF, make_state  # noqa: E402

from m2msec.esdata import Source, Target  # noqa: E402
from m2msec.esdata.credentials import InMemoryKeySource, Usage, resolve_key  # noqa: E402
from m2msec.esdata.errors import DecryptionError, PolicyError, SignatureError, UnknownKidError  # noqa: E402
from m2msec.keys import derive_usage_key  # noqa: E402
from m2msec.mef import EnroleeConfig, MEFKeyFetcher, TargetConfig, TargetGrant, enrol, mef_tls_config  # noqa: E402
from m2msec.mef.client import MEFClientError  # noqa: E402
from m2msec.mef.esdatakeys import MEFESDataKeySource, esdata_recipient, esdata_signer  # noqa: E402
from m2msec.tls.engine import PSKCredentials  # noqa: E402

TGT = "/id-in/Cae-target"  # the ESData Target End-Point (an AE), an Enrolment Target of the MEF
AE_BOTH, AE_ENC, AE_OTHER = "Cae-both", "Cae-enc-only", "Cae-other-target"
PSK = {AE_BOTH: b"b" * 32, AE_ENC: b"e" * 32, AE_OTHER: b"o" * 32}
READING = b'{"temperature": 21.5}'


def _kid_of(name: str) -> str:
    return f"kpm-{name}"


@pytest.fixture
def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    clock = Clock()
    state = make_state(tmp_path, clock)
    grants = {AE_BOTH: (TargetGrant(TGT, (24, 25)),), AE_ENC: (TargetGrant(TGT, (24,)),),
              AE_OTHER: (TargetGrant("/id-in/Cae-someone-else", (24, 25)),)}
    for ae, targets in grants.items():
        state.add_enrolee(EnroleeConfig(ae, kpm_id=_kid_of(ae), targets=targets), kpm=PSK[ae])
    state.add_target(TargetConfig(TGT, psk_id="target"), psk=b"t" * 32)
    with ThreadedMEF(state) as mef:
        yield clock, state, mef


def _source(mef: ThreadedMEF, clock: Clock, port: int | None = None) -> MEFESDataKeySource:
    f = MEFKeyFetcher(mef.host, port or mef.port, mef_tls_config(psk=PSKCredentials(b"target", b"t" * 32)),
                      target_id=TGT, mef_fqdn=MEF_FQDN, clock=clock, timeout=2.0)
    return MEFESDataKeySource(f)


async def _enrol(mef: ThreadedMEF, ae: str):  # type: ignore[no-untyped-def]
    return await enrol(mef.host, mef.port, mef_tls_config(psk=PSKCredentials(_kid_of(ae).encode(), PSK[ae])))


def test_source_side_keys_are_the_usage_constrained_derivations() -> None:
    ke, kid = os.urandom(32), "ab" * 16 + "@" + MEF_FQDN
    r, s = esdata_recipient(ke, kid, TGT), esdata_signer(ke, kid, TGT)
    assert (r.kid, r.suid, r.key) == (kid, 24, derive_usage_key(ke, 24, TGT))
    assert (s.kid, s.suid, s.key) == (kid, 25, derive_usage_key(ke, 25, TGT))
    assert r.key != s.key and r.key != derive_usage_key(ke, 24, "/id-in/Cae-other")
    assert ke.hex() not in repr(r) + repr(s) and r.key.hex() not in repr(r)
    with pytest.raises(ValueError):  # noqa: PT011 - not hexBinary(RelativeKeID)@FQDN
        esdata_recipient(ke, "not-a-keid", TGT)


def test_both_keys_of_one_keid_are_fetched_and_picked_by_usage(world) -> None:  # type: ignore[no-untyped-def]
    """Encryption-only (SUID 24) and Signature-only MIC (SUID 25) envelopes under one KeID (nested
    sign-then-encrypt signs with certificates only, 8.5.3.4): the Target fetches both keys at
    first sight, picks each by usage and knows the Enrolee; JOSE compact, JSON and XML."""
    clock, _state, mef = world

    async def main() -> None:
        e = await _enrol(mef, AE_BOTH)
        src = _source(mef, clock)
        target = Target(src)
        for serialization in ("compact", "json", "xml"):
            env = Source().seal(READING, serialization=serialization, recipients=[esdata_recipient(e.ke, e.ke_id, TGT)])
            opened = await src.open(target, env)
            assert opened.payload == READING and opened.decrypted_with == e.ke_id
        for serialization in ("json", "xml"):
            env = Source().seal(READING, serialization=serialization, signers=[esdata_signer(e.ke, e.ke_id, TGT)])
            opened = await src.open(target, env)
            assert opened.payload == READING and [s.kid for s in opened.signatures] == [e.ke_id]
        assert src.fetcher.fetches == 2  # /fetchCredentials/<KeID>/24 and /25, once each
        assert src.enrolee_id(e.ke_id) == AE_BOTH
        assert resolve_key(src, e.ke_id, Usage.ENCRYPT).suid == 24
        assert resolve_key(src, e.ke_id, Usage.SIGN).suid == 25
        # the keys are the MEF's derivations for this Target
        assert resolve_key(src, e.ke_id, Usage.ENCRYPT).key == derive_usage_key(e.ke, 24, TGT)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_refusals(world) -> None:  # type: ignore[no-untyped-def]
    clock, state, mef = world

    async def main() -> None:
        enc_only = await _enrol(mef, AE_ENC)
        other = await _enrol(mef, AE_OTHER)
        both = await _enrol(mef, AE_BOTH)
        src = _source(mef, clock)
        target = Target(src)
        # the MEF grants this Target SUID 24 only: encryption opens, a MIC under the KeID does not
        sealed = Source().seal(READING, serialization="compact", recipients=[esdata_recipient(enc_only.ke, enc_only.ke_id, TGT)])
        assert (await src.open(target, sealed)).payload == READING
        signed = Source().seal(READING, serialization="json", signers=[esdata_signer(enc_only.ke, enc_only.ke_id, TGT)])
        with pytest.raises(UnknownKidError) as ei:
            await src.open(target, signed)
        assert ei.value.kids == (enc_only.ke_id,)
        # an Enrolee whose grant names another Target: the MEF refuses both SUIDs (4103)
        foreign = Source().seal(READING, serialization="compact", recipients=[esdata_recipient(other.ke, other.ke_id, TGT)])
        with pytest.raises(UnknownKidError):
            await src.open(target, foreign)
        n = src.fetcher.fetches
        with pytest.raises(UnknownKidError, match="just now"):  # refused a moment ago: not asked again
            await src.fetch(other.ke_id, 24)
        assert src.fetcher.fetches == n and src.errors
        with pytest.raises(MEFClientError) as mi:  # another Target instance asks: the MEF's refusal
            await _source(mef, clock).fetch(other.ke_id, 24)
        assert int(mi.value.rsc) == 4103
        # a wrong key under a valid KeID (the Enrolee derived for another Target): no decryption
        wrong = Source().seal(READING, serialization="compact",
                              recipients=[esdata_recipient(both.ke, both.ke_id, "/id-in/Cae-else")])
        with pytest.raises(DecryptionError):
            await src.open(target, wrong)
        bad_mic = Source().seal(READING, serialization="json", signers=[esdata_signer(both.ke, both.ke_id, "/id-in/Cae-else")])
        with pytest.raises(SignatureError):
            await src.open(target, bad_mic)
        # the encryption key cannot stand in for the MIC key: a MIC made with the SUID-24 key fails
        swapped = Source().seal(READING, serialization="json", signers=[
            esdata_signer(both.ke, both.ke_id, TGT).__class__(kid=both.ke_id, key=derive_usage_key(both.ke, 24, TGT),
                                                               alg="HS256", suid=25)])
        with pytest.raises(SignatureError):
            await src.open(target, swapped)
        # a KeID of another MEF, a garbled one: never fetched
        fetches = src.fetcher.fetches
        for kid in ("cd" * 16 + "@other-mef.example.com", "garbage"):
            env = Source().seal(READING, serialization="compact",
                                recipients=[esdata_recipient(both.ke, "cd" * 16 + "@other-mef.example.com", TGT)])
            with pytest.raises(UnknownKidError):
                await src.open(target, env)
            with pytest.raises(UnknownKidError):
                await src.fetch(kid, 24)
        assert src.fetcher.fetches == fetches
        with pytest.raises(ValueError):  # noqa: PT011
            await src.fetch(both.ke_id, 23)
        # a key the source does not hold for the usage asked
        with pytest.raises(UnknownKidError):
            src.resolve_usage(enc_only.ke_id, Usage.SIGN)
        assert state is not None

    asyncio.run(asyncio.wait_for(main(), 60))


def test_lifetime_and_recheck(world) -> None:  # type: ignore[no-untyped-def]
    """Keys are held until the MEF's lifetime; recheck (profile M29) forgets a revoked Enrolee's
    keys at once, keeps the others; an unreachable MEF changes nothing."""
    clock, state, mef = world

    async def main() -> None:
        a = await _enrol(mef, AE_BOTH)
        b = await _enrol(mef, AE_ENC)
        src = _source(mef, clock)
        target = Target(src)
        env_a = Source().seal(READING, serialization="compact", recipients=[esdata_recipient(a.ke, a.ke_id, TGT)])
        env_b = Source().seal(READING, serialization="compact", recipients=[esdata_recipient(b.ke, b.ke_id, TGT)])
        await src.fetch_all([a.ke_id, b.ke_id])
        assert src.fetcher.fetches == 4  # a: 24, 25; b: 24 (25 refused, skipped)
        assert target.open(env_a).payload == READING and target.open(env_b).payload == READING
        assert await src.recheck() == {"checked": 3, "valid": 3, "revoked": 0, "unreachable": 0}

        state.revoke_enrolee(AE_BOTH)  # `m2msec mef enrolee revoke`
        down = MEFESDataKeySource(_source(mef, clock, port=_dead_port()).fetcher)
        down._held = dict(src._held)  # noqa: SLF001 - the same keys, a MEF that does not answer
        assert await down.recheck() == {"checked": 3, "valid": 0, "revoked": 0, "unreachable": 3}
        assert await src.recheck() == {"checked": 3, "valid": 1, "revoked": 2, "unreachable": 0}
        with pytest.raises(UnknownKidError):
            target.open(env_a)  # forgotten: the next envelope under the KeID is unknown ...
        with pytest.raises(UnknownKidError):
            await src.open(target, env_a)  # ... and the MEF refuses to give it again
        assert src.enrolee_id(a.ke_id) is None and target.open(env_b).payload == READING

        # past the MEF's lifetime the key is dropped and fetched again on demand
        held = src._held[(b.ke_id, 24)]  # noqa: SLF001
        assert held.lifetime is not None
        clock.now = held.lifetime + timedelta(seconds=1)
        with pytest.raises(UnknownKidError):
            target.open(env_b)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_resolve_key_falls_back_to_resolve() -> None:
    """Sources without resolve_usage are asked resolve(kid); the usage check stays the caller's."""
    mem = InMemoryKeySource()
    mem.add_symmetric("k1", os.urandom(32), suid=14)
    assert resolve_key(mem, "k1", Usage.SIGN).suid == 14
    env = Source().seal(READING, serialization="json", signers=[
        esdata_signer(os.urandom(32), "ab" * 16 + "@" + MEF_FQDN, TGT).__class__(kid="k1", key=os.urandom(32),
                                                                                 alg="HS256", suid=15)])
    with pytest.raises(PolicyError):  # k1 is an encryption key: it never checks a MIC
        Target(mem).open(env)


def _dead_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
