"""The append-only guard of the audit trail (profile S7) is checked on every open of the store:
a trigger (or, on PostgreSQL, its function) that someone with write access to the database
dropped, disabled or replaced is re-created, with a warning naming what was missing, so the
services never run on without it (threat model 4.11)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

import pytest

from m2msec.store import KeyEncryptionKey, StoreError, open_store


def _raw(url: str, *stmts: str) -> None:
    if url.startswith("sqlite://"):
        conn = sqlite3.connect(url[len("sqlite://"):])
        with conn:
            for stmt in stmts:
                conn.execute(stmt)
        conn.close()
        return
    import psycopg

    with psycopg.connect(url) as conn:
        for stmt in stmts:
            conn.execute(stmt)  # type: ignore[arg-type]


def _delete_refused(url: str, kek: KeyEncryptionKey) -> bool:
    with open_store(url, kek) as store:
        conn_ctx = store._conn(write=True)  # noqa: SLF001 - a raw statement through the service's own connection
        try:
            with conn_ctx as conn:
                store._backend.execute(conn, "DELETE FROM m2msec_audit WHERE subject = ?", ("a",))  # noqa: SLF001
        except StoreError as exc:
            assert "append-only" in str(exc)
            return True
    return False


def _tamper_stmts(url: str, how: str) -> list[str]:
    sqlite = url.startswith("sqlite://")
    if how == "dropped":
        return (["DROP TRIGGER m2msec_audit_no_delete"] if sqlite
                else ["DROP TRIGGER m2msec_audit_append_only ON m2msec_audit"])
    if how == "replaced":
        return (["DROP TRIGGER m2msec_audit_no_delete",
                 "CREATE TRIGGER m2msec_audit_no_delete BEFORE DELETE ON m2msec_audit BEGIN SELECT 1; END"] if sqlite
                else ["CREATE OR REPLACE FUNCTION m2msec_audit_append_only() RETURNS trigger LANGUAGE plpgsql "
                      "AS $$ BEGIN RETURN OLD; END $$"])
    if how == "when-false":  # still named, still raising, never firing
        return (["DROP TRIGGER m2msec_audit_no_delete",
                 "CREATE TRIGGER m2msec_audit_no_delete BEFORE DELETE ON m2msec_audit WHEN 0 "
                 "BEGIN SELECT RAISE(ABORT, 'm2msec_audit is append-only'); END"] if sqlite
                else ["DROP TRIGGER m2msec_audit_append_only ON m2msec_audit",
                      "CREATE TRIGGER m2msec_audit_append_only BEFORE UPDATE OR DELETE ON m2msec_audit FOR EACH ROW "
                      "WHEN (false) EXECUTE FUNCTION m2msec_audit_append_only()"])
    assert not sqlite
    if how == "disabled":
        return ["ALTER TABLE m2msec_audit DISABLE TRIGGER m2msec_audit_append_only"]
    if how == "other-function":  # the trigger by its name runs another function
        return ["CREATE FUNCTION m2msec_other() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN OLD; END $$",
                "DROP TRIGGER m2msec_audit_append_only ON m2msec_audit",
                "CREATE TRIGGER m2msec_audit_append_only BEFORE UPDATE OR DELETE ON m2msec_audit FOR EACH ROW "
                "EXECUTE FUNCTION m2msec_other()"]
    assert how == "dead-body"  # the function still mentions RAISE EXCEPTION, but never raises
    return ["CREATE OR REPLACE FUNCTION m2msec_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF false THEN RAISE EXCEPTION 'm2msec_audit is append-only'; END IF; RETURN OLD; END $$"]


@pytest.mark.parametrize("how", ["dropped", "replaced", "when-false"])
def test_a_removed_guard_is_restored_on_open_with_a_warning(how: str, new_url: Callable[[], str],
                                                             kek: KeyEncryptionKey,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    _check_restored(new_url(), how, kek, caplog)


@pytest.mark.postgres
@pytest.mark.parametrize("how", ["disabled", "other-function", "dead-body"])
def test_a_disabled_or_rewired_postgresql_guard_is_restored_on_open(how: str, pg_server: object,
                                                                    kek: KeyEncryptionKey,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL only: a trigger can be disabled, pointed at another function, or its function
    rewritten so that it still names the error but never raises."""
    _check_restored(str(pg_server.create_database()), how, kek, caplog)  # type: ignore[attr-defined]


def _check_restored(url: str, how: str, kek: KeyEncryptionKey, caplog: pytest.LogCaptureFixture) -> None:
    with open_store(url, kek) as store:
        for subject in ("a", "b"):
            store.append_audit("maf", "key_retrieval", subject, "ok")
    assert _delete_refused(url, kek)
    _raw(url, *_tamper_stmts(url, how))
    # while the guard is off, the owner of the file/table deletes a row
    _raw(url, "DELETE FROM m2msec_audit WHERE subject = 'b'")
    with caplog.at_level(logging.WARNING, logger="m2msec.store.store"):
        with open_store(url, kek) as store:
            assert [e.subject for e in store.list_audit()] == ["a"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "append-only guard of the audit trail was missing or disabled" in warnings[0]
    assert "m2msec_audit_" in warnings[0]
    assert _delete_refused(url, kek)  # restored
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="m2msec.store.store"):
        open_store(url, kek).close()
    assert not [r for r in caplog.records if "append-only guard" in r.getMessage()]  # intact: silent


def test_an_intact_guard_is_left_alone(new_url: Callable[[], str], kek: KeyEncryptionKey,
                                       caplog: pytest.LogCaptureFixture) -> None:
    url = new_url()
    open_store(url, kek).close()
    with caplog.at_level(logging.WARNING, logger="m2msec.store.store"):
        with open_store(url, kek) as store:
            store.append_audit("maf", "key_retrieval", "a", "ok")
    assert not caplog.records
    assert _delete_refused(url, kek)
