"""The MEF's own revocations of its EST certificates as a status source of established sessions
(TS-0003 8.1.2.2 certificate status, 8.3.6 Certificate Enrolment; profile M19, P26).

``m2msec mef enrolee revoke`` and ``est-revoke`` (:meth:`MEFState.revoke_enrolee_report`,
:meth:`ESTService.revoke_certificate`) record a revocation of a certificate the MEF's EST CA
issued as a ``mef.est.revoked`` record (:func:`m2msec.mef.state.revoke_issued`).  A new
certificate handshake reads that record (``_CertVerifier`` in :mod:`m2msec.mef.server`), so no
CRL is needed to refuse it; an established session ran its handshake before the revocation.
:class:`OwnRevocationWatch` is the third source of the server's
:class:`~m2msec.pki.session_status.SessionStatusGuard` (beside the enrolee CRLs and held OCSP
answers): its :meth:`~OwnRevocationWatch.generation` changes when a revocation may have been
recorded, and only then does a session look its leaf certificate up in the store
(:meth:`~OwnRevocationWatch.check`, one primary-key read per session and change).  Between
changes a request costs an integer comparison.

Where the changes come from:

* this process: :attr:`MEFState.est_revocations`, bumped after each committed revocation
  (immediate);
* any process on the store (another MEF instance, the CLI): :func:`revoke_issued` sends a
  store notification on :data:`~m2msec.mef.state.EST_REVOKED_CHANNEL` in the revoking
  transaction (:mod:`m2msec.store.notify`):

  - PostgreSQL: a listener session of this server receives it on commit and bumps the
    generation (bound: the notification's delivery, milliseconds).  While the listener is
    not connected (start-up, a lost connection, its reconnect backoff) the generation changes
    on every call - every request of a certificate session looks the record up - and the
    reconnect itself counts as a change (notifications may have been missed).  A connection
    that died silently is noticed by TCP keepalive, as for the MAF's retrieval cache;
  - SQLite: the notification bumps the channel's sequence number in the database; the
    watch reads it (one primary-key SELECT) at most once per ``poll_interval`` (default
    :data:`DEFAULT_POLL_S` = 1 s), on a request, so a revocation committed by another process
    is seen by every request that starts ``poll_interval`` or later after the commit.  A
    failed read counts as a change.

A session whose leaf certificate has a revocation record is revoked for good (4106, HTTP 403,
``Connection: close``, audited by :class:`~m2msec.mef.server.MEFServer`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from m2msec.mef.state import EST_REVOKED_CHANNEL
from m2msec.pki.session_status import StatusUnavailable
from m2msec.pki.verify import VerifiedPeer
from m2msec.store import Listener, StoreError

if TYPE_CHECKING:
    from m2msec.mef.state import MEFState

__all__ = ["DEFAULT_POLL_S", "OwnRevocationWatch"]

log = logging.getLogger(__name__)

#: SQLite: the longest a revocation committed by another process stays unseen by a session
DEFAULT_POLL_S = 1.0


class OwnRevocationWatch:
    """Change counter and check of the MEF's own EST certificate revocations (see the module docstring)."""

    def __init__(self, state: MEFState, *, poll_interval: float = DEFAULT_POLL_S,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if not 0 < poll_interval <= 3600:
            raise ValueError("poll_interval must be more than 0 and at most 3600 seconds")
        self.state = state
        self.poll_interval = poll_interval
        self._monotonic = monotonic
        #: "listen" (PostgreSQL notifications) or "seq" (SQLite sequence number, polled)
        self.mode = "listen" if state.store.can_listen else "seq"
        self._listener: Listener | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._notified = 0  # notifications and listener (re)connections
        self._unwatched = 0  # calls while no listener is connected: every one is a change
        self._seq = 0
        self._seq_failures = 0
        self._polled_at = float("-inf")
        #: SQLite sequence reads (observability: at most one per poll_interval)
        self.polls = 0
        #: store look-ups of a session's certificate (observability)
        self.lookups = 0

    def __repr__(self) -> str:
        return f"OwnRevocationWatch(mode={self.mode}, poll_interval={self.poll_interval})"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """PostgreSQL: start the listener (idempotent; a daemon thread).  SQLite: nothing."""
        if self.mode != "listen":
            return
        with self._lock:
            if self._listener is not None or self._closed:
                return
            try:
                self._listener = self.state.store.listen(EST_REVOKED_CHANNEL, self._on_notification, self._on_state)
            except StoreError as exc:  # a closed store: every request re-checks
                log.warning("cannot listen for EST certificate revocations: %s", exc)

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """True once changes are pushed (PostgreSQL: the listener is connected; SQLite: at once)."""
        if self.mode != "listen":
            return True
        self.start()
        listener = self._listener
        return listener is not None and listener.wait_connected(timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def _on_notification(self, _payload: str) -> None:
        with self._lock:
            self._notified += 1

    def _on_state(self, connected: bool) -> None:
        with self._lock:
            self._notified += 1  # connected again: what was committed meanwhile was not delivered
        if not connected and not self._closed:
            log.warning("EST revocation listener disconnected: certificate sessions re-check every request")

    # -- the status source -----------------------------------------------------------------
    def generation(self) -> int:
        """Grows whenever a revocation may have been recorded (every part only grows)."""
        local = self.state.est_revocations
        if self.mode == "listen":
            listener = self._listener
            if listener is None or not listener.connected:
                self._unwatched += 1
            return local + self._notified + self._unwatched
        now = self._monotonic()
        if now - self._polled_at >= self.poll_interval:
            self._polled_at = now
            try:
                self._seq = self.state.store.notify_seq(EST_REVOKED_CHANNEL)
                self.polls += 1
            except StoreError as exc:
                self._seq_failures += 1
                log.warning("cannot read the EST revocation sequence: %s", exc)
        return local + self._seq + self._seq_failures

    def check(self, verified: VerifiedPeer) -> str | None:
        """Why the session's leaf certificate is revoked by this MEF (None: it is not)."""
        self.lookups += 1
        try:
            rec = self.state.revoked_certificate(verified.certificate)
        except StoreError as exc:
            log.warning("EST revocation of an established session of %s not checked (asked again at its next "
                        "request): %s", verified.identifier, exc)
            raise StatusUnavailable(str(exc)) from None
        if rec is None:
            return None
        return f"certificate {rec['serial']} was revoked by this MEF ({rec.get('reason') or 'unspecified'})"
