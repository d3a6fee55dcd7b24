"""Who ran an administrative command: the OS user recorded in admin audit records.

TS-0003 clause 6.2.5 (sensitive data handling) and the MEF/MAF administration of clauses 8.3
and 8.8 leave auditing to the implementation; m2msec writes an audit record for every admin
action (``mef-admin``, ``maf-admin``) and names in its details the operating-system account
that ran it, so two operators sharing one configuration can be told apart.  This is the
account as the process sees it, not an authenticated identity: :func:`getpass.getuser`
prefers ``$LOGNAME``/``$USER``/``$LNAME``/``$USERNAME``, so the numeric uid (from the kernel)
is recorded next to it on POSIX systems.
"""

from __future__ import annotations

import getpass
import os
from typing import Any

__all__ = ["admin_details", "os_user"]


def os_user() -> str:
    """:func:`getpass.getuser`, else ``uid:<n>`` (no passwd entry, no login variables), else ``unknown``."""
    try:
        name = getpass.getuser()
    except Exception:  # noqa: BLE001 - OSError (3.13+) or KeyError (pwd) when nothing names the user
        name = ""
    if name:
        return name
    getuid = getattr(os, "getuid", None)
    return f"uid:{getuid()}" if getuid is not None else "unknown"


def admin_details(details: dict[str, Any] | None = None) -> dict[str, Any]:
    """``details`` of an admin audit record with ``os_user`` (and ``os_uid`` on POSIX) added."""
    out = dict(details or {})
    out["os_user"] = os_user()
    getuid = getattr(os, "getuid", None)
    if getuid is not None:
        out["os_uid"] = getuid()
    return out
