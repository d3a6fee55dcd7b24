"""Helpers of the audit-sealing process tests (``audit_seal_interval_s`` of ``m2msec maf serve``,
``m2msec mef serve`` and ``m2msec gateway serve``; m2msec.store.autoseal, profile S10): the
anchor line a sealing server logs, the trail checked with Store.verify_audit on a store the test
opens itself, its row count read by raw SQL, and polling until a condition holds.

Imported by module name (pytest puts ``tests/`` on sys.path through its conftest); never from
conftest."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from m2msec.store import KeyEncryptionKey, open_store
from m2msec.store.audit_seal import AuditVerification

ANCHOR = re.compile(r"audit sealed (\d+) row\(s\); anchor (\d+):([0-9a-f]{32})$", re.MULTILINE)
"""The INFO line of each seal: rows sealed, checkpoint sequence number, anchor (hex)."""


def verify_audit(store_url: str, kek_file: Path) -> AuditVerification:
    """Store.verify_audit on the store at ``store_url`` opened with the KEK in ``kek_file``."""
    with open_store(store_url, KeyEncryptionKey.from_file(kek_file)) as store:
        return store.verify_audit()


def audit_rows(db: Path) -> int:
    """How many rows the SQLite file's audit table holds (raw SQL, no KEK)."""
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM m2msec_audit").fetchone()[0])


def until(pred: Callable[[], bool], timeout: float = 10.0, *, step: float = 0.1) -> None:
    """Poll ``pred`` every ``step`` seconds; AssertionError when it is still false after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(step)
