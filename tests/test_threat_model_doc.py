"""docs/threat-model.md stays true to the code.

* Every ``tests/<path>.py::test_name`` the document cites exists (the file is parsed with
  :mod:`ast`, not imported), and every profile row it cites (``S3``, ``P11``, ``C6``, …)
  is a row of docs/profile.md.
* The residual risks the document states as facts about the code (section 4) are pinned
  here, in process: if one of these tests fails, the behaviour changed and the threat model
  must be updated with it (TS-0003 8.4.1 freshness bound, 6.2.5.2 secure storage).
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from m2msec.esprim import (
    MemoryReceiverState,
    Originator,
    OriginatorPolicy,
    PairwiseKey,
    ProvisionedKeySource,
    Receiver,
    ReceiverPolicy,
    SessionReady,
    StoreKeySource,
)
from m2msec.esprim.errors import ESPrimError, ReplayedObject
from m2msec.onem2m import Operation, RequestPrimitive
from m2msec.store import KeyEncryptionKey, open_store

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "threat-model.md"
PROFILE = ROOT / "docs" / "profile.md"

TEST_REF = re.compile(r"\btests/([\w./-]+\.py)::(test_\w+)")
ROW_REF = re.compile(r"(?<![\w.])([A-Z])(\d{1,2})(?!\w|\.\d)")
PROFILE_ROW = re.compile(r"^\|\s*([A-Z]\d{1,2})\s*\|", re.MULTILINE)


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
            names.add(node.name)
    return names


def cited_tests(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in TEST_REF.finditer(text)]


def cited_rows(text: str) -> set[str]:
    return {m.group(1) + m.group(2) for m in ROW_REF.finditer(text)}


def profile_rows() -> set[str]:
    return set(PROFILE_ROW.findall(PROFILE.read_text(encoding="utf-8")))


def missing_tests(refs: list[tuple[str, str]]) -> list[str]:
    missing: list[str] = []
    cache: dict[str, set[str]] = {}
    for rel, name in refs:
        path = ROOT / "tests" / rel
        if not path.is_file():
            missing.append(f"tests/{rel} (no such file)")
            continue
        if rel not in cache:
            cache[rel] = _test_names(path)
        if name not in cache[rel]:
            missing.append(f"tests/{rel}::{name}")
    return missing


# -- the document's references -------------------------------------------------------------
def test_document_cites_many_tests_and_rows() -> None:
    text = _doc()
    assert len(set(cited_tests(text))) >= 60
    assert {"S3", "C6", "P11", "G4", "R7", "T1"} <= cited_rows(text)


def test_every_cited_test_exists() -> None:
    assert missing_tests(cited_tests(_doc())) == []


def test_every_cited_profile_row_exists() -> None:
    rows = profile_rows()
    assert len(rows) > 100  # the parser reads the real table
    assert sorted(cited_rows(_doc()) - rows) == []


def test_the_checks_would_notice_a_wrong_reference() -> None:
    """Negative control: a renamed test, a missing file and an unknown row are reported."""
    refs = cited_tests("see tests/store/test_store_kek.py::test_no_such_test and "
                       "tests/no_such_dir/test_x.py::test_y and tests/store/test_store_kek.py::test_tampered_blob_fails")
    assert missing_tests(refs) == ["tests/store/test_store_kek.py::test_no_such_test",
                                   "tests/no_such_dir/test_x.py (no such file)"]
    rows = cited_rows("profile S3, P11-P21, C6; SUID 13, P-256, A128GCM, ES256, E2E, X-M2M-Origin, AT4, T(1), V3.18.0, X99")
    assert rows == {"S3", "P11", "P21", "C6", "X99"}
    assert rows - profile_rows() == {"X99"}


# -- residual risks pinned -------------------------------------------------------------------
_KID = "00112233445566778899aabbccddeeff@prov.example.com"
_ORIGINATOR = "CAE-orig"


class _Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_esprim_receiver_accepts_an_object_once_and_a_delayed_one_until_the_session_ends() -> None:
    """Section 4.3: a replayed ESPrim request Object is refused (4105, was a residual risk
    until the Receiver recorded accepted objects); an object withheld by a Transit CSE is
    refused once its sealed Request Expiration Timestamp has passed (4008, R11; was a residual
    risk until m2msec Originators sealed one).  What remains is the freshness bound for a
    request without an absolute rqet: delivered late, it still opens once while its session
    lives (profile R7), and not after."""
    clock = _Clock()
    key = os.urandom(32)
    receiver = Receiver(keys=ProvisionedKeySource([PairwiseKey(kid=_KID, key=key, peer_id=_ORIGINATOR)], clock=clock),
                        state=MemoryReceiverState(clock=clock), clock=clock, policy=ReceiverPolicy())
    originator = Originator(clock=clock, policy=OriginatorPolicy())
    step = originator.start(PairwiseKey(kid=_KID, key=key, peer_id="/id-recv/cse-recv"), receiver.e2e_sec_info())
    assert isinstance(step, SessionReady)
    inner = RequestPrimitive(op=Operation.DELETE, to="/id-recv/cse-recv/ae1/cnt", fr=_ORIGINATOR, rqi="once", rvi="3")
    obj, _pending = originator.protect_request(inner, step.session)
    delayed, _ = originator.protect_request(dataclasses.replace(inner, rqi="late"), step.session)
    legacy = Originator(clock=clock, policy=OriginatorPolicy(request_lifetime=None))  # seals no rqet
    lstep = legacy.start(PairwiseKey(kid=_KID, key=key, peer_id="/id-recv/cse-recv"), receiver.e2e_sec_info())
    assert isinstance(lstep, SessionReady)
    undated, _ = legacy.protect_request(dataclasses.replace(inner, rqi="undated"), lstep.session)
    first, _ = receiver.open_request(obj, outer_from=_ORIGINATOR)
    assert dataclasses.replace(first, rqet=None) == inner and first.rqet is not None
    with pytest.raises(ReplayedObject) as info:  # same bytes at once ...
        receiver.open_request(obj, outer_from=_ORIGINATOR)
    assert int(info.value.rsc) == 4105
    clock.now += timedelta(minutes=50)
    with pytest.raises(ESPrimError) as info:  # ... and 50 min later: past its rqet
        receiver.open_request(obj, outer_from=_ORIGINATOR)
    assert int(info.value.rsc) == 4008
    with pytest.raises(ESPrimError) as info:  # withheld, delivered late: refused, not executed
        receiver.open_request(delayed, outer_from=_ORIGINATOR)
    assert int(info.value.rsc) == 4008
    got, _ = receiver.open_request(undated, outer_from=_ORIGINATOR)  # the residual: no rqet, opens once
    assert got.rqi == "undated" and got.rqet is None
    clock.now += timedelta(minutes=11)  # past the originator object's expiry (at most 1 h, R7)
    for o in (obj, delayed, undated):
        with pytest.raises(ESPrimError) as info:
            receiver.open_request(o, outer_from=_ORIGINATOR)
        assert not isinstance(info.value, ReplayedObject) and int(info.value.rsc) == 4113  # expired


def test_residual_store_metadata_is_neither_encrypted_nor_authenticated(tmp_path: Path) -> None:
    """Section 4 (profile S3): write access to the database without the KEK can rebind a
    stored pairwiseESPrimKey to another identity; the key bytes stay sealed."""
    db = tmp_path / "gw.db"
    kek = KeyEncryptionKey.generate()
    key = os.urandom(32)
    with open_store(f"sqlite://{db}", kek) as store:
        StoreKeySource(store).provision(_KID, key, peer_id="Cae1")
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert key not in raw and b"Cae1" in raw and _KID.encode() in raw  # identifiers in clear, key sealed
    conn = sqlite3.connect(db)  # no KEK involved
    with conn:
        conn.execute("UPDATE m2msec_credentials SET metadata = replace(metadata, 'Cae1', 'Cadmin')")
    conn.close()
    with open_store(f"sqlite://{db}", kek) as store:
        got = StoreKeySource(store).resolve(_KID)
    assert got.peer_id == "Cadmin" and got.key == key


def test_residual_audit_trail_is_append_only_but_not_tamper_evident_until_sealed(tmp_path: Path) -> None:
    """Section 4.11 (profile S7, S10): the trigger stops the services' own connections, not the
    owner of the database file; for rows not sealed yet nothing records that rows were removed
    except a gap in seq.  Once sealed, the same deletion is named by verify (with the KEK)."""
    db = tmp_path / "audit.db"
    kek = KeyEncryptionKey.generate()
    with open_store(f"sqlite://{db}", kek) as store:
        for subject in ("a", "b", "c"):
            store.append_audit("maf", "key_retrieval", subject, "ok")
        assert store.seal_audit().sealed_rows == 3
        for subject in ("d", "e"):
            store.append_audit("maf", "key_retrieval", subject, "ok")
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DROP TRIGGER m2msec_audit_no_delete")
        conn.execute("DELETE FROM m2msec_audit WHERE subject = 'd'")  # not sealed yet
    conn.close()
    with open_store(f"sqlite://{db}", kek) as store:  # re-creates the trigger, raises nothing
        entries = store.list_audit()
        v = store.verify_audit()
    assert sorted(e.subject for e in entries) == ["a", "b", "c", "e"]
    assert sorted(e.seq for e in entries) == [1, 2, 3, 5]
    assert v.intact and v.unsealed_rows == 1  # the residual: the unsealed deletion is not evident
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DROP TRIGGER IF EXISTS m2msec_audit_no_delete")
        conn.execute("DELETE FROM m2msec_audit WHERE subject = 'b'")  # sealed
    conn.close()
    with open_store(f"sqlite://{db}", kek) as store:
        v = store.verify_audit()
    assert not v.intact and any(f.kind == "deleted" and f.seq == 2 for f in v.findings)


def test_sqlite_store_file_is_created_0600_whatever_the_umask(tmp_path: Path) -> None:
    """Section 5.2: a new SQLite store file is created 0600 (was: the process umask decided)."""
    old = os.umask(0o022)
    try:
        with open_store(f"sqlite://{tmp_path / 'mode.db'}") as store:
            store.append_audit("t", "t", "t", "ok")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "mode.db").stat().st_mode)
    assert mode == 0o600
