"""The MAF's view of a MEF: fetching Km for a remotely provisioned MAF Client (TS-0003 8.8.2.3, 8.3.2.1, 10.3.2).

When a MAF Client was remotely provisioned (SUID 21, "a symmetric key ... intended to be
shared with a MAF"), it opens the MAF Handshake with ``psk_identity`` = KeID and ``psk`` =
Km = HMAC-SHA-256(Ke, "oneM2M Enrolment Key to Master Credential derivation" || MAF-ID)
(10.3.2).  The MAF does not know Km yet: it asks the MEF named by the KeID's FQDN part
(8.3.2.1 "Use of Provisioned Credential", steps (b) onwards, the MAF as Registration
Target) through a :class:`MEFClient`.  The MEF side is another component; this module
defines the interface and an in-memory implementation for tests.

``fetch_km(keid)`` returns ``(km, lifetime)`` where ``lifetime`` is a :class:`~datetime.timedelta`
(relative to now), an aware :class:`~datetime.datetime` (absolute) or ``None`` (no expiry
beyond the MAF's own limits, 10.7).  A MEF that also tells the MAF who the Enrolee is may
return a third element, the Enrolee's AE-ID/CSE-ID, which then becomes the MAF Client ID.
It returns ``None`` (or raises :class:`~m2msec.errors.UnknownKeyError`) for an unknown KeID.
Re-checks (``recheck_km``/``recheck_km_async``, optional): the MAF keeps the Km it got for a KeID
under a KmID it assigned (8.8.2.4) until the Km's lifetime ends; to notice an Enrolee the MEF
revoked meanwhile (``mef enrolee revoke``), the MAF asks the MEF again, bypassing any cache, and
gets a :class:`KmStatus`: VALID (the MEF hands out the same Km), REVOKED (the MEF refuses the
KeID: unknown, expired or revoked, 4004/4103, or a different Km) or UNREACHABLE (no answer; the
MAF keeps the Km and asks again at its next pass).

The call is synchronous; the MAF's listener runs it in a worker thread before the handshake's
PSK callback (``MAFService.psk_prefetch``).  A client may also offer ``async fetch_km_async(keid)``
with the same result, which the listener then awaits on its event loop instead.
"""

from __future__ import annotations

import enum
import hmac
from datetime import datetime, timedelta
from typing import Any, Protocol, Union, runtime_checkable

from m2msec.errors import M2MSecError
from m2msec.keys import derive_km, parse_key_id

__all__ = ["FetchedKm", "InMemoryMEF", "KmStatus", "MEFClient"]

Lifetime = Union[timedelta, datetime, None]
FetchedKm = Union[tuple[bytes, Lifetime], tuple[bytes, Lifetime, str]]


class KmStatus(enum.Enum):
    """What the MEF says now about a KeID whose Km the MAF holds (a re-check)."""

    VALID = "valid"
    REVOKED = "revoked"
    UNREACHABLE = "unreachable"


@runtime_checkable
class MEFClient(Protocol):
    """Fetch the Master Credential Km for a KeID from the MEF (SUID 21)."""

    def fetch_km(self, keid: str) -> FetchedKm | None: ...


class InMemoryMEF:
    """A MEF stand-in holding Ke per KeID; derives Km for the configured MAF-ID (10.3.2)."""

    def __init__(self, maf_id: str) -> None:
        self.maf_id = maf_id
        self._entries: dict[str, tuple[bytes, Lifetime, str | None]] = {}
        self.calls: list[str] = []

    def __repr__(self) -> str:
        return f"InMemoryMEF(maf_id={self.maf_id!r}, {len(self._entries)} enrolments)"

    def enrol(self, keid: str, ke: bytes, *, lifetime: Lifetime = None, enrolee_id: str | None = None) -> bytes:
        """Record an enrolment (Ke for KeID); returns Km as the Enrolee derives it."""
        parse_key_id(keid, hex_length=16)
        self._entries[keid] = (bytes(ke), lifetime, enrolee_id)
        return derive_km(ke, self.maf_id)

    def revoke(self, keid: str) -> None:
        """The MEF's ``enrolee revoke`` for this stand-in: the KeID is no longer served."""
        self._entries.pop(keid, None)

    def recheck_km(self, keid: str, km: bytes) -> KmStatus:
        self.calls.append(keid)
        entry = self._entries.get(keid)
        if entry is None:
            return KmStatus.REVOKED
        return KmStatus.VALID if hmac.compare_digest(derive_km(entry[0], self.maf_id), km) else KmStatus.REVOKED

    def fetch_km(self, keid: str) -> FetchedKm | None:
        self.calls.append(keid)
        entry = self._entries.get(keid)
        if entry is None:
            return None
        ke, lifetime, enrolee = entry
        km = derive_km(ke, self.maf_id)
        return (km, lifetime, enrolee) if enrolee is not None else (km, lifetime)


class FetcherMEFClient:
    """:class:`MEFClient` over :class:`m2msec.mef.client.MEFKeyFetcher` (the MEF component's
    ``/fetchCredentials/<KeID>/21`` client): runs its blocking fetch and returns
    ``(km, lifetime, enrolee_id)``.  Any MEF refusal means "unknown KeID" (the handshake fails)."""

    SUID_MAF = 21

    def __init__(self, fetcher: object) -> None:
        self.fetcher = fetcher

    def __repr__(self) -> str:
        return f"FetcherMEFClient({self.fetcher!r})"

    def fetch_km(self, keid: str) -> FetchedKm | None:
        if not self._ours(keid):
            return None
        try:
            cred = self.fetcher.fetch_blocking(keid, self.SUID_MAF)  # type: ignore[attr-defined]
        except (M2MSecError, OSError, TimeoutError):
            return None
        return self._result(cred)

    async def fetch_km_async(self, keid: str) -> FetchedKm | None:
        """:meth:`fetch_km` on the caller's event loop (the fetcher's own ``fetch``), always from
        the MEF (not the fetcher's cache): a MAF Handshake with a KeID the MEF has revoked since
        fails at once."""
        if not self._ours(keid):
            return None
        try:
            cred = await self.fetcher.fetch(keid, self.SUID_MAF, fresh=True)  # type: ignore[attr-defined]
        except (M2MSecError, OSError, TimeoutError):
            return None
        return self._result(cred)

    async def recheck_km_async(self, keid: str, km: bytes) -> KmStatus:
        """Ask the MEF again (never from the fetcher's cache) whether ``keid`` still gives ``km``."""
        if not self._ours(keid):
            return KmStatus.REVOKED
        status, _cred = await self.fetcher.recheck(keid, self.SUID_MAF, km)  # type: ignore[attr-defined]
        return KmStatus(status.value)

    def _ours(self, keid: str) -> bool:
        is_ours = getattr(self.fetcher, "is_ours", None)
        return is_ours is None or bool(is_ours(keid))

    @staticmethod
    def _result(cred: Any) -> FetchedKm:
        enrolee = getattr(cred, "enrolee_id", "") or None
        lifetime = getattr(cred, "lifetime", None)
        return (cred.key, lifetime, enrolee) if enrolee else (cred.key, lifetime)


__all__ += ["FetcherMEFClient"]
