"""Shared fixtures for the MEF tests: a store-backed MEF on 127.0.0.1 with a mutable clock."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from m2msec.mef import EnroleeConfig, MEFServer, MEFState, TargetConfig, TargetGrant
from m2msec.store import KeyEncryptionKey, open_store

MEF_FQDN = "mef.m2m.example.com"
ENROLEE = "/id-in/Cdevice1"
ENROLEE_B = "//m2m.example.com/id-in/CenroleeB"
KPM_ID = "kpm-device1@mef.m2m.example.com"
KPM = bytes.fromhex("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")
B_PSK_ID = "target-b"
B_PSK = bytes(range(32))


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class MEF:
    state: MEFState
    server: MEFServer
    clock: Clock
    host: str
    port: int


def make_state(tmp: Path, clock: Clock, anchors: tuple[Any, ...] = ()) -> MEFState:
    store = open_store(f"sqlite:///{tmp / 'mef.db'}", KeyEncryptionKey(os.urandom(32)), clock=clock)
    return MEFState(store, MEF_FQDN, clock, tuple(anchors))


def configure_default(state: MEFState, *, token_required: bool = False, expiry: int = 3600) -> None:
    state.add_enrolee(EnroleeConfig(ENROLEE, kpm_id=KPM_ID, targets=(TargetGrant(ENROLEE_B, (22, 23)),),
                                    expiry_seconds=expiry, token_required=token_required), kpm=KPM)
    state.add_target(TargetConfig(ENROLEE_B, psk_id=B_PSK_ID), psk=B_PSK)


def run(fn: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(fn(), timeout)

    return asyncio.run(main())


class ThreadedMEF:
    """An MEFServer on its own event loop thread (so a synchronous PSK callback may call it)."""

    def __init__(self, state: MEFState, **kw: Any) -> None:
        import threading

        self.state = state
        self.server = MEFServer(state, **kw)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadedMEF:
        self.thread.start()
        self.host, self.port = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
