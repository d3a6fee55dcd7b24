"""Store-backed ESData key source (TS-0003 8.5.2.2.2: Provisioned Symmetric ESData Key,
its identifier and optional lifetime).

Provisioned symmetric keys live in ``m2msec.store`` as credentials (namespace, kid),
encrypted at rest under the store's KEK; metadata ``{"suid": 14|15|24|25|34|35,
"algorithms": [...]}`` (algorithms optional: default from SUID and key length).  The store
hides expired credentials, so a key past its lifetime is an unknown kid.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from m2msec.esdata.credentials import SUID_USAGE, SYMMETRIC_SUIDS, ResolvedKey, default_symmetric_algorithms
from m2msec.esdata.errors import PolicyError, Reason, UnknownKidError

if TYPE_CHECKING:
    from m2msec.store import Store

DEFAULT_NAMESPACE = "esdata-keys"


class StoreKeySource:
    def __init__(self, store: Store, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._store = store
        self._namespace = namespace

    def __repr__(self) -> str:
        return f"StoreKeySource(namespace={self._namespace!r})"

    def provision(
        self,
        kid: str,
        key: bytes,
        *,
        suid: int,
        algorithms: Iterable[str] | None = None,
        expires_at: datetime | None = None,
    ) -> None:
        if int(suid) not in SYMMETRIC_SUIDS:
            raise PolicyError(f"SUID {int(suid)} is not a symmetric ESData SUID", reason=Reason.KEY_USAGE)
        md: dict[str, object] = {"suid": int(suid)}
        if algorithms is not None:
            md["algorithms"] = sorted(algorithms)
        self._store.put_credential(self._namespace, kid, bytes(key), metadata=md, expires_at=expires_at)

    def resolve(self, kid: str) -> ResolvedKey:
        from m2msec.store import NotFound  # noqa: PLC0415

        try:
            cred = self._store.get_credential(self._namespace, kid)
        except NotFound:
            raise UnknownKidError(f"unknown key identifier {kid!r}") from None
        except Exception:  # noqa: BLE001 - invalid id etc.: treat as unknown, never leak
            raise UnknownKidError(f"unknown key identifier {kid!r}") from None
        suid = cred.metadata.get("suid")
        if not isinstance(suid, int) or suid not in SYMMETRIC_SUIDS:
            raise PolicyError(f"stored key {kid!r} has no valid ESData SUID", reason=Reason.KEY_USAGE)
        algs = cred.metadata.get("algorithms")
        algorithms = (
            frozenset(algs) if isinstance(algs, list) else default_symmetric_algorithms(SUID_USAGE[suid], len(cred.secret))
        )
        return ResolvedKey(kid=kid, key=cred.secret, algorithms=algorithms, suid=suid)
