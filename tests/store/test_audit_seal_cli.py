"""``m2msec store audit seal`` / ``verify``: the installed console script as a real process on
SQLite and PostgreSQL, and the refusals in-process (exit 0 intact, 1 tampered, 2 usage/KEK)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from m2msec.store import KeyEncryptionKey, open_store
from m2msec.store.cli import app

runner = CliRunner()
EXE = Path(sys.executable).parent / "m2msec"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if k not in ("M2MSEC_KEK", "M2MSEC_KEK_FILE", "M2MSEC_STORE_URL")}
    e.update(env or {})
    return subprocess.run([str(EXE), "store", "audit", *args], capture_output=True, text=True, env=e, timeout=60,
                          check=False)


def _tamper(url: str, stmt: str) -> None:
    if url.startswith("sqlite://"):
        conn = sqlite3.connect(url[len("sqlite://"):])
        with conn:
            conn.execute("DROP TRIGGER IF EXISTS m2msec_audit_no_update")
            conn.execute(stmt)
        conn.close()
        return
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute("DROP TRIGGER IF EXISTS m2msec_audit_append_only ON m2msec_audit")
        conn.execute(stmt)  # type: ignore[arg-type]


def _seeded(url: str, kek_path: Path, n: int = 5) -> KeyEncryptionKey:
    kek = KeyEncryptionKey.generate()
    kek.write_file(kek_path)
    with open_store(url, kek) as s:
        for i in range(n):
            s.append_audit("maf", "key_retrieval", f"C-AE{i}", "ok", {"relativeKeyID": f"r{i}"})
    return kek


def test_seal_and_verify_as_processes(store_url: str, tmp_path: Path) -> None:
    kek_path = tmp_path / "store.kek"
    kek = _seeded(store_url, kek_path)
    env = {"M2MSEC_STORE_URL": store_url, "M2MSEC_KEK_FILE": str(kek_path)}
    res = _run("seal", env=env)
    assert res.returncode == 0, res.stderr
    assert "sealed 5 row(s) in 1 new checkpoint(s)" in res.stdout and "rows up to seq 5" in res.stdout
    anchor = res.stdout.split("anchor: ", 1)[1].split()[0]
    assert anchor.startswith("1:") and len(anchor) == 2 + 32
    assert kek._key.hex() not in res.stdout + res.stderr

    with open_store(store_url) as s:
        s.append_audit("maf", "key_retrieval", "late", "ok")
    res = _run("verify", "--url", store_url, "--kek-file", str(kek_path), "--anchor", anchor)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "INTACT" in res.stdout and "5 sealed row(s) in 1 checkpoint(s)" in res.stdout
    assert "1 row(s) not sealed yet" in res.stdout

    _tamper(store_url, "UPDATE m2msec_audit SET subject = 'C-AEx' WHERE seq = 3")
    res = _run("verify", "--json", env=env)
    assert res.returncode == 1, res.stderr
    out = json.loads(res.stdout)
    assert out["intact"] is False and out["unsealed_rows"] == 1 and out["head"]["anchor"] == anchor
    assert [(f["kind"], f["seq"]) for f in out["findings"]] == [("modified", 3)]
    res = _run("verify", env=env)
    assert res.returncode == 1 and "TAMPERED: first modified row seq 3" in res.stdout
    assert "modified" in res.stdout and "audit row seq 3 was modified" in res.stdout


def test_forged_head_refuses_to_seal_as_process(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/s.db"
    kek_path = tmp_path / "k"
    _seeded(url, kek_path, 2)
    env = {"M2MSEC_STORE_URL": url, "M2MSEC_KEK_FILE": str(kek_path)}
    assert _run("seal", env=env).returncode == 0
    _tamper(url, "UPDATE m2msec_audit_seal SET row_count = 1")
    res = _run("seal", env=env)
    assert res.returncode == 1 and "does not authenticate" in res.stderr
    res = _run("verify", "--json", env=env)
    assert res.returncode == 1 and json.loads(res.stdout)["findings"][0]["kind"] == "checkpoint-forged"


def test_refusals_exit_2(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/s.db"
    kek_path = tmp_path / "k"
    kek = _seeded(url, kek_path, 2)
    assert runner.invoke(app, ["audit", "seal", "--url", url, "--kek-file", str(kek_path)]).exit_code == 0
    # another KEK: a clear error naming both ids, not "tampered"
    other = tmp_path / "other"
    KeyEncryptionKey.generate().write_file(other)
    for cmd in ("verify", "seal"):
        res = runner.invoke(app, ["audit", cmd, "--url", url, "--kek-file", str(other)])
        assert res.exit_code == 2 and f"sealed under KEK id {kek.kek_id_hex}" in res.output, res.output
    # no KEK at all
    res = runner.invoke(app, ["audit", "verify", "--url", url], env={"M2MSEC_KEK": "", "M2MSEC_KEK_FILE": ""})
    assert res.exit_code == 2 and "no key-encryption key" in res.output
    # a KEK file others can read
    loose = tmp_path / "loose"
    kek.write_file(loose)
    loose.chmod(0o644)
    res = runner.invoke(app, ["audit", "verify", "--url", url, "--kek-file", str(loose)])
    assert res.exit_code == 2 and "chmod 600" in res.output
    # a malformed anchor, a missing schema, no URL
    res = runner.invoke(app, ["audit", "verify", "--url", url, "--kek-file", str(kek_path), "--anchor", "one:two"])
    assert res.exit_code == 2 and "anchor" in res.output
    res = runner.invoke(app, ["audit", "seal", "--url", f"sqlite://{tmp_path}/none.db", "--kek-file", str(kek_path)])
    assert res.exit_code == 2 and "schema is missing" in res.output
    res = runner.invoke(app, ["audit"], env={"M2MSEC_STORE_URL": ""})
    assert res.exit_code == 2 and "missing --url" in res.output
    res = runner.invoke(app, ["audit", "verify", "--kek-file", str(kek_path)], env={"M2MSEC_STORE_URL": ""})
    assert res.exit_code == 2


def test_anchor_reveals_a_rollback(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/s.db"
    kek_path = tmp_path / "k"
    _seeded(url, kek_path, 2)
    base = ["--url", url, "--kek-file", str(kek_path)]
    runner.invoke(app, ["audit", "seal", *base])
    with open_store(url) as s:
        s.append_audit("maf", "key_retrieval", "C-AE9", "ok")
    res = runner.invoke(app, ["audit", "seal", *base, "--json"])
    anchor = json.loads(res.output)["head"]["anchor"]
    assert anchor.startswith("2:")
    conn = sqlite3.connect(str(tmp_path / "s.db"))
    with conn:
        conn.execute("DELETE FROM m2msec_audit_seal WHERE seal_no = 2")
        conn.execute("DELETE FROM m2msec_audit_mac WHERE seq = 3")
    conn.close()
    assert runner.invoke(app, ["audit", "verify", *base]).exit_code == 0  # consistent without the anchor
    res = runner.invoke(app, ["audit", "verify", *base, "--anchor", anchor])
    assert res.exit_code == 1 and "rolled-back" in res.output and "TAMPERED" in res.output


def test_listing_still_works_beside_the_subcommands(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/s.db"
    _seeded(url, tmp_path / "k", 3)
    res = runner.invoke(app, ["audit", "--url", url, "--limit", "2", "--json"])
    assert res.exit_code == 0 and [json.loads(x)["subject"] for x in res.output.splitlines()] == ["C-AE2", "C-AE1"]
    res = runner.invoke(app, ["audit", "--help"])
    assert res.exit_code == 0 and "seal" in res.output and "verify" in res.output


@pytest.mark.parametrize("cmd", ["seal", "verify"])
def test_help_names_the_exit_codes(cmd: str) -> None:
    res = runner.invoke(app, ["audit", cmd, "--help"])
    assert res.exit_code == 0 and "--kek-file" in res.output and "Exit 0" in res.output


def test_reseal_command(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/s.db"
    old_path, new_path = tmp_path / "old", tmp_path / "new"
    _seeded(url, old_path, 3)
    KeyEncryptionKey.generate().write_file(new_path)
    assert runner.invoke(app, ["audit", "seal", "--url", url, "--kek-file", str(old_path)]).exit_code == 0
    res = runner.invoke(app, ["audit", "reseal", "--url", url, "--old-kek-file", str(old_path), "--kek-file", str(new_path)])
    assert res.exit_code == 0 and "resealed 3 row(s)" in res.output, res.output
    assert runner.invoke(app, ["audit", "verify", "--url", url, "--kek-file", str(new_path)]).exit_code == 0
    assert runner.invoke(app, ["audit", "verify", "--url", url, "--kek-file", str(old_path)]).exit_code == 2
    # again with the now-wrong old KEK: a KEK error, exit 2
    res = runner.invoke(app, ["audit", "reseal", "--url", url, "--old-kek-file", str(old_path), "--kek-file", str(new_path)])
    assert res.exit_code == 2 and "KEK id" in res.output
    # a trail that does not verify under the old KEK is not resealed: exit 1
    _tamper(url, "UPDATE m2msec_audit SET outcome = 'denied' WHERE seq = 2")
    res = runner.invoke(app, ["audit", "reseal", "--url", url, "--old-kek-file", str(new_path), "--kek-file", str(old_path)])
    assert res.exit_code == 1 and "does not verify under the old KEK" in res.output
    assert runner.invoke(app, ["audit", "verify", "--url", url, "--kek-file", str(new_path)]).exit_code == 1


def test_rekey_carries_the_audit_seal_over(tmp_path: Path) -> None:
    """`store rekey` reseals a sealed trail under the new KEK; re-running it is harmless; a trail
    never sealed stays unsealed; a tampered one is not resealed (exit 1, credentials rekeyed)."""
    store_app = app  # `m2msec store`
    url = f"sqlite://{tmp_path}/s.db"
    old_path, new_path = tmp_path / "old", tmp_path / "new"
    old = _seeded(url, old_path, 3)
    new = KeyEncryptionKey.generate()
    new.write_file(new_path)
    with open_store(url, old) as s:
        s.put_credential("test.cred", "c1", b"\x01" * 32)
    assert runner.invoke(app, ["audit", "seal", "--url", url, "--kek-file", str(old_path)]).exit_code == 0
    res = runner.invoke(store_app, ["rekey", "--url", url, "--old-kek-file", str(old_path), "--new-kek-file", str(new_path)])
    assert res.exit_code == 0, res.output
    assert "re-encrypted 1 credential(s)" in res.output and f"audit seal carried over to kek_id {new.kek_id_hex}" in res.output
    assert runner.invoke(app, ["audit", "verify", "--url", url, "--kek-file", str(new_path)]).exit_code == 0
    again = runner.invoke(store_app, ["rekey", "--url", url, "--old-kek-file", str(old_path), "--new-kek-file", str(new_path)])
    assert again.exit_code == 0 and "audit seal already under kek_id" in again.output, again.output
    # a trail never sealed: rekey leaves it unsealed
    url2 = f"sqlite://{tmp_path}/u.db"
    _seeded(url2, tmp_path / "old2", 2)
    res = runner.invoke(store_app, ["rekey", "--url", url2, "--old-kek-file", str(tmp_path / "old2"),
                                    "--new-kek-file", str(new_path)])
    assert res.exit_code == 0 and "audit seal" not in res.output, res.output
    v = runner.invoke(app, ["audit", "verify", "--url", url2, "--kek-file", str(new_path), "--json"])
    assert json.loads(v.output)["checkpoints"] == 0
    # a tampered sealed trail: the credentials are rekeyed, the seal is not carried over
    url3 = f"sqlite://{tmp_path}/t.db"
    _seeded(url3, tmp_path / "old3", 3)
    assert runner.invoke(app, ["audit", "seal", "--url", url3, "--kek-file", str(tmp_path / "old3")]).exit_code == 0
    _tamper(url3, "UPDATE m2msec_audit SET subject = 'C-AEx' WHERE seq = 1")
    res = runner.invoke(store_app, ["rekey", "--url", url3, "--old-kek-file", str(tmp_path / "old3"),
                                    "--new-kek-file", str(new_path)])
    assert res.exit_code == 1 and "tampered" in res.output, res.output
    assert runner.invoke(app, ["audit", "verify", "--url", url3, "--kek-file", str(tmp_path / "old3")]).exit_code == 1


def test_rekey_rerun_reports_a_seal_tampered_under_the_new_kek(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/s.db"
    old_path, new_path = tmp_path / "old", tmp_path / "new"
    _seeded(url, old_path, 3)
    KeyEncryptionKey.generate().write_file(new_path)
    assert runner.invoke(app, ["audit", "seal", "--url", url, "--kek-file", str(old_path)]).exit_code == 0
    args = ["rekey", "--url", url, "--old-kek-file", str(old_path), "--new-kek-file", str(new_path)]
    assert runner.invoke(app, args).exit_code == 0
    _tamper(url, "UPDATE m2msec_audit SET outcome = 'denied' WHERE seq = 2")
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "does not verify" in res.output, res.output
