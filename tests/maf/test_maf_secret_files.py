"""``m2msec maf add-client --km-file`` (hex text or raw octets, ``-`` = stdin): Km stays out of the
process arguments (docs/threat-model.md 5.4; TS-0003 8.8.2 MAF Client provisioning)."""

from __future__ import annotations

import os
from pathlib import Path

from typer.testing import CliRunner

from m2msec.maf.cli import app
from m2msec.store import KeyEncryptionKey, open_store

MAF = "maf.example.com"
runner = CliRunner()


def _config(tmp: Path) -> Path:
    KeyEncryptionKey.generate().write_file(tmp / "kek.hex")
    cfg = tmp / "maf.toml"
    cfg.write_text(f'fqdn = "{MAF}"\nstore = "sqlite:///{tmp / "maf.db"}"\nkek_file = "kek.hex"\n'
                   '[[admin]]\nfqdn = "sp.example.com"\n')
    return cfg


def _km(tmp: Path, kmid: str) -> bytes:
    with open_store(f"sqlite:///{tmp / 'maf.db'}", KeyEncryptionKey.from_file(tmp / "kek.hex")) as store:
        return store.get_credential("maf.km", kmid.lower()).secret


def test_add_client_reads_km_from_a_file_or_stdin(tmp_path: Path) -> None:
    cfg = str(_config(tmp_path))
    km1, km2 = os.urandom(32), os.urandom(32)
    (tmp_path / "km1").write_text(" ".join(km1.hex()[i:i + 8] for i in range(0, 64, 8)) + "\n")
    r = runner.invoke(app, ["add-client", "-c", cfg, "--client-id", "//sp.example.com/C1", "--kmid", f"c1@{MAF}",
                            "--km-file", str(tmp_path / "km1")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["add-client", "-c", cfg, "--client-id", "//sp.example.com/C2", "--kmid", f"c2@{MAF}",
                            "--km-file", "-"], input=km2)
    assert r.exit_code == 0, r.output
    assert _km(tmp_path, f"c1@{MAF}") == km1 and _km(tmp_path, f"c2@{MAF}") == km2
    assert km1.hex() not in r.output


def test_add_client_km_refusals(tmp_path: Path) -> None:
    cfg = str(_config(tmp_path))
    (tmp_path / "km").write_text("11" * 32)
    cases = [
        (["--kmid", f"a@{MAF}"], "give --km-hex or --km-file"),
        (["--kmid", f"a@{MAF}", "--km-hex", "11" * 32, "--km-file", str(tmp_path / "km")], "not both"),
        (["--kmid", f"a@{MAF}", "--km-file", str(tmp_path / "nope")], "--km-file: cannot read file"),
        (["--kmid", f"a@{MAF}", "--km-hex", "1g" * 32], "--km-hex is not hexadecimal"),
        (["--cert", str(tmp_path / "km"), "--km-file", str(tmp_path / "km"), "--client-id", "x"],
         "go with --kmid, not with --cert"),
    ]
    for args, message in cases:
        r = runner.invoke(app, ["add-client", "-c", cfg, *args])
        assert r.exit_code == 2 and message in " ".join(r.output.split()), (args, r.output)
        assert "1g" * 32 not in r.output
    r = runner.invoke(app, ["clients", "-c", cfg, "--json"])
    assert r.exit_code == 0 and f"a@{MAF}" not in r.output
