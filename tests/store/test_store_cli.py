"""``m2msec store …`` commands (typer sub-app, in-process and as the installed console script)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from m2msec.store import KeyEncryptionKey, open_store
from m2msec.store.cli import app

runner = CliRunner()


def test_kek_generate_writes_0600_and_refuses_overwrite(tmp_path: Path) -> None:
    p = tmp_path / "kek"
    res = runner.invoke(app, ["kek-generate", str(p)])
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    kek = KeyEncryptionKey.from_file(p)
    assert kek.kek_id_hex in res.output and kek._key.hex() not in res.output
    res = runner.invoke(app, ["kek-generate", str(p)])
    assert res.exit_code == 2 and "already exists" in res.output
    assert KeyEncryptionKey.from_file(p) == kek
    assert runner.invoke(app, ["kek-generate", "--force", str(p)]).exit_code == 0
    assert KeyEncryptionKey.from_file(p) != kek


def test_init_audit_rekey(store_url: str, tmp_path: Path) -> None:
    res = runner.invoke(app, ["init", "--url", store_url])
    assert res.exit_code == 0 and "version 1" in res.output, res.output
    old, new = tmp_path / "old.kek", tmp_path / "new.kek"
    assert runner.invoke(app, ["kek-generate", str(old)]).exit_code == 0
    assert runner.invoke(app, ["kek-generate", str(new)]).exit_code == 0
    k_old, k_new = KeyEncryptionKey.from_file(old), KeyEncryptionKey.from_file(new)
    with open_store(store_url, k_old) as s:
        s.put_credential("mef.ke", "k1@mef", b"\x01" * 32)
        s.put_credential("mef.ke", "k2@mef", b"\x02" * 32)
        for i in range(3):
            s.append_audit("mef-1", "enrol", f"C-AE{i}", "ok", {"suid": 21})
    res = runner.invoke(app, ["audit", "--url", store_url, "--limit", "2"])
    assert res.exit_code == 0, res.output
    assert "C-AE2" in res.output and "C-AE1" in res.output and "C-AE0" not in res.output
    res = runner.invoke(app, ["audit", "--url", store_url, "--json"])
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert [r["subject"] for r in rows] == ["C-AE2", "C-AE1", "C-AE0"] and rows[0]["details"] == {"suid": 21}

    res = runner.invoke(app, ["rekey", "--url", store_url, "--old-kek-file", str(old), "--new-kek-file", str(new)])
    assert res.exit_code == 0 and "re-encrypted 2" in res.output, res.output
    assert k_old._key.hex() not in res.output and k_new._key.hex() not in res.output
    with open_store(store_url, k_new) as s:
        assert s.get_credential("mef.ke", "k2@mef").secret == b"\x02" * 32
    # running it again with the now-wrong old key: nothing to do, no damage
    res = runner.invoke(app, ["rekey", "--url", store_url, "--old-kek-file", str(old), "--new-kek-file", str(new)])
    assert res.exit_code == 0 and "re-encrypted 0" in res.output
    # swapped roles: the rows are under neither "old" key -> clear error, exit 2
    third = tmp_path / "third.kek"
    runner.invoke(app, ["kek-generate", str(third)])
    res = runner.invoke(app, ["rekey", "--url", store_url, "--old-kek-file", str(third), "--new-kek-file", str(old)])
    assert res.exit_code == 2 and "KEK id" in res.output


def test_audit_on_missing_schema_and_bad_url(tmp_path: Path) -> None:
    res = runner.invoke(app, ["audit", "--url", f"sqlite://{tmp_path}/empty.db"])
    assert res.exit_code == 2 and "error:" in res.output
    res = runner.invoke(app, ["init", "--url", "mysql://x/y"])
    assert res.exit_code == 2 and "unsupported" in res.output


def test_url_from_environment(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/env.db"
    res = runner.invoke(app, ["init"], env={"M2MSEC_STORE_URL": url})
    assert res.exit_code == 0, res.output
    assert (tmp_path / "env.db").exists()


def test_mounted_under_m2msec_store_as_a_process(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "m2msec"
    if not exe.exists():
        pytest.skip("m2msec console script not installed in this environment")
    p = tmp_path / "proc.kek"
    res = subprocess.run([str(exe), "store", "kek-generate", str(p)], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ))
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(p.stat().st_mode) == 0o600


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
def test_rekey_refuses_a_group_readable_kek_file(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/rk.db"
    old, new = tmp_path / "old.kek", tmp_path / "new.kek"
    assert runner.invoke(app, ["kek-generate", str(old)]).exit_code == 0
    assert runner.invoke(app, ["kek-generate", str(new)]).exit_code == 0
    with open_store(url, KeyEncryptionKey.from_file(old)) as s:
        s.put_credential("mef.ke", "k1@mef", b"\x01" * 32)
    new.chmod(0o640)
    res = runner.invoke(app, ["rekey", "--url", url, "--old-kek-file", str(old), "--new-kek-file", str(new)])
    assert res.exit_code == 2 and f"chmod 600 {new}" in res.output, res.output
    with open_store(url, KeyEncryptionKey.from_file(old)) as s:  # nothing re-sealed
        assert s.get_credential("mef.ke", "k1@mef").secret == b"\x01" * 32
