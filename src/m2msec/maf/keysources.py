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

For the SAEF, Entity B's retrieval happens inside the TLS-PSK handshake (8.2.2.3): the PSK
callback is synchronous, so :class:`MAFKpsaDirectory` runs its MAF Client on a thread of its
own; ``psk_server(directory, prefetch=directory.prefetch)`` (TLS or DTLS) retrieves while the
handshake's bytes or datagrams are held and the callback answers from the cache (the
listener's event loop never waits); without the prefetch the callback waits for the retrieval.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import logging
import threading
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from m2msec.esdata.credentials import (
    InMemoryKeySource,
    ResolvedKey,
    SymmetricRecipient,
    SymmetricSigner,
)
from m2msec.esdata.errors import UnknownKidError
from m2msec.errors import M2MSecError
from m2msec.esprim.errors import UnknownKeyID
from m2msec.esprim.keysource import PairwiseKey, ProvisionedKeySource
from m2msec.keys import derive_maf_pairwise_esprim_key, maf_esdata_key, parse_key_id
from m2msec.maf.client import MAFClient, MAFClientConfig, MAFResponseError, RegisteredKey, RetrievedKey
from m2msec.maf.protocol import MAFError
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.onem2m.timestamps import Clock
from m2msec.saef.config import KpsaEntry

if TYPE_CHECKING:
    from m2msec.esdata import Opened, Target

__all__ = [
    "MAFESDataKeySource",
    "MAFKpsaDirectory",
    "MAFESPrimKeySource",
    "esdata_recipient",
    "esdata_signer",
    "esprim_originator_key",
    "is_maf_key_id",
    "saef_kpsa_entry",
]


log = logging.getLogger(__name__)


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

    async def recheck(self) -> dict[str, int]:
        """Ask the MAF again about every cached key (a fresh Key Retrieval each, profile F17): a
        key the MAF no longer serves (4004/4103) or gives differently is forgotten, so the next
        ESPrim Object under it is refused 4112.  Counts: ``checked``, ``valid``, ``revoked``,
        ``unreachable``."""

        async def ask(kid: str) -> tuple[bytes, str] | None:
            got = await self.client.retrieve_key(kid)
            return (derive_maf_pairwise_esprim_key(got.key), got.source_id) if got.suid == SUID.MAF_ESPRIM else None

        held = {k.kid: (k.key, k.peer_id) for k in self._cache.keys()}
        return await _recheck(held, ask, self._cache.remove, "pairwiseESPrimKey")


