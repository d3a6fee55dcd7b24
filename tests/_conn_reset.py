"""Helpers for the listener-limit tests (m2msec.net.connlimits): did the server reset a raw TCP
connection, and waiting for a listener's counters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def was_reset(reader: asyncio.StreamReader, timeout: float = 2.0) -> bool:
    """True when the server dropped the connection (EOF or reset) within ``timeout`` without
    sending a byte; False when it is still waiting (admitted)."""
    try:
        data = await asyncio.wait_for(reader.read(1), timeout)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    assert data == b"", "the server sent bytes on a refused connection"
    return True


async def wait_until(cond: Callable[[], bool], what: str, timeout: float = 3.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")
