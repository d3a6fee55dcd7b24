"""Helper of the SAEF session-status tests (TS-0003 8.2.2.1/8.2.2.2 associations, TS-0009 HTTP
binding; profile P26 at the gateway): one keep-alive association driven with h11 by the test,
so that it sees the raw HTTP answer (``Connection: close``) and whether the server closed the
connection, not what a client library makes of it.

Imported by module name after putting ``tests/`` on sys.path; never from conftest."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Self

import h11

from m2msec.net.h11io import send_request
from m2msec.net.http_binding import request_to_http
from m2msec.onem2m import RequestPrimitive
from m2msec.saef import SecurityContext
from m2msec.saef.framework import SAEFEndpoint, connect


@dataclass
class RawAnswer:
    """An HTTP answer as received: status, X-M2M-RSC (0 if absent), headers (lower-case names), body."""

    status: int
    rsc: int
    headers: dict[str, str]
    body: bytes


class SAEFKeepAlive:
    """One association (``ctx``) with ``send`` on the same connection and ``closed_by_server``."""

    def __init__(self, reader: asyncio.StreamReader, writer: Any, ctx: SecurityContext, host: str) -> None:
        self.reader, self.writer, self.ctx, self.host = reader, writer, ctx, host
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, endpoint: SAEFEndpoint, host: str, port: int) -> Self:
        reader, writer, ctx = await connect(endpoint, host, port, timeout=8)
        return cls(reader, writer, ctx, f"{host}:{port}")

    async def send(self, req: RequestPrimitive, *, drop: tuple[str, ...] = ()) -> RawAnswer:
        """``req`` in the TS-0009 mapping, without the headers named in ``drop`` (lower-case)."""
        method, target, hdrs, body = request_to_http(req)
        headers = [("Host", self.host), *((k, v) for k, v in hdrs if k.lower() not in drop),
                   ("Content-Length", str(len(body)))]
        rsp, out = await send_request(self.conn, self.reader, self.writer, method, target, headers, body, timeout=10)
        got = {bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1") for k, v in rsp.headers}
        return RawAnswer(rsp.status_code, int(got.get("x-m2m-rsc", "0")), got, out)

    async def closed_by_server(self) -> bool:
        """True when the server closed the connection (EOF without our side closing)."""
        try:
            return await asyncio.wait_for(self.reader.read(1), 5) == b""
        except ConnectionError:
            return True

    def close(self) -> None:
        self.writer.close()
