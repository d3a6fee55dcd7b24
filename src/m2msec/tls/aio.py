"""asyncio stream adapter for the sans-I/O TLS engine (TS-0003 clause 10.2).

The TCP transport carries the bytes; :class:`~m2msec.tls.engine.TLSEngine`
does all of TLS.  ``open_connection`` / ``start_server`` mirror
``asyncio.open_connection`` / ``asyncio.start_server`` but take a
:class:`~m2msec.tls.engine.TLSConfig` (or a prebuilt ``TLSContext``) and hand
out a standard :class:`asyncio.StreamReader` plus a :class:`TLSStreamWriter`
whose ``engine`` gives the peer identity and the RFC 5705 exporter
(TS-0003 10.3.1).  A handler only runs after the handshake succeeded.

When the engine holds its final flight for an asynchronous peer status check
(``TLSConfig.peer_status_check``, e.g. an OCSP query about the client certificate,
TS-0003 8.1.2.2), the protocol awaits ``engine.pending_status_check`` in a task of the
event loop (the loop keeps serving other connections) and then releases the flight or
sends the refusal alert; the handshake timeout covers the wait.

A PSK server whose configuration has ``psk_prefetch`` reads the client's ``psk_identity``
from the incoming bytes (:class:`~m2msec.tls.pskpeek.PSKIdentityPeek`) before the engine
does; when ``psk_prefetch(identity)`` returns an awaitable (e.g. a MAF Key Retrieval,
TS-0003 8.2.2.3), the bytes are held back and the transport paused until it is done, in a
task of the event loop (other connections are served), inside the handshake timeout; then
the engine gets them and its synchronous PSK callback answers from the fetched key.

``start_server`` also takes a zero-argument callable returning the TLSContext: it is called
for each accepted connection, so a server can switch to a new configuration (a reload) while
established connections keep the context they were accepted with.

``start_server`` admits each accepted TCP connection through a
:class:`~m2msec.net.connlimits.ConnectionGate` (``limits``; default: 1024 connections, 128 per
source address): a connection over a limit is aborted before any TLS byte is read, and neither
the handler nor ``on_handshake_error`` hears of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from m2msec.net.connlimits import ConnectionGate, ConnectionLimits
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
from m2msec.tls.pskpeek import PSKIdentityPeek, await_prefetch, start_prefetch

__all__ = ["ConnectionOverLimit", "HandshakeErrorHandler", "TLSStreamProtocol", "TLSStreamWriter", "open_connection",
           "start_server"]

log = logging.getLogger(__name__)

Handler = Callable[[asyncio.StreamReader, "TLSStreamWriter"], Awaitable[Any]]
HandshakeErrorHandler = Callable[[TLSHandshakeError, "tuple[Any, ...] | None"], None]


class ConnectionOverLimit(Exception):
    """An accepted TCP connection that the listener's :class:`ConnectionGate` refused."""


