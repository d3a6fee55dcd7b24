"""Helpers of the MAF and MEF session tests (TS-0003 8.8.2 MAF procedures, 8.3.2.1 MEF
enrolment; profile P26, certificate status of established sessions): one keep-alive HTTP/1.1
connection over TLS 1.2 driven with h11 by the test (so it sees what a server answers on an
established connection and whether it closes it), and the development CA's CRL files.

Imported by module name (pytest puts ``tests/`` on sys.path through its conftest); never from
conftest."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import h11
from cryptography.hazmat.primitives import serialization

from m2msec.net.h11io import send_request
from m2msec.pki import DevCA
from m2msec.tls.aio import open_connection


class KeepAliveSession:
    """One keep-alive connection: ``post_json`` requests on it, ``closed_by_server``, ``close``."""

    def __init__(self, reader: asyncio.StreamReader, writer: Any) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, host: str, port: int, tls: Any, *, server_name: str | None = None) -> Self:
        r, w = await open_connection(host, port, tls, server_name=server_name, timeout=10)
        return cls(r, w)

    async def post_json(self, path: str, host: str, body: bytes,
                        headers: Sequence[tuple[str, str]] = ()) -> tuple[int, int, dict[bytes, bytes], bytes]:
        """POST ``body`` (application/json) to ``path``: HTTP status, X-M2M-RSC (0 when absent), the
        response headers (lower-case names) and the response body."""
        rsp, out = await send_request(self.conn, self.reader, self.writer, "POST", path,
                                      [("Host", host), ("Content-Type", "application/json"),
                                       ("Content-Length", str(len(body))), *headers], body, timeout=10)
        got = {k.lower(): v for k, v in rsp.headers}
        return rsp.status_code, int(got.get(b"x-m2m-rsc", b"0")), got, out

    async def get(self, path: str, host: str,
                  headers: Sequence[tuple[str, str]] = ()) -> tuple[int, int, dict[bytes, bytes], bytes]:
        """GET ``path``: as :meth:`post_json`."""
        rsp, out = await send_request(self.conn, self.reader, self.writer, "GET", path,
                                      [("Host", host), *headers], b"", timeout=10)
        got = {k.lower(): v for k, v in rsp.headers}
        return rsp.status_code, int(got.get(b"x-m2m-rsc", b"0")), got, out

    async def closed_by_server(self) -> bool:
        """True when the server closed the connection (EOF without our side closing)."""
        try:
            return await asyncio.wait_for(self.reader.read(1), 5) == b""
        except ConnectionError:
            return True

    def close(self) -> None:
        self.writer.close()


def write_crls(directory: Path, ca: DevCA) -> None:
    """``issuing.crl`` and ``root.crl`` (PEM) in ``directory``: the CA's current CRLs."""
    pem = serialization.Encoding.PEM
    now = datetime.now(UTC)
    (directory / "issuing.crl").write_bytes(ca.issue_crl(now=now).public_bytes(pem))
    (directory / "root.crl").write_bytes(ca.issue_crl(now=now, signer="root").public_bytes(pem))
