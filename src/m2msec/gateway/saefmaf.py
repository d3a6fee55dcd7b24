"""MAF-based SAEF on the gateway's SAEF listener (TS-0003 8.2.2.3, 8.8.2.8, 8.2.1, 7.2.1).

The gateway's CSE is Entity B (the Target End-Point).  An AE (Entity A) that registered a
SUID-32 key at the MAF with this CSE as Target (8.8.2.7) opens a TLS-PSK association with
``psk_identity`` = the Key Identifier ``hexBinary(KcID)@MAF-FQDN`` (10.3.5).  The listener
reads that identity from the client's ClientKeyExchange before the TLS engine does
(``psk_server(prefetch=...)``, :mod:`m2msec.tls.pskpeek`), and :meth:`MAFSAEFDirectory.prefetch`
runs the MAF Key Retrieval (8.8.2.8) on the gateway's event loop over one persistent
MAF Handshake session (8.8.2.2) of the gateway's own MAF Client; the handshake's
synchronous PSK callback then answers from the cache (:meth:`MAFSAEFDirectory.lookup` never
does I/O), so other connections are served meanwhile.

Identity binding (8.2.2.3 "Following successful authentication of Entity A"): the context
is bound to the Source MAF Client ID of the KeyRetrievalResponse when it names an AE of
this CSE - an AE-ID-Stem ``C...`` (also written ``/<cse-id>/C...`` or
``//<sp>/<cse-id>/C...``) or an SP-relative AE-ID ``S...``/``/S...`` - with peer kind AE,
and its Credential-ID is ``12-<Key Identifier>`` (10.4, type 12 = KcID).  The From of every
request on it must name that AE (7.2.1; compared in absolute form), and a request without
From is sent on with it.  A Source MAF Client ID that is no such AE-ID is refused in the
handshake: a Credential-ID (``11-<KmID>``: the MAF knows no AE-ID for the source; 8.2.1
leaves the mapping to approaches this gateway does not implement), a CSE-ID (this listener
serves AEs), another CSE's AE, or another SP's.

Refusals fail the handshake (the PSK callback finds no key: ``unknown_psk_identity``): a Key
Identifier of another MAF, one the MAF does not know (4004), a key this CSE is not a Target
of (4103), a key of another SUID, a key whose Kc Lifetime is over (also a cached one: 8.2.2.3
last paragraph), and a MAF that cannot be reached.  Refusals are remembered for
``negative_ttl`` seconds per identity (a peer cannot make the gateway query the MAF per
attempt); after a transport failure the MAF is not asked again for ``negative_ttl`` seconds
whatever the identity, with one WARNING log line per failure.  When the MAF answers that this
CSE is not registered (4128, 8.8.2.3), the directory performs the MAF Client Registration and
retries once.

Revocation (profile F17): a cached Kc lives until its Kc Lifetime, so the listener asks the MAF
again about every cached Kc (:meth:`MAFSAEFDirectory.recheck`, a fresh Key Retrieval each) every
``[saef_maf] recheck_interval_s`` and on SIGHUP: a Kc the MAF no longer serves (4004: Key
De-Registration, ``maf revoke``, ``maf remove-client`` of its Source; 4103: this CSE is no longer
a Target) or gives differently is dropped, and the associations accepted with it are refused at
their next request (:meth:`~m2msec.gateway.remotekpsa.RemoteKpsaDirectory.holds`).

SIGHUP (:meth:`m2msec.gateway.saef.SAEFListener.reload_async`): an unchanged ``[saef_maf]``
keeps this directory (its MAF session, cached Kc and remembered refusals).  A changed one (any
setting, the Km, the certificate or key, the MAF's CA) gets a new directory - a new MAF Client,
empty caches - for the handshakes accepted after the reload; the previous one is retired
(:meth:`MAFSAEFDirectory.retire`): handshakes already accepted finish with it (the retrievals
in flight complete, its cached Kc still answers them), then its MAF session is closed.  A
removed ``[saef_maf]`` retires the directory the same way.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from m2msec.errors import M2MSecError
from m2msec.mef.client import KeyStatus
from m2msec.gateway.config import SAEFMAFConfig
from m2msec.gateway.remotekpsa import RemoteKpsaDirectory
from m2msec.maf.client import MAFClient, MAFClientConfig, MAFResponseError, RetrievedKey
from m2msec.maf.keysources import is_maf_key_id
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.onem2m.timestamps import Clock
from m2msec.saef.config import KpsaDirectory, KpsaEntry, PeerKind

__all__ = ["ChainedKpsaDirectory", "MAFSAEFDirectory", "build_directory", "maf_bound_ae_id"]

log = logging.getLogger(__name__)



def maf_bound_ae_id(source_id: str, *, cse_id: str, sp_id: str | None) -> str | None:
    """The AE-ID a MAF-based association is bound to, from the Source MAF Client ID (8.2.2.3),
    or None when the MAF names no AE of this CSE (see the module docstring)."""
    from m2msec.gateway.saef import normalise_originator  # noqa: PLC0415 - saef imports this module

    ident = source_id.strip()
    if not ident or ident[0].isdigit():  # a Credential-ID (type-ID "-" value, 10.4)
        return None
    who = normalise_originator(ident, cse_id=cse_id, sp_id=sp_id)
    if who is None:
        return None
    if who.startswith("/S") and "/" not in who[1:]:
        return who  # SP-relative AE-ID
    if who.startswith("C") and "/" not in who:
        return who  # AE-ID-Stem of this CSE
    return None


#: MAF refusals of a Key Retrieval that mean the cached Kc is no longer this CSE's to use
_REVOKING_RSC = (RSC.NOT_FOUND, RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
REVOKING_RSC = _REVOKING_RSC


async def retrieve_registering(client: MAFClient, key_id: str, *, timeout: float, clock: Clock,
                               registration_lifetime: timedelta, what: str) -> RetrievedKey:
    """One Key Retrieval (8.8.2.8) by the gateway's MAF Client, each step within ``timeout``;
    when the MAF answers that the CSE is not (or no longer) registered (4128, 8.8.2.3), the MAF
    Client Registration first, then the retrieval once more."""
    try:
        return await asyncio.wait_for(client.retrieve_key(key_id), timeout)
    except MAFResponseError as exc:
        if exc.rsc is not RSC.SERVICE_SUBSCRIPTION_NOT_ESTABLISHED:
            raise
    log.info("%s: MAF Client Registration with %s", what, client.config.maf_fqdn)
    await asyncio.wait_for(client.register(clock() + registration_lifetime), timeout)
    return await asyncio.wait_for(client.retrieve_key(key_id), timeout)


class MAFSAEFDirectory(RemoteKpsaDirectory):
    """Entity B's MAF-based SAEF :class:`~m2msec.saef.config.KpsaDirectory` with an
    asynchronous :meth:`prefetch` (8.2.2.3, 8.8.2.8).  ``bind(source_id)`` gives the AE-ID
    to bind (None: refuse); ``timeout`` bounds one retrieval (the TLS handshake allows 10 s)."""

    _prefix, _key, _source, _log = "saef_maf", "Kc", "MAF", log

    def __init__(self, config: MAFClientConfig, *, bind: Callable[[str], str | None], clock: Clock,
                 timeout: float = 5.0, negative_ttl: float = 5.0,
                 registration_lifetime: timedelta = timedelta(days=1)) -> None:
        super().__init__(bind=bind, clock=clock, negative_ttl=negative_ttl)
        self.config = config
        self.timeout = timeout
        self.registration_lifetime = registration_lifetime
        self._client = MAFClient(config)
        self._retired = False
        self.retrievals = 0  # MAF Key Retrievals attempted (observability, tests)

    def __repr__(self) -> str:
        return (f"MAFSAEFDirectory(maf={self.config.maf_fqdn!r}, at={self.config.host}:{self.config.port}, "
                f"cached={len(self._cache)})")

    def handles(self, kpsa_id: str) -> bool:
        return is_maf_key_id(kpsa_id, self.config.maf_fqdn)

    async def _fetch(self, kpsa_id: str) -> None:
        """One Key Retrieval (8.8.2.8) for the handshakes waiting on ``kpsa_id``."""
        try:
            await self._retrieve_once(kpsa_id)
        finally:
            if self._retired and not any(t is not asyncio.current_task() and not t.done()
                                         for t in self._inflight.values()):
                await self._reset()  # a retired directory keeps no MAF session open

    async def _retrieve_once(self, kpsa_id: str) -> None:
        self.retrievals += 1
        try:
            got = await self._call(kpsa_id)
        except MAFResponseError as exc:
            self._refuse(kpsa_id, f"the MAF refused the Key Retrieval: {int(exc.rsc)} {exc.rsc.name}")
            return
        except (M2MSecError, OSError, asyncio.TimeoutError) as exc:
            self._unreachable(kpsa_id, exc, f"{self.config.maf_fqdn} at {self.config.host}:{self.config.port}")
            await self._reset()
            return
        now = self._clock()
        if got.suid != SUID.MAF_SAEF:
            self._refuse(kpsa_id, f"the key has SUID {int(got.suid)}, not 32 (MAF-based SAEF)", now)
            return
        if now >= got.expires_at:
            self._refuse(kpsa_id, "the Kc Lifetime is over", now)
            return
        ae_id = self.bind(got.source_id)
        if ae_id is None:
            self._refuse(kpsa_id, f"the MAF names Source MAF Client {got.source_id!r}, not an AE-ID of this CSE", now)
            return
        self._accept(KpsaEntry(kpsa_id, got.key, peer_id=ae_id, peer_kind=PeerKind.AE), got.expires_at)

    async def _ask_again(self, kpsa_id: str, entry: KpsaEntry) -> KeyStatus:
        """A fresh Key Retrieval (8.8.2.8) of a cached Kc (:meth:`recheck`, profile F17): the MAF
        no longer knows the key (4004: Key De-Registration, ``maf revoke``, ``maf remove-client``
        of its Source) or this CSE is no longer one of its Targets (4103) - REVOKED, as is another
        Kc, SUID or Source; any other refusal or no answer - UNREACHABLE."""
        self.retrievals += 1
        try:
            got = await self._call(kpsa_id)
        except MAFResponseError as exc:
            return KeyStatus.REVOKED if exc.rsc in _REVOKING_RSC else KeyStatus.UNREACHABLE
        except (M2MSecError, OSError, asyncio.TimeoutError):
            await self._reset()
            return KeyStatus.UNREACHABLE
        if (got.suid != SUID.MAF_SAEF or not hmac.compare_digest(got.key, entry.kpsa)
                or self.bind(got.source_id) != entry.peer_id):
            return KeyStatus.REVOKED
        self._relifetime(kpsa_id, entry, got.expires_at)
        return KeyStatus.VALID

    async def _call(self, kpsa_id: str) -> RetrievedKey:
        return await retrieve_registering(self._client, kpsa_id, timeout=self.timeout, clock=self._clock,
                                          registration_lifetime=self.registration_lifetime, what="saef_maf")

    async def _reset(self) -> None:
        try:
            await self._client.aclose()
        except Exception:  # noqa: BLE001 - a broken session is dropped either way
            pass

    @property
    def retired(self) -> bool:
        """Replaced by a reload: no new handshake uses it (:meth:`retire`)."""
        return self._retired

    def mark_retired(self) -> None:
        """From now on, a retrieval that ends with no other in flight closes the MAF session."""
        self._retired = True

    async def retire(self) -> None:
        """Stop serving new handshakes (SIGHUP replaced or removed ``[saef_maf]``): wait for the
        retrievals in flight (each at most three ``timeout``: retrieval, registration, retry), so
        the handshakes waiting on them finish with their answer, then close the MAF session.  A
        handshake accepted before the reload that asks later still gets an answer; the session it
        opens is closed after it."""
        self.mark_retired()
        pending = [t for t in self._inflight.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=3 * self.timeout + 1)
        await self._reset()

    async def aclose(self) -> None:
        for t in list(self._inflight.values()):
            t.cancel()
        await self._reset()


def build_directory(config: SAEFMAFConfig, *, cse_id: str, sp_id: str | None, clock: Clock) -> MAFSAEFDirectory:
    """The MAF-based SAEF Kc source of ``[saef_maf]`` for the CSE ``cse_id`` (a new MAF Client,
    nothing connected yet)."""

    def bind(source_id: str) -> str | None:
        return maf_bound_ae_id(source_id, cse_id=cse_id, sp_id=sp_id)

    return MAFSAEFDirectory(config.client_config(clock), bind=bind, clock=clock, timeout=config.timeout,
                            negative_ttl=config.negative_ttl, registration_lifetime=config.registration_lifetime)


class ChainedKpsaDirectory:
    """The provisioned Kpsa entries (``[[saef_psk]]``) first, then the remote sources: the MEF
    (RSPF-provisioned Kpsa, :mod:`m2msec.gateway.saefmef`) and the MAF (8.2.2.1, 8.3.2.1, 8.2.2.3),
    each asked only about the identifiers it ``handles`` (a KeID of its MEF, a Key Identifier of
    its MAF)."""

    def __init__(self, first: KpsaDirectory, *remote: Any) -> None:
        self.first = first
        self.remote = remote

    def __repr__(self) -> str:
        return f"ChainedKpsaDirectory({self.first!r}, {', '.join(map(repr, self.remote))})"

    def lookup(self, kpsa_id: str) -> KpsaEntry | None:
        hit = self.first.lookup(kpsa_id)
        if hit is not None:
            return hit
        for source in self.remote:
            if source.handles(kpsa_id):
                return source.lookup(kpsa_id)
        return None

    async def prefetch(self, kpsa_id: str) -> None:
        if self.first.lookup(kpsa_id) is not None:
            return
        for source in self.remote:
            if source.handles(kpsa_id):
                await source.prefetch(kpsa_id)
                return
