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
import logging
from collections.abc import Callable

from m2msec.errors import M2MSecError
from m2msec.gateway.remotekpsa import RemoteKpsaDirectory
from m2msec.mef.client import KeyStatus, MEFClientError, MEFKeyFetcher
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.timestamps import Clock
from m2msec.saef.config import KpsaEntry, PeerKind

__all__ = ["MEFSAEFDirectory"]

log = logging.getLogger(__name__)

SUID_KPSA = int(SUID.RSPF_SAEF)  # 22


class MEFSAEFDirectory(RemoteKpsaDirectory):
    """Entity B's :class:`~m2msec.saef.config.KpsaDirectory` for KeIDs of ``fetcher.mef_fqdn``
    with an asynchronous :meth:`prefetch`; ``bind(enrolee_id)`` gives the AE-ID to bind (None:
    refuse)."""

    _prefix, _key, _source, _log = "mef", "Kpsa", "MEF", log

    def __init__(self, fetcher: MEFKeyFetcher, *, bind: Callable[[str], str | None], clock: Clock,
                 negative_ttl: float = 5.0) -> None:
        super().__init__(bind=bind, clock=clock, negative_ttl=negative_ttl)
        self.fetcher = fetcher
        self._enrolee: dict[str, str] = {}  # KeID -> the Enrolee-ID as the MEF gave it (for re-checks)
        self.fetches = 0  # MEF Key Retrievals attempted (observability, tests)

    def __repr__(self) -> str:
        return f"MEFSAEFDirectory(mef={self.fetcher.mef_fqdn!r}, cached={len(self._cache)})"

    def handles(self, kpsa_id: str) -> bool:
        return self.fetcher.is_ours(kpsa_id)

    async def _fetch(self, kpsa_id: str) -> None:
        """One MEF Key Retrieval (``/fetchCredentials/<KeID>/22``) for the handshakes waiting on it."""
        self.fetches += 1
        try:
            cred = await self.fetcher.fetch(kpsa_id, SUID_KPSA, fresh=True)
        except MEFClientError as exc:
            self._refuse(kpsa_id, f"the MEF refused the Key Retrieval: {int(exc.rsc)} {exc.rsc.name}")
            return
        except (TimeoutError, M2MSecError, OSError) as exc:
            f = self.fetcher
            self._unreachable(kpsa_id, exc, f"{f.mef_fqdn} at {f.host}:{f.port}")
            return
        now = self._clock()
        expires = cred.lifetime if cred.lifetime is not None else now + self.fetcher.max_cache
        if now >= expires:
            self._refuse(kpsa_id, "the Enrolment Expiry has passed", now)
            return
        ae_id = self.bind(cred.enrolee_id) if cred.enrolee_id else None
        if ae_id is None:
            self._refuse(kpsa_id, f"the MEF names Enrolee {cred.enrolee_id!r}, not an AE-ID of this CSE", now)
            return
        self._enrolee[kpsa_id] = cred.enrolee_id
        self._accept(KpsaEntry(kpsa_id, cred.key, peer_id=ae_id, peer_kind=PeerKind.AE), expires)

    async def recheck(self, concurrency: int = 4) -> dict[str, int]:
        """Ask the MEF again about every cached KeID (never from the fetcher's cache); drop the
        ones it refuses (4004/4103) or gives with another Kpsa or Enrolee-ID, and refuse them for
        ``negative_ttl``.  No answer keeps the entry.  Returns counts: ``checked``, ``valid``,
        ``revoked``, ``unreachable``."""
        for kid in [k for k in self._enrolee if k not in self._cache]:
            del self._enrolee[kid]  # expired meanwhile
        return await super().recheck(concurrency)

    async def _ask_again(self, kpsa_id: str, entry: KpsaEntry) -> KeyStatus:
        status, _cred = await self.fetcher.recheck(kpsa_id, SUID_KPSA, entry.kpsa,
                                                   enrolee_id=self._enrolee.get(kpsa_id, ""))
        return status

    async def aclose(self) -> None:
        for t in list(self._inflight.values()):
            t.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)
