"""asyncio UDP adapter for DTLS 1.2 sessions (TS-0003 clause 10.2.1).

Each UDP datagram is fed to the engine on its own (``receive_data``) and each
datagram the engine produces (``datagrams_to_send``, at most ``mtu`` bytes) is
sent on its own.  Handshake retransmission follows OpenSSL's DTLS timer:
after every event the adapter re-arms ``loop.call_later(engine.get_timeout())``
and calls ``engine.handle_timeout()`` when it fires.  The server demultiplexes
peers by their (host, port) address, one :class:`DTLSSession` per peer.

By default the server runs the stateless cookie exchange of RFC 6347 4.2.1
(:mod:`m2msec.tls.dtls_cookie`): a datagram from an address without a session
goes to the server's :class:`~m2msec.tls.dtls_cookie.HelloVerifier`, which
answers a ClientHello without a valid cookie with one HelloVerifyRequest and
keeps nothing; a session (and its engine) exists only once a ClientHello
echoes a valid cookie.  ``cookie_exchange=False`` restores the old behaviour
(a session for every new address).

A PSK server whose configuration has ``psk_prefetch`` reads the client's ``psk_identity``
from the session's datagrams (:class:`~m2msec.tls.pskpeek.DTLSPSKIdentityPeek`) before the
engine does, as the TCP adapter does (:mod:`m2msec.tls.aio`): when ``psk_prefetch(identity)``
returns an awaitable (e.g. a MAF Key Retrieval, TS-0003 8.2.2.3), that datagram and the ones
after it (at most :data:`HELD_DATAGRAMS_MAX`; more are dropped, the client retransmits) are
held, and the retransmission timer paused, until it is done, in a task of the event loop
(other sessions are served), inside the handshake timeout; then the engine gets them in
order and its synchronous PSK callback answers from the fetched key.

A certificate server whose configuration has ``peer_status_check`` (e.g. OCSP about the client
certificate, TS-0003 8.1.2.2) gets the engine's held final flight as over TCP: when the engine
completed the handshake and holds its ChangeCipherSpec and Finished
(``engine.pending_status_check``), the session awaits the check in a task (other sessions are
served), inside the handshake timeout, with the retransmission timer paused; the client's
retransmissions of its flight meanwhile are held the same way (at most
:data:`HELD_DATAGRAMS_MAX`).  Passed: the flight is sent and the held datagrams follow (OpenSSL
answers a retransmitted Finished by resending its flight).  Refused: one plaintext fatal alert
(e.g. ``certificate_revoked``) is sent instead and the session ends; the client never gets our
Finished, so no application data of a refused client exists.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from m2msec.tls.engine import (
    Role,
    TLSConfig,
    TLSContext,
    TLSEngine,
    TLSError,
    TLSFailureReason,
    TLSHandshakeError,
    TLSState,
)
from m2msec.tls.dtls_cookie import DTLSCookies, HelloVerifier, ListenOutcome
from m2msec.tls.profiles import Transport
from m2msec.tls.pskpeek import DTLSPSKIdentityPeek, await_prefetch, start_prefetch

__all__ = ["HELD_DATAGRAMS_MAX", "DTLSSession", "DTLSServer", "open_dtls_connection", "start_dtls_server"]

#: datagrams held per session while ``psk_prefetch`` runs (the client's flight, retransmissions)
HELD_DATAGRAMS_MAX = 32

log = logging.getLogger(__name__)

Address = Any
SessionHandler = Callable[["DTLSSession"], Awaitable[Any]]


class DTLSSession:
    """One DTLS association with one peer address."""

    def __init__(self, engine: TLSEngine, transport: asyncio.DatagramTransport, addr: Address | None,
                 *, handshake_timeout: float = 10.0, on_close: Callable[[DTLSSession], None] | None = None) -> None:
        if engine.transport is not Transport.DTLS:
            raise ValueError("DTLSSession needs a DTLS engine")
        self.engine = engine
        self.addr = addr
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._records: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.handshake_done: asyncio.Future[TLSEngine] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = self._loop.call_later(handshake_timeout, self._handshake_timeout)
        self._on_close = on_close
        self.closed = False
        prefetch = engine.context.config.psk_prefetch if engine.role is Role.SERVER else None
        self._prefetch: Callable[[bytes], Any] | None = prefetch
        self._peek: DTLSPSKIdentityPeek | None = DTLSPSKIdentityPeek() if prefetch is not None else None
        self._held: list[bytes] | None = None  # datagrams held while psk_prefetch or the status check runs
        self._prefetch_task: asyncio.Task[None] | None = None
        self._status_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"DTLSSession(addr={self.addr!r}, {self.engine!r})"

    # -- internals ------------------------------------------------------------
    def _flush(self) -> None:
        for dgram in self.engine.datagrams_to_send():
            if self.addr is None:
                self._transport.sendto(dgram)
            else:
                self._transport.sendto(dgram, self.addr)

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.engine.state is not TLSState.HANDSHAKING:
            return
        t = self.engine.get_timeout()
        if t is not None:
            self._timer = self._loop.call_later(max(t, 0.0), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.engine.handle_timeout()
        except TLSHandshakeError as exc:
            self._fail(exc)
            return
        self._flush()
        self._arm_timer()

    def _handshake_timeout(self) -> None:
        if not self.handshake_done.done():
            self._fail(TLSHandshakeError(TLSFailureReason.TIMEOUT, "DTLS handshake timed out"))

    def _fail(self, exc: TLSHandshakeError) -> None:
        try:
            self._flush()
        except TLSError:
            pass
        if not self.handshake_done.done():
            self.handshake_done.set_exception(exc)
        self._finish()

    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        for h in (self._timer, self._deadline):
            if h is not None:
                h.cancel()
        for task in (self._prefetch_task, self._status_task):
            if task is not None and not task.done() and task is not asyncio.current_task():
                task.cancel()
        self._held = None
        self._records.put_nowait(None)
        if self._on_close is not None:
            self._on_close(self)

    def start(self) -> None:
        """Client: send the ClientHello.  Server: answer the ClientHello the engine already holds."""
        try:
            self.engine.do_handshake()
        except TLSHandshakeError as exc:
            self._fail(exc)
            return
        self._flush()
        self._arm_timer()

    def datagram_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self._held is not None:
            if len(self._held) < HELD_DATAGRAMS_MAX:
                self._held.append(data)
            return
        if self._peek is not None and not self._peek.done and not self.handshake_done.done():
            identity = self._peek.feed(data)
            if identity is not None and self._start_prefetch(identity, data):
                return
        self._receive(data)

    def _start_prefetch(self, identity: bytes, data: bytes) -> bool:
        """Call ``psk_prefetch``; True when its awaitable now holds ``data`` (and what follows) back."""
        assert self._prefetch is not None
        waiting = start_prefetch(self._prefetch, identity)
        if waiting is None:
            return False
        self._held = [data]
        if self._timer is not None:  # the client's flight is here: no retransmission of ours meanwhile
            self._timer.cancel()
            self._timer = None
        self._prefetch_task = self._loop.create_task(self._await_prefetch(waiting))
        return True

    async def _await_prefetch(self, waiting: Any) -> None:
        await await_prefetch(waiting)
        held, self._held = self._held or [], None
        self._receive_held(held)
        if not self.closed and self._held is None:
            self._arm_timer()

    def _receive_held(self, held: list[bytes]) -> None:
        for i, dgram in enumerate(held):
            if self.closed:
                return  # timed out (or failed) meanwhile
            if self._held is not None:  # the status check holds the session now: the rest waits too
                self._held.extend(held[i:])
                return
            self._receive(dgram)

    def _receive(self, data: bytes) -> None:
        try:
            self.engine.receive_data(data)
        except TLSHandshakeError as exc:
            self._fail(exc)
            return
        except TLSError as exc:
            log.info("DTLS record error from %s: %s", self.addr, exc)
            self._finish()
            return
        self._flush()
        if self.engine.pending_status_check is not None and self._status_task is None:
            self._hold_for_status()
            return
        self._arm_timer()
        self._after_input()

    def _after_input(self) -> None:
        if self.engine.established and not self.handshake_done.done():
            self._deadline.cancel()
            self.handshake_done.set_result(self.engine)
        for rec in self.engine.receive_application_records():
            self._records.put_nowait(rec)
        if self.engine.state is TLSState.CLOSED:
            self._flush()
            self._finish()

    def _hold_for_status(self) -> None:
        """The engine holds its final flight: hold the client's datagrams, pause the timer, await."""
        self._held = []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._status_task = self._loop.create_task(self._await_status(self.engine.pending_status_check))

    async def _await_status(self, waiting: Any) -> None:
        """Run the engine's pending peer status check; send the held flight or the refusal alert."""
        try:
            await waiting
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the check's refusal (or its failure) refuses the peer
            self._held = None
            if not self.closed:
                self._fail(self.engine.refuse_held_flight(exc))
            return
        if self.closed or not self.engine.release_held_flight():
            return  # timed out or closed meanwhile
        held, self._held = self._held or [], None
        try:
            self._flush()
        except TLSError:
            pass
        self._after_input()
        self._receive_held(held)  # the client's retransmissions while we waited (OpenSSL resends our flight)

    # -- public ---------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Send application data (one record per datagram, split at the MTU)."""
        self.engine.send_application_data(data)
        self._flush()

    async def recv(self, timeout: float | None = None) -> bytes:
        """Next application record; b"" once the session is closed."""
        item = await asyncio.wait_for(self._records.get(), timeout)
        if item is None:
            self._records.put_nowait(None)
            return b""
        return item

    def close(self) -> None:
        """Send close_notify and forget the session."""
        if self.engine.state is TLSState.ESTABLISHED:
            self.engine.close()
            try:
                self._flush()
            except TLSError:
                pass
        self._finish()


