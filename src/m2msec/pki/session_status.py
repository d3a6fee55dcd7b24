"""Certificate status of established sessions (TS-0003 8.1.2.2; TS-0004 7.3.x ORIGINATOR_NOT_AUTHENTICATED).

TS-0003 8.1.2.2 has the relying party verify the status of a peer certificate; the MAF and the
MEF do it inside the TLS handshake (:mod:`m2msec.tls.pkiverify`, :mod:`m2msec.pki.ocsp_check`).
A keep-alive connection outlives that moment: a certificate revoked after the handshake would
go on authenticating every request of the session.  :class:`SessionStatusGuard` closes that
gap without a network query per request:

* one guard per server, over the status sources the server already holds: its
  :class:`~m2msec.pki.crl.CRLStore` (files, refreshed by SIGHUP and by the CRL refresher)
  and its :class:`~m2msec.pki.ocsp.OCSPStore` (answers fetched by
  :class:`~m2msec.pki.ocsp_check.PeerOCSPChecker` for any handshake, held until their
  nextUpdate, REVOKED for good);
* one :class:`SessionStatus` per certificate session (:meth:`SessionStatusGuard.session`;
  None for PSK sessions, pinned certificates without a path, or a server without status
  sources: those sessions pay nothing);
* before each request the server calls :meth:`SessionStatus.revoked`.  Both stores count
  their changes (``generation``); while the sum of the two counters equals the one the
  session last checked at, the call is one addition and one integer comparison.  On the
  session's first request and after each change (a CRL refresh, a new OCSP answer) the
  session's validated path (the parsed certificates kept from its handshake, never
  re-parsed) is checked once against the current content with
  :func:`~m2msec.pki.crl.check_path_revocation` (policy ``if-available``: only a revocation
  counts) and the verdict is kept until the next change;
* a certificate of the path listed on a CRL whose signature verifies with its issuer's key,
  or named REVOKED by a verified OCSP answer, makes the session revoked for good: the server
  answers the request with ORIGINATOR_NOT_AUTHENTICATED (4106, HTTP 403; TS-0004 7.3: a
  request inside a security association whose authentication no longer holds) and closes
  the connection.  A CRL that turned stale, unusable or absent since the handshake does not
  end a session (only a revocation does; new handshakes apply ``revocation`` as before);
* further sources (``extra``, :class:`SessionStatusSource`) follow the same rule: a
  ``generation()`` that grows when their answer may have changed and a ``check(verified)``
  run only then - the MEF's record of its own EST certificate revocations
  (:class:`m2msec.mef.revocation_watch.OwnRevocationWatch`).  A source that cannot answer
  now (its store is unreachable or locked) raises :class:`StatusUnavailable`: the other sources
  still decide (a revocation they know ends the session), but the session is not marked as
  checked at this generation, so its next request asks again instead of waiting for the next
  change (a transient failure must not hide a revocation for good).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from m2msec.pki.crl import CRLStore, RevocationPolicy, check_path_revocation
from m2msec.pki.errors import CertificateVerificationError, VerificationReason
from m2msec.pki.ocsp import OCSPStore
from m2msec.pki.verify import VerifiedPeer

__all__ = ["SessionStatus", "SessionStatusGuard", "SessionStatusSource", "StatusUnavailable"]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


class StatusUnavailable(Exception):
    """A status source could not answer now (e.g. its store failed); ask again next time."""


class SessionStatusSource(Protocol):
    """Another source of revocations: ``generation()`` only grows, and grows whenever
    ``check`` may answer differently; ``check(verified)`` is why the session is revoked, or None,
    or raises :class:`StatusUnavailable` when it cannot tell now."""

    def generation(self) -> int: ...

    def check(self, verified: VerifiedPeer) -> str | None: ...


class SessionStatusGuard:
    """The current status of established certificate sessions, from ``crls`` and ``ocsp`` (either
    may be None) and the ``extra`` sources.

    ``rechecks`` counts the path checks run (a session checks again only after a source changed).
    """

    def __init__(self, *, crls: CRLStore | None, ocsp: OCSPStore | None, clock: Clock,
                 extra: Sequence[SessionStatusSource] = ()) -> None:
        self.crls = crls
        self.ocsp = ocsp
        self.clock = clock
        self.extra = tuple(extra)
        self.rechecks = 0

    def __repr__(self) -> str:
        return (f"SessionStatusGuard(crls={self.crls is not None}, ocsp={self.ocsp is not None}, "
                f"extra={len(self.extra)})")

    @property
    def active(self) -> bool:
        return self.crls is not None or self.ocsp is not None or bool(self.extra)

    def generation(self) -> int:
        """Grows whenever a source changes (every counter only grows)."""
        gen = ((self.crls._generation if self.crls is not None else 0)
               + (self.ocsp._generation if self.ocsp is not None else 0))
        for src in self.extra:
            gen += src.generation()
        return gen

    def session(self, verified: VerifiedPeer | None) -> SessionStatus | None:
        """The status of a session whose handshake verified ``verified`` (None: nothing to watch)."""
        if verified is None or verified.trust_anchor is None or not verified.path or not self.active:
            return None
        return SessionStatus(self, verified)

    def check(self, verified: VerifiedPeer) -> str | None:
        """Why the path of ``verified`` is revoked now (None: not revoked).

        :class:`StatusUnavailable` if no source knows a revocation but one could not answer."""
        assert verified.trust_anchor is not None
        self.rechecks += 1
        if self.crls is not None or self.ocsp is not None:
            try:
                check_path_revocation([*verified.path, verified.trust_anchor], crls=self.crls,
                                      policy=RevocationPolicy.IF_AVAILABLE, now=self.clock(), ocsp=self.ocsp)
            except CertificateVerificationError as exc:
                if exc.reason_code is VerificationReason.REVOKED:
                    return str(exc)
                log.warning("status of an established session of %s not re-checked: %s", verified.identifier, exc)
        unavailable: StatusUnavailable | None = None
        for src in self.extra:
            try:
                why = src.check(verified)
            except StatusUnavailable as exc:
                unavailable = exc  # the other sources may still know a revocation
                continue
            if why is not None:
                return why
        if unavailable is not None:
            raise unavailable
        return None


class SessionStatus:
    """One session's certificate status; :meth:`revoked` before each request (see the module docstring)."""

    __slots__ = ("_gen", "_guard", "_reason", "verified")

    def __init__(self, guard: SessionStatusGuard, verified: VerifiedPeer) -> None:
        self._guard = guard
        self.verified = verified
        # -1: the first request checks once (a refresh between the handshake's verify hook and
        # this moment must not be skipped); afterwards only a change of a store re-checks
        self._gen = -1
        self._reason: str | None = None

    def __repr__(self) -> str:
        return f"SessionStatus({self.verified.identifier!r}, revoked={self._reason is not None})"

    def revoked(self) -> str | None:
        """None while the session's certificates are not revoked, else why (for good)."""
        if self._reason is not None:
            return self._reason
        gen = self._guard.generation()
        if gen == self._gen:
            return None
        try:
            self._reason = self._guard.check(self.verified)
        except StatusUnavailable:
            return None  # not checked at ``gen``: the next request asks again
        self._gen = gen
        return self._reason
