"""The gateway's SAEF listener: the Registrar CSE side of security associations with AEs
(TS-0003 8.2.2.1 Provisioned Symmetric Key SAEF, 8.2.2.2 Certificate-Based SAEF, 7.2.1
Registrar verification of AE-ID), and the plain listener's ``require_saef_for`` rule.

:class:`SAEFListener` accepts TLS 1.2 associations through :mod:`m2msec.saef`
(:func:`~m2msec.saef.psk_server`, :func:`~m2msec.saef.certificate_server`, both on one port
with :func:`~m2msec.saef.combined_server`) and serves HTTP with
:class:`~m2msec.saef.http.SAEFHTTPServer`, which answers a request whose From is not the
identity bound to the association 4106 ORIGINATOR_NOT_AUTHENTICATED (7.2.1 step 3) before
anything reaches the gateway.  A request that passes goes through the gateway's normal path
(:meth:`m2msec.gateway.server.Gateway.handle`: proxy, ESPrim transit and Receiver) marked
with the authenticated identity; a request without From is sent on with From = that
identity (the only originator the association authenticates).

Established certificate associations (TS-0003 8.1.2.2; TS-0004 7.3): the listener gives its
:class:`~m2msec.saef.http.SAEFHTTPServer` an :class:`~m2msec.saef.status.AssociationSessionCheck`,
so before each request an association is checked against the status sources of the
``[[saef_cert]]`` binding that accepted it (its CRL store, the listener's OCSP answers), at the
cost of one integer comparison while neither changed; a revoked AE gets 4106 with
``Connection: close`` and nothing reaches the gateway.  The binding's sources, not the current
ones: as its identity (profile G10), an association keeps what it was accepted with; a store
whose CRL sources a reload keeps is the same object and is refilled
(:mod:`m2msec.gateway.saefstatus`), so a rewritten CRL file + SIGHUP reaches it.  PSK and
MAF-based associations and ``revocation = "off"`` bindings are not watched for status.

RSPF-provisioned Kpsa (``[mef]``, :mod:`m2msec.gateway.saefmef`, profile M28): an AE's KeID as
``psk_identity`` gets its Kpsa from the MEF (SUID 22) before the PSK callback; before each
request such an association is checked against the directory (one dictionary look-up): once
the MEF re-check dropped the KeID (the Enrolee revoked) or the Enrolment Expiry passed, the
next request is refused like a revoked one (4106, ``Connection: close``).

Bindings removed by a reload (profile G10): an association accepted under a ``[[saef_psk]]``
entry or a ``[[saef_cert]]`` Association Configuration that a later reload (SIGHUP) removes or
changes (another Kpsa or AE-ID for that KpsaID; another identifier, root of trust or
revocation policy) is refused at its next request like a revoked one (4106, ``Connection:
close``): taking a binding out of the file ends the AE's access, also on open connections.
An unchanged binding keeps its associations.  MAF-based associations (a Kc from the MAF) end
when a reload removes ``[saef_maf]``; a changed ``[saef_maf]`` keeps them (their Kc is still the
MAF's); they also end when the MAF re-check drops their Kc (profile F17) or its Kc Lifetime is
over.  Checked once per association after each reload (one integer comparison per request
otherwise).

:func:`protected_pattern` is the ``require_saef_for`` rule of the plain listener: an
X-M2M-Origin that names an AE-ID listed there (or starting with a listed prefix ``X*``) is
refused 4106 on the plain listener, so such an AE is reachable only with its association
(the threat model's 4.4 gap).  Originators are compared in the form the CSE reads them
(``/<cse-id>/Cae1``, ``//<sp>/<cse-id>/Cae1`` and ``Cae1`` are the same AE of this CSE);
an absolute originator with an SP-ID the gateway does not know is read as if it were this
SP's when ``[cse] sp_id`` is not configured (refusing too much rather than too little).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from m2msec.gateway.config import SAEFConfig, SAEFMAFConfig
from m2msec.gateway.saefmaf import (
    ChainedKpsaDirectory,
    MAFSAEFDirectory,
    build_directory,
)
from m2msec.gateway.saefmef import MEFSAEFDirectory
from m2msec.gateway.saefstatus import SAEFCertStatus, StatusPlan
from m2msec.pki.ocsp_staple import OCSPStapler, stapler_for_chain
from m2msec.net.connlimits import ConnectionLimits
from m2msec.net.http_binding import HttpResponse
from m2msec.onem2m.primitives import RequestPrimitive
from m2msec.saef import (
    AssociationConfiguration,
    InMemoryKpsaDirectory,
    KpsaEntry,
    SAEFEndpoint,
    SAEFError,
    SecurityContext,
    certificate_server,
    combined_server,
    psk_server,
)
from m2msec.saef.http import HTTPMessage, SAEFHTTPServer
from m2msec.saef.status import AssociationSessionCheck, SessionCheck

if TYPE_CHECKING:
    from m2msec.gateway.server import Gateway

__all__ = ["SAEFListener", "build_endpoint", "normalise_originator", "protected_pattern"]

log = logging.getLogger(__name__)

_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
     "trailer", "transfer-encoding", "upgrade", "host", "content-length"}
)


def normalise_originator(originator: str, *, cse_id: str, sp_id: str | None) -> str | None:
    """``originator`` as the CSE ``/<cse_id>`` reads it: ``Cae1`` for an AE-ID-Stem of this
    CSE (also given as ``/<cse_id>/Cae1`` or ``//<sp>/<cse_id>/Cae1``), ``/Sae`` for an
    SP-relative AE-ID, ``/<other-cse>/...`` for other CSEs' entities; None for an originator
    of another SP (``sp_id`` configured and different).  Without ``sp_id`` any SP-ID is taken
    as this SP's."""
    ident = originator.strip()
    if ident.startswith("//"):
        rest = ident[2:]
        sp, slash, tail = rest.partition("/")
        if sp_id is not None and sp != sp_id.strip("/"):
            return None
        ident = slash + tail
    csi = "/" + cse_id.strip("/")
    if ident.startswith(csi + "/"):
        return ident[len(csi) + 1:]
    if ident.startswith("/"):
        return ident
    if ident.startswith("S"):
        return "/" + ident
    return ident


def _claims(originator: str, *, cse_id: str, sp_id: str | None) -> list[str]:
    """Every reading of ``originator`` a CSE might apply (for ``require_saef_for``, erring
    towards refusal): the normalised one; for an absolute ID of *any* SP, the SP-relative tail
    read as this SP's (a protected AE cannot be claimed through another SP-ID); and for a
    one-segment SP-relative ID that is not an S-AE-ID (``/Cae1``), the segment itself, which
    a CSE that takes the last path segment reads as the AE-ID-Stem."""
    out: list[str] = []
    ident = originator.strip()
    readings = [ident]
    if ident.startswith("//"):
        readings.append("/" + ident[2:].partition("/")[2])
    for r in readings:
        who = normalise_originator(r, cse_id=cse_id, sp_id=sp_id)
        if who is None:
            continue
        out.append(who)
        if who.startswith("/") and not who.startswith("/S") and "/" not in who[1:]:
            out.append(who[1:])
    return out


def protected_pattern(originator: str, patterns: Sequence[str], *, cse_id: str, sp_id: str | None) -> str | None:
    """The first ``require_saef_for`` pattern that covers ``originator`` (None: none does).

    A pattern is an AE-ID (any form) or an AE-ID prefix followed by ``*``; both sides are
    compared after :func:`normalise_originator`."""
    claims = _claims(originator, cse_id=cse_id, sp_id=sp_id)
    for pat in patterns:
        prefix = pat.endswith("*")
        norm = normalise_originator(pat[:-1] if prefix else pat, cse_id=cse_id, sp_id=sp_id)
        if norm is None:
            continue
        if any(who == norm or (prefix and who.startswith(norm)) for who in claims):
            return pat
    return None


def build_endpoint(config: SAEFConfig, *, clock: Callable[[], datetime],
                   maf: MAFSAEFDirectory | None = None, mef: MEFSAEFDirectory | None = None,
                   staple: Callable[[Any], bytes | None] | None = None) -> SAEFEndpoint:
    """The CSE's (Entity B) TLS server endpoint for ``config``: PSK (provisioned Kpsa and/or,
    with ``mef``, RSPF-provisioned Kpsa of 8.3.2.1, and/or, with ``maf``, the MAF-based SAEF of
    8.2.2.3), certificate-based, or both; ``staple``: the OCSP staple source of the CSE's own
    certificate (``[saef] ocsp_staple_url``, :class:`_Stapling`)."""
    psk = None
    remote = [d for d in (mef, maf) if d is not None]
    if remote:
        chained = ChainedKpsaDirectory(InMemoryKpsaDirectory(config.psk), *remote)
        psk = psk_server(chained, prefetch=chained.prefetch)
    elif config.psk:
        psk = psk_server(InMemoryKpsaDirectory(config.psk))
    cert = None
    if config.certs:
        assert config.credentials is not None
        if any(c.needs_status_sources and not c.status_wired for c in config.certs):
            raise ValueError("[[saef_cert]] with crl_urls or ocsp: build the endpoint from "
                             "SAEFCertStatus.prepare(config).config (m2msec.gateway.saefstatus)")
        cert = certificate_server(config.credentials, config.associations, clock=clock, ocsp_staple=staple)
    if psk is not None and cert is not None:
        return combined_server(psk, cert)
    endpoint = psk or cert
    if endpoint is None:
        raise ValueError("the SAEF listener needs PSK entries, certificate associations, a MEF or a MAF")
    return endpoint


@dataclass(frozen=True)
class _Binding:
    """What accepted one association: a ``[[saef_psk]]`` entry or a ``[[saef_cert]]``
    Association Configuration (``what`` names it in the refusal)."""

    kind: str
    value: Any = field(repr=False)
    what: str


class _Bindings:
    """The ``[[saef_psk]]`` entries and ``[[saef_cert]]`` Association Configurations of one
    configuration (CRL/OCSP sources are not part of an Association Configuration's equality)."""

    def __init__(self, config: SAEFConfig, maf: MAFSAEFDirectory | None = None) -> None:
        self.psk: dict[str, KpsaEntry] = {e.kpsa_id: e for e in config.psk}
        self.associations = tuple(config.associations)
        self.maf = maf  # the MAF-based SAEF's Kc source of that configuration

    def holds(self, binding: _Binding) -> bool:
        if binding.kind == "psk":
            now = self.psk.get(binding.value.kpsa_id)
            return now is not None and _same_kpsa(now, binding.value)
        return any(a == binding.value for a in self.associations)


def _same_kpsa(a: KpsaEntry, b: KpsaEntry) -> bool:
    return hmac.compare_digest(a.kpsa, b.kpsa) and (a.peer_id, a.peer_kind) == (b.peer_id, b.peer_kind)


class _Stapling:
    """``[saef] ocsp_staple_url`` (profile G14): the :class:`~m2msec.pki.ocsp_staple.OCSPStapler`
    of the CSE's certificate behind one callable that every endpoint of the listener staples
    through; a reload that changes the URL, its CA file or the certificate gets a new stapler."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self.clock = clock
        self.stapler: OCSPStapler | None = None
        self.key: tuple[Any, ...] | None = None
        self._stopping: set[asyncio.Task[None]] = set()  # replaced staplers being stopped

    def staple(self, cert: Any) -> bytes | None:
        s = self.stapler
        return s.staple(cert) if s is not None else None

    @staticmethod
    def key_of(config: SAEFConfig) -> tuple[Any, ...] | None:
        c = config.credentials
        if config.ocsp_staple_url is None or c is None:
            return None
        return config.ocsp_staple_url, config.ocsp_staple_https_ca, c.certificate, c.chain[:1]

    def plan(self, config: SAEFConfig) -> OCSPStapler | None:
        """The stapler ``config`` needs: the current one if nothing it depends on changed, else a
        new one (not started); None without ``ocsp_staple_url``."""
        key = self.key_of(config)
        if key is None:
            return None
        if key == self.key and self.stapler is not None:
            return self.stapler
        c = config.credentials
        assert c is not None and config.ocsp_staple_url is not None
        return stapler_for_chain(config.ocsp_staple_url, [c.certificate, *c.chain], clock=self.clock,
                                 https_ca=config.ocsp_staple_https_ca)

    def commit(self, config: SAEFConfig, stapler: OCSPStapler | None, *, running: bool) -> None:
        """Staple with ``stapler`` from now on; a new one is started (when the listener runs) and
        the previous one stopped."""
        old, self.stapler, self.key = self.stapler, stapler, self.key_of(config)
        if stapler is old:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous reload before start): start() starts it
            return
        if stapler is not None and running:
            stapler.start()
        if old is not None:
            task = loop.create_task(old.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    async def start(self) -> None:
        """The first query before the listener accepts (a failure is logged: no staple yet)."""
        if self.stapler is not None:
            await self.stapler.refresh()
            self.stapler.start()

    async def stop(self) -> None:
        if self.stapler is not None:
            await self.stapler.stop()
        await asyncio.gather(*self._stopping, return_exceptions=True)


@dataclass
class _Reload:
    """A reload prepared by :meth:`SAEFListener._prepare`, not in force yet."""

    config: SAEFConfig
    plan: StatusPlan
    endpoint: SAEFEndpoint
    maf: MAFSAEFDirectory | None
    stapler: OCSPStapler | None = None


class SAEFListener:
    """The gateway's TLS listener for AEs with a security association (TS-0003 8.2, 7.2.1)."""

    def __init__(self, gateway: Gateway, endpoint: SAEFEndpoint, *, sp_id: str | None = None,
                 idle_timeout: float = 120.0, max_body: int = 4 << 20, maf: MAFSAEFDirectory | None = None,
                 status: SAEFCertStatus | None = None, maf_config: SAEFMAFConfig | None = None,
                 clock: Callable[[], datetime] | None = None, limits: ConnectionLimits | None = None,
                 config: SAEFConfig | None = None, mef: MEFSAEFDirectory | None = None,
                 stapling: _Stapling | None = None) -> None:
        """``config``: the configuration ``endpoint`` was built from (:meth:`for_config` gives it),
        so that a reload can end the associations of the bindings it removes; without it, only
        associations accepted after a reload are watched that way.  ``mef``: the source of
        RSPF-provisioned Kpsa (``[mef]``), kept by reloads (it is not part of ``[saef]``)."""
        self.gateway = gateway
        self.mef = mef
        #: OCSP stapling of the CSE's certificate (``[saef] ocsp_staple_url``)
        self.stapling = stapling or _Stapling(clock or gateway._clock)
        self.maf = maf  # the MAF-based SAEF's Kc source (8.2.2.3), closed with the listener
        #: the ``[saef_maf]`` settings ``maf`` was built from (None with a ``maf`` given without
        #: them: then a reload whose configuration has no ``[saef_maf]`` keeps ``maf``)
        self.maf_config = maf_config
        #: CRL refreshers and OCSP checkers of the certificate associations (8.1.2.2), started
        #: (first fetch) before the listener accepts and stopped with it
        self.status = status
        self._maf_wake = asyncio.Event()  # set when [saef_maf] (its recheck_interval_s) changes
        self._maf_task: asyncio.Task[None] | None = None
        self._reloading = asyncio.Lock()
        self._listening = False
        #: MAF directories replaced by a reload, closing once their retrievals in flight ended
        self._retiring: dict[asyncio.Task[None], MAFSAEFDirectory] = {}
        self.sp_id = sp_id
        #: established certificate associations re-checked before each request (8.1.2.2) against
        #: the status sources of the [[saef_cert]] binding that accepted them (module docstring)
        self.session_check = AssociationSessionCheck(clock=clock or gateway._clock)
        #: reloads put in force so far, and per endpoint the reload count and the bindings it
        #: accepted associations with (what a later reload is compared with)
        self._generation = 0
        self._in_force: weakref.WeakKeyDictionary[SAEFEndpoint, tuple[int, _Bindings]] = weakref.WeakKeyDictionary()
        self._current: _Bindings | None = None
        if config is not None:
            self._current = _Bindings(config, maf)
            self._in_force[endpoint] = (0, self._current)
        self.server = SAEFHTTPServer(endpoint, http_handler=self._handle, sp_id=sp_id, cse_id="/" + gateway.cse_id,
                                     idle_timeout=idle_timeout, max_body=max_body, session_check=self._session_check,
                                     limits=limits)
        self.host = "127.0.0.1"
        self.port = 0

    def __repr__(self) -> str:
        return f"SAEFListener({self.endpoint!r}, {self.host}:{self.port})"

    @property
    def endpoint(self) -> SAEFEndpoint:
        """The endpoint new associations are accepted with."""
        return self.server.endpoint

    @classmethod
    def for_config(cls, gateway: Gateway, config: SAEFConfig, *, clock: Callable[[], datetime],
                   sp_id: str | None = None, maf: MAFSAEFDirectory | None = None,
                   mef: MEFSAEFDirectory | None = None, **kw: Any) -> SAEFListener:
        """The listener of ``config`` with the status sources of its certificate associations
        (CRL URLs, OCSP: :class:`~m2msec.gateway.saefstatus.SAEFCertStatus`; fetched at :meth:`start`);
        ``maf``: the directory built from ``config.maf`` (:func:`~m2msec.gateway.saefmaf.build_directory`);
        ``mef``: the RSPF-provisioned Kpsa source built from ``[mef]``."""
        status = SAEFCertStatus(clock=clock)
        plan = status.prepare(config)
        stapling = _Stapling(clock)
        stapler = stapling.plan(config)
        endpoint = build_endpoint(plan.config, clock=clock, maf=maf, mef=mef,
                                  staple=stapling.staple if stapler is not None else None)
        status.commit(plan)
        stapling.commit(config, stapler, running=False)
        kw.setdefault("limits", config.connection_limits)
        return cls(gateway, endpoint, sp_id=sp_id, maf=maf, status=status,
                   maf_config=config.maf if maf is not None else None, clock=clock, config=config, mef=mef,
                   stapling=stapling, **kw)

    def reload(self, config: SAEFConfig, *, clock: Callable[[], datetime]) -> int:
        """Accept new associations with ``config``: its Kpsa entries and certificate associations
        (and its ``[saef]`` cert/key), its ``[saef_maf]``, and make the plain listener refuse its
        ``require_saef_for``; returns the number of Kpsa entries and certificate associations.
        All or nothing: everything is built first (a ValueError leaves all of it as it was), then
        swapped at once.  ``config``'s host and port are not used (the listening address stays).
        Established associations keep the context, and the identity, they were accepted with;
        those whose ``[[saef_psk]]`` / ``[[saef_cert]]`` binding ``config`` removes or changes, and
        the MAF-based ones when it removes ``[saef_maf]``, are refused (4106, closed) at their next
        request (module docstring).
        An unchanged ``[saef_maf]`` (:meth:`~m2msec.gateway.config.SAEFMAFConfig.same_settings`)
        keeps this listener's MAF Client and its cached Kc; a changed one gets a new MAF Client
        for the handshakes accepted from now on, and the previous one is retired
        (:meth:`~m2msec.gateway.saefmaf.MAFSAEFDirectory.retire`: handshakes already accepted
        finish with it).  CRL URLs of new associations are fetched by their refresher after the
        switch (:meth:`reload_async` fetches them before it)."""
        r = self._prepare(config, clock)
        self._commit(r)
        return config.bindings

    async def reload_async(self, config: SAEFConfig, *, clock: Callable[[], datetime]) -> int:
        """:meth:`reload` for SIGHUP: every CRL URL of ``config`` is fetched at once (failures
        logged, the previous CRLs stay) before the new settings take over.  Reloads run one at
        a time."""
        async with self._reloading:
            r = self._prepare(config, clock)
            await self.status.fetch(r.plan)  # type: ignore[union-attr] - _prepare set it
            if r.stapler is not None and r.stapler is not self.stapling.stapler:
                await r.stapler.refresh()  # a new stapler: its first answer before it takes over
            elif r.stapler is not None:
                r.stapler.trigger()  # SIGHUP: query the responder at once
            self._commit(r)
            return config.bindings

    def _prepare(self, config: SAEFConfig, clock: Callable[[], datetime]) -> _Reload:
        """Build everything ``config`` needs without putting any of it in force."""
        plan = self._status(clock).prepare(config)
        maf = self._maf_for(config.maf, clock)  # a new directory does no I/O until its first handshake
        stapler = self.stapling.plan(config)
        endpoint = build_endpoint(plan.config, clock=clock, maf=maf, mef=self.mef,
                                  staple=self.stapling.staple if stapler is not None else None)
        return _Reload(config, plan, endpoint, maf, stapler)

    def _maf_for(self, m: SAEFMAFConfig | None, clock: Callable[[], datetime]) -> MAFSAEFDirectory | None:
        if m is None:
            return self.maf if self.maf_config is None else None  # a directory given without settings stays
        if self.maf is not None and m.same_settings(self.maf_config):
            return self.maf
        return build_directory(m, cse_id=self.gateway.cse_id, sp_id=self.sp_id, clock=clock)

    def _commit(self, r: _Reload) -> None:
        """Put ``r`` in force, all at once (no await in between: no request or handshake sees
        half of it)."""
        old = self.maf
        self._generation += 1
        self._current = _Bindings(r.config, r.maf)
        self._in_force[r.endpoint] = (self._generation, self._current)
        self.server.endpoint = r.endpoint
        assert self.status is not None
        self.status.commit(r.plan)
        self.stapling.commit(r.config, r.stapler, running=self._listening)
        self.gateway.require_saef_for = tuple(r.config.require_saef_for)
        if r.maf is not old:
            self.maf, self.maf_config = r.maf, r.config.maf
            if old is not None:
                self._retire(old)
        elif r.config.maf is not None and self.maf_config is not None \
                and r.config.maf.recheck_interval != self.maf_config.recheck_interval:
            self.maf_config = r.config.maf  # the same MAF Client, another re-check interval
        self._maf_wake.set()  # the re-check schedule follows the [saef_maf] now in force

    async def recheck_maf(self) -> dict[str, int] | None:
        """One re-check of every Kc the MAF-based SAEF holds (profile F17; SIGHUP, and every
        ``[saef_maf] recheck_interval_s``): a Kc the MAF no longer serves is dropped and the
        associations accepted with it are refused (4106) at their next request.  None without
        ``[saef_maf]``."""
        maf = self.maf
        if maf is None or maf.retired:
            return None
        return await maf.recheck()

    async def _maf_rechecks(self) -> None:
        """Every ``[saef_maf] recheck_interval_s`` (of the configuration in force): :meth:`recheck_maf`."""
        while True:
            cfg = self.maf_config
            interval = cfg.recheck_interval if cfg is not None else 0.0
            self._maf_wake.clear()
            try:
                await asyncio.wait_for(self._maf_wake.wait(), interval if interval > 0 else None)
                continue  # a reload: wait the interval now in force, from now
            except TimeoutError:
                pass
            try:
                await self.recheck_maf()
            except Exception:  # noqa: BLE001 - the next pass tries again
                log.exception("saef_maf: re-check pass failed")

    def _session_check(self, ctx: SecurityContext) -> SessionCheck | None:
        """The per-request check of one association (``SAEFHTTPServer.session_check``): its
        binding still in force (after each reload), then its certificate status."""
        status = self.session_check(ctx)
        binding = self._binding_of(ctx)
        if binding is None:
            return status
        seen = binding[0]
        gone: list[str] = []

        def check() -> str | None:
            nonlocal seen
            b = binding[1]
            if b.kind == "mef" and not gone and not (self.mef is not None and b.value is not None
                                                     and self.mef.holds(b.value)):
                gone.append("its Kpsa from the MEF was revoked there or its Enrolment Expiry passed")
            if b.kind == "maf" and not gone and not (b.value[0] is not None and b.value[1] is not None
                                                     and b.value[0].holds(b.value[1])):
                gone.append("its Kc from the MAF was revoked there or its Kc Lifetime is over")
            if seen != self._generation:  # a reload since the last look
                seen = self._generation
                current = self._current
                if b.kind == "maf":
                    held = self.maf is not None
                elif b.kind == "mef":
                    held = True  # [mef] is not part of a reload; the check above watches it
                else:
                    held = current is None or current.holds(b)
                if not gone and not held:
                    gone.append(f"its {b.what} was removed or changed by a configuration reload")
            if gone:
                return gone[0]
            return status() if status is not None else None

        return check

    def _binding_of(self, ctx: SecurityContext) -> tuple[int, _Binding] | None:
        """(reload count at accept, the binding that accepted ``ctx``), or None: a PSK association
        of an endpoint whose configuration this listener does not know."""
        try:
            endpoint = ctx.engine.context.saef_endpoint
            pv = ctx.engine.peer_verification
        except (SAEFError, AttributeError):
            return None
        generation, bindings = self._in_force.get(endpoint, (self._generation, None))
        if ctx.framework == "certificate":
            if isinstance(pv, tuple) and len(pv) == 2 and isinstance(pv[0], AssociationConfiguration):
                return generation, _Binding("cert", pv[0], "[[saef_cert]] binding")
            return None
        if bindings is None or ctx.psk_identity is None:
            return None
        entry = bindings.psk.get(ctx.psk_identity)
        if entry is None and self.mef is not None and self.mef.handles(ctx.psk_identity):
            kpsa = self.mef.lookup(ctx.psk_identity)  # what the handshake just used (None: already gone)
            return generation, _Binding("mef", kpsa, f"Kpsa of KeID {ctx.psk_identity!r} from the MEF")
        if entry is None:  # not a [[saef_psk]] entry: a Kc of the MAF-based SAEF, from the directory
            directory = bindings.maf  # of the configuration the handshake was accepted under
            kc = directory.lookup(ctx.psk_identity) if directory is not None else None
            return generation, _Binding("maf", (directory, kc), "[saef_maf] (the MAF-based SAEF)")
        return generation, _Binding("psk", entry, f"[[saef_psk]] binding of KpsaID {ctx.psk_identity!r}")

    def _retire(self, old: MAFSAEFDirectory) -> None:
        old.mark_retired()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: nothing of it runs (it never connected from here)
            return
        task = loop.create_task(old.retire())
        self._retiring[task] = old
        task.add_done_callback(lambda t: self._retiring.pop(t, None))

    def _status(self, clock: Callable[[], datetime]) -> SAEFCertStatus:
        if self.status is None:
            self.status = SAEFCertStatus(clock=clock)
            self.status.running = self._listening  # new refreshers start at commit
        return self.status

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def rejections(self) -> list[tuple[str, str | None, int]]:
        """The latest 7.2.1 refusals: (bound identity, From, RSC)."""
        return self.server.rejections

    @property
    def session_refusals(self) -> list[tuple[str, str | None, int]]:
        """The latest requests refused on an association whose certificate was revoked since its
        handshake: (bound identity, From, 4106)."""
        return self.server.session_refusals

    @property
    def handshake_errors(self) -> list[BaseException]:
        return self.server.handshake_errors

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> SAEFListener:
        if self.status is not None:  # CRL URLs fetched before the first association
            await self.status.start()
        await self.stapling.start()  # the first OCSP staple before the first handshake
        await self.server.start(host, port)
        self._listening = True
        if self._maf_task is None:
            self._maf_task = asyncio.get_running_loop().create_task(self._maf_rechecks())
        self.host = host
        self.port = self.server.address[1]
        return self

    async def close(self) -> None:
        self._listening = False
        if self._maf_task is not None:
            self._maf_task.cancel()
            await asyncio.gather(self._maf_task, return_exceptions=True)
            self._maf_task = None
        await self.server.close()
        if self.status is not None:
            await self.status.stop()
        await self.stapling.stop()
        if self.maf is not None:
            await self.maf.aclose()
        if self.mef is not None:
            await self.mef.aclose()
        for task, old in list(self._retiring.items()):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await old.aclose()

    async def __aenter__(self) -> SAEFListener:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _handle(self, msg: HTTPMessage, req: RequestPrimitive, ctx: SecurityContext) -> HttpResponse:
        headers = msg.headers
        if req.fr is None:  # 7.2.1: the association authenticates exactly one originator
            fr = normalise_originator(ctx.peer_id, cse_id=self.gateway.cse_id, sp_id=self.sp_id) or ctx.peer_id
            headers = [*headers, ("X-M2M-Origin", fr)]
        peer: Any = msg.peer
        addr = peer[0] if isinstance(peer, tuple) and peer and isinstance(peer[0], str) else None
        status, rh, body = await self.gateway.handle(msg.method, msg.target, headers, msg.body, peer=addr,
                                                     authenticated=ctx.peer_id)
        return status, [(k, v) for k, v in rh if k.lower() not in _HOP], body
