"""Certificate status of *established* Certificate-Based SAEF associations (TS-0003 8.1.2.2 for
the associations of 8.2.2.2; TS-0004 7.3 ORIGINATOR_NOT_AUTHENTICATED).

The handshake of a Certificate-Based SAEF server (:func:`m2msec.saef.framework.certificate_server`)
checks the peer's certificates against the accepting Association Configuration's
``peer_crls`` and, with ``peer_ocsp``, the OCSP answers its checker holds or fetches.  A
keep-alive association outlives that moment.  :class:`AssociationSessionCheck` is the
``session_check`` of :class:`m2msec.saef.http.SAEFHTTPServer` that closes the gap, with
:mod:`m2msec.pki.session_status` (no network query per request):

* asked once per association, when it is bound: for a certificate association it returns the
  :meth:`~m2msec.pki.session_status.SessionStatus.revoked` of a session over the status
  sources of the Association Configuration that accepted the peer's certificate (its
  ``peer_crls`` store, the ``store`` of its ``peer_ocsp`` checker), the same objects the
  handshake read; None (nothing per request) for a PSK association, an association whose
  ``revocation`` is ``off`` (its handshake ignores status, so a reconnect would be accepted
  again), one without any status source, or a path without a trust anchor;
* before each request the server calls it: one addition and one integer comparison while
  neither store changed; after a change (a CRL refresh or reload, a new OCSP answer fetched by
  any handshake) the association's validated path is checked once against the current content
  (policy ``if-available``: only a revocation counts);
* a revoked certificate of the path makes the server answer 4106 and close the connection
  (:class:`~m2msec.saef.http.SAEFHTTPServer`).

Sessions accepted under the same pair of stores share one
:class:`~m2msec.pki.session_status.SessionStatusGuard` (held while one of them lives).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from datetime import datetime

from m2msec.pki import RevocationPolicy, VerifiedPeer
from m2msec.pki.session_status import SessionStatusGuard
from m2msec.saef.config import AssociationConfiguration
from m2msec.saef.context import SAEFError, SecurityContext

__all__ = ["AssociationSessionCheck", "SessionCheck"]

Clock = Callable[[], datetime]
#: asked before each request of one association: None while its authentication holds, else why not
SessionCheck = Callable[[], "str | None"]


class AssociationSessionCheck:
    """``session_check`` for :class:`~m2msec.saef.http.SAEFHTTPServer` over certificate server
    endpoints (see the module docstring); ``clock`` is the time the CRLs are read at.

    ``watched`` counts the associations given a per-request check."""

    def __init__(self, *, clock: Clock) -> None:
        self.clock = clock
        self.watched = 0
        self._guards: weakref.WeakValueDictionary[tuple[int, int], SessionStatusGuard] = \
            weakref.WeakValueDictionary()

    def __repr__(self) -> str:
        return f"AssociationSessionCheck(watched={self.watched})"

    def __call__(self, ctx: SecurityContext) -> SessionCheck | None:
        if ctx.framework != "certificate" or ctx.verified_peer is None:
            return None
        try:
            pv = ctx.engine.peer_verification
        except SAEFError:  # no engine attached (a context built by hand): nothing to read the association from
            return None
        if not (isinstance(pv, tuple) and len(pv) == 2 and isinstance(pv[0], AssociationConfiguration)
                and isinstance(pv[1], VerifiedPeer)):
            return None
        assoc, verified = pv
        if RevocationPolicy(assoc.revocation) is RevocationPolicy.OFF:
            return None
        crls = assoc.peer_crls
        ocsp = assoc.peer_ocsp.store if assoc.peer_ocsp is not None else None
        if crls is None and ocsp is None:
            return None
        key = (id(crls), id(ocsp))  # the guard holds both stores: an id is not reused while it lives
        guard = self._guards.get(key)
        if guard is None:
            guard = SessionStatusGuard(crls=crls, ocsp=ocsp, clock=self.clock)
            self._guards[key] = guard
        status = guard.session(verified)
        if status is None:
            return None
        self.watched += 1
        return status.revoked
