"""RSPF-provisioned Kpsa on the gateway's SAEF listener (TS-0003 8.3.2.1 "Use of Remotely
Provisioned Credential", 8.2.2.1, 10.3.3, 10.3.7; SUID 22).

An Enrolee that the MEF authorised for (this CSE, SUID 22) derives Kpsa = derive_kpsa(Ke, CSE-ID)
and opens a TLS-PSK association with ``psk_identity`` = its KeID (8.3.2.1: "The Enrolee shall
provide KeID as a symmetric key identifier").  The CSE (Entity B, an Enrolment Target) does not
know the KeID: the listener reads it from the ClientKeyExchange before the TLS engine does
(``psk_server(prefetch=...)``, :mod:`m2msec.tls.pskpeek`) and :meth:`MEFSAEFDirectory.prefetch`
fetches ``/fetchCredentials/<KeID>/22`` from the MEF named by ``[mef]`` on the gateway's event
loop; the synchronous PSK callback then answers from the cache (:meth:`MEFSAEFDirectory.lookup`
never does I/O).

Identity binding: the association is bound to the Enrolee-ID the MEF returns, read as the CSE
reads originators (:func:`~m2msec.gateway.saefmaf.maf_bound_ae_id`: an AE-ID-Stem or SP-relative
AE-ID of this CSE); an Enrolee-ID that is no AE of this CSE (a CSE-ID, another CSE's AE, another
SP's) is refused, as is a KeID the MEF does not serve this CSE (4004 unknown/expired, 4103 not
granted), a lifetime that is over, and a MEF that cannot be reached.  Refusals fail the handshake
(``unknown_psk_identity``) and are remembered for ``negative_ttl`` seconds per KeID; after a
transport failure the MEF is not asked again for ``negative_ttl`` seconds (one WARNING).

Revocation (profile M28): the cached Kpsa is kept until its lifetime (the Enrolment Expiry);
:meth:`MEFSAEFDirectory.recheck` (run with the gateway's ``[mef] recheck_interval_s`` passes)
asks the MEF again about every cached KeID and drops the ones it refuses or gives differently.
The listener checks before each request that the Kpsa its association was accepted with is
still cached and unexpired (:meth:`MEFSAEFDirectory.holds`): a revoked or expired Enrolee's
association is refused (4106, closed) at its next request.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from m2msec.errors import M2MSecError
from m2msec.mef.client import KeyStatus, MEFClientError, MEFKeyFetcher
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.timestamps import Clock
from m2msec.saef.config import KpsaEntry, PeerKind

__all__ = ["MEFSAEFDirectory"]

log = logging.getLogger(__name__)

SUID_KPSA = int(SUID.RSPF_SAEF)  # 22
_MAX_RECORDS = 1000


class MEFSAEFDirectory:
    """Entity B's :class:`~m2msec.saef.config.KpsaDirectory` for KeIDs of ``fetcher.mef_fqdn``
    with an asynchronous :meth:`prefetch`; ``bind(enrolee_id)`` gives the AE-ID to bind (None:
    refuse)."""

    def __init__(self, fetcher: MEFKeyFetcher, *, bind: Callable[[str], str | None], clock: Clock,
                 negative_ttl: float = 5.0) -> None:
        self.fetcher = fetcher
        self.bind = bind
        self._clock = clock
        self.negative_ttl = timedelta(seconds=negative_ttl)
        #: KeID -> (entry, expiry, the Enrolee-ID as the MEF gave it)
        self._cache: dict[str, tuple[KpsaEntry, datetime, str]] = {}
        self._refused: dict[str, datetime] = {}
        self._down_until: datetime | None = None
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self.fetches = 0  # MEF Key Retrievals attempted (observability, tests)
        self.refusals: list[tuple[str, str]] = []  # (psk_identity, reason), the latest _MAX_RECORDS

    def __repr__(self) -> str:
        return f"MEFSAEFDirectory(mef={self.fetcher.mef_fqdn!r}, cached={len(self._cache)})"

    def handles(self, kpsa_id: str) -> bool:
        return self.fetcher.is_ours(kpsa_id)

    # -- the synchronous side (the TLS PSK callback, the binder, the per-request check) ------
    def lookup(self, kpsa_id: str) -> KpsaEntry | None:
        """The cached entry while its lifetime lasts; never does I/O."""
        hit = self._cache.get(kpsa_id)
        if hit is None:
            return None
        if self._clock() >= hit[1]:
            del self._cache[kpsa_id]  # the Enrolment Expiry: a new enrolment is needed
            return None
        return hit[0]

    def holds(self, entry: KpsaEntry) -> bool:
        """``entry`` (what an association was accepted with) is still what the MEF serves."""
        now = self.lookup(entry.kpsa_id)
        return (now is not None and hmac.compare_digest(now.kpsa, entry.kpsa)
                and (now.peer_id, now.peer_kind) == (entry.peer_id, entry.peer_kind))

    # -- the asynchronous side -------------------------------------------------------------
    async def prefetch(self, kpsa_id: str) -> None:
        """Fetch Kpsa for ``kpsa_id`` unless cached, recently refused, or not of this MEF."""
        if not self.handles(kpsa_id) or self.lookup(kpsa_id) is not None:
            return
        now = self._clock()
        until = self._refused.get(kpsa_id)
        if until is not None and now < until:
            return
        if self._down_until is not None and now < self._down_until:
            self._refuse(kpsa_id, "MEF unreachable (backing off)", now)
            return
        task = self._inflight.get(kpsa_id)
        if task is None:  # one fetch per KeID however many handshakes wait for it
            task = asyncio.get_running_loop().create_task(self._fetch(kpsa_id))
            self._inflight[kpsa_id] = task
            task.add_done_callback(lambda _t: self._inflight.pop(kpsa_id, None))
        await asyncio.shield(task)

    async def _fetch(self, kpsa_id: str) -> None:
        self.fetches += 1
        try:
            cred = await self.fetcher.fetch(kpsa_id, SUID_KPSA, fresh=True)
        except MEFClientError as exc:
            self._refuse(kpsa_id, f"the MEF refused the Key Retrieval: {int(exc.rsc)} {exc.rsc.name}")
            return
        except (M2MSecError, OSError, asyncio.TimeoutError) as exc:
            now = self._clock()
            self._down_until = now + self.negative_ttl
            self._refuse(kpsa_id, "MEF unreachable", now)
            log.warning("mef: MEF %s at %s:%d unreachable (%s: %s); psk_identity %s refused, the MEF is not asked "
                        "again for %ss", self.fetcher.mef_fqdn, self.fetcher.host, self.fetcher.port,
                        type(exc).__name__, exc, kpsa_id, self.negative_ttl.total_seconds())
            return
        now = self._clock()
        self._down_until = None
        expires = cred.lifetime if cred.lifetime is not None else now + self.fetcher.max_cache
        if now >= expires:
            self._refuse(kpsa_id, "the Enrolment Expiry has passed", now)
            return
        ae_id = self.bind(cred.enrolee_id) if cred.enrolee_id else None
        if ae_id is None:
            self._refuse(kpsa_id, f"the MEF names Enrolee {cred.enrolee_id!r}, not an AE-ID of this CSE", now)
            return
        entry = KpsaEntry(kpsa_id, cred.key, peer_id=ae_id, peer_kind=PeerKind.AE)
        self._cache[kpsa_id] = (entry, expires, cred.enrolee_id)
        self._refused.pop(kpsa_id, None)
        log.info("mef: Kpsa for %s fetched, bound to %s until %s", kpsa_id, ae_id, expires)

    async def recheck(self, concurrency: int = 4) -> dict[str, int]:
        """Ask the MEF again about every cached KeID (never from the fetcher's cache); drop the
        ones it refuses (4004/4103) or gives with another Kpsa or Enrolee-ID, and refuse them for
        ``negative_ttl``.  No answer keeps the entry.  Returns counts: ``checked``, ``valid``,
        ``revoked``, ``unreachable``."""
        counts = {"checked": 0, "valid": 0, "revoked": 0, "unreachable": 0}
        sem = asyncio.Semaphore(concurrency)

        async def one(kid: str, entry: KpsaEntry, enrolee: str) -> None:
            async with sem:
                status, _cred = await self.fetcher.recheck(kid, SUID_KPSA, entry.kpsa, enrolee_id=enrolee)
            counts["checked"] += 1
            counts[status.value] += 1
            if status is KeyStatus.REVOKED and self._cache.get(kid, (None,))[0] is entry:
                del self._cache[kid]
                self._refuse(kid, "the MEF no longer serves this KeID (re-check)")

        await asyncio.gather(*(one(kid, e, who) for kid, (e, _exp, who) in list(self._cache.items())))
        if counts["unreachable"]:
            log.warning("mef: re-check of SAEF Kpsa: %d of %d KeID(s) not answered; they stay until the next pass",
                        counts["unreachable"], counts["checked"])
        return counts

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
        log.info("mef: no Kpsa for psk_identity %s: %s", kpsa_id, reason)

    async def aclose(self) -> None:
        for t in list(self._inflight.values()):
            t.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)