class _ClientProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.session: DTLSSession | None = None

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if self.session is not None:
            self.session.datagram_received(data)

    def error_received(self, exc: Exception) -> None:
        log.debug("DTLS client socket error: %s", exc)


async def open_dtls_connection(host: str, port: int, config: TLSConfig | TLSContext, *,
                               server_name: str | None = None, timeout: float = 10.0) -> DTLSSession:
    """Connect a UDP socket and complete the DTLS 1.2 handshake."""
    ctx = config if isinstance(config, TLSContext) else TLSContext(config)
    if ctx.config.role is not Role.CLIENT or ctx.config.transport is not Transport.DTLS:
        raise ValueError("open_dtls_connection needs a DTLS client configuration")
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_ClientProtocol, remote_addr=(host, port))
    assert isinstance(protocol, _ClientProtocol)
    session = DTLSSession(TLSEngine(ctx, server_name=server_name), transport, None, handshake_timeout=timeout,
                          on_close=lambda s: transport.close())
    protocol.session = session
    session.start()
    await session.handshake_done
    return session


class DTLSServer(asyncio.DatagramProtocol):
    """UDP server: one DTLS session per peer address."""

    def __init__(self, ctx: TLSContext, handler: SessionHandler, *, handshake_timeout: float,
                 on_handshake_error: Callable[[TLSHandshakeError, Address], None] | None,
                 cookie_exchange: bool = True, cookies: DTLSCookies | None = None) -> None:
        self.ctx = ctx
        self.handler = handler
        self.sessions: dict[Address, DTLSSession] = {}
        #: RFC 6347 4.2.1 front door (None: cookie exchange off)
        self.hello_verifier: HelloVerifier | None = HelloVerifier(ctx, cookies) if cookie_exchange else None
        self.transport: asyncio.DatagramTransport | None = None
        self._handshake_timeout = handshake_timeout
        self._on_error = on_handshake_error
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def sockname(self) -> tuple[str, int]:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[:2]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        session = self.sessions.get(addr)
        if session is not None:
            session.datagram_received(data)
            return
        assert self.transport is not None
        verifier = self.hello_verifier
        if verifier is None:
            self._open(TLSEngine(self.ctx), addr).datagram_received(data)
            return
        try:
            result = verifier.receive(data, addr)
        except (TLSError, ValueError) as exc:
            log.warning("DTLS cookie exchange with %s failed: %s", addr, exc)
            return
        for dgram in result.replies:
            self.transport.sendto(dgram, addr)
        if result.outcome is ListenOutcome.ACCEPTED:
            assert result.engine is not None
            self._open(result.engine, addr).start()
        elif result.outcome is ListenOutcome.COOKIE_REJECTED:
            log.debug("DTLS ClientHello from %s with an invalid cookie: HelloVerifyRequest again", addr)

    def _open(self, engine: TLSEngine, addr: Address) -> DTLSSession:
        assert self.transport is not None
        session = DTLSSession(engine, self.transport, addr,
                              handshake_timeout=self._handshake_timeout, on_close=self._forget)
        self.sessions[addr] = session
        task = asyncio.get_running_loop().create_task(self._run(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return session

    def _forget(self, session: DTLSSession) -> None:
        if self.sessions.get(session.addr) is session:
            del self.sessions[session.addr]

    async def _run(self, session: DTLSSession) -> None:
        try:
            await session.handshake_done
        except TLSHandshakeError as exc:
            if self._on_error is not None:
                self._on_error(exc, session.addr)
            else:
                log.info("DTLS handshake with %s failed: %s", session.addr, exc)
            return
        try:
            await self.handler(session)
        finally:
            session.close()

    def close(self) -> None:
        for s in list(self.sessions.values()):
            s.close()
        if self.transport is not None:
            self.transport.close()


async def start_dtls_server(handler: SessionHandler, host: str = "127.0.0.1", port: int = 0,
                            config: TLSConfig | TLSContext | None = None, *, handshake_timeout: float = 10.0,
                            on_handshake_error: Callable[[TLSHandshakeError, Address], None] | None = None,
                            cookie_exchange: bool = True, cookies: DTLSCookies | None = None,
                            ) -> DTLSServer:
    """Serve DTLS 1.2 on UDP; ``handler(session)`` runs after each successful handshake.

    ``cookie_exchange`` (default on) runs the RFC 6347 4.2.1 HelloVerifyRequest
    exchange before any session exists; ``cookies`` injects the cookie minter
    (e.g. with a test clock), by default a fresh :class:`DTLSCookies`.
    """
    if config is None:
        raise ValueError("start_dtls_server needs a server TLSConfig")
    ctx = config if isinstance(config, TLSContext) else TLSContext(config)
    if ctx.config.role is not Role.SERVER or ctx.config.transport is not Transport.DTLS:
        raise ValueError("start_dtls_server needs a DTLS server configuration")
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: DTLSServer(ctx, handler, handshake_timeout=handshake_timeout, on_handshake_error=on_handshake_error,
                           cookie_exchange=cookie_exchange, cookies=cookies),
        local_addr=(host, port),
    )
    assert isinstance(protocol, DTLSServer)
    return protocol
