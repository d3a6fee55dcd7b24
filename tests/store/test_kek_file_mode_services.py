"""Every entry point that reads a KEK file refuses one that group or others can access
(TS-0003 6.2.5.2 secure storage; docs/threat-model.md 5.1): the MAF and MEF admin commands,
``maf serve`` as a real process, and ``gateway serve``.  Exit code 2, "chmod 600 <path>"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from m2msec.store import KeyEncryptionKey

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX modes")

MAF = "maf.example.com"
MEF = "mef.example.com"


def _kek(path: Path, mode: int) -> Path:
    k = KeyEncryptionKey.generate()
    k.write_file(path)
    path.chmod(mode)
    return path


def _maf_cfg(tmp: Path, mode: int) -> tuple[Path, Path]:
    kek = _kek(tmp / "kek.hex", mode)
    cfg = tmp / "maf.toml"
    cfg.write_text(f'fqdn = "{MAF}"\nstore = "sqlite:///{tmp / "maf.db"}"\nkek_file = "{kek}"\n'
                   f'[[admin]]\nfqdn = "sp.example.com"\n')
    return cfg, kek


def test_maf_admin_commands_refuse_an_open_kek_file(tmp_path: Path) -> None:
    from m2msec.maf.cli import app

    cfg, kek = _maf_cfg(tmp_path, 0o644)
    r = CliRunner().invoke(app, ["add-client", "-c", str(cfg), "--kmid", f"a@{MAF}", "--km-hex", "11" * 32])
    assert r.exit_code == 2 and f"chmod 600 {kek}" in " ".join(r.output.split()), r.output
    kek.chmod(0o600)
    r = CliRunner().invoke(app, ["add-client", "-c", str(cfg), "--kmid", f"a@{MAF}", "--km-hex", "11" * 32])
    assert r.exit_code == 0, r.output


def test_maf_serve_process_refuses_an_open_kek_file(tmp_path: Path) -> None:
    cfg, kek = _maf_cfg(tmp_path, 0o604)
    res = subprocess.run([sys.executable, "-c", "from m2msec.maf.cli import app; app()", "serve", "-c", str(cfg),
                          "--port", "0"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "listening" not in res.stdout and f"chmod 600 {kek}" in " ".join(res.stderr.split())


def test_mef_admin_commands_refuse_an_open_kek_file(tmp_path: Path) -> None:
    from m2msec.mef.cli import app

    kek = _kek(tmp_path / "mef.kek", 0o640)
    cfg = tmp_path / "mef.toml"
    cfg.write_text(f'[mef]\nfqdn = "{MEF}"\nstore = "sqlite:///{tmp_path / "mef.db"}"\nkek_file = "{kek}"\n')
    r = CliRunner().invoke(app, ["enrolee", "list", "--config", str(cfg)])
    assert r.exit_code == 2 and f"chmod 600 {kek}" in " ".join(r.output.split()), r.output
    kek.chmod(0o400)
    r = CliRunner().invoke(app, ["enrolee", "list", "--config", str(cfg)])
    assert r.exit_code == 0, r.output


def test_gateway_serve_refuses_an_open_kek_file(tmp_path: Path) -> None:
    from m2msec.gateway.cli import app

    kek = _kek(tmp_path / "gw.kek", 0o660)
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'[cse]\nid = "id-in"\nname = "cse-in"\nurl = "http://127.0.0.1:9"\n'
                   f'[store]\nkek_file = "{kek}"\nurl = "sqlite://{tmp_path}/gw.db"\n')
    r = CliRunner().invoke(app, ["serve", "--config", str(cfg), "--listen", "127.0.0.1:0"])
    assert r.exit_code == 2 and f"chmod 600 {kek}" in " ".join(r.output.split()), r.output
    assert not (tmp_path / "gw.db").exists()  # refused before the store is opened
