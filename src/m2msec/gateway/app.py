"""Assemble a :class:`~m2msec.gateway.server.Gateway` from its configuration: open the
store, provision the configured pairwiseESPrimKeys into it (TS-0003 8.4.2 phase A,
pre-provisioned), and build the CSE's ESPrim Receiver on store-backed state; with
``[saef]``, the (not yet started) SAEF listener of TS-0003 8.2 / 7.2.1 as
``gateway.saef_listener`` (:mod:`m2msec.gateway.saef`; with ``[saef_maf]`` its MAF-based
SAEF Kc source, :mod:`m2msec.gateway.saefmaf`)."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

from m2msec.esprim.keysource import StoreKeySource
from m2msec.esprim.receiver import Receiver, ReceiverPolicy
from m2msec.esprim.state import StoreReceiverState
from m2msec.gateway.config import ConfigError, GatewayConfig
from m2msec.gateway.server import Gateway
from m2msec.store import KeyEncryptionKey, Store, open_store

__all__ = ["build", "utc_now"]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _kek(config: GatewayConfig) -> KeyEncryptionKey:
    if config.kek_file is not None:
        return KeyEncryptionKey.from_file(config.kek_file)
    if os.environ.get("M2MSEC_KEK") or os.environ.get("M2MSEC_KEK_FILE"):
        return KeyEncryptionKey.from_env()
    raise ConfigError("no key-encryption key: set [store] kek_file or $M2MSEC_KEK_FILE / $M2MSEC_KEK")


def build(config: GatewayConfig, *, clock: Any = None, store: Store | None = None) -> tuple[Gateway, Store]:
    if config.cse_url is None:
        raise ConfigError("the CSE URL is missing (--cse or [cse] url)")
    clock = clock or utc_now
    if store is None:
        url = config.store_url or "sqlite://" + os.path.abspath("gateway.db")
        store = open_store(url, _kek(config), clock=clock)
    keys = StoreKeySource(store)
    for k in config.keys:
        keys.provision(k.kid, k.key, peer_id=k.peer, suid=k.suid)
    policy = ReceiverPolicy(
        supported_suids=config.suids,
        shared_lifetime=config.shared_lifetime,
        shared_renew_before=config.shared_lifetime / 24,
        unique_lifetime=config.unique_lifetime,
        unique_key_period=config.unique_key_period,
    )
    source: Any = keys
    prefetch = recheck = fetcher = None
    binding = None
    if config.mef is not None:  # RSPF-provisioned keys (SUID 23) fetched from the MEF on first sight
        from m2msec.gateway.mefreload import MEFBinding, build_fetcher  # noqa: PLC0415
        from m2msec.mef.esprimkeys import MEFESPrimKeySource  # noqa: PLC0415

        fetcher = build_fetcher(config.mef, clock)
        source = MEFESPrimKeySource(fetcher, keys)
        binding = MEFBinding(config.mef, fetcher, clock, users=[source])  # SIGHUP: m2msec.gateway.mefreload
        prefetch, recheck = source.prefetch, source.recheck
    esprim_maf = None
    if config.esprim_maf is not None:  # MAF-based keys (SUID 33) retrieved from the MAF on first sight (G15)
        from m2msec.gateway.esprimmaf import MAFESPrimStoreSource  # noqa: PLC0415

        m = config.esprim_maf
        esprim_maf = MAFESPrimStoreSource(m.client_config(clock), keys, clock=clock, timeout=m.timeout,
                                          negative_ttl=m.negative_ttl, registration_lifetime=m.registration_lifetime,
                                          recheck_interval=m.recheck_interval)
        esprim_maf.settings = m
        if prefetch is None:
            prefetch = esprim_maf.prefetch
        else:
            mef_prefetch, maf_prefetch = prefetch, esprim_maf.prefetch

            async def prefetch_both(kid: str) -> None:  # each source fetches only its own kind of kid
                await mef_prefetch(kid)
                await maf_prefetch(kid)

            prefetch = prefetch_both
    receiver = Receiver(keys=source, state=StoreReceiverState(store, clock=clock), clock=clock, policy=policy)
    gw = Gateway(
        cse_url=config.cse_url, cse_id=config.cse_id, cse_name=config.cse_name, receiver=receiver,
        admin=config.admin, routes=config.routes, poa_ttl=config.poa_ttl, trace_file=config.trace_file,
        key_prefetch=prefetch, enforce_acp=config.enforce_acp, sp_id=config.sp_id, clock=clock,
        require_saef_for=config.saef.require_saef_for if config.saef is not None else (),
        limits=config.connection_limits,
        key_recheck_interval=config.mef.recheck_interval if config.mef is not None else 0.0,
    )
    if config.saef is not None:
        from m2msec.gateway.saef import SAEFListener  # noqa: PLC0415
        from m2msec.gateway.saefmaf import build_directory  # noqa: PLC0415

        maf = mef = None
        if config.saef.maf is not None:  # MAF-based SAEF (8.2.2.3): Kc retrieved from the MAF on first sight of a KcID
            maf = build_directory(config.saef.maf, cse_id=config.cse_id, sp_id=config.sp_id, clock=clock)
        if fetcher is not None:  # RSPF-provisioned Kpsa (8.3.2.1, SUID 22) fetched on first sight of a KeID
            from m2msec.gateway.saefmaf import maf_bound_ae_id  # noqa: PLC0415
            from m2msec.gateway.saefmef import MEFSAEFDirectory  # noqa: PLC0415

            cse_id, sp_id = config.cse_id, config.sp_id
            mef = MEFSAEFDirectory(fetcher, bind=lambda who: maf_bound_ae_id(who, cse_id=cse_id, sp_id=sp_id),
                                   clock=clock)
            assert binding is not None
            binding.users.append(mef)
        # certificate associations with CRL URLs / OCSP get their status sources (8.1.2.2, saefstatus)
        gw.saef_listener = SAEFListener.for_config(gw, config.saef, clock=clock, sp_id=config.sp_id, maf=maf,
                                                   mef=mef)
        if mef is not None:
            assert recheck is not None
            esprim_recheck, saef_recheck = recheck, mef.recheck

            async def recheck_both() -> dict[str, int]:  # one [mef] re-check pass: ESPrim keys, then SAEF Kpsa
                a, b = await esprim_recheck(), await saef_recheck()
                return {k: a[k] + b[k] for k in a}

            recheck = recheck_both
    gw.key_recheck = recheck
    gw.mef_binding = binding
    gw.esprim_maf = esprim_maf
    return gw, store
