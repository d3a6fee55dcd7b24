"""MAF-based options of ESPrim (SUID 33), ESData (SUID 34/35) and SAEF (SUID 32) (TS-0003 8.8.1, 8.4.2 C.6a, 8.5, 8.2.2.3).

Targets learn a MAF Key Identifier (``hexBinary(KcID)@MAF-FQDN``, 10.3.5) from the Source and
retrieve the key value from the MAF (8.8.2.8).  The frameworks' key-source protocols are
synchronous, the retrieval is network I/O: each source here has ``async fetch(kid)`` (retrieve
from the MAF on first sight, check the SUID, derive, cache) and a synchronous ``resolve(kid)``
that answers from the cache — the transport layer awaits ``fetch`` before it opens the
message (for ESPrim, :meth:`m2msec.esprim.receiver.Receiver.peek` gives the ``kid``).

Key derivations come from :mod:`m2msec.keys`: pairwiseESPrimKey =
HMAC-SHA-256(Kc, "oneM2M MAF pairwiseESPrimKey") (:func:`~m2msec.keys.derive_maf_pairwise_esprim_key`);
the ESData key is the first half of the key value for SUID 34, the whole value for SUID 35
(:func:`~m2msec.keys.maf_esdata_key`); the SAEF PSK is Kc itself (8.2.2.3).
"""

from __future__ import annotations

from datetime import datetime

from m2msec.esdata.credentials import (
    InMemoryKeySource,
    ResolvedKey,
    SymmetricRecipient,
    SymmetricSigner,
)
from m2msec.esdata.errors import UnknownKidError
from m2msec.esprim.errors import UnknownKeyID
from m2msec.esprim.keysource import PairwiseKey, ProvisionedKeySource
from m2msec.keys import derive_maf_pairwise_esprim_key, maf_esdata_key, parse_key_id
from m2msec.maf.client import MAFClient, RegisteredKey, RetrievedKey
from m2msec.maf.protocol import MAFError
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.onem2m.timestamps import Clock
from m2msec.saef.config import KpsaEntry

__all__ = [
    "MAFESDataKeySource",
    "MAFESPrimKeySource",
    "esdata_recipient",
    "esdata_signer",
    "esprim_originator_key",
    "is_maf_key_id",
    "saef_kpsa_entry",
]


def is_maf_key_id(kid: str, maf_fqdn: str) -> bool:
    """True when ``kid`` has the MAF Key Identifier form for ``maf_fqdn`` (10.3.5)."""
    try:
        k = parse_key_id(kid, hex_length=16)
    except Exception:  # noqa: BLE001 - any malformed identifier is simply not ours
        return False
    return k.fqdn.lower() == maf_fqdn.lower()


def _require_suid(got: RetrievedKey | RegisteredKey, want: set[SUID]) -> SUID:
    suid = got.suid if isinstance(got, RetrievedKey) else got.response.suid
    if suid not in want:
        raise MAFError(f"key {got.key_id} has SUID {int(suid)}, not usable here ({sorted(int(s) for s in want)})",
                       rsc=RSC.CONTENTS_UNACCEPTABLE)
    return suid


# ------------------------------------------------------------------ ESPrim (SUID 33)


def esprim_originator_key(reg: RegisteredKey, receiver_id: str) -> PairwiseKey:
    """The Originator's pairwiseESPrimKey after a SUID-33 Key Registration (kid = Key Identifier)."""
    _require_suid(reg, {SUID.MAF_ESPRIM})
    return PairwiseKey(kid=reg.key_id, key=derive_maf_pairwise_esprim_key(reg.key), peer_id=receiver_id,
                       suid=SUID.MAF_ESPRIM, expires_at=reg.response.expiration_time)


