"""MEF admin audit records (docs/threat-model.md 4.11): every ``mef-admin`` record names the OS
user that ran the action (``os_user``, ``os_uid``), and issuing an Enrolment-Token is audited
(``token-issue``) with a 12-hex-digit prefix of the token's SHA-256, never the token (TS-0003
8.3.2 Enrolment-Token handling; 6.2.5 sensitive data)."""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from _esthelp import World, make_world
from _mefhelp import ENROLEE, run
from typer.testing import CliRunner

from m2msec.mef.cli import app
from m2msec.mef.est_client import est_enrol
from m2msec.mef.state import hash_token
from m2msec.store import AuditEntry, KeyEncryptionKey, open_store

MEF_FQDN = "mef.m2m.example.com"
ADMIN_ACTIONS = {"enrolee-add", "enrolee-revoke", "target-add", "token-issue", "est-ca-store", "est-profile",
                 "est-revoke"}


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = make_world(tmp_path)
    yield world
    world.state.store.close()


def _admin(entries: list[AuditEntry]) -> list[AuditEntry]:
    return [e for e in entries if e.actor == "mef-admin"]


def test_in_process_admin_records_name_the_os_user_and_tokens_are_audited_as_a_hash_prefix(w: World) -> None:
    token = w.state.issue_token(ENROLEE, valid_for=timedelta(minutes=10))
    with w.mef() as m:
        _, prov = run(lambda: est_enrol(m.host, m.port, w.psk_tls()))
    w.est.revoke_certificate(prov.certificate.serial_number)
    w.state.revoke_enrolee_report(ENROLEE)
    entries = w.state.store.list_audit(limit=100)
    admin = _admin(entries)
    assert {e.action for e in admin} == ADMIN_ACTIONS  # make_world: est-ca-store, enrolee-add, target-add, est-profile
    for e in admin:
        assert e.details["os_user"] == getpass.getuser() and e.details["os_uid"] == os.getuid(), e
    # service records (the enrolment itself) are not admin actions and carry no OS user
    assert all("os_user" not in e.details for e in entries if e.actor != "mef-admin")
    (issue,) = [e for e in admin if e.action == "token-issue"]
    digest = hash_token(token)
    assert issue.subject == ENROLEE and issue.details["token_sha256_prefix"] == digest[:12]
    assert issue.details["expires"] is not None
    trail = json.dumps([[e.actor, e.action, e.subject, e.outcome, e.details] for e in entries])
    assert token not in trail and digest not in trail and digest[:13] not in trail


def test_os_user_falls_back_to_the_uid(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    import m2msec.osuser as osuser

    def no_user() -> str:
        raise OSError("No username set in the environment")

    monkeypatch.setattr(osuser.getpass, "getuser", no_user)
    assert osuser.os_user() == f"uid:{os.getuid()}"
    w.state.issue_token(ENROLEE)
    (issue,) = [e for e in w.state.store.list_audit(limit=5) if e.action == "token-issue"]
    assert issue.details["os_user"] == f"uid:{os.getuid()}" and issue.details["os_uid"] == os.getuid()


def test_cli_admin_commands_are_audited_with_the_os_user(tmp_path: Path) -> None:
    KeyEncryptionKey.generate().write_file(tmp_path / "mef.kek")
    cfg = tmp_path / "mef.toml"
    cfg.write_text(f'[mef]\nfqdn = "{MEF_FQDN}"\nstore = "sqlite:///{tmp_path / "mef.db"}"\nkek_file = "mef.kek"\n')
    r = CliRunner(env={"LOGNAME": "op-alice", "USER": "op-alice"})
    c = str(cfg)
    res = r.invoke(app, ["enrolee", "add", "--config", c, "--enrolee-id", "C1", "--kpm-id", "kpm1",
                         "--kpm-hex", "11" * 32, "--token"])
    assert res.exit_code == 0, res.output
    tok1 = res.output.split("enrolment-token ")[1].strip()
    res = r.invoke(app, ["enrolee", "token", "--config", c, "--enrolee-id", "C1", "--valid-for", "60"])
    assert res.exit_code == 0, res.output
    tok2 = res.output.split("enrolment-token ")[1].strip()
    assert r.invoke(app, ["target", "add", "--config", c, "--target-id", "/id-in", "--psk-id", "t",
                          "--psk-hex", "22" * 32]).exit_code == 0
    assert r.invoke(app, ["est-ca", "--config", c, "--name", "MEF CA"]).exit_code == 0
    assert r.invoke(app, ["enrolee", "est", "--config", c, "--enrolee-id", "C1", "--flavour", "ae-id",
                          "--identifier", "//m2m.example.com/id-in/C1"]).exit_code == 0
    assert r.invoke(app, ["enrolee", "revoke", "--config", c, "--enrolee-id", "C1"]).exit_code == 0
    # a refused command writes no admin record
    assert r.invoke(app, ["enrolee", "token", "--config", c, "--enrolee-id", "nobody"]).exit_code == 2
    with open_store(f"sqlite:///{tmp_path / 'mef.db'}") as store:
        entries = store.list_audit(limit=100)
    admin = sorted(_admin(entries), key=lambda e: e.seq)
    assert [e.action for e in admin] == ["enrolee-add", "token-issue", "token-issue", "target-add", "est-ca-store",
                                         "est-profile", "enrolee-revoke"]
    assert all(e.details["os_user"] == "op-alice" for e in admin)
    issued = [e.details["token_sha256_prefix"] for e in admin if e.action == "token-issue"]
    assert issued == [hash_token(tok1)[:12], hash_token(tok2)[:12]]
    trail = json.dumps([[e.subject, e.details] for e in entries])
    assert tok1 not in trail and tok2 not in trail and "11" * 32 not in trail and "22" * 32 not in trail
    # the trail as an operator reads it
    from m2msec.store.cli import app as store_app

    res = CliRunner().invoke(store_app, ["audit", "--url", f"sqlite:///{tmp_path / 'mef.db'}", "--json"])
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert any(r["action"] == "token-issue" and r["details"]["os_user"] == "op-alice" for r in rows)
