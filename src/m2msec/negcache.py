"""A bounded memory of refused key identifiers (a negative cache).

The Targets that complete their keys from a remote source on first sight - the MEF
(:class:`~m2msec.mef.esprimkeys.MEFESPrimKeySource`, :class:`~m2msec.mef.esdatakeys.MEFESDataKeySource`)
or the MAF (:class:`~m2msec.gateway.esprimmaf.MAFESPrimStoreSource`) - remember an identifier
the source did not provide for a few seconds, so that a stream of messages naming a made-up
identifier costs the source one request per interval, not one per message.  At most
``max_entries`` identifiers are remembered: above that the lapsed ones go first, then the oldest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["RefusalMemory"]

K = TypeVar("K", bound=Hashable)


class RefusalMemory(Generic[K]):
    """Identifier -> the monotonic time until which it counts as refused."""

    def __init__(self, *, max_entries: int = 1000, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self._now = monotonic
        self._until: dict[K, float] = {}

    def __len__(self) -> int:
        return len(self._until)

    def refuse(self, key: K, ttl: float) -> None:
        """``key`` was refused: it counts as refused for ``ttl`` seconds."""
        now = self._now()
        self._until[key] = now + ttl
        if len(self._until) > self.max_entries:
            for k in [k for k, t in self._until.items() if t <= now]:
                del self._until[k]
            while len(self._until) > self.max_entries:
                del self._until[next(iter(self._until))]

    def recent(self, key: K) -> bool:
        """Was ``key`` refused less than its ttl ago?"""
        until = self._until.get(key)
        return until is not None and self._now() < until

    def forget(self, key: K) -> None:
        """``key`` was provided after all."""
        self._until.pop(key, None)

    def clear(self) -> None:
        """Forget every refusal (e.g. the connection to the source changed)."""
        self._until.clear()
