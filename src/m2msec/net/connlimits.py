"""Connection limits of the long-running services' TLS listeners (MAF, MEF, gateway SAEF).

TS-0003 leaves the protection of a service against resource exhaustion to the deployment
(6.2.5.2: the platform's availability; 8.1.2 says nothing about how many TLS sessions a
server holds).  Without a limit, anyone who can reach a listener can open TCP connections
and hold each of them for the whole handshake timeout (10 s) without sending a byte; a few
hundred such connections use up the process's file descriptors (``RLIMIT_NOFILE``, often
1024), and then no legitimate client gets in.  A :class:`ConnectionGate` admits a new
connection only while

* fewer than ``max_connections`` connections of this listener (handshaking or established)
  are open, and
* fewer than ``max_per_source`` of them come from the connection's *source*: its IPv4
  address, or its IPv6 /64 prefix (one host typically owns a whole /64, so counting single
  IPv6 addresses would bound nothing); an IPv4-mapped IPv6 address counts as its IPv4 address.

When the listener is full (``max_connections`` open) and a connection comes from a source
under its own limit, the gate first *evicts* the oldest connection that is still in its TLS
handshake and has been for at least ``evict_after`` seconds (default 1 s; a TLS 1.2 handshake
of a genuine client takes milliseconds): that one is aborted, uncounted and unreported (it is
what a flood of idle connections from many addresses looks like), and the new connection takes
its place.  The time a handshake spends waiting for the *server's* own work (a MAF's Km fetch
from the MEF for a KeID, an OCSP check of a client certificate: :meth:`ConnectionGate.server_busy`)
does not count towards ``evict_after`` and such a handshake is not evicted while it waits, so a
genuine client is not dropped because a back-end was slow (the handshake timeout still ends it).
Established sessions are never evicted, and nothing is evicted for the per-source
limit.  So idle connections from many sources can no longer keep every new client out for the
whole handshake timeout; only a rate of new connections that turns the whole listener over
within ``evict_after`` can.  Listeners without a handshake (the gateway's plain HTTP listener,
an AE's notification endpoint) do not take part: they refuse when full.

A connection beyond a limit is aborted (TCP RST) before any TLS byte is read: no handshake,
no store look-up, no audit record, no TLS alert (there is no session to send it in).  The
refusals are counted (:attr:`ConnectionGate.refused`) and logged at WARNING at most once per
``log_interval`` seconds with the number refused since the last line, so a flood cannot fill
the log either.  The gate is per listener and per process (``m2msec maf serve --workers N``:
each process admits up to the limits).

Several listeners in one process (the MEF's TLS listener and its ``crl_port``, the gateway's
two listeners) also share one *process budget*: all gates of a process together admit at most
the soft open-file limit (``RLIMIT_NOFILE``) minus 64 connections, so flooding every listener
at once cannot use up the descriptors the process needs for its store, logs and outgoing
connections (a full budget evicts a stale handshake of the admitting listener, else refuses).

Defaults (profile T13, ``docs/configuration.md``): 1024 connections per listener,
lowered to the process's open-file limit minus 64 (for the store, logs and outgoing
connections) when that is smaller; 128 per source.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import resource
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PROCESS_BUDGET",
    "ConnectionGate",
    "ConnectionLimits",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_PER_SOURCE",
    "MAX_CONNECTIONS_LIMIT",
    "ProcessBudget",
    "default_max_connections",
    "source_key",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_PER_SOURCE = 128
#: the largest accepted value of either limit
MAX_CONNECTIONS_LIMIT = 1_000_000
#: file descriptors kept free for everything else the process opens
_FD_RESERVE = 64


def default_max_connections() -> int:
    """1024, or the soft ``RLIMIT_NOFILE`` minus 64 when that is smaller (at least 16)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(16, min(DEFAULT_MAX_CONNECTIONS, soft - _FD_RESERVE))


