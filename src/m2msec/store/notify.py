"""Change notifications between service instances on one store (DESIGN.md section 3).

Several instances (processes, hosts) share one database; an instance that caches what it
read (the MAF's Key Retrieval cache, TS-0003 8.8.2.8) must learn at once when another
instance commits a change that makes the cached answer wrong (8.8.2.6 De-Registration,
8.8.2.9 Key Registration Update, 8.8.2.10 Key De-Registration).  The store offers:

* :meth:`Store.notify` / :meth:`Transaction.notify` ``(channel, payload)`` - part of the
  caller's transaction, so a notification exists exactly when the change committed;
* PostgreSQL: ``SELECT pg_notify(channel, payload)``, delivered by the server on commit to
  every session that ``LISTEN``\\ s on the channel; :meth:`Store.listen` runs such a session
  (:class:`PgListener`, a daemon thread with its own connection);
* SQLite (no server, no push channel): the notification bumps a per-channel sequence
  number (the version of record ``m2msec.notify/<channel>`` in ``m2msec_records``, no schema
  change); :meth:`Store.notify_seq` reads it with one primary-key SELECT, so a cache can
  check "did anything change since I read this?" before every hit.

A listener reports its state: ``on_state(True)`` once ``LISTEN`` is active (every change
committed after that is delivered), ``on_state(False)`` as soon as the connection is lost.
Notifications sent while no listener session existed are lost, so a cache must not serve
hits between ``on_state(False)`` and the next ``on_state(True)``, and must forget what it
holds when the listener comes back.  Lost connections are re-opened with exponential
backoff; TCP keepalives bound how long a silently dead connection goes unnoticed.
"""

from __future__ import annotations

import logging
import os
import re
import selectors
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from m2msec.store.errors import InvalidValue, StoreError

__all__ = ["Listener", "NOTIFY_NAMESPACE", "PgListener", "check_channel", "check_payload"]

log = logging.getLogger(__name__)

#: namespace of the SQLite sequence records (one per channel, version = sequence number)
NOTIFY_NAMESPACE = "m2msec.notify"
#: PostgreSQL identifiers are at most 63 bytes; lower case so that LISTEN and pg_notify agree
_CHANNEL = re.compile(r"[a-z_][a-z0-9_]{0,62}")
#: pg_notify payloads must be shorter than 8000 bytes
MAX_PAYLOAD = 7999


def check_channel(channel: str) -> str:
    if not isinstance(channel, str) or _CHANNEL.fullmatch(channel) is None:
        raise InvalidValue("a notification channel is 1-63 characters of [a-z0-9_], not starting with a digit")
    return channel


def check_payload(payload: str) -> str:
    if not isinstance(payload, str) or "\x00" in payload:
        raise InvalidValue("a notification payload is a string without NUL")
    if len(payload.encode("utf-8")) > MAX_PAYLOAD:
        raise InvalidValue(f"a notification payload is at most {MAX_PAYLOAD} bytes")
    return payload


class Listener(ABC):
    """Handle of :meth:`Store.listen`: ``connected`` tells whether notifications are being received."""

    channel: str

    @property
    @abstractmethod
    def connected(self) -> bool:
        """True while the LISTEN session is active (every change committed meanwhile is delivered)."""

    @property
    @abstractmethod
    def closed(self) -> bool:
        """True once :meth:`close` was called."""

    @abstractmethod
    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until the listener is connected (True) or ``timeout`` passed (False)."""

    @abstractmethod
    def close(self) -> None:
        """Stop listening (idempotent); no callback runs after this returns."""


class PgListener(Listener):
    """A ``LISTEN`` session on its own PostgreSQL connection, served by a daemon thread.

    ``callback(payload)`` runs on the listener thread for every notification on ``channel``;
    ``on_state(connected)`` runs there when the session becomes ready (after ``LISTEN``) or is
    lost.  Both must be quick and must not raise (an exception drops the connection: the
    listener reports ``on_state(False)`` and reconnects).  Reconnects wait ``min_backoff``
    seconds, doubling up to ``max_backoff``.
    """

    def __init__(self, connect: Callable[[], Any], channel: str, callback: Callable[[str], None],
                 on_state: Callable[[bool], None] | None = None, *, min_backoff: float = 0.05,
                 max_backoff: float = 5.0) -> None:
        self.channel = check_channel(channel)
        self._connect = connect
        self._callback = callback
        self._on_state = on_state
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._closed = False
        self._lock = threading.Lock()
        #: how many times the session was (re)established
        self.connects = 0
        self._thread = threading.Thread(target=self._run, name=f"m2msec-listen-{channel}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"PgListener(channel={self.channel!r}, connected={self.connected})"

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    @property
    def closed(self) -> bool:
        return self._closed

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # pragma: no cover - pipe full: the thread is waking anyway
            pass
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)
        os.close(self._wake_w)

    # ---------------------------------------------------------------- listener thread

    def _state(self, up: bool) -> None:
        if up:
            self._ready.set()
        else:
            self._ready.clear()
        if self._on_state is not None:
            try:
                self._on_state(up)
            except Exception:  # noqa: BLE001 - a broken callback must not stop the listener
                log.exception("notification listener state callback failed")

    def _run(self) -> None:
        delay = self.min_backoff
        try:
            while not self._stop.is_set():
                up = False
                conn: Any = None
                try:
                    conn = self._connect()
                    if self._stop.is_set():
                        break
                    conn.execute(f'LISTEN "{self.channel}"')  # channel checked: [a-z0-9_] only
                    up = True
                    self.connects += 1
                    self._state(True)
                    delay = self.min_backoff
                    self._serve(conn)
                except Exception as exc:  # noqa: BLE001 - driver errors, callback errors: reconnect
                    if not self._stop.is_set():
                        log.warning("notification listener on %r lost its connection: %s",
                                    self.channel, (str(exc).strip().splitlines() or [type(exc).__name__])[0])
                finally:
                    if up:
                        self._state(False)
                    if conn is not None:
                        try:
                            conn.close()
                        except Exception:  # noqa: BLE001 - closing a broken connection
                            pass
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, self.max_backoff)
        finally:
            os.close(self._wake_r)

    def _serve(self, conn: Any) -> None:
        """Deliver notifications until stopped or the connection fails (raises)."""
        from psycopg import pq  # noqa: PLC0415 - only PostgreSQL users have psycopg

        pg = conn.pgconn
        enc = conn.info.encoding or "utf-8"
        with selectors.DefaultSelector() as sel:
            sel.register(pg.socket, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stop.is_set():
                sel.select()
                if self._stop.is_set():
                    return
                pg.consume_input()  # raises on a lost connection (EOF, reset, keepalive timeout)
                if pg.status != pq.ConnStatus.OK:
                    raise StoreError("postgresql: listener connection is not OK")
                while (n := pg.notifies()) is not None:
                    self._callback(n.extra.decode(enc, "replace"))
