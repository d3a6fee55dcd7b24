"""Shared set-up for the MAF tests: a store, a MAF service with Km clients, a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from m2msec.maf import AdminConfig, InMemoryMEF, MAFClient, MAFClientConfig, MAFServer, MAFService
from m2msec.store import KeyEncryptionKey, Store, open_store
from m2msec.tls.engine import PSKCredentials

MAF = "maf.example.com"
ADMIN = "sp.example.com"
MEF = "mef.example.com"
AE1, AE2, AE3, AE4 = "//sp.example.com/CAE1", "//sp.example.com/CAE2", "//sp.example.com/CAE3", "//sp.example.com/CAE4"
KMS = {AE1: bytes([1]) * 32, AE2: bytes([2]) * 32, AE3: bytes([3]) * 32, AE4: bytes([4]) * 32}
T = TypeVar("T")


def kmid(client: str) -> str:
    return f"{client.rsplit('/', 1)[-1].lower()}@{MAF}"


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


def make_store(path: Path, clock: FakeClock, kek: KeyEncryptionKey | None = None) -> Store:
    return open_store(f"sqlite:///{path}", kek or KEK, clock=clock)


KEK = KeyEncryptionKey.generate()


def make_service(store: Store, clock: FakeClock, *, mef: InMemoryMEF | None = None,
                 provision: bool = True, **kw: Any) -> MAFService:
    svc = MAFService(store, MAF, admins=[AdminConfig(ADMIN, {"httpPort": 8443}), AdminConfig("other.example.com")],
                     clock=clock, mef=mef, **kw)
    if provision:
        for cid, km in KMS.items():
            svc.add_km_client(kmid(cid), km, client_id=cid)
    return svc


def client_config(port: int, client: str | None = None, *, identity: str | None = None,
                  km: bytes | None = None) -> MAFClientConfig:
    ident = identity or kmid(client or AE1)
    key = km if km is not None else KMS[client or AE1]
    return MAFClientConfig(maf_fqdn=MAF, admin_fqdn=ADMIN, host="127.0.0.1", port=port,
                           psk=PSKCredentials(ident.encode(), key), timeout=5.0)


@asynccontextmanager
async def running(service: MAFService, **kw: Any) -> AsyncIterator[MAFServer]:
    srv = MAFServer(service, **kw)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


@asynccontextmanager
async def connected(port: int, client: str | None = None, **kw: Any) -> AsyncIterator[MAFClient]:
    c = MAFClient(client_config(port, client, **kw))
    await c.connect()
    try:
        yield c
    finally:
        await c.aclose()


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(coro_fn(), 30))  # type: ignore[arg-type]