async def _recheck(held: dict[str, tuple[Any, ...]], ask: Any, forget: Any, what: str) -> dict[str, int]:
    """One re-check pass of a Target's cached MAF keys: ``ask(kid)`` (a fresh Key Retrieval)
    returns what the key is now (None: not usable here); REVOKED when the MAF refuses with
    4004/4103 or answers something else than ``held[kid]``; ``forget(kid)`` drops it."""
    counts = {"checked": 0, "valid": 0, "revoked": 0, "unreachable": 0}
    for kid, now in held.items():
        counts["checked"] += 1
        try:
            got = await ask(kid)
        except MAFResponseError as exc:
            if exc.rsc not in (RSC.NOT_FOUND, RSC.ORIGINATOR_HAS_NO_PRIVILEGE):
                counts["unreachable"] += 1
                continue
            got = None
        except (M2MSecError, OSError, asyncio.TimeoutError):
            counts["unreachable"] += 1
            continue
        if got is not None and len(got) == len(now) and all(
                hmac.compare_digest(a, b) if isinstance(a, bytes) else a == b for a, b in zip(got, now)):
            counts["valid"] += 1
            continue
        forget(kid)
        counts["revoked"] += 1
        log.info("MAF re-check: %s %s forgotten (the MAF no longer serves it)", what, kid)
    if counts["unreachable"]:
        log.warning("MAF re-check: %d of %d %s(s) not answered; they stay until the next pass",
                    counts["unreachable"], counts["checked"], what)
    return counts


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

    async def recheck(self) -> dict[str, int]:
        """As :meth:`MAFESPrimKeySource.recheck`, for the cached ESData keys (SUID 34/35)."""

        async def ask(kid: str) -> tuple[bytes, int] | None:
            got = await self.client.retrieve_key(kid)
            if got.suid not in (SUID.MAF_ESDATA_ENCRYPT, SUID.MAF_ESDATA_SIGN):
                return None
            return maf_esdata_key(got.key, int(got.suid)), int(got.suid)

        held = {e.kid: (e.key, e.suid) for e in self._cache.entries()}

        def forget(kid: str) -> None:
            self._cache.remove(kid)
            self._expiry.pop(kid, None)

        return await _recheck(held, ask, forget, "ESData key")

    async def open(self, target: Target, envelope: Any, *, max_rounds: int = 3, **kw: Any) -> Opened:
        """``target.open(envelope, **kw)``, retrieving on demand (8.8.2.8) the keys of this MAF that
        the envelope names and this source does not hold: an envelope for several Targets names
        several keys, so each unknown key identifier of this MAF is tried once; one this client may
        not retrieve (another Target's key: 4103, or 4004) is skipped.  A nested envelope may need
        a second round (the MIC key after the encryption key).  ``target`` must resolve through
        this source.  The last UnknownKidError is raised when no retrievable key opens it."""
        tried: set[str] = set()
        for _ in range(max_rounds):
            try:
                return target.open(envelope, **kw)
            except UnknownKidError as exc:
                wanted = [k for k in exc.kids if k not in tried and is_maf_key_id(k, self.client.config.maf_fqdn)]
                if not wanted:
                    raise
                for kid in wanted:
                    tried.add(kid)
                    try:
                        await self.fetch(kid)
                    except MAFResponseError as refused:
                        if refused.rsc not in (RSC.ORIGINATOR_HAS_NO_PRIVILEGE, RSC.NOT_FOUND):
                            raise
        return target.open(envelope, **kw)


# ------------------------------------------------------------------ SAEF (SUID 32)


def saef_kpsa_entry(key: RegisteredKey | RetrievedKey, peer_id: str) -> KpsaEntry:
    """TLS-PSK entry for the MAF-based SAEF: psk_identity = Key Identifier, psk = Kc (8.2.2.3)."""
    _require_suid(key, {SUID.MAF_SAEF})
    return KpsaEntry(key.key_id, key.key, peer_id=peer_id)


