"""oneM2M transport for m2msec: the TS-0009 HTTP binding, a client towards CSEs,
an AE notification endpoint, and a harness that runs a real ACME CSE.

Modules are imported on demand (``m2msec.net.http_binding``, ``m2msec.net.client``,
``m2msec.net.endpoint``, ``m2msec.net.acme``) so that importing the package pulls
in neither httpx nor asyncio servers.
"""

from __future__ import annotations
