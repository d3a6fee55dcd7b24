"""A CRL distribution point for the CRL-fetching tests (TS-0003 8.1.2.2; RFC 5280 5.2.6
freshestCRL; m2msec.pki.crl_fetch): a real ThreadingHTTPServer on 127.0.0.1 (ephemeral port)
serving ``bodies[path]`` (404 when absent), counting ``hits[path]`` and keeping the monotonic
time of each hit in ``times[path]``.

Imported by module name (pytest puts ``tests/`` on sys.path through its conftest); never from
conftest."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class CRLWeb:
    """``bodies[path]`` over http on 127.0.0.1 (404 when absent); ``hits[path]``.  With
    ``content_type`` every answer carries that Content-Type header (none otherwise)."""

    def __init__(self, content_type: str | None = None) -> None:
        self.bodies: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        self.times: dict[str, list[float]] = {}
        web = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                web.hits[self.path] = web.hits.get(self.path, 0) + 1
                web.times.setdefault(self.path, []).append(time.monotonic())
                body = web.bodies.get(self.path)
                self.send_response(200 if body is not None else 404)
                if content_type is not None:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def count(self, path: str) -> int:
        return self.hits.get(path, 0)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
