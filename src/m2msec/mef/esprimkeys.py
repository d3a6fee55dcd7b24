"""RSPF-provisioned pairwiseESPrimKeys fetched from the MEF (TS-0003 8.4.2 phase A, 8.3.2.1
"Use of Remotely Provisioned Credential", 10.3.7; SUID 23).

An Enrolee that the MEF authorised for (ESPrim Target, SUID 23) protects its requests with
``kid`` = its KeID and ``pairwiseESPrimKey`` = derive_usage_key(Ke, 23, Target-ID).  The
ESPrim Target (e.g. a CSE behind ``m2msec gateway``) does not know the KeID: on first sight
it fetches the key from the MEF (``/fetchCredentials/<KeID>/23``), binds it to the
Enrolee-ID the MEF returns (the identity the impersonation check of TS-0004 table 7.6.2-1
compares with the inner From) and keeps it in its store until the key's lifetime.

:class:`MEFESPrimKeySource` is a :class:`~m2msec.esprim.keysource.PairwiseKeySource` whose
``prefetch`` is the asynchronous first-sight hook (``SecureReceiver(prefetch=...)``, the
gateway's ``key_prefetch``); ``resolve`` falls back to a blocking fetch.  A KeID the MEF did not
provide (refused, or not answered) is not asked about again for ``negative_ttl`` (5 s): a
stream of ESPrim Objects with one made-up KeID costs the MEF one request per 5 s.

Revocation (profile M27): a fetched key stays in the store until its lifetime (the enrolment's
expiry), so :meth:`MEFESPrimKeySource.recheck` asks the MEF again about every SUID-23 KeID of
this MEF in the store (never from the fetcher's cache, at most :data:`RECHECK_CONCURRENCY` at a
time; the gateway runs it every ``[mef] recheck_interval_s``).  A KeID the MEF now refuses
(4004/4103: Enrolee revoked, enrolment expired or re-enrolled) or that gives another key or
Enrolee-ID is deleted from the store at once, in one transaction with an audit record
(``gateway`` ``mef-revoked``): the Receiver resolves the key for every ESPrim Object (C.6a),
so the Enrolee's next request is refused 4112, also on a session set up before.  A MEF that
does not answer changes nothing (WARNING; the next pass asks again).  A shorter (or longer)
lifetime the MEF now gives replaces the stored one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from m2msec.errors import M2MSecError
from m2msec.esprim.errors import UnknownKeyID
from m2msec.esprim.keysource import PairwiseKey, StoreKeySource
from m2msec.mef.client import FetchedCredential, KeyStatus, MEFKeyFetcher
from m2msec.negcache import RefusalMemory
from m2msec.onem2m.enums import SUID

__all__ = ["RECHECK_CONCURRENCY", "MEFESPrimKeySource"]

log = logging.getLogger(__name__)

SUID_ESPRIM = int(SUID.RSPF_ESPRIM)  # 23
#: MEF re-checks in flight at a time during one :meth:`MEFESPrimKeySource.recheck` pass
RECHECK_CONCURRENCY = 4
_MAX_RECORDS = 1000  # remembered refusals and kept errors


class MEFESPrimKeySource:
    """Store-backed pairwiseESPrimKeys, completed from the MEF for KeIDs of ``fetcher.mef_fqdn``."""

    def __init__(self, fetcher: MEFKeyFetcher, local: StoreKeySource, *, negative_ttl: float = 5.0) -> None:
        self.fetcher = fetcher
        self.local = local
        self.errors: deque[BaseException] = deque(maxlen=_MAX_RECORDS)  # the latest failed fetches
        #: a KeID the MEF did not provide is not asked about again for this many seconds
        self.negative_ttl = negative_ttl
        self._refused: RefusalMemory[str] = RefusalMemory(max_entries=_MAX_RECORDS)  # KeIDs not provided

    def _refuse(self, kid: str, exc: BaseException) -> UnknownKeyID:
        self.errors.append(exc)
        self._refused.refuse(kid, self.negative_ttl)
        return UnknownKeyID(f"pairwiseESPrimKeyID {kid!r}: the MEF did not provide a key")

    def forget_refusals(self) -> None:
        """Ask the MEF again at once about every KeID (its connection changed)."""
        self._refused.clear()

    def _recently_refused(self, kid: str) -> bool:
        return self._refused.recent(kid)

    def __repr__(self) -> str:
        return f"MEFESPrimKeySource({self.fetcher!r}, {self.local!r})"

    def handles(self, kid: str) -> bool:
        return self.fetcher.is_ours(kid)

    def _provision(self, cred: FetchedCredential) -> PairwiseKey:
        if not cred.enrolee_id:
            raise UnknownKeyID(f"the MEF named no Enrolee-ID for KeID {cred.ke_id!r}")
        return self.local.provision(cred.ke_id, cred.key, peer_id=cred.enrolee_id, suid=SUID.RSPF_ESPRIM,
                                    expires_at=cred.lifetime)

    def _known(self, kid: str) -> bool:
        try:
            self.local.resolve(kid)
            return True
        except UnknownKeyID:
            return False

    async def fetch(self, kid: str) -> PairwiseKey:
        """The key for ``kid`` from the MEF (UnknownKeyID, 4112, if the MEF refuses, or refused it
        less than ``negative_ttl`` seconds ago: then it is not asked)."""
        if self._recently_refused(kid):
            raise UnknownKeyID(f"pairwiseESPrimKeyID {kid!r}: the MEF did not provide a key (just now)")
        try:
            cred = await self.fetcher.fetch(kid, SUID_ESPRIM)
        except (M2MSecError, OSError, TimeoutError) as exc:
            raise self._refuse(kid, exc) from None
        self._refused.forget(kid)
        return self._provision(cred)

    async def prefetch(self, kid: str) -> Any:
        """First-sight hook: fetch KeIDs of this MEF not yet in the store; leave other kids alone
        (the Receiver answers 4112 for what nobody knows)."""
        if self.handles(kid) and not self._known(kid):
            try:
                await self.fetch(kid)
            except UnknownKeyID:
                pass
        return None

    async def recheck(self) -> dict[str, int]:
        """One pass over the SUID-23 keys of this MEF in the store (see the module docstring).
        Returns counts: ``checked``, ``valid``, ``revoked``, ``unreachable``."""
        counts = {"checked": 0, "valid": 0, "revoked": 0, "unreachable": 0}
        held = await asyncio.to_thread(self.local.keys, suid=SUID.RSPF_ESPRIM)
        sem = asyncio.Semaphore(RECHECK_CONCURRENCY)

        async def one(pk: PairwiseKey) -> None:
            async with sem:
                status, cred = await self.fetcher.recheck(pk.kid, SUID_ESPRIM, pk.key, enrolee_id=pk.peer_id)
            counts["checked"] += 1
            counts[status.value] += 1
            if status is KeyStatus.REVOKED:
                await asyncio.to_thread(self._drop, pk, "the MEF refused the KeID" if cred is None
                                        else "the MEF gave another key or Enrolee-ID")
            elif status is KeyStatus.VALID and cred is not None and cred.lifetime != pk.expires_at:
                await asyncio.to_thread(self._provision, cred)  # the MEF changed the key's lifetime

        await asyncio.gather(*(one(pk) for pk in held if self.handles(pk.kid)))
        if counts["unreachable"]:
            log.warning("MEF re-check: %d of %d KeID(s) not answered; their keys stay until the next pass",
                        counts["unreachable"], counts["checked"])
        if counts["revoked"]:
            log.info("MEF re-check: %d pairwiseESPrimKey(s) removed (the MEF no longer serves their KeID)",
                     counts["revoked"])
        return counts

    def _drop(self, pk: PairwiseKey, reason: str) -> None:
        """Delete the key the re-check found revoked (unless it changed meanwhile), audited."""
        if self.local.revoke_audited(pk, actor="gateway", action="mef-revoked", reason=reason):
            log.info("pairwiseESPrimKeyID %s of %s removed: %s", pk.kid, pk.peer_id, reason)

    def resolve(self, kid: str) -> PairwiseKey:
        try:
            return self.local.resolve(kid)
        except UnknownKeyID:
            if not self.handles(kid) or self._recently_refused(kid):
                raise
        try:
            cred = self.fetcher.fetch_blocking(kid, SUID_ESPRIM)
        except (M2MSecError, OSError, TimeoutError) as exc:
            raise self._refuse(kid, exc) from None
        self._refused.forget(kid)
        return self._provision(cred)
