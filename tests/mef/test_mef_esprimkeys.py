"""MEFESPrimKeySource against a real MEF (own thread): first-sight fetch (async prefetch and the
blocking resolve fallback), binding to the Enrolee-ID, refusals -> UnknownKeyID (4112); the
gateway's [mef] configuration table."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mefhelp import MEF_FQDN, Clock, ThreadedMEF, make_state  # noqa: E402

from m2msec.esprim.errors import UnknownKeyID  # noqa: E402
from m2msec.esprim.keysource import StoreKeySource  # noqa: E402
from m2msec.gateway.config import ConfigError, load_config  # noqa: E402
from m2msec.keys import derive_usage_key  # noqa: E402
from m2msec.mef import EnroleeConfig, MEFKeyFetcher, TargetConfig, TargetGrant, enrol, mef_tls_config  # noqa: E402
from m2msec.mef.esprimkeys import MEFESPrimKeySource  # noqa: E402
from m2msec.onem2m.enums import SUID  # noqa: E402
from m2msec.store import KeyEncryptionKey, open_store  # noqa: E402
from m2msec.tls.engine import PSKCredentials  # noqa: E402

CSE = "/id-in"
AE, AE_NOGRANT = "Cae-esprim", "Cae-nogrant"


def test_first_sight_fetch_binds_the_enrolee(tmp_path: Path) -> None:
    clock = Clock()
    state = make_state(tmp_path, clock)
    state.add_enrolee(EnroleeConfig(AE, kpm_id="kpm-a", targets=(TargetGrant(CSE, (23,)),)), kpm=b"a" * 32)
    state.add_enrolee(EnroleeConfig(AE_NOGRANT, kpm_id="kpm-b", targets=(TargetGrant("/id-other", (23,)),)),
                      kpm=b"b" * 32)
    state.add_target(TargetConfig(CSE, psk_id="cse"), psk=b"c" * 32)
    gw_store = open_store(f"sqlite:///{tmp_path / 'gw.db'}", KeyEncryptionKey.generate(), clock=clock)
    with ThreadedMEF(state) as mef:
        def source() -> MEFESPrimKeySource:
            f = MEFKeyFetcher(mef.host, mef.port, mef_tls_config(psk=PSKCredentials(b"cse", b"c" * 32)),
                              target_id=CSE, mef_fqdn=MEF_FQDN, clock=clock)
            return MEFESPrimKeySource(f, StoreKeySource(gw_store))

        async def main() -> tuple[str, bytes, str]:
            e = await enrol(mef.host, mef.port, mef_tls_config(psk=PSKCredentials(b"kpm-a", b"a" * 32)))
            n = await enrol(mef.host, mef.port, mef_tls_config(psk=PSKCredentials(b"kpm-b", b"b" * 32)))
            src = source()
            src.negative_ttl = 1.0  # (default 5 s) so that the lapse below is quick
            await src.prefetch(e.ke_id)
            assert src.fetcher.fetches == 1
            await src.prefetch(e.ke_id)  # already in the store: no second fetch
            assert src.fetcher.fetches == 1
            await src.prefetch(n.ke_id)  # MEF refuses (no grant for this CSE): swallowed, Receiver says 4112
            assert src.errors and src.fetcher.fetches == 2
            await src.prefetch(n.ke_id)  # refused just now: not asked again within negative_ttl
            with pytest.raises(UnknownKeyID):
                src.resolve(n.ke_id)
            assert src.fetcher.fetches == 2 and len(src.errors) == 1
            await asyncio.sleep(src.negative_ttl + 0.05)
            await src.prefetch(n.ke_id)  # the refusal lapsed: asked again, refused again
            assert src.fetcher.fetches == 3 and len(src.errors) == 2
            await src.prefetch("ab" * 16 + "@other-mef.example.com")  # not ours: not fetched
            assert src.fetcher.fetches == 3
            return e.ke_id, e.ke, n.ke_id

        kid, ke, refused = asyncio.run(asyncio.wait_for(main(), 30))
        pk = StoreKeySource(gw_store).resolve(kid)
        assert pk.key == derive_usage_key(ke, 23, CSE) and pk.peer_id == AE and pk.suid == SUID.RSPF_ESPRIM
        assert pk.expires_at is not None
        # the blocking fallback of a fresh instance on an empty store namespace
        fresh = MEFESPrimKeySource(MEFKeyFetcher(mef.host, mef.port, mef_tls_config(psk=PSKCredentials(b"cse", b"c" * 32)),
                                                 target_id=CSE, mef_fqdn=MEF_FQDN, clock=clock),
                                   StoreKeySource(gw_store, namespace="other"))
        assert fresh.resolve(kid).key == pk.key and fresh.fetcher.fetches == 1
        with pytest.raises(UnknownKeyID):
            fresh.resolve(refused)
        with pytest.raises(UnknownKeyID):
            fresh.resolve("cd" * 16 + "@" + MEF_FQDN)  # never issued
        with pytest.raises(UnknownKeyID):
            fresh.resolve("not-a-keid")
    gw_store.close()


def test_gateway_mef_table(tmp_path: Path) -> None:
    base = '[cse]\nid = "id-in"\nname = "cse-in"\n'
    p = tmp_path / "gateway.toml"
    p.write_text(base + '[mef]\nfqdn = "mef.example.com"\nport = 8444\npsk_identity = "cse"\npsk_hex = "' + "ab" * 32 + '"\n')
    cfg = load_config(p)
    assert cfg.mef is not None and cfg.mef.target_id == "/id-in" and cfg.mef.psk == bytes.fromhex("ab" * 32)
    assert "ab" * 8 not in repr(cfg.mef) and "ab" * 8 not in repr(cfg)
    (tmp_path / "mef.psk").write_bytes(os.urandom(32))
    p.write_text(base + '[mef]\nfqdn = "m.example"\nport = 1\npsk_identity = "x"\npsk_file = "mef.psk"\ntarget_id = "/cse-x"\n')
    assert load_config(p).mef.target_id == "/cse-x"  # type: ignore[union-attr]
    for bad in ('[mef]\nfqdn = "m"\nport = 1\npsk_identity = "x"\n',  # no PSK
                '[mef]\nfqdn = "m"\nport = "1"\npsk_identity = "x"\npsk_hex = "00"\n',  # port not an integer
                '[mef]\nport = 1\npsk_identity = "x"\npsk_hex = "00"\n'):  # no fqdn
        p.write_text(base + bad)
        with pytest.raises(ConfigError):
            load_config(p)


def test_recheck_drops_what_the_mef_no_longer_serves(tmp_path: Path) -> None:
    """MEFESPrimKeySource.recheck (profile M27) against a real MEF: valid keys stay; a revoked
    Enrolee's key, a key that is not the MEF's (another value, another Enrolee-ID) are deleted with
    an audit record; a lifetime that is not the MEF's is corrected; keys of other MEFs and other
    SUIDs are never asked about; an unreachable MEF changes nothing."""
    clock = Clock()
    state = make_state(tmp_path, clock)
    ae2 = "Cae-second"
    for ae, kpm_id, kpm in ((AE, "kpm-a", b"a" * 32), (ae2, "kpm-2", b"2" * 32)):
        state.add_enrolee(EnroleeConfig(ae, kpm_id=kpm_id, targets=(TargetGrant(CSE, (23,)),)), kpm=kpm)
    state.add_target(TargetConfig(CSE, psk_id="cse"), psk=b"c" * 32)
    gw_store = open_store(f"sqlite:///{tmp_path / 'gw.db'}", KeyEncryptionKey.generate(), clock=clock)
    local = StoreKeySource(gw_store)
    other_mef = local.provision("ef" * 16 + "@other-mef.example.com", os.urandom(32), peer_id="Cx", suid=23)
    preprovisioned = local.provision("kid-13", os.urandom(32), peer_id="Cy", suid=13)
    with ThreadedMEF(state) as mef:
        def fetcher(port: int) -> MEFKeyFetcher:
            return MEFKeyFetcher(mef.host, port, mef_tls_config(psk=PSKCredentials(b"cse", b"c" * 32)),
                                 target_id=CSE, mef_fqdn=MEF_FQDN, clock=clock, timeout=2.0)

        src = MEFESPrimKeySource(fetcher(mef.port), local)

        async def main() -> tuple[str, str]:
            e = await enrol(mef.host, mef.port, mef_tls_config(psk=PSKCredentials(b"kpm-a", b"a" * 32)))
            e2 = await enrol(mef.host, mef.port, mef_tls_config(psk=PSKCredentials(b"kpm-2", b"2" * 32)))
            for kid in (e.ke_id, e2.ke_id):
                await src.prefetch(kid)
            fetches = src.fetcher.fetches
            assert await src.recheck() == {"checked": 2, "valid": 2, "revoked": 0, "unreachable": 0}
            assert src.fetcher.fetches == fetches + 2  # asked the MEF, not the fetcher's cache

            state.revoke_enrolee(AE)  # `m2msec mef enrolee revoke`
            assert await src.recheck() == {"checked": 2, "valid": 1, "revoked": 1, "unreachable": 0}
            with pytest.raises(UnknownKeyID):
                local.resolve(e.ke_id)
            await src.prefetch(e.ke_id)  # first sight again: the MEF refuses, nothing comes back
            with pytest.raises(UnknownKeyID):
                src.resolve(e.ke_id)

            # the stored key is not the one the MEF gives (another value, then another Enrolee-ID):
            # deleted; the next first sight stores the MEF's key again
            good = local.resolve(e2.ke_id)
            for bad in (dict(key=os.urandom(32), peer_id=ae2), dict(key=good.key, peer_id="Cimpostor")):
                local.provision(e2.ke_id, suid=23, expires_at=good.expires_at, **bad)  # type: ignore[arg-type]
                assert await src.recheck() == {"checked": 1, "valid": 0, "revoked": 1, "unreachable": 0}
                with pytest.raises(UnknownKeyID):
                    local.resolve(e2.ke_id)
                await src.prefetch(e2.ke_id)
                assert local.resolve(e2.ke_id).key == good.key and local.resolve(e2.ke_id).peer_id == ae2

            # the stored lifetime is not the MEF's: the MEF's replaces it (the key stays)
            assert good.expires_at is not None
            local.provision(e2.ke_id, good.key, peer_id=ae2, suid=23, expires_at=good.expires_at + timedelta(days=1))
            assert await src.recheck() == {"checked": 1, "valid": 1, "revoked": 0, "unreachable": 0}
            assert local.resolve(e2.ke_id).expires_at == good.expires_at

            # the MEF does not answer: the key stays
            down = MEFESPrimKeySource(fetcher(_dead_port()), local)
            assert await down.recheck() == {"checked": 1, "valid": 0, "revoked": 0, "unreachable": 1}
            assert local.resolve(e2.ke_id).key == good.key
            return e.ke_id, e2.ke_id

        revoked_kid, kept_kid = asyncio.run(asyncio.wait_for(main(), 60))
    # never asked about: another MEF's KeID, a SUID-13 key
    assert local.resolve(other_mef.kid).key == other_mef.key
    assert local.resolve(preprovisioned.kid).key == preprovisioned.key
    audit = [a for a in gw_store.list_audit(actor="gateway", newest_first=False) if a.action == "mef-revoked"]
    assert [(a.subject, a.details["kid"]) for a in audit] == [(AE, revoked_kid), (ae2, kept_kid), ("Cimpostor", kept_kid)]
    assert audit[0].details["reason"] == "the MEF refused the KeID"
    assert audit[1].details["reason"] == "the MEF gave another key or Enrolee-ID"
    gw_store.close()


def _dead_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_gateway_mef_recheck_interval(tmp_path: Path) -> None:
    base = ('[cse]\nid = "id-in"\nname = "cse-in"\n[mef]\nfqdn = "m.example"\nport = 1\npsk_identity = "x"\n'
            'psk_hex = "' + "ab" * 32 + '"\n')
    p = tmp_path / "gateway.toml"
    p.write_text(base)
    assert load_config(p).mef.recheck_interval == 300  # type: ignore[union-attr]
    for ok, want in (("0", 0.0), ("10", 10.0), ("86400", 86400.0), ("12.5", 12.5)):
        p.write_text(base + f"recheck_interval_s = {ok}\n")
        assert load_config(p).mef.recheck_interval == want  # type: ignore[union-attr]
    for bad in ("5", "-1", "86401", "true", '"300"'):
        p.write_text(base + f"recheck_interval_s = {bad}\n")
        with pytest.raises(ConfigError, match="recheck_interval_s"):
            load_config(p)
