"""End-to-End Security of Primitives (ESPrim), TS-0003 8.4 / TS-0004 7.6.2.

* :mod:`m2msec.esprim.jwe` — the ESPrim Object codec (JWE compact, ``dir`` + AES-GCM);
* :mod:`m2msec.esprim.keysource` — phase A, pairwiseESPrimKey sources;
* :mod:`m2msec.esprim.originator` / :mod:`m2msec.esprim.receiver` — phases B and C, sans-I/O;
* :mod:`m2msec.esprim.state` — Receiver state in memory or in :mod:`m2msec.store`;
* :mod:`m2msec.esprim.errors` — one exception per row of TS-0004 table 7.6.2-1.
"""

from __future__ import annotations

from m2msec.esprim.common import ESPRIM_SUIDS, SessionRef
from m2msec.esprim.keysource import (
    ChainKeySource,
    PairwiseKey,
    PairwiseKeySource,
    ProvisionedKeySource,
    StoreKeySource,
)
from m2msec.esprim.originator import (
    ErrorAdvice,
    Originator,
    OriginatorPolicy,
    OriginatorSession,
    PendingResponse,
    RandObjectNeeded,
    SessionReady,
)
from m2msec.esprim.receiver import Receiver, ReceiverPolicy, ResponseContext
from m2msec.esprim.state import MemoryReceiverState, ReceiverState, StoreReceiverState

__all__ = [
    "ESPRIM_SUIDS",
    "ChainKeySource",
    "ErrorAdvice",
    "MemoryReceiverState",
    "Originator",
    "OriginatorPolicy",
    "OriginatorSession",
    "PairwiseKey",
    "PairwiseKeySource",
    "PendingResponse",
    "ProvisionedKeySource",
    "RandObjectNeeded",
    "Receiver",
    "ReceiverPolicy",
    "ReceiverState",
    "ResponseContext",
    "SessionReady",
    "SessionRef",
    "StoreKeySource",
    "StoreReceiverState",
]