class TLSStreamProtocol(asyncio.Protocol):
    """Feeds a TCP connection through a :class:`TLSEngine`."""

    def __init__(self, engine: TLSEngine, *, handshake_timeout: float = 10.0,
                 gate: ConnectionGate | None = None) -> None:
        self.engine = engine
        self._gate = gate
        self._gate_key: str | None = None  # the source this connection counts against (admitted)
        self._gate_token: int | None = None  # while handshaking: the gate may evict it
        self.loop = asyncio.get_running_loop()
        self.reader = asyncio.StreamReader()
        self.handshake_done: asyncio.Future[TLSEngine] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._timeout = handshake_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._status_task: asyncio.Task[None] | None = None
        prefetch = engine.context.config.psk_prefetch if engine.role is Role.SERVER else None
        self._prefetch: Callable[[bytes], Any] | None = prefetch
        self._peek: PSKIdentityPeek | None = PSKIdentityPeek() if prefetch is not None else None
        self._held: list[bytes] | None = None  # client bytes held while psk_prefetch runs
        self._held_eof = False
        self._prefetch_task: asyncio.Task[None] | None = None

    # -- helpers --------------------------------------------------------------
    def _flush(self) -> None:
        data = self.engine.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _handshake_failed(self, exc: TLSHandshakeError) -> None:
        self._handshake_over()
        try:
            self._flush()  # the alert
        except TLSError:
            pass
        if not self.handshake_done.done():
            self.handshake_done.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def _evicted(self) -> None:
        """The gate gave this handshake's place to a new connection (it has released it)."""
        self._gate_key = self._gate_token = None
        if not self.handshake_done.done():
            self.handshake_done.set_exception(ConnectionOverLimit("evicted: the listener was full and this "
                                                                  "handshake the oldest"))
            self.handshake_done.exception()  # retrieved: like a refusal, nobody needs to hear of it
        if self.transport is not None:
            self.transport.abort()

    def _handshake_over(self) -> None:
        if self._gate_token is not None:
            assert self._gate is not None
            self._gate.handshake_over(self._gate_token)
            self._gate_token = None

    def _on_timeout(self) -> None:
        if not self.handshake_done.done():
            self._handshake_failed(TLSHandshakeError(TLSFailureReason.TIMEOUT, "handshake timed out"))

    # -- asyncio.Protocol -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self._gate is not None:
            self._gate_key = self._gate.admit(transport.get_extra_info("peername"))
            if self._gate_key is None:  # over a limit: no TLS at all, no handshake error report
                self.handshake_done.set_exception(ConnectionOverLimit("connection refused: over the listener's limit"))
                self.handshake_done.exception()  # retrieved: nobody needs to hear of it
                transport.abort()
                return
            self._gate_token = self._gate.handshaking(self._gate_key, self._evicted)
        self._timer = self.loop.call_later(self._timeout, self._on_timeout)
        if self.engine.role is Role.CLIENT:
            try:
                self.engine.do_handshake()
            except TLSHandshakeError as exc:
                self._handshake_failed(exc)
                return
            self._flush()

    def data_received(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)
            return
        if self._peek is not None and not self._peek.done:
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
        if self.transport is not None:
            self.transport.pause_reading()
        self._server_busy(True)
        self._prefetch_task = self.loop.create_task(self._await_prefetch(waiting))
        return True

    def _server_busy(self, busy: bool) -> None:
        """The handshake waits for (or is done waiting for) the server's own work: the gate does
        not evict it meanwhile (see :mod:`m2msec.net.connlimits`)."""
        if self._gate is not None and self._gate_token is not None:
            (self._gate.server_busy if busy else self._gate.server_done)(self._gate_token)

    async def _await_prefetch(self, waiting: Any) -> None:
        try:
            await await_prefetch(waiting)
        finally:
            self._server_busy(False)
        held, self._held = self._held or [], None
        if self.handshake_done.done() or self.transport is None or self.transport.is_closing():
            return  # timed out or closed meanwhile
        self.transport.resume_reading()
        for chunk in held:
            self._receive(chunk)
            if self.transport.is_closing():
                return
        if self._held_eof:
            self.eof_received()
            self.transport.close()

    def _receive(self, data: bytes) -> None:
        try:
            self.engine.receive_data(data)
        except TLSHandshakeError as exc:
            self._handshake_failed(exc)
            return
        except TLSError as exc:
            self._flush()
            self.reader.set_exception(exc)
            if self.transport is not None:
                self.transport.close()
            return
        self._flush()
        if self.engine.pending_status_check is not None and self._status_task is None:
            if self.transport is not None:
                self.transport.pause_reading()  # nothing to read until the check decides
            self._server_busy(True)
            self._status_task = self.loop.create_task(self._await_status(self.engine.pending_status_check))
            return
        self._after_input()

    def _after_input(self) -> None:
        if self.engine.handshake_complete and not self.handshake_done.done():
            if self._timer is not None:
                self._timer.cancel()
            self._handshake_over()
            self.handshake_done.set_result(self.engine)
        app = self.engine.receive_application_data()
        if app:
            self.reader.feed_data(app)
        if self.engine.state is TLSState.CLOSED:
            self.reader.feed_eof()
            if self.transport is not None:
                self.transport.close()

    async def _await_status(self, waiting: Any) -> None:
        """Run the engine's pending peer status check; release or refuse the held flight."""
        try:
            await waiting
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the check's refusal (or its failure) refuses the peer
            self._server_busy(False)
            err = self.engine.refuse_held_flight(exc)
            if not self.handshake_done.done():
                self._handshake_failed(err)
            return
        self._server_busy(False)
        if self.handshake_done.done() or not self.engine.release_held_flight():
            return  # timed out or closed meanwhile
        try:
            self._flush()
        except TLSError:
            pass
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        self._after_input()

    def eof_received(self) -> bool:
        if self._held is not None:
            self._held_eof = True
            return True  # keep the transport until the held bytes are processed
        try:
            self.engine.receive_data(b"")
        except TLSHandshakeError as exc:
            self._handshake_failed(exc)
        self.reader.feed_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._handshake_over()
        if self._gate_key is not None:
            assert self._gate is not None
            self._gate.release(self._gate_key)
            self._gate_key = None
        if self._timer is not None:
            self._timer.cancel()
        if self._status_task is not None and not self._status_task.done():
            self._status_task.cancel()
        if self._prefetch_task is not None and not self._prefetch_task.done():
            self._prefetch_task.cancel()
        if not self.handshake_done.done():
            self.handshake_done.set_exception(
                TLSHandshakeError(TLSFailureReason.CONNECTION_CLOSED, "connection lost during the handshake")
            )
        self.reader.feed_eof()
        self._can_write.set()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()


