"""The gateway HTTP server: asyncio + h11 towards clients, httpx towards the CSE and AEs.

Implements the transit and Target roles of TS-0003 8.4 / TS-0004 7.6.2 and 7.5.1.2.11/13
that an unmodified CSE (ACME) lacks; see :mod:`m2msec.gateway` for the behaviour and the
configuration file.

The plain listener admits each TCP connection through a
:class:`~m2msec.net.connlimits.ConnectionGate` (``limits``: ``[gateway] max_connections`` /
``max_connections_per_ip``); one over a limit is reset before any byte is read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h11
import httpx

from m2msec.errors import M2MSecError, ParseError
from m2msec.esprim.errors import ESPrimError
from m2msec.esprim.receiver import Receiver
from m2msec.gateway.acp import (
    AccessControlRule,
    AccessDecision,
    LocalIds,
    group_candidates,
    group_lookup_id,
    may_notify,
    parse_set_of_acrs,
    peer_address,
    sp_relative,
)
from m2msec.gateway.esi import esi_from_cse, esi_to_cse, merge_cse_esi
from m2msec.net.connlimits import ConnectionGate, ConnectionLimits
from m2msec.gateway.saef import protected_pattern
from m2msec.net.h11io import BodyTooLarge, next_cycle, read_request, write_response
from m2msec.net.http_binding import (
    BindingError,
    http_to_request,
    http_to_response,
    path_to_to,
    request_to_http,
    response_to_http,
)
from m2msec.onem2m.enums import Operation, ResourceType, SecurityInfoType
from m2msec.onem2m.primitives import DEFAULT_RVI, RequestPrimitive, ResponsePrimitive, new_request_id
from m2msec.onem2m.rsc import ResponseStatusCode as RSC

__all__ = ["Gateway", "RawResponse"]

log = logging.getLogger(__name__)

#: one line for stderr when a trace file is configured (``m2msec gateway serve``)
TRACE_WARNING = ("warning: trace file {path} records every forwarded HTTP message, including requests "
                 "decrypted for the CSE in plaintext; do not enable it in production")


def _open_trace(path: Path) -> Any:
    """The trace file for appending; created 0600 (whatever the umask) if it does not exist."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")


def prepare_trace_file(path: Path) -> None:
    """Create the trace file now with mode 0600 (an existing file keeps its mode; one that
    group or others can access is logged as a WARNING); ValueError if it cannot be created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if os.name != "nt":
            mode = stat.S_IMODE(os.stat(path).st_mode)
            if mode & 0o077:
                log.warning("trace file %s has mode %04o: group or others can read decrypted traffic "
                            "(chmod 600 %s)", path, mode, path)
        return
    except OSError as exc:
        raise ValueError(f"cannot create trace file {path}: {exc.strerror}") from None
    try:
        if os.name != "nt":
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)

RawResponse = tuple[int, list[tuple[str, str]], bytes]

_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
     "trailer", "transfer-encoding", "upgrade", "host", "content-length"}
)
_JSON_TYPES = ("application/json", "application/vnd.onem2m-res+json", "application/vnd.onem2m-ntfy+json")
_MAX_BODY = 4 << 20


def _is_json(ctype: str | None) -> bool:
    return ctype is not None and ctype.split(";", 1)[0].strip().lower() in _JSON_TYPES


def _json_or_none(body: bytes) -> Any:
    """``json.loads(body)``, or None for a body that is not JSON: invalid text, not UTF-8, or
    nested deeper than the decoder's recursion limit (RecursionError, robustness fix)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _hdr(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def _error(rqi: str | None, rsc: RSC, message: str, rvi: str | None = None) -> RawResponse:
    if rqi:
        return response_to_http(ResponsePrimitive(rsc=rsc, rqi=rqi, pc={"m2m:dbg": message}, rvi=rvi or DEFAULT_RVI))
    body = json.dumps({"m2m:dbg": message}).encode()
    return rsc.http_status, [("X-M2M-RSC", str(int(rsc))), ("Content-Type", "application/json")], body


