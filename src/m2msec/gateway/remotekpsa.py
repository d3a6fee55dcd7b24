"""What the gateway's two network sources of TLS-PSK keys share (TS-0003 8.2.2.3, 8.3.2.1).

The MAF-based SAEF (:class:`~m2msec.gateway.saefmaf.MAFSAEFDirectory`, Kc from the MAF) and
RSPF-provisioned Kpsa (:class:`~m2msec.gateway.saefmef.MEFSAEFDirectory`, Kpsa from the MEF)
answer the synchronous PSK callback from a cache (:meth:`RemoteKpsaDirectory.lookup`, no I/O)
that :meth:`RemoteKpsaDirectory.prefetch` fills on the event loop before the callback runs:
one fetch per identifier however many handshakes wait for it; a refused identifier is not
asked about again for ``negative_ttl``; after a transport failure the source is not asked at
all for ``negative_ttl`` (one WARNING per failure).  An entry lives until its lifetime, or until
:meth:`RemoteKpsaDirectory.recheck` finds that the source no longer serves it (a revoked key:
:meth:`RemoteKpsaDirectory.holds` is then False, and the listener ends the associations that
were accepted with it at their next request).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime, timedelta

from m2msec.mef.client import KeyStatus
from m2msec.onem2m.timestamps import Clock
from m2msec.saef.config import KpsaEntry

__all__ = ["RemoteKpsaDirectory"]

_MAX_RECORDS = 1000


class RemoteKpsaDirectory(ABC):
    """Cache, refusal memory and single-flight fetching; subclasses give :meth:`handles`,
    :meth:`_fetch` (which ends in :meth:`_accept`, :meth:`_refuse` or :meth:`_unreachable`) and
    the names in the log lines (``_prefix``, ``_key``, ``_source``)."""

    _prefix = "remote"  # the configuration table, first word of every log line
    _key = "key"  # what is fetched (Kc, Kpsa)
    _source = "source"  # who is asked (MAF, MEF)
    _log = logging.getLogger(__name__)  # subclasses log through their module's logger

    def __init__(self, *, bind: Callable[[str], str | None], clock: Clock, negative_ttl: float) -> None:
        self.bind = bind
        self._clock = clock
        self.negative_ttl = timedelta(seconds=negative_ttl)
        self._cache: dict[str, tuple[KpsaEntry, datetime]] = {}
        self._refused: dict[str, datetime] = {}
        self._down_until: datetime | None = None
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self.refusals: list[tuple[str, str]] = []  # (psk_identity, reason), the latest _MAX_RECORDS

    @abstractmethod
    def handles(self, kpsa_id: str) -> bool:
        """Is ``kpsa_id`` an identifier of this source (a KeID of its MEF, a Key Identifier of its MAF)?"""

    @abstractmethod
    async def _fetch(self, kpsa_id: str) -> None:
        """Obtain the key for ``kpsa_id``, ending in :meth:`_accept`, :meth:`_refuse` or :meth:`_unreachable`."""

    @abstractmethod
    async def _ask_again(self, kpsa_id: str, entry: KpsaEntry) -> KeyStatus:
        """Ask the source now (no cache) whether it still gives ``entry``: VALID (a changed
        lifetime is put in the cache), REVOKED (refused, or another key or identity), UNREACHABLE."""

    def holds(self, entry: KpsaEntry) -> bool:
        """``entry`` (what an association was accepted with) is still what the source serves:
        cached, within its lifetime, the same key and the same bound identity."""
        now = self.lookup(entry.kpsa_id)
        return (now is not None and hmac.compare_digest(now.kpsa, entry.kpsa)
                and (now.peer_id, now.peer_kind) == (entry.peer_id, entry.peer_kind))

    async def recheck(self, concurrency: int = 4) -> dict[str, int]:
        """Ask the source again about every cached identifier (:meth:`_ask_again`, at most
        ``concurrency`` at a time); drop the ones it no longer serves and refuse them for
        ``negative_ttl``.  No answer keeps the entry.  Returns counts: ``checked``, ``valid``,
        ``revoked``, ``unreachable``."""
        counts = {"checked": 0, "valid": 0, "revoked": 0, "unreachable": 0}
        sem = asyncio.Semaphore(concurrency)

        async def one(kid: str, entry: KpsaEntry) -> None:
            async with sem:
                status = await self._ask_again(kid, entry)
            counts["checked"] += 1
            counts[status.value] += 1
            if status is KeyStatus.REVOKED and self._cache.get(kid, (None,))[0] is entry:
                del self._cache[kid]
                self._refuse(kid, f"the {self._source} no longer serves this {self._key} (re-check)")

        await asyncio.gather(*(one(kid, e) for kid, (e, _exp) in list(self._cache.items())))
        if counts["unreachable"]:
            self._log.warning("%s: re-check: %d of %d %s(s) not answered; they stay until the next pass",
                              self._prefix, counts["unreachable"], counts["checked"], self._key)
        return counts

    def _relifetime(self, kpsa_id: str, entry: KpsaEntry, expires: datetime) -> None:
        """The source now gives ``entry`` another lifetime: the cached one follows."""
        hit = self._cache.get(kpsa_id)
        if hit is not None and hit[0] is entry and hit[1] != expires:
            self._cache[kpsa_id] = (entry, expires)

    # -- the synchronous side (the TLS PSK callback, the binder) ------------------------------
    def lookup(self, kpsa_id: str) -> KpsaEntry | None:
        """The cached entry while its lifetime lasts; never does I/O."""
        hit = self._cache.get(kpsa_id)
        if hit is None:
            return None
        if self._clock() >= hit[1]:
            del self._cache[kpsa_id]  # its lifetime is over: the handshake fails (8.2.2.3)
            return None
        return hit[0]

    # -- the asynchronous side ----------------------------------------------------------------
    async def prefetch(self, kpsa_id: str) -> None:
        """Fetch the key for ``kpsa_id`` unless cached, recently refused, or not this source's."""
        if not self.handles(kpsa_id) or self.lookup(kpsa_id) is not None:
            return
        now = self._clock()
        until = self._refused.get(kpsa_id)
        if until is not None and now < until:
            return
        if self._down_until is not None and now < self._down_until:
            self._refuse(kpsa_id, f"{self._source} unreachable (backing off)", now)
            return
        task = self._inflight.get(kpsa_id)
        if task is None:  # one fetch per identifier however many handshakes wait for it
            task = asyncio.get_running_loop().create_task(self._fetch(kpsa_id))
            self._inflight[kpsa_id] = task
            task.add_done_callback(lambda _t: self._inflight.pop(kpsa_id, None))
        await asyncio.shield(task)

    def forget_refusals(self) -> None:
        """Ask the source again at once about every key identifier (its connection changed)."""
        self._refused.clear()
        self._down_until = None

    def _accept(self, entry: KpsaEntry, expires: datetime) -> None:
        self._cache[entry.kpsa_id] = (entry, expires)
        self._refused.pop(entry.kpsa_id, None)
        self._down_until = None
        self._log.info("%s: %s for %s obtained, bound to %s until %s", self._prefix, self._key, entry.kpsa_id,
                 entry.peer_id, expires)

    def _unreachable(self, kpsa_id: str, exc: BaseException, where: str) -> None:
        now = self._clock()
        self._down_until = now + self.negative_ttl
        self._refuse(kpsa_id, f"{self._source} unreachable", now)
        self._log.warning("%s: %s %s unreachable (%s: %s); psk_identity %s refused, the %s is not asked again for %ss",
                    self._prefix, self._source, where, type(exc).__name__, exc, kpsa_id, self._source,
                    self.negative_ttl.total_seconds())

    def _refuse(self, kpsa_id: str, reason: str, now: datetime | None = None) -> None:
        now = now or self._clock()
        self._refused[kpsa_id] = now + self.negative_ttl
        if len(self._refused) > _MAX_RECORDS:  # drop the lapsed ones, then the oldest
            for k in [k for k, t in self._refused.items() if t <= now]:
                del self._refused[k]
            while len(self._refused) > _MAX_RECORDS:
                del self._refused[next(iter(self._refused))]
        self.refusals.append((kpsa_id, reason))
        del self.refusals[:-_MAX_RECORDS]
        self._log.info("%s: no %s for psk_identity %s: %s", self._prefix, self._key, kpsa_id, reason)
