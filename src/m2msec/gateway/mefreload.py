"""``[mef]`` of gateway.toml on SIGHUP (profile M30): the gateway's connection to the MEF as an
Enrolment Target (TS-0003 8.3.2.1, ``/fetchCredentials/<KeID>/<SUID>``), changed without a restart.

One :class:`~m2msec.mef.client.MEFKeyFetcher` serves the ESPrim key source (SUID 23,
:class:`~m2msec.mef.esprimkeys.MEFESPrimKeySource`) and the SAEF listener's Kpsa directory
(SUID 22, :class:`~m2msec.gateway.saefmef.MEFSAEFDirectory`).  :class:`MEFBinding` keeps the
``[mef]`` that fetcher was built from and the objects that use it; :meth:`MEFBinding.apply`
puts a re-read ``[mef]`` in force:

* the same table: nothing changes;
* only ``recheck_interval_s`` changed: the next re-check waits the new interval (0 stops them);
* the MEF's address, FQDN, the gateway's PSK identity or PSK, or its ``target_id`` changed:
  a new fetcher (empty cache) replaces the old one in every user at once, and the KeIDs that
  were refused or not answered in the last seconds are asked about again at once; fetches
  already under way finish with the old one.  Keys already fetched stay in the store and the SAEF directory and
  are re-checked, from then on, with the new fetcher (at once: SIGHUP runs one re-check pass
  after the reload).  A changed ``fqdn`` leaves the keys of the previous MEF's KeIDs to their
  lifetime (no MEF is asked about them any more): a ``warning:`` line says so.

Adding or removing the ``[mef]`` table needs a restart (the Receiver's key source and the SAEF
listener's directories are built at start): that is a ``warning:`` line and the previous
``[mef]`` stays in force.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from m2msec.gateway.config import MEFSourceConfig

__all__ = ["MEFBinding", "build_fetcher"]


def build_fetcher(m: MEFSourceConfig, clock: Callable[[], datetime]) -> Any:
    """The MEFKeyFetcher of ``[mef]`` (TLS-PSK with the gateway's pre-configured PSK)."""
    from m2msec.mef.client import MEFKeyFetcher, mef_tls_config  # noqa: PLC0415
    from m2msec.tls.engine import PSKCredentials  # noqa: PLC0415

    return MEFKeyFetcher(m.host, m.port, mef_tls_config(psk=PSKCredentials(m.psk_identity.encode(), m.psk)),
                         target_id=m.target_id, mef_fqdn=m.fqdn, clock=clock)


def _same_connection(a: MEFSourceConfig, b: MEFSourceConfig) -> bool:
    """Everything but the re-check interval (the PSK compared in constant time: ``psk`` is
    excluded from the dataclass equality)."""
    return (replace(a, recheck_interval=0.0) == replace(b, recheck_interval=0.0)
            and hmac.compare_digest(a.psk, b.psk))


@dataclass
class MEFBinding:
    """The ``[mef]`` in force, its fetcher and the objects that hold it (``.fetcher``)."""

    config: MEFSourceConfig
    fetcher: Any
    clock: Callable[[], datetime]
    users: list[Any] = field(default_factory=list)

    def apply(self, new: MEFSourceConfig | None, gateway: Any) -> tuple[list[str], list[str]]:
        """Put ``new`` in force (see the module docstring).  Returns (what changed, warnings),
        one line each."""
        if new is None:
            return [], ["[mef] removed from the file: a restart is needed to stop using the MEF; "
                        "the previous [mef] stays in force"]
        changed: list[str] = []
        warnings: list[str] = []
        old = self.config
        if not _same_connection(old, new):
            fetcher = build_fetcher(new, self.clock)
            for user in self.users:
                user.fetcher = fetcher
                user.forget_refusals()  # what the previous connection could not get is asked again
            self.fetcher = fetcher
            changed.append(f"mef reloaded: {new.fqdn} at {new.host}:{new.port} as {new.target_id}")
            if new.fqdn.lower().rstrip(".") != old.fqdn.lower().rstrip("."):
                warnings.append(f"[mef] fqdn changed from {old.fqdn} to {new.fqdn}: keys fetched for KeIDs of "
                                f"{old.fqdn} are no longer re-checked and stay until their lifetime")
        if new.recheck_interval != old.recheck_interval:
            gateway.set_key_recheck_interval(new.recheck_interval)
            changed.append(f"mef recheck_interval_s now {new.recheck_interval:g}")
        self.config = new
        return changed, warnings
