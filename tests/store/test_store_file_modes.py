"""SQLite store files are created 0600 whatever the umask (TS-0003 6.2.5.2 secure storage;
docs/threat-model.md 5.2): the main file, and the ``-wal``/``-shm`` files SQLite derives from it.
An existing file keeps its mode; a group/other-accessible one is reported once with a WARNING."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from m2msec.store import _backends, open_store


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
def test_new_store_and_its_wal_and_shm_are_0600_under_umask_022(tmp_path: Path, umask_022: None) -> None:
    db = tmp_path / "new.db"
    with open_store(f"sqlite://{db}") as store:
        store.append_audit("t", "t", "t", "ok")
        store.put_record("ns", "r", {"x": 1})
        wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
        assert wal.exists() and shm.exists()  # open WAL connection: both files present
        assert (_mode(db), _mode(wal), _mode(shm)) == (0o600, 0o600, 0o600)
    assert _mode(db) == 0o600
    # control: a file created the ordinary way under the same umask is group/other readable
    other = tmp_path / "plain"
    other.write_text("x")
    assert _mode(other) == 0o644


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
def test_new_store_is_0600_even_under_a_umask_that_removes_owner_write(tmp_path: Path) -> None:
    db = tmp_path / "ro-umask.db"
    old = os.umask(0o277)
    try:
        with open_store(f"sqlite://{db}") as store:
            store.append_audit("t", "t", "t", "ok")
    finally:
        os.umask(old)
    assert _mode(db) == 0o600


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
def test_existing_open_file_keeps_its_mode_and_warns_once(tmp_path: Path, umask_022: None,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "old.db"
    with open_store(f"sqlite://{db}") as store:
        store.append_audit("t", "t", "t", "ok")
    os.chmod(db, 0o644)
    _backends._warned_paths.discard(str(db))
    caplog.set_level(logging.WARNING, logger="m2msec.store._backends")
    for _ in range(2):
        with open_store(f"sqlite://{db}") as store:
            assert [e.subject for e in store.list_audit()] == ["t"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and str(db) in r.getMessage()]
    assert len(warnings) == 1
    assert "0644" in warnings[0].getMessage() and "chmod 600" in warnings[0].getMessage()
    assert _mode(db) == 0o644  # not changed behind the operator's back


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
def test_existing_private_file_does_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "private.db"
    with open_store(f"sqlite://{db}") as store:
        store.append_audit("t", "t", "t", "ok")
    caplog.set_level(logging.WARNING, logger="m2msec.store._backends")
    with open_store(f"sqlite://{db}") as store:
        store.append_audit("t", "t", "u", "ok")
    assert not [r for r in caplog.records if str(db) in r.getMessage()]
    assert _mode(db) == 0o600


def test_a_store_file_that_cannot_be_created_is_a_store_error(tmp_path: Path) -> None:
    from m2msec.store import StoreError

    with pytest.raises(StoreError, match="cannot create"):
        open_store(f"sqlite://{tmp_path / ('x' * 300 + '.db')}")  # ENAMETOOLONG, also as root