class TLSStreamWriter:
    """``asyncio.StreamWriter``-like writer over a :class:`TLSStreamProtocol`."""

    def __init__(self, protocol: TLSStreamProtocol) -> None:
        self._protocol = protocol

    @property
    def engine(self) -> TLSEngine:
        return self._protocol.engine

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._protocol.transport

    def write(self, data: bytes) -> None:
        self.engine.send_application_data(data)
        self._protocol._flush()

    def writelines(self, lines: list[bytes]) -> None:
        for line in lines:
            self.write(line)

    async def drain(self) -> None:
        if self._protocol.closed.done():
            raise ConnectionResetError("TLS connection closed")
        await self._protocol._can_write.wait()

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        t = self.transport
        return t is None or t.is_closing()

    def close(self) -> None:
        """Send close_notify and close the TCP connection."""
        if self.engine.state is TLSState.ESTABLISHED:
            self.engine.close()
            self._protocol._flush()
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        await self._protocol.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in ("tls_engine", "engine"):
            return self.engine
        t = self.transport
        return t.get_extra_info(name, default) if t is not None else default

    def __repr__(self) -> str:
        return f"TLSStreamWriter({self.engine!r})"


def _context(config: TLSConfig | TLSContext) -> TLSContext:
    return config if isinstance(config, TLSContext) else TLSContext(config)


async def open_connection(
    host: str,
    port: int,
    config: TLSConfig | TLSContext,
    *,
    server_name: str | None = None,
    timeout: float = 10.0,
    local_addr: tuple[str, int] | None = None,
) -> tuple[asyncio.StreamReader, TLSStreamWriter]:
    """Connect over TCP and complete the TLS 1.2 handshake (raises TLSHandshakeError);
    ``local_addr`` binds the client's end (source address, port 0: any)."""
    ctx = _context(config)
    if ctx.config.role is not Role.CLIENT:
        raise ValueError("open_connection needs a client configuration")
    loop = asyncio.get_running_loop()
    engine = TLSEngine(ctx, server_name=server_name)
    _, protocol = await asyncio.wait_for(
        loop.create_connection(lambda: TLSStreamProtocol(engine, handshake_timeout=timeout), host, port,
                               local_addr=local_addr), timeout
    )
    assert isinstance(protocol, TLSStreamProtocol)
    await protocol.handshake_done
    return protocol.reader, TLSStreamWriter(protocol)


async def start_server(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 0,
    config: TLSConfig | TLSContext | Callable[[], TLSContext] | None = None,
    *,
    on_handshake_error: HandshakeErrorHandler | None = None,
    handshake_timeout: float = 10.0,
    reuse_port: bool = False,
    limits: ConnectionLimits | ConnectionGate | None = None,
) -> asyncio.Server:
    """Serve TLS 1.2; ``handler(reader, writer)`` runs after each successful handshake.

    ``reuse_port`` sets SO_REUSEPORT on the listening socket (``loop.create_server``), so that
    several processes can listen on the same host/port and the kernel spreads connections.
    ``limits`` bounds the open connections (:mod:`m2msec.net.connlimits`; None: the defaults);
    pass a :class:`~m2msec.net.connlimits.ConnectionGate` to read its counters."""
    if config is None:
        raise ValueError("start_server needs a server TLSConfig")
    if isinstance(config, (TLSConfig, TLSContext)):
        fixed = _context(config)

        def current() -> TLSContext:
            return fixed
    else:
        current = config  # type: ignore[assignment]
    if current().config.role is not Role.SERVER:
        raise ValueError("start_server needs a server configuration")
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[Any]] = set()
    gate = limits if isinstance(limits, ConnectionGate) else ConnectionGate(limits, name=f"TLS listener {host}:{port}")

    def factory() -> TLSStreamProtocol:
        protocol = TLSStreamProtocol(TLSEngine(current()), handshake_timeout=handshake_timeout, gate=gate)

        async def run() -> None:
            try:
                await protocol.handshake_done
            except ConnectionOverLimit:
                return
            except TLSHandshakeError as exc:
                peer = protocol.transport.get_extra_info("peername") if protocol.transport else None
                if on_handshake_error is not None:
                    on_handshake_error(exc, peer)
                else:
                    log.info("TLS handshake with %s failed: %s", peer, exc)
                return
            writer = TLSStreamWriter(protocol)
            try:
                await handler(protocol.reader, writer)
            finally:
                writer.close()

        task = loop.create_task(run())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return protocol

    return await loop.create_server(factory, host, port, reuse_port=reuse_port or None)