class MAFESPrimKeySource:
    """Receiver-side :class:`~m2msec.esprim.keysource.PairwiseKeySource` for MAF keys (C.6a.1-6)."""

    def __init__(self, client: MAFClient, *, clock: Clock) -> None:
        self.client = client
        self._cache = ProvisionedKeySource(clock=clock, allowed_suids=(SUID.MAF_ESPRIM,))

    def __repr__(self) -> str:
        return f"MAFESPrimKeySource(maf={self.client.config.maf_fqdn!r}, cache={self._cache!r})"

    def handles(self, kid: str) -> bool:
        return is_maf_key_id(kid, self.client.config.maf_fqdn)

    async def fetch(self, kid: str) -> PairwiseKey:
        """C.6a.1-6: retrieve Kc and its lifetime, derive pairwiseESPrimKey, cache it."""
        try:
            return self._cache.resolve(kid)
        except UnknownKeyID:
            pass
        if not self.handles(kid):
            raise UnknownKeyID(f"pairwiseESPrimKeyID {kid!r} is not a key identifier of this MAF")
        try:
            got = await self.client.retrieve_key(kid)
        except MAFError as exc:
            raise UnknownKeyID(f"MAF refused pairwiseESPrimKeyID {kid!r}: {exc.args[0]}") from None
        _require_suid(got, {SUID.MAF_ESPRIM})
        key = PairwiseKey(kid=kid, key=derive_maf_pairwise_esprim_key(got.key), peer_id=got.source_id,
                          suid=SUID.MAF_ESPRIM, expires_at=got.expires_at)
        self._cache.add(key)
        return key

    async def prefetch(self, kid: str) -> None:
        """The :class:`~m2msec.esprim.transport.SecureReceiver` hook: fetch MAF key identifiers of
        this MAF on first sight, leave any other ``kid`` to the Receiver (it answers 4112)."""
        if self.handles(kid):
            await self.fetch(kid)

    def resolve(self, kid: str) -> PairwiseKey:
        return self._cache.resolve(kid)


# ------------------------------------------------------------------ ESData (SUID 34/35)


def esdata_recipient(reg: RegisteredKey, *, alg: str = "A128KW") -> SymmetricRecipient:
    """Source-side recipient for a SUID-34 key (first half of the key value, 8.8.1)."""
    _require_suid(reg, {SUID.MAF_ESDATA_ENCRYPT})
    return SymmetricRecipient(kid=reg.key_id, key=maf_esdata_key(reg.key, 34), alg=alg, suid=34)


def esdata_signer(reg: RegisteredKey, *, alg: str = "HS256") -> SymmetricSigner:
    """Source-side MIC signer for a SUID-35 key (the whole 32-octet value)."""
    _require_suid(reg, {SUID.MAF_ESDATA_SIGN})
    return SymmetricSigner(kid=reg.key_id, key=maf_esdata_key(reg.key, 35), alg=alg, suid=35)


class MAFESDataKeySource:
    """Target-side ESData :class:`~m2msec.esdata.credentials.KeySource` for MAF keys."""

    def __init__(self, client: MAFClient) -> None:
        self.client = client
        self._cache = InMemoryKeySource()
        self._expiry: dict[str, datetime] = {}

    def __repr__(self) -> str:
        return f"MAFESDataKeySource(maf={self.client.config.maf_fqdn!r})"

    async def fetch(self, kid: str) -> ResolvedKey:
        if not is_maf_key_id(kid, self.client.config.maf_fqdn):
            raise UnknownKidError(f"{kid!r} is not a key identifier of this MAF")
        got = await self.client.retrieve_key(kid)
        suid = _require_suid(got, {SUID.MAF_ESDATA_ENCRYPT, SUID.MAF_ESDATA_SIGN})
        entry = self._cache.add_symmetric(kid, maf_esdata_key(got.key, int(suid)), suid=int(suid))
        self._expiry[kid] = got.expires_at
        return entry

    def resolve(self, kid: str) -> ResolvedKey:
        return self._cache.resolve(kid)


# ------------------------------------------------------------------ SAEF (SUID 32)


def saef_kpsa_entry(key: RegisteredKey | RetrievedKey, peer_id: str) -> KpsaEntry:
    """TLS-PSK entry for the MAF-based SAEF: psk_identity = Key Identifier, psk = Kc (8.2.2.3)."""
    _require_suid(key, {SUID.MAF_SAEF})
    return KpsaEntry(key.key_id, key.key, peer_id=peer_id)