class ProcessBudget:
    """The connections every :class:`ConnectionGate` of this process holds together, against
    ``limit()`` (default: the soft open-file limit minus 64, read at each admission; None = no
    limit).  Thread-safe: gates on several event loops share it."""

    def __init__(self, limit: Callable[[], int | None] | None = None) -> None:
        self._limit = limit if limit is not None else self._fd_limit
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.open = 0

    @staticmethod
    def _fd_limit() -> int | None:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return None if soft == resource.RLIM_INFINITY else max(16, soft - _FD_RESERVE)

    def limit(self) -> int | None:
        return self._limit()

    def take(self) -> bool:
        limit = self._limit()
        with self._lock:
            if self._pid != os.getpid():  # a forked child holds none of its parent's connections
                self._pid, self.open = os.getpid(), 0
            if limit is not None and self.open >= limit:
                return False
            self.open += 1
            return True

    def give(self) -> None:
        with self._lock:
            if self._pid == os.getpid() and self.open > 0:
                self.open -= 1


#: the budget of this process (every gate's default)
PROCESS_BUDGET = ProcessBudget()


def source_key(peername: Any) -> str:
    """What a connection counts against: its IPv4 address or IPv6 /64 (``"?"`` when unknown,
    e.g. a Unix socket: all such connections share one source)."""
    host = peername[0] if isinstance(peername, tuple) and peername else None
    if not isinstance(host, str):
        return "?"
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    except ValueError:
        return "?"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def _limit(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONNECTIONS_LIMIT:
        raise ValueError(f"{name} must be an integer from 1 to {MAX_CONNECTIONS_LIMIT}")
    return value


@dataclass(frozen=True)
class ConnectionLimits:
    """``max_connections`` open connections per listener, ``max_per_source`` per source."""

    max_connections: int
    max_per_source: int = DEFAULT_MAX_PER_SOURCE

    def __post_init__(self) -> None:
        _limit(self.max_connections, "max_connections")
        _limit(self.max_per_source, "max_connections_per_ip")

    @classmethod
    def default(cls) -> ConnectionLimits:
        return cls(default_max_connections(), DEFAULT_MAX_PER_SOURCE)

    @classmethod
    def from_toml(cls, table: Mapping[str, Any], *, total_key: str = "max_connections",
                  source_key_name: str = "max_connections_per_ip") -> ConnectionLimits:
        """The limits of a configuration table (absent keys: the defaults); ValueError names the key."""
        total = _limit(table[total_key], total_key) if total_key in table else default_max_connections()
        per = (_limit(table[source_key_name], source_key_name) if source_key_name in table
               else DEFAULT_MAX_PER_SOURCE)
        return cls(total, per)


class ConnectionGate:
    """Counts a listener's open connections; :meth:`admit` each new one, :meth:`release` it when closed.

    Not thread-safe: one gate belongs to one event loop (the listener's)."""

    def __init__(self, limits: ConnectionLimits | None = None, *, name: str = "listener",
                 log_interval: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 evict_after: float = 1.0, budget: ProcessBudget | None = None) -> None:
        self.limits = limits if limits is not None else ConnectionLimits.default()
        #: shared with the process's other listeners (see the module docstring)
        self.budget = budget if budget is not None else PROCESS_BUDGET
        self.name = name
        self.log_interval = log_interval
        self._clock = clock
        #: a handshake must have lasted this long (seconds) before a full listener evicts it
        self.evict_after = evict_after
        self.open = 0
        self._per_source: dict[str, int] = {}
        #: connections still in their handshake: token -> (since, source key, evict); ``since``
        #: is moved later by the time the server kept it waiting (:meth:`server_busy`)
        self._handshaking: dict[int, tuple[float, str, Callable[[], None]]] = {}
        #: handshakes waiting for the server's own work, not evictable: token -> (entry, busy since)
        self._busy: dict[int, tuple[tuple[float, str, Callable[[], None]], float]] = {}
        self._next_token = 0
        #: connections refused so far (total, and of them because of the per-source limit)
        self.refused = 0
        self.refused_per_source = 0
        #: handshaking connections evicted to make room for new ones
        self.evicted = 0
        self._unlogged = 0
        self._unlogged_evicted = 0
        self._last_log: float | None = None

    def __repr__(self) -> str:
        return (f"ConnectionGate({self.name!r}, open={self.open}/{self.limits.max_connections}, "
                f"per_source<={self.limits.max_per_source}, refused={self.refused}, evicted={self.evicted})")

    def open_from(self, source: str) -> int:
        return self._per_source.get(source, 0)

    def admit(self, peername: Any) -> str | None:
        """The source key the new connection counts against, or None when it must be refused
        (a full listener first evicts its oldest stale handshake, see the module docstring)."""
        key = source_key(peername)
        n = self._per_source.get(key, 0)
        if n >= self.limits.max_per_source:
            self.refused_per_source += 1
            self._refuse(key, f"{n} connections open from {key} (max_connections_per_ip {self.limits.max_per_source})")
            return None
        if self.open >= self.limits.max_connections and not self._evict_oldest():
            self._refuse(key, f"{self.open} connections open (max_connections {self.limits.max_connections})")
            return None
        if not self.budget.take() and not (self._evict_oldest() and self.budget.take()):
            self._refuse(key, f"{self.budget.open} connections open in this process's listeners together "
                              f"(open-file budget {self.budget.limit()})")
            return None
        self.open += 1
        self._per_source[key] = n + 1
        return key

    def handshaking(self, key: str, evict: Callable[[], None]) -> int:
        """An admitted connection (counted against ``key``) starts its handshake; ``evict()``
        aborts it if the gate needs its place (the gate releases it itself then).  Returns
        the token for :meth:`handshake_over`."""
        token = self._next_token
        self._next_token += 1
        self._handshaking[token] = (self._clock(), key, evict)
        return token

    def handshake_over(self, token: int) -> None:
        """The handshake of ``token`` completed or failed: no longer a candidate for eviction."""
        self._handshaking.pop(token, None)
        self._busy.pop(token, None)

    def server_busy(self, token: int) -> None:
        """The handshake of ``token`` now waits for the server's own work: not evictable, and the
        wait does not count towards ``evict_after`` (until :meth:`server_done`)."""
        entry = self._handshaking.pop(token, None)
        if entry is not None:
            self._busy[token] = (entry, self._clock())

    def server_done(self, token: int) -> None:
        """The server's work for the handshake of ``token`` is done: it waits for its client again."""
        item = self._busy.pop(token, None)
        if item is not None:
            (since, key, evict), busy_since = item
            self._handshaking[token] = (since + (self._clock() - busy_since), key, evict)

    @property
    def in_handshake(self) -> int:
        return len(self._handshaking) + len(self._busy)

    def _evict_oldest(self) -> bool:
        if not self._handshaking:
            return False
        # the longest-waiting handshake (insertion order is not age order once a server wait
        # moved an entry's ``since``); only a full listener looks, over at most its limit
        token = min(self._handshaking, key=lambda t: self._handshaking[t][0])
        since, key, evict = self._handshaking[token]
        if self._clock() - since < self.evict_after:
            return False  # even the oldest handshake is young: it may be a genuine client's
        del self._handshaking[token]
        self.release(key)
        self.evicted += 1
        self._unlogged_evicted += 1
        try:
            evict()
        except Exception:  # noqa: BLE001 - the slot is free whatever the callback did
            log.exception("%s: evicting a handshaking connection failed", self.name)
        return True

    def release(self, key: str) -> None:
        """A connection :meth:`admit` counted against ``key`` has closed."""
        n = self._per_source.get(key, 0)
        if n <= 0:
            raise RuntimeError(f"release of a connection from {key!r} that was not admitted")
        if n == 1:
            del self._per_source[key]
        else:
            self._per_source[key] = n - 1
        self.open -= 1
        self.budget.give()

    def _refuse(self, key: str, why: str) -> None:
        self.refused += 1
        self._unlogged += 1
        now = self._clock()
        if self._last_log is None or now - self._last_log >= self.log_interval:
            # identifiers only: the source key is an address (or /64 prefix), never payload
            evicted = (f"; evicted {self._unlogged_evicted} stale handshake(s) to admit others"
                       if self._unlogged_evicted else "")
            log.warning("%s: refused %d connection(s) over the limit since the last report%s; latest from %s: %s",
                        self.name, self._unlogged, evicted, key, why)
            self._unlogged = 0
            self._unlogged_evicted = 0
            self._last_log = now
