"""Fixtures for the ESPrim Originator/Receiver tests: an injected clock, a provisioned
pairwiseESPrimKey known to both ends, and Receivers on memory or store-backed state."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from m2msec.esprim import (
    MemoryReceiverState,
    Originator,
    PairwiseKey,
    ProvisionedKeySource,
    Receiver,
    ReceiverPolicy,
    StoreKeySource,
    StoreReceiverState,
)
from m2msec.store import KeyEncryptionKey, open_store

from esprim_helpers import KID, ORIGINATOR_ID, RECEIVER_ID, FakeClock



@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def key_bytes() -> bytes:
    return os.urandom(32)


@pytest.fixture
def recv_key(key_bytes: bytes) -> PairwiseKey:
    """The Receiver's view: the key is bound to the Originator's identity."""
    return PairwiseKey(kid=KID, key=key_bytes, peer_id=ORIGINATOR_ID)


@pytest.fixture
def orig_key(key_bytes: bytes) -> PairwiseKey:
    """The Originator's view: the same key, bound to the Receiver."""
    return PairwiseKey(kid=KID, key=key_bytes, peer_id=RECEIVER_ID)


@pytest.fixture
def kek() -> KeyEncryptionKey:
    return KeyEncryptionKey.generate()


@pytest.fixture(params=["memory", "sqlite"])
def state_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_receiver(
    state_kind: str, clock: FakeClock, recv_key: PairwiseKey, tmp_path: Path, kek: KeyEncryptionKey
) -> Iterator[Callable[..., Receiver]]:
    stores: list[Any] = []

    def make(**policy: Any) -> Receiver:
        if state_kind == "memory":
            keys = ProvisionedKeySource([recv_key], clock=clock)
            state: Any = MemoryReceiverState(clock=clock)
        else:
            store = open_store(f"sqlite://{tmp_path}/recv.db", kek, clock=clock)
            stores.append(store)
            src = StoreKeySource(store)
            src.provision(recv_key.kid, recv_key.key, peer_id=recv_key.peer_id, suid=recv_key.suid,
                          expires_at=recv_key.expires_at)
            keys, state = src, StoreReceiverState(store)
        return Receiver(keys=keys, state=state, clock=clock, policy=ReceiverPolicy(**policy))

    yield make
    for s in stores:
        s.close()


@pytest.fixture
def receiver(make_receiver: Callable[..., Receiver]) -> Receiver:
    return make_receiver()


@pytest.fixture
def originator(clock: FakeClock) -> Originator:
    return Originator(clock=clock)