@dataclasses.dataclass
class _Poa:
    url: str | None
    kind: str  # "ae" | "cse" | "remote"
    expires: float
    # access-control inputs of a local <AE>/<remoteCSE> target (profile G4)
    self_id: str | None = None  # its aei / csi
    acpi: tuple[str, ...] | None = None
    ty: int = int(ResourceType.AE)


@dataclasses.dataclass
class _Acp:
    rules: tuple[AccessControlRule, ...] | None  # None: the ACP could not be retrieved
    expires: float


@dataclasses.dataclass
class _Group:
    members: tuple[str, ...] | None  # None: not a <group>, or not retrievable
    expires: float


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Gateway:
    """Sidecar in front of one CSE.

    ``cse_url``: the CSE's HTTP base URL; ``receiver``: the CSE's ESPrim Receiver (keys and
    state in the store); ``cse_id``/``cse_name`` name the CSEBase; ``admin``: the originator
    used to look up an AE's pointOfAccess and its access-control policies; ``routes``:
    SP-relative CSE-ID -> URL of the gateway in front of that CSE; ``enforce_acp``: check the
    target's ACPs (NOTIFY privilege, :mod:`m2msec.gateway.acp`) before relaying an
    ``m2m:seci`` Notify to an AE (profile G4); ``clock``: the wall clock (aware UTC) for the
    ``actw`` time windows of access-control contexts; ``require_saef_for``: AE-IDs (or
    ``prefix*``) that must come through the SAEF listener (:mod:`m2msec.gateway.saef`): a
    request claiming one of them that arrives unauthenticated is refused 4106;
    ``key_recheck``: while started, awaited every ``key_recheck_interval`` seconds (the MEF
    re-check of RSPF-provisioned keys, :meth:`m2msec.mef.esprimkeys.MEFESPrimKeySource.recheck`;
    0 or None: never).
    """

    def __init__(
        self,
        *,
        cse_url: str,
        cse_id: str,
        cse_name: str,
        receiver: Receiver,
        admin: str = "CAdmin",
        routes: Mapping[str, str] | None = None,
        poa_ttl: float = 30.0,
        trace_file: str | Path | None = None,
        timeout: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
        key_prefetch: Callable[[str], Awaitable[object]] | None = None,
        enforce_acp: bool = True,
        sp_id: str | None = None,
        clock: Callable[[], datetime] = _utc_now,
        require_saef_for: tuple[str, ...] = (),
        limits: ConnectionLimits | None = None,
        key_recheck: Callable[[], Awaitable[object]] | None = None,
        key_recheck_interval: float = 0.0,
    ) -> None:
        self.key_recheck = key_recheck
        self.key_recheck_interval = key_recheck_interval
        self._recheck_task: asyncio.Task[None] | None = None
        self._recheck_wake = asyncio.Event()  # set when key_recheck_interval changes
        self.cse_url = cse_url.rstrip("/")
        self.cse_id = cse_id.lstrip("/")
        self.cse_name = cse_name
        self.receiver = receiver
        self.key_prefetch = key_prefetch  # first sight of a kid (e.g. fetch from the MEF), before open_request
        self.admin = admin
        self.routes = {(k if k.startswith("/") else "/" + k): v.rstrip("/") for k, v in (routes or {}).items()}
        self.poa_ttl = poa_ttl
        self._monotonic = monotonic
        self._poa: dict[str, _Poa] = {}
        self._acp: dict[str, _Acp] = {}
        self._groups: dict[str, _Group] = {}
        self._clock = clock
        self._generation = 0  # bumped by _invalidate: a look-up that raced an UPDATE is not cached
        self.enforce_acp = enforce_acp
        self.require_saef_for = tuple(require_saef_for)
        self.sp_id = sp_id
        self._ids = LocalIds(cse_id=self.cse_id, admin=admin, sp_id=sp_id)
        self._trace_path = Path(trace_file) if trace_file is not None else None
        self._trace_lock = threading.Lock()
        if self._trace_path is not None:
            prepare_trace_file(self._trace_path)
        self._timeout = timeout
        self._http: httpx.AsyncClient | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        #: open connections of the plain listener (limits, refusal counters; m2msec.net.connlimits)
        self.connections = ConnectionGate(limits, name=f"gateway {self.cse_id} plain listener")
        #: the SAEF listener (m2msec.gateway.saef.SAEFListener) when configured; started by its owner
        self.saef_listener: Any = None
        #: ``[mef]`` in force and its users (m2msec.gateway.mefreload.MEFBinding), for SIGHUP
        self.mef_binding: Any = None
        #: ``[esprim_maf]``: the MAF-based key source (m2msec.gateway.esprimmaf), started and
        #: closed with the gateway
        self.esprim_maf: Any = None
        self.host = "127.0.0.1"
        self.port = 0
        self._bases = {
            self.cse_name, self.cse_id, f"/{self.cse_id}", f"/{self.cse_id}/{self.cse_name}",
        }

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Gateway:
        self._http = httpx.AsyncClient(timeout=self._timeout, limits=httpx.Limits(max_keepalive_connections=32))
        self._http.headers.clear()  # relay exactly the client's headers (no httpx defaults)
        self._server = await asyncio.start_server(self._client, host, port)
        self.host = host
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._start_recheck()
        if self.esprim_maf is not None:
            self.esprim_maf.start()
        return self

    def _start_recheck(self) -> None:
        if self.key_recheck is not None and self.key_recheck_interval > 0 and self._recheck_task is None:
            self._recheck_task = asyncio.get_running_loop().create_task(self._recheck_keys())

    def set_key_recheck_interval(self, seconds: float) -> None:
        """A new ``key_recheck_interval`` (SIGHUP, :mod:`m2msec.gateway.mefreload`): the next pass
        comes ``seconds`` from now; 0 stops the passes."""
        self.key_recheck_interval = seconds
        task = self._recheck_task
        if task is not None and seconds <= 0:
            task.cancel()
            self._recheck_task = None
        elif task is not None:
            self._recheck_wake.set()
        elif self._server is not None:
            self._start_recheck()

    async def _recheck_keys(self) -> None:
        """Every ``key_recheck_interval`` s: one ``key_recheck`` pass (a failed pass is logged)."""
        assert self.key_recheck is not None
        while True:
            self._recheck_wake.clear()
            try:
                await asyncio.wait_for(self._recheck_wake.wait(), self.key_recheck_interval)
                continue  # the interval changed: wait the new one from now
            except TimeoutError:
                pass
            try:
                await self.key_recheck()
            except Exception:  # noqa: BLE001 - the next pass tries again
                log.exception("key re-check pass failed")

    async def close(self) -> None:
        if self._recheck_task is not None:
            self._recheck_task.cancel()
            await asyncio.gather(self._recheck_task, return_exceptions=True)
            self._recheck_task = None
        if self.esprim_maf is not None:
            await self.esprim_maf.aclose()
        if self._server is not None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> Gateway:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Gateway(cse={self.cse_url!r}, base=/{self.cse_id}/{self.cse_name}, receiver={self.receiver!r})"

    # ------------------------------------------------------------------ HTTP server (h11)
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        admitted = self.connections.admit(peername)
        if admitted is None:  # over a limit: reset, nothing read
            writer.transport.abort()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        peer = peername[0] if isinstance(peername, tuple) and peername and isinstance(peername[0], str) else None
        try:
            while True:
                try:
                    ev, body = await read_request(conn, reader, _MAX_BODY, timeout=120)
                except BodyTooLarge:
                    await self._send(conn, writer, _error(None, RSC.BAD_REQUEST, "request body too large"))
                    return
                if ev is None:
                    return
                headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in ev.headers]
                try:
                    raw = await self.handle(ev.method.decode("ascii"), ev.target.decode("latin-1"), headers, body,
                                            peer=peer)
                except Exception:  # noqa: BLE001 - a bug must not kill the connection or leak details
                    log.exception("gateway failed on %s %s", ev.method, ev.target)
                    raw = _error(_hdr(headers, "x-m2m-ri"), RSC.INTERNAL_SERVER_ERROR, "internal error")
                await self._send(conn, writer, raw)
                if not next_cycle(conn):
                    return
        except h11.RemoteProtocolError:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                try:
                    await self._send(conn, writer, _error(None, RSC.BAD_REQUEST, "malformed HTTP request"))
                except (h11.LocalProtocolError, ConnectionError):
                    pass
        except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError, h11.LocalProtocolError):
            pass
        except asyncio.CancelledError:
            pass  # close(): end quietly (a cancelled connection task makes 3.11's streams log an error)
        finally:
            self.connections.release(admitted)
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    @staticmethod
    async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, raw: RawResponse) -> None:
        status, headers, body = raw
        hdrs = [(k, v) for k, v in headers if k.lower() not in _HOP]
        hdrs.append(("Content-Length", str(len(body))))
        await write_response(conn, writer, status, hdrs, body)

    # ------------------------------------------------------------------ tracing
    def _trace(self, direction: str, where: str, headers: list[tuple[str, str]], body: bytes) -> None:
        if self._trace_path is None:
            return
        line = json.dumps(
            {"dir": direction, "where": where, "headers": headers, "body": body.decode("utf-8", "replace")}
        )
        with self._trace_lock, _open_trace(self._trace_path) as f:
            f.write(line + "\n")

    # ------------------------------------------------------------------ outgoing HTTP
    async def _forward(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes) -> RawResponse:
        assert self._http is not None
        fwd = [(k, v) for k, v in headers if k.lower() not in _HOP]
        self._trace("out", f"{method} {url}", fwd, body)
        # as bytes: the client's header octets are relayed unchanged (h11 accepts obs-text
        # 0x80-0xFF, which httpx refuses to encode from str: a 5000 before this fix)
        raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in fwd]
        req = self._http.build_request(method, url, headers=raw_headers, content=body)
        r = await self._http.send(req, stream=True)
        try:
            data = b"".join([c async for c in r.aiter_raw()])
        finally:
            await r.aclose()
        out = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in r.headers.raw if k.decode("latin-1").lower() not in _HOP]
        self._trace("in", f"{r.status_code} {url}", out, data)
        return r.status_code, out, data

    async def cse_request(self, req: RequestPrimitive) -> ResponsePrimitive:
        """Send a primitive to the CSE (strict TS-0009 mapping and X-M2M-RI echo)."""
        method, target, headers, body = request_to_http(req)
        if body:
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        status, rh, rb = await self._forward(method, self.cse_url + target, headers, body)
        rsp = http_to_response(status, rh, rb)
        if rsp.rqi != req.rqi:
            raise BindingError(f"CSE response X-M2M-RI {rsp.rqi!r} does not echo {req.rqi!r}")
        return rsp

    # ------------------------------------------------------------------ dispatch
    def is_cse_base(self, to: str) -> bool:
        if to.startswith("//"):
            parts = to[2:].split("/", 1)
            to = "/" + parts[1] if len(parts) == 2 else to
        return to.rstrip("/") in self._bases

    async def handle(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes, *, peer: str | None = None,
        authenticated: str | None = None,
    ) -> RawResponse:
        """One HTTP request from a client -> the HTTP response to return; ``peer``: the IP
        address of the TCP peer (for ``acip`` contexts; None: unknown, no ``acip`` matches);
        ``authenticated``: the identity of the SAEF association the request came on, whose
        From was checked against it (TS-0003 7.2.1), None for the plain listener; not None
        makes rq_authn TRUE for the ``acaf`` rules of a securityInfo Notify (TS-0003 7.1.5), so
        only a caller that checked the From against an authenticated association may pass it."""
        for k, _v in headers:  # a spelling some HTTP stacks would read as X-M2M-Origin: never relayed
            if "_" in k and k.lower().replace("_", "-") == "x-m2m-origin":
                return _error(_hdr(headers, "x-m2m-ri"), RSC.BAD_REQUEST,
                              f"header {k!r} is not X-M2M-Origin: refused rather than relayed")
        if authenticated is None and self.require_saef_for:
            refused = self._unauthenticated(headers)
            if refused is not None:
                return refused
        method = method.upper()
        ctype = _hdr(headers, "content-type")
        path = target.split("?", 1)[0]
        try:
            to: str | None = path_to_to(path)
        except ParseError:
            to = None
        if method == "POST" and body and _is_json(ctype) and "ty=" not in (ctype or "").replace(" ", ""):
            doc = _json_or_none(body)
            if isinstance(doc, dict) and "m2m:seci" in doc:
                return await self._security_notify(method, target, headers, body, peer,
                                                   authenticated=authenticated is not None)
        return await self._proxy(method, target, headers, body, to)

    async def _proxy(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes, to: str | None
    ) -> RawResponse:
        rqi = _hdr(headers, "x-m2m-ri")
        ctype = _hdr(headers, "content-type")
        if method in ("POST", "PUT") and body and _is_json(ctype):
            doc = _json_or_none(body)
            try:
                pc, changed = esi_to_cse(doc)
            except ParseError as exc:
                return _error(rqi, RSC.BAD_REQUEST, exc.args[0])
            if changed:
                body = json.dumps(pc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        try:
            status, rh, rb = await self._forward(method, self.cse_url + target, headers, body)
        except httpx.HTTPError as exc:
            return _error(rqi, RSC.TARGET_NOT_REACHABLE, f"CSE not reachable: {type(exc).__name__}")
        if method in ("PUT", "DELETE") and 200 <= status < 300:
            self._invalidate()  # a pointOfAccess, an acpi or an ACP may have changed
        if rb and _is_json(_hdr(rh, "content-type")) and _hdr(rh, "content-encoding") is None:
            doc = _json_or_none(rb)
            if doc is None:
                return status, rh, rb
            doc, changed = esi_from_cse(doc)
            if method == "GET" and to is not None and self.is_cse_base(to) and 200 <= status < 300:
                doc, merged = merge_cse_esi(doc, self.receiver.e2e_sec_info())
                changed |= merged
            if changed:
                rb = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return status, rh, rb

    def _unauthenticated(self, headers: list[tuple[str, str]]) -> RawResponse | None:
        """4106 if an X-M2M-Origin (any of them) claims a ``require_saef_for`` originator."""
        for k, v in headers:
            if k.lower() != "x-m2m-origin":
                continue
            pattern = protected_pattern(v, self.require_saef_for, cse_id=self.cse_id, sp_id=self.sp_id)
            if pattern is not None:
                log.warning("refused a request on the plain listener claiming the originator %r "
                            "(require_saef_for %r): it must come through its SAEF association", v, pattern)
                rqi = _hdr(headers, "x-m2m-ri")
                self._trace("refused", "plain listener", [("X-M2M-Origin", v), ("X-M2M-RI", rqi or ""),
                                                          ("X-M2M-RSC", str(int(RSC.ORIGINATOR_NOT_AUTHENTICATED)))],
                            b"")
                return _error(rqi, RSC.ORIGINATOR_NOT_AUTHENTICATED,
                              "this originator must use its security association (SAEF listener)")
        return None

    def _invalidate(self) -> None:
        """Drop the cached pointOfAccess and access-control data (any UPDATE/DELETE)."""
        self._generation += 1
        self._poa.clear()
        self._acp.clear()
        self._groups.clear()

    # ------------------------------------------------------------------ ESPrim Notify
    async def _security_notify(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes, peer: str | None = None,
        *, authenticated: bool = False,
    ) -> RawResponse:
        rqi = _hdr(headers, "x-m2m-ri")
        try:
            req = http_to_request(method, target, headers, body)
        except ParseError as exc:
            return _error(rqi, exc.rsc, exc.args[0])
        if self.is_cse_base(req.to):
            return response_to_http(await self._as_receiver(req))
        try:
            dest = await self._destination(req)
        except M2MSecError as exc:
            return response_to_http(
                ResponsePrimitive(rsc=exc.rsc, rqi=req.rqi, pc={"m2m:dbg": exc.args[0]}, rvi=req.rvi or DEFAULT_RVI)
            )
        if isinstance(dest, ResponsePrimitive):
            return response_to_http(dest)
        if dest.kind == "cse":
            return response_to_http(await self._as_receiver(req))
        if dest.kind == "ae" and self.enforce_acp:
            try:
                decision = await self._notify_allowed(req, dest, peer, authenticated=authenticated)
            except M2MSecError as exc:
                return response_to_http(
                    ResponsePrimitive(rsc=exc.rsc, rqi=req.rqi, pc={"m2m:dbg": exc.args[0]}, rvi=req.rvi or DEFAULT_RVI)
                )
            if not decision.allowed:
                return self._refuse(req, decision)
        if dest.kind == "remote" and req.fr and not req.fr.startswith("/"):
            # as a transit CSE does: the next CSE sees the originator in SP-relative form
            fr = sp_relative(req.fr, self._ids)
            headers = [(k, fr if k.lower() == "x-m2m-origin" else v) for k, v in headers]
        assert dest.url is not None
        try:
            return await self._forward(method, dest.url + target, headers, body)
        except httpx.HTTPError as exc:
            self._poa.pop(req.to, None)
            return _error(rqi, RSC.TARGET_NOT_REACHABLE, f"target not reachable: {type(exc).__name__}", req.rvi)

    async def _destination(self, req: RequestPrimitive) -> _Poa | ResponsePrimitive:
        """Where an ESPrim/ESCertKE Notify goes: an AE's poa, another CSE's gateway, or us."""
        to = req.to
        sp = to
        if sp.startswith("//"):
            parts = sp[2:].split("/", 1)
            sp = "/" + parts[1] if len(parts) == 2 else sp
        if sp.startswith("/"):
            csi = "/" + sp[1:].split("/", 1)[0]
            if csi != f"/{self.cse_id}":
                url = self.routes.get(csi)
                if url is None:
                    raise ESPrimError(f"no route to {csi}", rsc=RSC.TARGET_NOT_REACHABLE)
                return _Poa(url, "remote", 0.0)
        now = self._monotonic()
        cached = self._poa.get(to)
        if cached is not None and cached.expires > now:
            return cached
        look = RequestPrimitive(op=Operation.RETRIEVE, to=to, fr=self.admin, rqi=new_request_id(), rvi=req.rvi or DEFAULT_RVI)
        generation = self._generation
        try:
            rsp = await self.cse_request(look)
        except httpx.HTTPError as exc:
            raise ESPrimError(f"CSE not reachable: {type(exc).__name__}", rsc=RSC.TARGET_NOT_REACHABLE) from None
        if not rsp.is_success:
            return ResponsePrimitive(rsc=rsp.rsc, rqi=req.rqi, pc=rsp.pc, rvi=req.rvi or DEFAULT_RVI)
        pc = rsp.pc if isinstance(rsp.pc, Mapping) else {}
        if "m2m:cb" in pc:
            entry = _Poa(None, "cse", now + self.poa_ttl)
        elif "m2m:ae" in pc or "m2m:csr" in pc:
            res = pc.get("m2m:ae") or pc.get("m2m:csr") or {}
            if "m2m:csr" in pc and isinstance(res.get("csi"), str) and res["csi"] in self.routes:
                entry = _Poa(self.routes[res["csi"]], "remote", now + self.poa_ttl)
            else:
                poas = [p for p in res.get("poa") or [] if isinstance(p, str) and p.startswith(("http://", "https://"))]
                if not poas:
                    raise ESPrimError(f"{to} has no HTTP pointOfAccess", rsc=RSC.TARGET_NOT_REACHABLE)
                is_ae = "m2m:ae" in pc
                own = res.get("aei" if is_ae else "csi")
                acpi = res.get("acpi")
                entry = _Poa(
                    poas[0].rstrip("/"), "ae", now + self.poa_ttl,
                    self_id=own if isinstance(own, str) else None,
                    acpi=tuple(a for a in acpi if isinstance(a, str)) if isinstance(acpi, list) else None,
                    ty=int(ResourceType.AE if is_ae else ResourceType.REMOTE_CSE),
                )
        else:
            raise ESPrimError("the target of a securityInfo Notify must be an AE or a CSE", rsc=RSC.BAD_REQUEST)
        if generation == self._generation:
            self._poa[to] = entry
        return entry

    async def _notify_allowed(self, req: RequestPrimitive, dest: _Poa, peer: str | None = None, *,
                              authenticated: bool = False) -> AccessDecision:
        """May ``req.fr`` NOTIFY the target (profile G4)?  ACPs and the <group> resources named
        in their ``acor`` are retrieved as the admin and cached ``poa_ttl`` seconds, like the
        pointOfAccess; ``actw`` windows are matched against ``clock()``, ``acip`` against
        ``peer``; ``authenticated`` (the Notify came on a SAEF association whose identity its
        From is) is rq_authn for rules with ``acaf``."""
        policies: dict[str, tuple[AccessControlRule, ...] | None] = {}
        rvi = req.rvi or DEFAULT_RVI
        now = self._monotonic()
        for acp_id in dest.acpi or ():
            cached = self._acp.get(acp_id)
            if cached is None or cached.expires <= now:
                generation = self._generation
                cached = _Acp(await self._retrieve_acp(acp_id, rvi), now + self.poa_ttl)
                if generation == self._generation:
                    self._acp[acp_id] = cached
            policies[acp_id] = cached.rules
        when = self._clock()
        addr = peer_address(peer)
        decision = may_notify(req.fr, target_id=dest.self_id, acpi=dest.acpi, policies=policies, ids=self._ids,
                              target_type=dest.ty, when=when, peer=addr, authenticated=authenticated)
        if decision.allowed:
            return decision  # no <group> needs to be looked up
        groups: dict[str, tuple[str, ...] | None] = {}
        for entry in group_candidates(req.fr, acpi=dest.acpi, policies=policies, ids=self._ids, target_type=dest.ty,
                                      when=when, peer=addr, authenticated=authenticated):
            grp = self._groups.get(entry)
            if grp is None or grp.expires <= now:
                generation = self._generation
                grp = _Group(await self._retrieve_group(entry, rvi), now + self.poa_ttl)
                if generation == self._generation:
                    self._groups[entry] = grp
            groups[entry] = grp.members
        return may_notify(req.fr, target_id=dest.self_id, acpi=dest.acpi, policies=policies, ids=self._ids,
                          target_type=dest.ty, when=when, peer=addr, groups=groups, authenticated=authenticated)

    async def _retrieve_group(self, entry: str, rvi: str) -> tuple[str, ...] | None:
        """The ``mid`` of the <group> an ``acor`` entry names, None if it is not a retrievable
        <group> (one level: members are not expanded)."""
        got = await self._admin_retrieve(group_lookup_id(entry, self._ids), rvi, "m2m:grp")
        if got is None or got[1] is None:
            return None  # an AE-ID, a missing resource, ...: not a group
        grp = got[1]
        mid = grp.get("mid")
        return tuple(m for m in mid if isinstance(m, str)) if isinstance(mid, list) else ()

    async def _retrieve_acp(self, acp_id: str, rvi: str) -> tuple[AccessControlRule, ...] | None:
        got = await self._admin_retrieve(acp_id, rvi, "m2m:acp")
        if got is None:
            return None
        rsc, acp = got
        if acp is None:
            log.warning("access-control policy %s of a Notify target not retrievable (RSC %s)", acp_id, rsc)
            return None
        return parse_set_of_acrs(acp.get("pv"))

    async def _admin_retrieve(self, to: str, rvi: str, name: str) -> tuple[int, Mapping[str, Any] | None] | None:
        """RETRIEVE ``to`` from the CSE as the admin: (RSC, the ``name`` resource if the answer is a
        success carrying one, else None); None if the answer cannot be parsed.  The CSE unreachable:
        5103 (TARGET_NOT_REACHABLE) for the Notify being decided."""
        look = RequestPrimitive(op=Operation.RETRIEVE, to=to, fr=self.admin, rqi=new_request_id(), rvi=rvi)
        try:
            rsp = await self.cse_request(look)
        except httpx.HTTPError as exc:
            raise ESPrimError(f"CSE not reachable: {type(exc).__name__}", rsc=RSC.TARGET_NOT_REACHABLE) from None
        except (BindingError, ParseError):
            return None
        pc = rsp.pc if isinstance(rsp.pc, Mapping) else {}
        res = pc.get(name)
        return int(rsp.rsc), (res if rsp.is_success and isinstance(res, Mapping) else None)

    def _refuse(self, req: RequestPrimitive, decision: AccessDecision) -> RawResponse:
        """4103 to the originator; logged and traced without the message content."""
        log.warning("refused m2m:seci NOTIFY from %r to %r: %s", req.fr, req.to, decision.reason)
        self._trace("refused", f"NOTIFY {req.to}",
                    [("X-M2M-Origin", req.fr or ""), ("X-M2M-RI", req.rqi), ("X-M2M-RSC", str(int(RSC.ORIGINATOR_HAS_NO_PRIVILEGE)))],
                    b"")
        return response_to_http(ResponsePrimitive(
            rsc=RSC.ORIGINATOR_HAS_NO_PRIVILEGE, rqi=req.rqi,
            pc={"m2m:dbg": "originator has no NOTIFY privilege for the target"}, rvi=req.rvi or DEFAULT_RVI,
        ))

    async def _as_receiver(self, outer: RequestPrimitive) -> ResponsePrimitive:
        """The CSE as ESPrim Target: sit 3 -> sit 4; sit 5 -> decrypt, CSE request, encrypt."""
        r = self.receiver
        try:
            seci = outer.security_info(clock=r._clock)
        except ParseError as exc:
            return r.error_response(exc, outer)
        assert seci is not None
        if seci.sit == SecurityInfoType.RECEIVER_ESPRIM_RAND_OBJECT_REQUEST:
            try:
                return r.rand_object_response(outer)
            except M2MSecError as exc:
                return r.error_response(exc, outer)
        if seci.sit != SecurityInfoType.ESPRIM_OBJECT or seci.esprim_object is None:
            return r.error_response(
                ESPrimError(f"securityInfoType {int(seci.sit)} is not served by this CSE", rsc=RSC.BAD_REQUEST), outer
            )
        if self.key_prefetch is not None:
            try:
                await self.key_prefetch(r.peek(seci.esprim_object).kid)
            except M2MSecError:
                pass  # open_request answers with the RSC of what is wrong
        try:
            inner, ctx = r.open_request(seci.esprim_object, outer_from=outer.fr)
        except M2MSecError as exc:
            return r.error_response(exc, outer)
        inner_rsp = await self._inner_to_cse(inner, ctx.peer_id)
        try:
            obj = r.protect_response(ctx, inner_rsp)
        except M2MSecError as exc:
            return r.error_response(exc, outer)
        return r.esprim_response(outer, obj)

    async def _inner_to_cse(self, inner: RequestPrimitive, originator: str) -> ResponsePrimitive:
        rvi = inner.rvi or DEFAULT_RVI
        try:
            pc, _ = esi_to_cse(inner.pc)
            fwd = dataclasses.replace(inner, fr=originator, pc=pc)
            rsp = await self.cse_request(fwd)
        except ParseError as exc:
            return ResponsePrimitive(rsc=exc.rsc, rqi=inner.rqi, pc={"m2m:dbg": exc.args[0]}, rvi=rvi)
        except httpx.HTTPError as exc:
            return ResponsePrimitive(
                rsc=RSC.TARGET_NOT_REACHABLE, rqi=inner.rqi, pc={"m2m:dbg": f"CSE not reachable: {type(exc).__name__}"}, rvi=rvi
            )
        pc2, _ = esi_from_cse(rsp.pc)
        if inner.op is Operation.RETRIEVE and self.is_cse_base(inner.to) and rsp.is_success:
            pc2, _ = merge_cse_esi(pc2, self.receiver.e2e_sec_info())
        if inner.op in (Operation.UPDATE, Operation.DELETE) and rsp.is_success:
            self._invalidate()
        return dataclasses.replace(rsp, pc=pc2, rqi=inner.rqi)

