"""The long-running task shared by :class:`~m2msec.pki.crl_fetch.CRLRefresher` and
:class:`~m2msec.pki.ocsp_staple.OCSPStapler` (TS-0003 8.1.2.2: keeping certificate status current).

A subclass implements ``run()`` as a loop that does its work when due and otherwise awaits
:meth:`BackgroundTask._nap`, which returns after the given seconds or as soon as :meth:`_wake_up`
is called (``trigger()`` on SIGHUP), whichever comes first.  ``sleep`` (injected for tests)
replaces :func:`asyncio.sleep`.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["BackgroundTask"]


class BackgroundTask(ABC):
    """``start()`` runs ``self.run()`` as a task of the running loop; ``stop()`` cancels it."""

    _task_name = "background"

    def __init__(self, sleep: Callable[[float], Awaitable[Any]] | None = None) -> None:
        self._sleep = sleep
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @abstractmethod
    async def run(self) -> None:
        """The loop: work when due, else ``await self._nap(seconds)``; set ``self._wake`` up first."""

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _nap(self, seconds: float) -> None:
        """Sleep ``seconds`` unless woken earlier (only inside :meth:`run`, after ``_wake`` is set up)."""
        assert self._wake is not None
        self._wake.clear()
        sleeper = asyncio.ensure_future((self._sleep or asyncio.sleep)(max(0.0, seconds)))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (sleeper, woken):
                f.cancel()
            await asyncio.gather(sleeper, woken, return_exceptions=True)

    def start(self) -> asyncio.Task[None]:
        """Run :meth:`run` as a task of the running loop."""
        if self._task is not None and not self._task.done():
            raise RuntimeError(f"the {self._task_name} is already running")
        self._task = asyncio.get_running_loop().create_task(self.run(), name=self._task_name.lower().replace(" ", "-"))
        return self._task

    async def stop(self) -> None:
        """Cancel the task started by :meth:`start` and wait for it."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():  # our caller is being cancelled too
                raise