class MAFKpsaDirectory:
    """Entity B's :class:`~m2msec.saef.config.KpsaDirectory` for the MAF-based SAEF (8.2.2.3).

    A ``psk_identity`` that is a Key Identifier of this MAF is resolved by a MAF Key Retrieval
    (8.8.2.8) *during* the (D)TLS-PSK handshake, as 8.2.2.3 describes: the TLS engine's PSK
    callback is synchronous, so the retrieval runs on this directory's own event-loop thread
    (one persistent MAF connection) and the callback waits for it, at most ``timeout`` seconds
    (the calling event loop is blocked for that one round trip) - unless :meth:`prefetch` ran
    first (``psk_server(directory, prefetch=directory.prefetch)``, TLS or DTLS), which retrieves
    on the handshake's way without blocking the listener's loop.  The result is cached until the
    Kc Lifetime (the MAF's expirationTime); after it the handshake fails (8.2.2.3, last
    paragraph).  The context is bound to the Source MAF Client ID the MAF returned.  A refused or
    failed retrieval, or a key whose SUID is not 32, fails the handshake (``None``) and is
    remembered for ``negative_ttl`` seconds so that a peer cannot make B query the MAF per attempt.
    """

    def __init__(self, config: MAFClientConfig, *, clock: Clock, timeout: float = 5.0,
                 negative_ttl: float = 5.0) -> None:
        self.config = config
        self._clock = clock
        self.timeout = timeout
        self.negative_ttl = negative_ttl
        self._cache: dict[str, tuple[KpsaEntry, datetime]] = {}
        self._refused: dict[str, datetime] = {}
        #: failed prefetches not yet seen by the PSK callback (with ``negative_ttl`` 0 nothing
        #: else would tell it not to ask the MAF again, blocking the loop)
        self._prefetched_miss: dict[str, datetime] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="maf-kpsa", daemon=True)
        self._thread.start()
        self._client = MAFClient(config)
        self.retrievals = 0  # MAF Key Retrievals performed (observability, tests)
        self.blocking_retrievals = 0  # of them inside the PSK callback (the caller's loop waited)

    def __repr__(self) -> str:
        return f"MAFKpsaDirectory(maf={self.config.maf_fqdn!r}, cached={len(self._cache)})"

    def _known(self, kpsa_id: str, now: datetime) -> tuple[bool, KpsaEntry | None]:
        """(decided, entry): a cached entry, a Kc Lifetime that is over, a recent refusal or a
        key identifier of another issuer decide without the MAF; (False, None): ask the MAF."""
        with self._lock:
            hit = self._cache.get(kpsa_id)
            if hit is not None:
                if now < hit[1]:
                    return True, hit[0]
                del self._cache[kpsa_id]
                return True, None  # Kc Lifetime over: a fresh MAF Key Registration is needed
            until = self._refused.get(kpsa_id)
            if until is not None and now < until:
                return True, None
        return not is_maf_key_id(kpsa_id, self.config.maf_fqdn), None

    def _refuse(self, kpsa_id: str, now: datetime, reason: BaseException) -> None:
        """Remember a failed retrieval for ``negative_ttl``."""
        log.info("MAF-based SAEF: no Kc for psk_identity %r: %s", kpsa_id, reason)
        with self._lock:
            self._refused[kpsa_id] = now + _seconds(self.negative_ttl)

    def _settle(self, kpsa_id: str, now: datetime, got: RetrievedKey) -> KpsaEntry | None:
        """Cache a retrieved key (None, remembered as refused, when it is not an SAEF key)."""
        try:
            _require_suid(got, {SUID.MAF_SAEF})
            entry = saef_kpsa_entry(got, got.source_id)
        except (M2MSecError, ValueError) as err:
            self._refuse(kpsa_id, now, err)
            return None
        with self._lock:
            self._cache[kpsa_id] = (entry, got.expires_at)
            self._refused.pop(kpsa_id, None)
        return entry if now < got.expires_at else None

    def lookup(self, kpsa_id: str) -> KpsaEntry | None:
        now = self._clock()
        decided, entry = self._known(kpsa_id, now)
        if decided:
            return entry
        with self._lock:
            if self._prefetched_miss.pop(kpsa_id, None) is not None:
                return None  # prefetch asked and failed just now: do not block the loop asking again
        fut = asyncio.run_coroutine_threadsafe(self._client.retrieve_key(kpsa_id), self._loop)
        self.retrievals += 1
        self.blocking_retrievals += 1
        try:
            got = fut.result(self.timeout)
        except (M2MSecError, OSError, concurrent.futures.TimeoutError) as exc:
            fut.cancel()
            self._refuse(kpsa_id, now, exc)
            return None
        return self._settle(kpsa_id, now, got)

    async def prefetch(self, kpsa_id: str) -> None:
        """Retrieve Kc for ``kpsa_id`` (unless cached, recently refused or of another issuer)
        without blocking the caller's event loop; the PSK callback (:meth:`lookup`) then answers
        from the cache and, after a failure, does not ask the MAF again for that handshake."""
        now = self._clock()
        if self._known(kpsa_id, now)[0]:
            return
        fut = asyncio.run_coroutine_threadsafe(self._client.retrieve_key(kpsa_id), self._loop)
        self.retrievals += 1
        try:
            got = await asyncio.wait_for(asyncio.wrap_future(fut), self.timeout)
        except (M2MSecError, OSError, asyncio.TimeoutError) as exc:
            fut.cancel()
            self._refuse(kpsa_id, now, exc)
            entry = None
        else:
            entry = self._settle(kpsa_id, now, got)
        if entry is None:
            with self._lock:
                self._prefetched_miss[kpsa_id] = now
                while len(self._prefetched_miss) > 1024:
                    del self._prefetched_miss[next(iter(self._prefetched_miss))]

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result(2)
        except (concurrent.futures.TimeoutError, RuntimeError):  # pragma: no cover
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


def _seconds(s: float) -> timedelta:
    return timedelta(seconds=s)
