"""Records the SQL statements a :class:`~m2msec.store.Store` sends to its backend (observation
only; ``fail_audit`` makes the audit INSERT fail like a broken disk would).  Used by the store
and MAF tests that assert which statements a path runs.  Imported by module name (pytest puts
``tests/`` on sys.path through its conftest)."""

from __future__ import annotations

from typing import Any

from m2msec.store import Store, StoreError


class SQLSpy:
    """``with SQLSpy(store) as spy: ...`` then ``spy.sql`` (statements in order), ``spy.reads()``."""

    def __init__(self, store: Store) -> None:
        self.backend = store._backend  # noqa: SLF001
        self.orig = self.backend.execute
        self.sql: list[str] = []
        self.fail_audit = False

    def __enter__(self) -> SQLSpy:
        def spy(conn: Any, sql: str, params: Any = ()) -> Any:
            self.sql.append(sql)
            if self.fail_audit and sql.startswith("INSERT INTO m2msec_audit"):
                raise StoreError("simulated audit write failure")
            return self.orig(conn, sql, params)

        self.backend.execute = spy
        return self

    def __exit__(self, *exc: object) -> None:
        self.backend.execute = self.orig

    def reads(self) -> list[str]:
        return [s for s in self.sql if s.lstrip().startswith("SELECT")]

    def selects(self) -> int:
        return len(self.reads())
