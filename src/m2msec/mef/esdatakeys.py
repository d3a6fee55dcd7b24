"""RSPF-provisioned ESData keys (TS-0003 8.5.2.2.2, 8.3.2.1 "Use of Remotely Provisioned
Credential", 10.3.7; SUID 24 encryption, SUID 25 MIC).

An Enrolee that the MEF authorised for (Target, SUID 24/25) protects data for that Target with
the usage-constrained key derive_usage_key(Ke, SUID, Enrolment-Target-ID) and names it by its
KeID ("The Enrolee shall provide KeID as a symmetric key identifier"):

* Source side: :func:`esdata_recipient` (SUID 24, key wrap or ``dir``) and
  :func:`esdata_signer` (SUID 25, HMAC) build the ESData credentials from the Enrolee's Ke and
  KeID (what :func:`m2msec.mef.enrol` returns, :class:`m2msec.mef.client.Enrolment`, holds both).
* Target side: :class:`MEFESDataKeySource` is an ESData
  :class:`~m2msec.esdata.credentials.KeySource` that fetches on first sight from the MEF
  (``/fetchCredentials/<KeID>/24`` and ``/25``, the Target's identity authenticated by its
  pre-configured credentials) and answers from memory until the key's lifetime (the MEF's
  Enrolee Lifetime).  One KeID names both keys, so it resolves by usage
  (:func:`~m2msec.esdata.credentials.resolve_key`): a JWE recipient gets the SUID-24 key, a MIC
  the SUID-25 key.  :meth:`MEFESDataKeySource.open` opens an envelope, fetching the keys of this
  MEF it names and does not hold (both SUIDs, each once; a SUID the MEF does not grant this
  Target, 4103/4004, is skipped).  :meth:`MEFESDataKeySource.enrolee_id` says which Enrolee the
  MEF bound a KeID to: the identity a verified MIC speaks for.

Revocation (profile M29, as M27 for ESPrim): :meth:`MEFESDataKeySource.recheck` asks the MEF
again about every key held (never from the fetcher's cache); a KeID the MEF now refuses
(4004/4103: Enrolee revoked, enrolment expired or re-enrolled) or that gives another key or
Enrolee-ID is forgotten at once, so the next envelope under it is an unknown kid (and the next
fetch is refused by the MEF).  A MEF that does not answer changes nothing.  A KeID the MEF
refused is not asked about again for ``negative_ttl`` seconds (default 5).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from m2msec.errors import M2MSecError
from m2msec.esdata.api import Target
from m2msec.esdata.credentials import (
    ResolvedKey,
    SymmetricRecipient,
    SymmetricSigner,
    Usage,
    default_symmetric_algorithms,
)
from m2msec.esdata.errors import UnknownKidError
from m2msec.esdata.types import Opened
from m2msec.keys import derive_usage_key, parse_key_id
from m2msec.mef.client import KeyStatus, MEFClientError, MEFKeyFetcher
from m2msec.negcache import RefusalMemory
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode as RSC

__all__ = ["ESDATA_SUIDS", "MEFESDataKeySource", "esdata_recipient", "esdata_signer"]

log = logging.getLogger(__name__)

SUID_ENCRYPT = int(SUID.RSPF_ESDATA_ENCRYPT)  # 24
SUID_SIGN = int(SUID.RSPF_ESDATA_SIGN)  # 25
ESDATA_SUIDS = (SUID_ENCRYPT, SUID_SIGN)
_USAGE_SUID = {Usage.ENCRYPT: SUID_ENCRYPT, Usage.SIGN: SUID_SIGN}
_SKIPPED = (RSC.ORIGINATOR_HAS_NO_PRIVILEGE, RSC.NOT_FOUND)  # a SUID not granted to this Target
_MAX_RECORDS = 1000


def _check_ke_id(ke_id: str) -> None:
    parse_key_id(ke_id, hex_length=16)  # hexBinary(RelativeKeID)@MEF-FQDN, 10.3.4


def esdata_recipient(ke: bytes, ke_id: str, target_id: str, *, alg: str = "A256KW") -> SymmetricRecipient:
    """The Enrolee's recipient for Target ``target_id``: kid = KeID, key = derive_usage_key(Ke,
    24, Target-ID) (32 octets: ``A256KW`` or ``dir`` with an A256GCM content key)."""
    _check_ke_id(ke_id)
    return SymmetricRecipient(kid=ke_id, key=derive_usage_key(ke, SUID_ENCRYPT, target_id), alg=alg,
                              suid=SUID_ENCRYPT)


def esdata_signer(ke: bytes, ke_id: str, target_id: str, *, alg: str = "HS256") -> SymmetricSigner:
    """The Enrolee's MIC signer for Target ``target_id``: kid = KeID, key = derive_usage_key(Ke,
    25, Target-ID)."""
    _check_ke_id(ke_id)
    return SymmetricSigner(kid=ke_id, key=derive_usage_key(ke, SUID_SIGN, target_id), alg=alg, suid=SUID_SIGN)


@dataclass(frozen=True, repr=False)
class _Held:
    resolved: ResolvedKey
    enrolee_id: str
    lifetime: datetime | None

    def __repr__(self) -> str:  # the key stays hidden (ResolvedKey's repr hides it too)
        return f"_Held({self.resolved!r}, enrolee_id={self.enrolee_id!r}, lifetime={self.lifetime!r})"


class MEFESDataKeySource:
    """Target-side ESData keys of the Enrolees of one MEF (``fetcher.mef_fqdn``), in memory."""

    def __init__(self, fetcher: MEFKeyFetcher, *, negative_ttl: float = 5.0) -> None:
        self.fetcher = fetcher
        self.negative_ttl = negative_ttl
        self.errors: deque[BaseException] = deque(maxlen=_MAX_RECORDS)  # the latest failed fetches
        self._held: dict[tuple[str, int], _Held] = {}
        self._refused: RefusalMemory[tuple[str, int]] = RefusalMemory(max_entries=_MAX_RECORDS)  # (KeID, SUID)

    def __repr__(self) -> str:
        return f"MEFESDataKeySource({self.fetcher!r}, held={len(self._held)})"

    def handles(self, kid: str) -> bool:
        return self.fetcher.is_ours(kid)

    # ------------------------------------------------------------------ look-up
    def _current(self, kid: str, suid: int) -> _Held | None:
        held = self._held.get((kid, suid))
        if held is not None and held.lifetime is not None and held.lifetime <= self.fetcher.clock():
            del self._held[(kid, suid)]  # past the Enrolee Lifetime: fetched again on demand
            return None
        return held

    def resolve_usage(self, kid: str, usage: Usage) -> ResolvedKey:
        held = self._current(kid, _USAGE_SUID[usage])
        if held is None:
            raise UnknownKidError(f"no SUID-{_USAGE_SUID[usage]} key held for KeID {kid!r}", kids=(kid,))
        return held.resolved

    def resolve(self, kid: str) -> ResolvedKey:
        """The encryption key of ``kid`` if held, else its MIC key (prefer :meth:`resolve_usage`)."""
        for suid in ESDATA_SUIDS:
            held = self._current(kid, suid)
            if held is not None:
                return held.resolved
        raise UnknownKidError(f"no key held for KeID {kid!r}", kids=(kid,))

    def enrolee_id(self, kid: str) -> str | None:
        """The Enrolee-ID the MEF bound ``kid`` to (for any key held), None if none is held."""
        for suid in ESDATA_SUIDS:
            held = self._current(kid, suid)
            if held is not None:
                return held.enrolee_id
        return None

    # ------------------------------------------------------------------ fetching
    def forget_refusals(self) -> None:
        """Ask the MEF again at once about every KeID (its connection changed)."""
        self._refused.clear()

    def _recently_refused(self, kid: str, suid: int) -> bool:
        return self._refused.recent((kid, suid))

    def _refuse(self, kid: str, suid: int, exc: BaseException) -> None:
        self.errors.append(exc)
        self._refused.refuse((kid, suid), self.negative_ttl)

    async def fetch(self, kid: str, suid: int) -> ResolvedKey:
        """The SUID-``suid`` key of KeID ``kid`` from the MEF (24 or 25).  Raises UnknownKidError
        for a KeID of another MEF, one refused less than ``negative_ttl`` seconds ago, or an
        Enrolee-less answer; the MEF's refusal as :class:`~m2msec.mef.client.MEFClientError`."""
        if suid not in ESDATA_SUIDS:
            raise ValueError(f"SUID {suid} is not an RSPF ESData SUID (24, 25)")
        if not self.handles(kid):
            raise UnknownKidError(f"{kid!r} is not a KeID of MEF {self.fetcher.mef_fqdn}", kids=(kid,))
        if self._recently_refused(kid, suid):
            raise UnknownKidError(f"KeID {kid!r}: the MEF did not provide a SUID-{suid} key (just now)", kids=(kid,))
        try:
            cred = await self.fetcher.fetch(kid, suid)
        except (M2MSecError, OSError, TimeoutError) as exc:
            self._refuse(kid, suid, exc)
            raise
        if not cred.enrolee_id:
            exc2 = UnknownKidError(f"the MEF named no Enrolee-ID for KeID {kid!r}", kids=(kid,))
            self._refuse(kid, suid, exc2)
            raise exc2
        self._refused.forget((kid, suid))
        usage = Usage.ENCRYPT if suid == SUID_ENCRYPT else Usage.SIGN
        resolved = ResolvedKey(kid=kid, key=cred.key, suid=suid,
                               algorithms=default_symmetric_algorithms(usage, len(cred.key)))
        self._held[(kid, suid)] = _Held(resolved, cred.enrolee_id, cred.lifetime)
        return resolved

    async def fetch_all(self, kids: Iterable[str]) -> int:
        """Fetch both SUIDs of every KeID of this MEF in ``kids`` not held yet (concurrently); a
        SUID the MEF does not grant this Target is skipped.  Returns the number of keys fetched.
        Errors other than the MEF's 4103/4004 (unreachable, ...) propagate."""
        todo = [(k, s) for k in dict.fromkeys(kids) if self.handles(k) for s in ESDATA_SUIDS
                if self._current(k, s) is None and not self._recently_refused(k, s)]

        async def one(kid: str, suid: int) -> int:
            try:
                await self.fetch(kid, suid)
                return 1
            except MEFClientError as exc:
                if exc.rsc in _SKIPPED:
                    return 0
                raise

        got = await asyncio.gather(*(one(k, s) for k, s in todo), return_exceptions=True)
        failed = [g for g in got if isinstance(g, BaseException)]
        if failed and not any(g == 1 for g in got):
            raise failed[0]
        return sum(g for g in got if isinstance(g, int))

    async def open(self, target: Target, envelope: Any, *, max_rounds: int = 2, **kw: Any) -> Opened:
        """``target.open(envelope, **kw)``, fetching from the MEF the keys of this MEF that the
        envelope names and this source does not hold (``target`` must resolve through this
        source).  A nested envelope names its MIC key once the outer layer is open: a second
        round.  The last UnknownKidError is raised when the MEF provides nothing that opens it."""
        tried: set[str] = set()
        for _ in range(max_rounds):
            try:
                return target.open(envelope, **kw)
            except UnknownKidError as exc:
                wanted = [k for k in exc.kids if k not in tried and self.handles(k)]
                if not wanted:
                    raise
                tried.update(wanted)
                await self.fetch_all(wanted)
        return target.open(envelope, **kw)

    # ------------------------------------------------------------------ revocation
    async def recheck(self) -> dict[str, int]:
        """Ask the MEF again about every key held; forget the ones it no longer serves (see the
        module docstring).  Returns counts: ``checked``, ``valid``, ``revoked``, ``unreachable``."""
        counts = {"checked": 0, "valid": 0, "revoked": 0, "unreachable": 0}

        async def one(key: tuple[str, int], held: _Held) -> None:
            assert isinstance(held.resolved.key, bytes)
            status, cred = await self.fetcher.recheck(key[0], key[1], held.resolved.key, enrolee_id=held.enrolee_id)
            counts["checked"] += 1
            counts[status.value] += 1
            if status is KeyStatus.REVOKED:
                if self._held.get(key) is held:
                    del self._held[key]
                log.info("ESData SUID-%d key of KeID %s (%s) forgotten: the MEF no longer serves it",
                         key[1], key[0], held.enrolee_id)
            elif status is KeyStatus.VALID and cred is not None and self._held.get(key) is held:
                self._held[key] = _Held(held.resolved, held.enrolee_id, cred.lifetime)

        await asyncio.gather(*(one(k, h) for k, h in list(self._held.items())))
        if counts["unreachable"]:
            log.warning("MEF re-check: %d of %d ESData key(s) not answered; they stay until the next pass",
                        counts["unreachable"], counts["checked"])
        return counts
