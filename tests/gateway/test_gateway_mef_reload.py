"""``[mef]`` of gateway.toml put in force on SIGHUP (profile M30, :mod:`m2msec.gateway.mefreload`):
what each change does to the gateway built from the file (in process), and the re-check
schedule of a running gateway when the interval changes.  The whole path (a gateway process
with a wrong MEF PSK, the file fixed, SIGHUP, the AE's next handshake) is
``test_gateway_mef.py::test_sighup_puts_a_fixed_mef_table_in_force``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from _gateway_support import write_config

from m2msec.gateway.app import build
from m2msec.gateway.config import load_config
from m2msec.gateway.server import Gateway
from m2msec.mef.esprimkeys import MEFESPrimKeySource
from m2msec.store import KeyEncryptionKey

PSK = "4d" * 32


def _config(tmp_path: Path, *, port: int = 8444, psk: str = PSK, fqdn: str = "mef.m2m.example.com",
            interval: int = 300, saef: bool = True) -> Path:
    if not (tmp_path / "gateway.kek").exists():
        KeyEncryptionKey.generate().write_file(tmp_path / "gateway.kek")
    extra = (f'\n[mef]\nfqdn = "{fqdn}"\nhost = "127.0.0.1"\nport = {port}\npsk_identity = "cse-psk"\n'
             f'psk_hex = "{psk}"\nrecheck_interval_s = {interval}\n')
    if saef:
        extra += '\n[saef]\nlisten = "127.0.0.1:0"\n'
    return write_config(tmp_path / "gateway.toml", cse_id="id-in", cse_name="cse-in", keys=[], extra=extra)


def test_each_change_of_the_mef_table(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path), cse_url="http://127.0.0.1:1")
    gw, store = build(cfg)
    try:
        binding = gw.mef_binding
        source = binding.users[0]
        assert isinstance(source, MEFESPrimKeySource)
        directory = gw.saef_listener.mef
        first = binding.fetcher
        assert binding.users == [source, directory] and source.fetcher is first and directory.fetcher is first

        def apply(**kw: object) -> tuple[list[str], list[str]]:
            new = load_config(_config(tmp_path, **kw), cse_url="http://127.0.0.1:1")  # type: ignore[arg-type]
            return binding.apply(new.mef, gw)

        assert apply() == ([], [])  # the same table: the same fetcher
        assert binding.fetcher is first
        source._refused.refuse("kid@mef.m2m.example.com", 3600)  # noqa: SLF001 - refused "just now"
        changed, warnings = apply(psk="5e" * 32)  # another PSK (not part of the config's equality)
        assert changed == ["mef reloaded: mef.m2m.example.com at 127.0.0.1:8444 as /id-in"] and warnings == []
        second = binding.fetcher
        assert second is not first and source.fetcher is second and directory.fetcher is second
        assert len(source._refused) == 0  # noqa: SLF001 - asked again with the new connection
        assert second.tls.psk.key == bytes.fromhex("5e" * 32)  # type: ignore[union-attr]
        changed, _ = apply(psk="5e" * 32, port=9444)
        assert changed == ["mef reloaded: mef.m2m.example.com at 127.0.0.1:9444 as /id-in"]
        changed, warnings = apply(psk="5e" * 32, port=9444, fqdn="mef2.m2m.example.com")
        assert changed and len(warnings) == 1 and "no longer re-checked" in warnings[0]
        assert source.fetcher.mef_fqdn == "mef2.m2m.example.com"
        third = binding.fetcher
        changed, warnings = apply(psk="5e" * 32, port=9444, fqdn="mef2.m2m.example.com", interval=60)
        assert changed == ["mef recheck_interval_s now 60"] and binding.fetcher is third
        assert gw.key_recheck_interval == 60
        # removing [mef] needs a restart: the previous one stays
        changed, warnings = binding.apply(None, gw)
        assert changed == [] and "restart" in warnings[0] and binding.config.port == 9444
    finally:
        store.close()


def test_recheck_interval_changes_on_a_running_gateway(tmp_path: Path) -> None:
    passes: list[float] = []

    async def recheck() -> dict[str, int]:
        passes.append(asyncio.get_running_loop().time())
        return {"checked": 0, "valid": 0, "revoked": 0, "unreachable": 0}

    cfg = load_config(_config(tmp_path, saef=False), cse_url="http://127.0.0.1:1")
    gw0, store = build(cfg)
    store.close()

    async def go() -> None:
        gw = Gateway(cse_url="http://127.0.0.1:1", cse_id="id-in", cse_name="cse-in", receiver=gw0.receiver,
                     key_recheck=recheck, key_recheck_interval=3600)
        async def until(count: int) -> None:
            deadline = asyncio.get_running_loop().time() + 10
            while len(passes) < count and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
            assert len(passes) >= count

        async with gw:
            await asyncio.sleep(0.2)
            assert passes == []  # the hour has not passed
            gw.set_key_recheck_interval(0.1)  # wakes the waiting task: the next pass 0.1 s from now
            await until(2)
            gw.set_key_recheck_interval(0)  # no more passes
            await asyncio.sleep(0)
            n = len(passes)
            await asyncio.sleep(0.3)
            assert len(passes) == n
            gw.set_key_recheck_interval(0.1)  # started again
            await until(n + 1)

    asyncio.run(asyncio.wait_for(go(), 20))
