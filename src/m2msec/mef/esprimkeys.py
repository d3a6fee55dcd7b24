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
gateway's ``key_prefetch``); ``resolve`` falls back to a blocking fetch.
"""

from __future__ import annotations

from typing import Any

from m2msec.errors import M2MSecError
from m2msec.esprim.errors import UnknownKeyID
from m2msec.esprim.keysource import PairwiseKey, StoreKeySource
from m2msec.mef.client import FetchedCredential, MEFKeyFetcher
from m2msec.onem2m.enums import SUID

__all__ = ["MEFESPrimKeySource"]

SUID_ESPRIM = int(SUID.RSPF_ESPRIM)  # 23


class MEFESPrimKeySource:
    """Store-backed pairwiseESPrimKeys, completed from the MEF for KeIDs of ``fetcher.mef_fqdn``."""

    def __init__(self, fetcher: MEFKeyFetcher, local: StoreKeySource) -> None:
        self.fetcher = fetcher
        self.local = local
        self.errors: list[BaseException] = []

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
        """The key for ``kid`` from the MEF (UnknownKeyID, 4112, if the MEF refuses)."""
        try:
            cred = await self.fetcher.fetch(kid, SUID_ESPRIM)
        except (M2MSecError, OSError, TimeoutError) as exc:
            self.errors.append(exc)
            raise UnknownKeyID(f"pairwiseESPrimKeyID {kid!r}: the MEF did not provide a key") from None
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

    def resolve(self, kid: str) -> PairwiseKey:
        try:
            return self.local.resolve(kid)
        except UnknownKeyID:
            if not self.handles(kid):
                raise
        try:
            cred = self.fetcher.fetch_blocking(kid, SUID_ESPRIM)
        except (M2MSecError, OSError, TimeoutError) as exc:
            self.errors.append(exc)
            raise UnknownKeyID(f"pairwiseESPrimKeyID {kid!r}: the MEF did not provide a key") from None
        return self._provision(cred)
