"""MAF-based pairwiseESPrimKeys for the gateway's ESPrim Receiver (TS-0003 8.4.2 phase A C.6a,
8.8.1, 8.8.2.8; SUID 33; profile G15).

An Originator AE registers a SUID-33 key at the MAF with this CSE as Target (8.8.2.7) and
protects its requests with ``kid`` = the MAF Key Identifier ``hexBinary(KcID)@MAF-FQDN`` and
pairwiseESPrimKey = HMAC-SHA-256(Kc, "oneM2M MAF pairwiseESPrimKey")
(:func:`m2msec.keys.derive_maf_pairwise_esprim_key`).  The CSE (the gateway, ``[esprim_maf]``
in gateway.toml) does not know the key: :meth:`MAFESPrimStoreSource.prefetch`, the gateway's
first-sight hook, runs a Key Retrieval with the gateway's own MAF Client (registering it first
when the MAF answers 4128), checks SUID 33 and the Kc Lifetime, derives the key and stores it
in the gateway's store (encrypted under the KEK, so every gateway instance on that store
resolves it), bound to the Source MAF Client ID the MAF returns (the identity the impersonation
check of TS-0004 table 7.6.2-1 compares with the inner From), until the Kc Lifetime.  A refused
Key Identifier (4004 unknown, 4103 not a Target of it, another SUID, an expired key) or a MAF
that does not answer is not asked about again for ``negative_ttl`` seconds; the Receiver then
answers 4112 (ESPRIM_UNKNOWN_KEY_ID).

SIGHUP (:meth:`MAFESPrimStoreSource.apply`): a changed ``[esprim_maf]`` gets a new MAF Client (or
just a new re-check interval); adding or removing the table needs a restart.

Revocation: :meth:`MAFESPrimStoreSource.recheck` asks the MAF again (a fresh retrieval) about
every SUID-33 key of this MAF in the store, every ``recheck_interval_s`` and on SIGHUP; a key the
MAF no longer serves (4004: Key De-Registration, ``maf revoke``, ``maf remove-client`` of its
Source; 4103: this CSE is no longer a Target) or gives differently is deleted at once, audited
(``gateway`` ``maf-revoked``): the Originator's next request is refused 4112, also on a session
set up before.  A MAF that does not answer changes nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import deque
from datetime import timedelta
from typing import Any

from m2msec.errors import M2MSecError
from m2msec.esprim.keysource import PairwiseKey, StoreKeySource
from m2msec.gateway.saefmaf import REVOKING_RSC, retrieve_registering
from m2msec.keys import derive_maf_pairwise_esprim_key
from m2msec.maf.client import MAFClient, MAFClientConfig, MAFResponseError, RetrievedKey
from m2msec.maf.keysources import is_maf_key_id
from m2msec.negcache import RefusalMemory
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.timestamps import Clock
from m2msec.pki._background import BackgroundTask

__all__ = ["MAFESPrimStoreSource"]

log = logging.getLogger(__name__)

_MAX_RECORDS = 1000


class MAFESPrimStoreSource(BackgroundTask):
    """Store-backed SUID-33 pairwiseESPrimKeys completed from the MAF for its Key Identifiers;
    as a background task (:meth:`start`/:meth:`stop`) it re-checks them every ``recheck_interval``
    seconds (0: never)."""

    _task_name = "esprim_maf re-check"

    def __init__(self, config: MAFClientConfig, local: StoreKeySource, *, clock: Clock, timeout: float = 5.0,
                 negative_ttl: float = 5.0, registration_lifetime: timedelta = timedelta(days=1),
                 recheck_interval: float = 300.0) -> None:
        super().__init__()
        self.config = config
        self.local = local
        self._clock = clock
        self.timeout = timeout
        self.negative_ttl = negative_ttl
        self.registration_lifetime = registration_lifetime
        self.recheck_interval = recheck_interval
        self.client = MAFClient(config)
        self.errors: deque[BaseException | str] = deque(maxlen=_MAX_RECORDS)
        self.retrievals = 0  # Key Retrievals attempted (observability, tests)
        self._refused: RefusalMemory[str] = RefusalMemory(max_entries=_MAX_RECORDS)  # kids not provided
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._closing: set[asyncio.Task[Any]] = set()  # replaced clients being closed (SIGHUP)
        self._rescheduled = False  # the interval changed while the task waited
        #: the ``[esprim_maf]`` settings in force (gateway.config.SAEFMAFConfig), for :meth:`apply`
        self.settings: Any = None

    def __repr__(self) -> str:
        return f"MAFESPrimStoreSource(maf={self.config.maf_fqdn!r}, at={self.config.host}:{self.config.port})"

    def handles(self, kid: str) -> bool:
        return is_maf_key_id(kid, self.config.maf_fqdn)

    def _known(self, kid: str) -> bool:
        try:
            self.local.resolve(kid)
            return True
        except M2MSecError:
            return False

    def _refuse(self, kid: str, why: BaseException | str) -> None:
        self.errors.append(why)
        self._refused.refuse(kid, self.negative_ttl)
        log.info("esprim_maf: no pairwiseESPrimKey for %s: %s", kid, why)

    async def _retrieve(self, kid: str) -> RetrievedKey:
        self.retrievals += 1
        return await retrieve_registering(self.client, kid, timeout=self.timeout, clock=self._clock,
                                          registration_lifetime=self.registration_lifetime, what="esprim_maf")

    # ------------------------------------------------------------------ first sight
    async def prefetch(self, kid: str) -> Any:
        """The gateway's first-sight hook: fetch a Key Identifier of this MAF not in the store yet
        (one retrieval however many requests wait for it); leave any other ``kid`` alone."""
        if not self.handles(kid) or self._known(kid):
            return None
        if self._refused.recent(kid):
            return None
        task = self._inflight.get(kid)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(kid))
            self._inflight[kid] = task
            task.add_done_callback(lambda _t: self._inflight.pop(kid, None))
        await asyncio.shield(task)
        return None

    async def _fetch(self, kid: str) -> None:
        try:
            got = await self._retrieve(kid)
        except MAFResponseError as exc:
            self._refuse(kid, f"the MAF refused the Key Retrieval: {int(exc.rsc)} {exc.rsc.name}")
            return
        except (M2MSecError, OSError, asyncio.TimeoutError) as exc:
            self._refuse(kid, f"MAF {self.config.maf_fqdn} at {self.config.host}:{self.config.port} unreachable: "
                              f"{type(exc).__name__}")
            await self._reset()
            return
        if got.suid != SUID.MAF_ESPRIM:
            self._refuse(kid, f"the key has SUID {int(got.suid)}, not 33 (MAF-based ESPrim)")
            return
        if self._clock() >= got.expires_at:
            self._refuse(kid, "the Kc Lifetime is over")
            return
        if not got.source_id:
            self._refuse(kid, "the MAF named no Source MAF Client ID")
            return
        await asyncio.to_thread(self._provision, got)
        self._refused.forget(kid)
        log.info("esprim_maf: pairwiseESPrimKey %s from the MAF, bound to %s until %s", kid, got.source_id,
                 got.expires_at)

    def _provision(self, got: RetrievedKey) -> PairwiseKey:
        return self.local.provision(got.key_id, derive_maf_pairwise_esprim_key(got.key), peer_id=got.source_id,
                                    suid=SUID.MAF_ESPRIM, expires_at=got.expires_at)

    # ------------------------------------------------------------------ revocation
    async def recheck(self) -> dict[str, int]:
        """One pass over the SUID-33 keys of this MAF in the store (module docstring).  Counts:
        ``checked``, ``valid``, ``revoked``, ``unreachable``."""
        counts = {"checked": 0, "valid": 0, "revoked": 0, "unreachable": 0}
        held = await asyncio.to_thread(self.local.keys, suid=SUID.MAF_ESPRIM)
        for pk in held:
            if not self.handles(pk.kid):
                continue
            counts["checked"] += 1
            try:
                got = await self._retrieve(pk.kid)
            except MAFResponseError as exc:
                if exc.rsc not in REVOKING_RSC:
                    counts["unreachable"] += 1
                    continue
                reason = f"the MAF refused the Key Retrieval: {int(exc.rsc)} {exc.rsc.name}"
            except (M2MSecError, OSError, asyncio.TimeoutError):
                counts["unreachable"] += 1
                await self._reset()
                continue
            else:
                same = (got.suid == SUID.MAF_ESPRIM and got.source_id == pk.peer_id
                        and hmac.compare_digest(derive_maf_pairwise_esprim_key(got.key), pk.key))
                if same:
                    counts["valid"] += 1
                    if got.expires_at != pk.expires_at:
                        await asyncio.to_thread(self._provision, got)  # the MAF changed the Kc Lifetime
                    continue
                reason = "the MAF gave another key, SUID or Source"
            counts["revoked"] += 1
            await asyncio.to_thread(self._drop, pk, reason)
        if counts["unreachable"]:
            log.warning("esprim_maf: re-check: %d of %d key(s) not answered; they stay until the next pass",
                        counts["unreachable"], counts["checked"])
        return counts

    def _drop(self, pk: PairwiseKey, reason: str) -> None:
        """Delete a key the re-check found revoked (unless it changed meanwhile), audited."""
        if self.local.revoke_audited(pk, actor="gateway", action="maf-revoked", reason=reason):
            log.info("pairwiseESPrimKeyID %s of %s removed: %s", pk.kid, pk.peer_id, reason)

    # ------------------------------------------------------------------ SIGHUP
    def apply(self, new: Any, clock: Clock) -> list[str]:
        """Put a re-read ``[esprim_maf]`` in force (``new``: its SAEFMAFConfig; ``self.settings``:
        the one in force, set by the gateway's builder).  The same MAF Client settings (``same_settings``: every
        setting, the Km compared in constant time, the certificate and key) keep the client and its
        MAF session; otherwise a new client is used from now on (requests under way finish with the
        old one, which is then closed) and the refusals are forgotten.  A new ``recheck_interval_s``
        times the next pass from now.  Returns what changed, one line each."""
        changed: list[str] = []
        if not new.same_settings(self.settings):
            old, self.client = self.client, MAFClient(new.client_config(clock))
            self.config = self.client.config
            self.timeout, self.negative_ttl = new.timeout, new.negative_ttl
            self.registration_lifetime = new.registration_lifetime
            self._refused.clear()
            self._background(self._retire(old, [t for t in self._inflight.values() if not t.done()]))
            changed.append(f"esprim_maf reloaded: {new.maf_fqdn} at {new.host}:{new.port}")
        if new.recheck_interval != self.recheck_interval:
            self.recheck_interval = new.recheck_interval
            if self._task is not None and self.recheck_interval <= 0:
                self._background(self.stop())
            elif self._task is not None:
                self._rescheduled = True
                self._wake_up()  # the next pass comes the new interval from now
            elif self.recheck_interval > 0:
                self.start()
            changed.append(f"esprim_maf recheck_interval_s now {new.recheck_interval:g}")
        self.settings = new
        return changed

    def _background(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _retire(self, old: MAFClient, pending: list[asyncio.Task[None]]) -> None:
        """Close a replaced MAF Client once the retrievals it was serving have ended."""
        if pending:
            await asyncio.wait(pending, timeout=3 * self.timeout + 1)
        try:
            await old.aclose()
        except Exception:  # noqa: BLE001 - a broken session is dropped either way
            pass

    # ------------------------------------------------------------------ background task
    async def run(self) -> None:
        self._wake = asyncio.Event()
        try:
            while True:
                await self._nap(self.recheck_interval)
                if self._rescheduled:
                    self._rescheduled = False
                    continue
                try:
                    await self.recheck()
                except Exception:  # noqa: BLE001 - the next pass tries again
                    log.exception("esprim_maf: re-check pass failed")
        finally:
            self._wake = None

    def start(self) -> asyncio.Task[None] | None:  # type: ignore[override]
        """Start the periodic re-check (nothing with ``recheck_interval`` 0)."""
        if self.recheck_interval <= 0:
            return None
        return super().start()

    async def _reset(self) -> None:
        try:
            await self.client.aclose()
        except Exception:  # noqa: BLE001 - a broken session is dropped either way
            pass

    async def aclose(self) -> None:
        await self.stop()
        await asyncio.gather(*self._closing, return_exceptions=True)
        for t in list(self._inflight.values()):
            t.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        await self._reset()
