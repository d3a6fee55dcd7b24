"""Certificate status of the AEs on the gateway's SAEF listener (TS-0003 8.1.2.2 "Certificate
status verification", for the Certificate-Based SAEF of 8.2.2.2).

TS-0003 8.1.2.2 has the relying party check the status of a peer certificate with CRLs or OCSP;
where the CRLs come from and when OCSP is asked are left open.  For the ``[[saef_cert]]``
associations of ``gateway.toml`` this module fills that in as the MAF does for its clients
(profile P13/P14 for CRL URLs, P25 for OCSP):

* **CRL URLs** (``crl_urls``, ``crl_issuers``, ``crl_from_cdp``, ``crl_refresh_s``,
  ``crl_https_ca``): a :class:`~m2msec.pki.crl_fetch.CRLRefresher` per *group* of associations
  with the same CRL files, URLs, issuer certificates (RootOfTrustA + ``crl_issuers``), https CA
  and period; the group shares one :class:`~m2msec.pki.CRLStore` (file CRLs + fetched CRLs), so N
  AEs of one CA configured alike cause one fetch per URL, not N.  Every URL is fetched before
  the listener accepts its first association (:meth:`SAEFCertStatus.start`; a failure is logged,
  not fatal: the association's ``revocation`` decides what a missing CRL means), then refreshed
  (before nextUpdate, at least every ``crl_refresh_s``); a refreshed CRL is in the store the
  verify hook reads, so it applies to the next handshake without a restart.
* **SIGHUP** (:meth:`SAEFCertStatus.prepare` / :meth:`fetch` / :meth:`commit`, driven by
  :meth:`m2msec.gateway.saef.SAEFListener.reload_async`): every URL is fetched at once, *before*
  the new endpoint takes over (the old bindings stay in force meanwhile).  A group whose key is
  unchanged keeps its refresher (conditional GET state, schedule) and store; at commit the store
  gets the re-read file CRLs plus the CRLs the refresher fetched (a refused reload changes no
  store but by fresh CRLs of unchanged URLs).  A new group starts with the CRLs
  earlier groups fetched from the same URLs for the same issuers, so a CRL server that is down
  at SIGHUP time does not drop a revocation the gateway already knew.  Groups no longer
  configured stop.
* **CRL files only** (``crls`` without URLs): associations with the same list of files share
  one :class:`~m2msec.pki.CRLStore`, and a SIGHUP that keeps the list keeps the store and
  refills it with the files read again (at commit), so that established associations, which
  stay checked against the store of the binding that accepted them
  (:class:`m2msec.saef.status.AssociationSessionCheck`), see a rewritten CRL file.  The same
  holds for the store of a kept group above.  A store no longer configured (binding removed,
  CRL sources changed) is left as it was: its established associations keep being checked
  against the CRLs it last held and against the OCSP answers below.
* **OCSP** (``ocsp``, ``ocsp_url``, ``ocsp_https_ca``, ``ocsp_timeout_s``): a
  :class:`~m2msec.pki.ocsp_check.PeerOCSPChecker` with the association's ``revocation`` as
  ``AssociationConfiguration.peer_ocsp``; :func:`m2msec.saef.framework.certificate_server` makes
  it the engine's ``peer_status_check``, so a certificate whose status no current CRL or held
  answer gives is looked up while the gateway holds its Finished back, and REVOKED ends the
  handshake with ``certificate_revoked`` before the AE can send a request.  All checkers of the
  listener share one :class:`~m2msec.pki.ocsp.OCSPStore` that outlives reloads (a held GOOD
  answer until its nextUpdate, a REVOKED one for ever); associations with equal settings share
  one checker (one query for concurrent handshakes of one certificate).

Nothing here logs a key; URLs are logged without userinfo (:func:`~m2msec.pki.crl_fetch.redact_url`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from m2msec.gateway.config import SAEFCertEntry, SAEFConfig
from m2msec.pki import CRLError, CRLRefresher, CRLStore
from m2msec.pki.crl_fetch import verify_fetched_crl
from m2msec.pki.ocsp import OCSPStore
from m2msec.pki.ocsp_check import PeerOCSPChecker

__all__ = ["SAEFCertStatus", "StatusPlan"]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
_GroupKey = tuple[tuple[str, ...], tuple[str, ...], tuple[bytes, ...], str | None, float]
_FilesKey = tuple[str, ...]


def _group_key(entry: SAEFCertEntry) -> _GroupKey:
    der = serialization.Encoding.DER
    return (tuple(str(p) for p in entry.crl_files), entry.crl_urls,
            tuple(c.public_bytes(der) for c in entry.crl_issuer_certs),
            str(entry.crl_https_ca) if entry.crl_https_ca is not None else None,
            entry.crl_refresh.total_seconds())


@dataclass
class _Group:
    """Associations with the same CRL sources: one store, one refresher."""

    key: _GroupKey
    store: CRLStore
    refresher: CRLRefresher
    file_crls: list[x509.CertificateRevocationList]
    #: CRLs fetched by an earlier group from the same URLs for the same issuers (kept across reloads)
    carried: list[x509.CertificateRevocationList] = field(default_factory=list)
    new: bool = True

    def kept(self) -> list[x509.CertificateRevocationList]:
        """What a reload of the file CRLs must keep: carried and fetched CRLs."""
        return [*self.carried, *self.refresher.crls()]


@dataclass
class StatusPlan:
    """A configuration wired to status sources, not yet in force (:meth:`SAEFCertStatus.commit`)."""

    config: SAEFConfig
    groups: list[_Group]
    #: every URL of the plan was fetched (:meth:`SAEFCertStatus.fetch`): commit triggers nothing
    fetched: bool = False
    #: stores of the associations with CRL files only: (store, the files' CRLs read for this plan,
    #: the store was in force before: refilled at commit)
    file_stores: dict[_FilesKey, tuple[CRLStore, list[x509.CertificateRevocationList], bool]] = \
        field(default_factory=dict)

    @property
    def new_refreshers(self) -> list[CRLRefresher]:
        return [g.refresher for g in self.groups if g.new]


class SAEFCertStatus:
    """The status sources of a SAEF listener's certificate associations (see the module docstring).

    ``prepare(config)`` -> :class:`StatusPlan` (its ``config`` is what the endpoint is built
    from), ``await fetch(plan)`` (optional), ``commit(plan)``.  :meth:`start` fetches every URL and
    starts the refreshers (before listening), :meth:`stop` stops them.
    """

    def __init__(self, *, clock: Clock) -> None:
        self.clock = clock
        self.ocsp_store = OCSPStore()
        self.groups: list[_Group] = []
        #: the stores of associations with CRL files and no URLs, by their list of files
        self.file_stores: dict[_FilesKey, CRLStore] = {}
        self.running = False
        self._stopping: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"SAEFCertStatus(groups={len(self.groups)}, running={self.running})"

    @property
    def refreshers(self) -> list[CRLRefresher]:
        return [g.refresher for g in self.groups]

    # ---------------------------------------------------------------- plan

    def prepare(self, config: SAEFConfig) -> StatusPlan:
        """``config`` with each certificate association wired to its CRL store (shared per group)
        and OCSP checker.  Changes nothing in force; ValueError for settings a checker refuses."""
        old = {g.key: g for g in self.groups}
        groups: dict[_GroupKey, _Group] = {}
        checkers: dict[tuple[Any, ...], PeerOCSPChecker] = {}
        certs: list[SAEFCertEntry] = []
        files: dict[_FilesKey, tuple[CRLStore, list[x509.CertificateRevocationList], bool]] = {}
        for entry in config.certs:
            assoc = entry.association
            store = assoc.peer_crls
            if entry.crl_urls:
                key = _group_key(entry)
                group = groups.get(key)
                if group is None:
                    group = groups[key] = self._group(key, entry, old.get(key))
                store = group.store
            elif store is not None and entry.crl_files:
                fkey = tuple(str(p) for p in entry.crl_files)
                if fkey not in files:
                    kept = self.file_stores.get(fkey)  # refilled at commit, unchanged until then
                    files[fkey] = (kept if kept is not None else store, list(store), kept is not None)
                store = files[fkey][0]
            checker = None
            if entry.ocsp is not None:
                o = entry.ocsp
                okey = (o.url, o.https_ca, o.timeout, assoc.revocation)
                checker = checkers.get(okey)
                if checker is None:
                    checker = checkers[okey] = PeerOCSPChecker(
                        clock=self.clock, policy=assoc.revocation, url=o.url, https_ca=o.https_ca,
                        timeout=o.timeout, store=self.ocsp_store)
            assoc = dataclasses.replace(assoc, peer_crls=store, peer_ocsp=checker)
            certs.append(dataclasses.replace(entry, association=assoc, status_wired=True))
        return StatusPlan(dataclasses.replace(config, certs=tuple(certs)), list(groups.values()),
                          file_stores=files)

    def _group(self, key: _GroupKey, entry: SAEFCertEntry, old: _Group | None) -> _Group:
        file_crls = list(entry.association.peer_crls or ())  # read by load_config just now
        if old is not None:  # the refresher and its store stay; the store is refilled at commit
            return _Group(key, old.store, old.refresher, file_crls, old.carried, new=False)
        issuers = entry.crl_issuer_certs
        now = self.clock()
        carried: list[x509.CertificateRevocationList] = []
        for g in self.groups:  # earlier fetches of these URLs that these issuers vouch for
            if set(g.key[1]) & set(entry.crl_urls):
                for crl in g.kept():
                    try:
                        verify_fetched_crl(crl, issuers, now=now)
                    except CRLError:  # not vouched for by this group's issuers
                        continue
                    carried.append(crl)
        store = CRLStore([*file_crls, *carried])
        refresher = CRLRefresher(store, entry.crl_urls, issuers, clock=self.clock, period=entry.crl_refresh,
                                 https_ca=entry.crl_https_ca)
        return _Group(key, store, refresher, file_crls, carried)

    async def fetch(self, plan: StatusPlan) -> None:
        """Fetch every URL of the plan now, concurrently (failures are logged; the previous CRLs
        stay): new groups into their own store, kept groups into the store in force."""
        await asyncio.gather(*(g.refresher.refresh() for g in plan.groups))
        plan.fetched = True

    def commit(self, plan: StatusPlan) -> None:
        """Put ``plan`` in force: kept groups get the re-read file CRLs (and keep what they
        fetched) and fetch at once, new groups start refreshing, dropped groups stop."""
        keep = {id(g.refresher) for g in plan.groups}
        for g in self.groups:
            if id(g.refresher) not in keep:
                self._stop_later(g.refresher)
        for g in plan.groups:
            if not g.new:
                g.store.replace([*g.file_crls, *g.kept()])
                if not plan.fetched:
                    g.refresher.trigger()
            elif self.running:
                g.refresher.start()
            g.new = False
        self.groups = plan.groups
        for store, crls, kept in plan.file_stores.values():
            if kept:
                store.replace(crls)
        self.file_stores = {k: v[0] for k, v in plan.file_stores.items()}

    # ---------------------------------------------------------------- lifetime

    async def start(self) -> None:
        """Fetch every URL once (before the listener accepts associations), then keep them fresh."""
        await asyncio.gather(*(g.refresher.refresh() for g in self.groups))
        for g in self.groups:
            g.refresher.start()
        self.running = True

    async def stop(self) -> None:
        self.running = False
        for g in self.groups:
            await g.refresher.stop()
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

    def _stop_later(self, refresher: CRLRefresher) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # never started: nothing runs
            return
        task = loop.create_task(refresher.stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
