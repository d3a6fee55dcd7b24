"""``m2msec maf`` commands: add-client, clients, keys, revoke (CliRunner) and ``serve`` as a real process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _mafhelp import ADMIN, MAF
from typer.testing import CliRunner

from m2msec.maf import MAFClient, MAFClientConfig
from m2msec.maf.cli import app
from m2msec.onem2m.enums import SUID
from m2msec.store import KeyEncryptionKey
from m2msec.tls.engine import PSKCredentials

KM1, KM2 = "11" * 32, "22" * 32


def _config(tmp: Path) -> Path:
    KeyEncryptionKey.generate().write_file(tmp / "kek.hex")
    cfg = tmp / "maf.toml"
    cfg.write_text(f'fqdn = "{MAF}"\nstore = "sqlite:///{tmp / "maf.db"}"\nkek_file = "kek.hex"\n'
                   f'[[admin]]\nfqdn = "{ADMIN}"\nclient_config = {{ httpPort = 8443 }}\n')
    return cfg


def test_admin_commands_and_serve(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    runner = CliRunner()
    for cid, kmid, km in (("//sp.example.com/CAE1", f"cae1@{MAF}", KM1), ("//sp.example.com/CAE2", f"cae2@{MAF}", KM2)):
        r = runner.invoke(app, ["add-client", "-c", str(cfg), "--client-id", cid, "--kmid", kmid, "--km-hex", km])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["add-client", "-c", str(cfg), "--kmid", f"x@{MAF}"])
    assert r.exit_code == 2 and "--km-hex" in r.output
    r = runner.invoke(app, ["add-client", "-c", str(cfg), "--kmid", "x@other.example.com", "--km-hex", KM1])
    assert r.exit_code == 2 and "FQDN" in r.output
    r = runner.invoke(app, ["add-client", "-c", str(cfg), "--kmid", f"cae1@{MAF}", "--km-hex", KM2])
    assert r.exit_code == 2  # an existing KmID is not overwritten
    r = runner.invoke(app, ["clients", "-c", str(cfg), "--json"])
    assert r.exit_code == 0 and "CAE1" in r.output and "CAE2" in r.output and KM1 not in r.output

    proc = subprocess.Popen([sys.executable, "-c", "from m2msec.maf.cli import app; app()", "serve", "-c", str(cfg),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "listening on" in line, proc.stderr.read() if proc.poll() is not None else line  # type: ignore[union-attr]
        port = int(line.rsplit(":", 1)[1])

        async def main() -> str:
            now = datetime.now(UTC)
            a = MAFClient(MAFClientConfig(MAF, ADMIN, "127.0.0.1", port, psk=PSKCredentials(f"cae1@{MAF}".encode(),
                                                                                           bytes.fromhex(KM1))))
            b = MAFClient(MAFClientConfig(MAF, ADMIN, "127.0.0.1", port, psk=PSKCredentials(f"cae2@{MAF}".encode(),
                                                                                           bytes.fromhex(KM2))))
            async with a, b:
                await a.register(now + timedelta(days=1))
                await b.register(now + timedelta(days=1))
                assert (await a.retrieve_configuration())["httpPort"] == 8443
                key = await a.register_key(SUID.MAF_ESPRIM, ["//sp.example.com/CAE2"], now + timedelta(hours=1))
                assert (await b.retrieve_key(key.key_id)).key == key.key
                return key.key_id

        key_id = asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        proc.terminate()
        proc.wait(5)
    r = runner.invoke(app, ["keys", "-c", str(cfg)])
    assert r.exit_code == 0 and key_id[:16] in r.output.replace("\n", "")
    r = runner.invoke(app, ["revoke", key_id, "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["revoke", key_id, "-c", str(cfg)])
    assert r.exit_code == 1
    r = runner.invoke(app, ["keys", "-c", str(cfg), "--json"])
    assert r.exit_code == 0 and r.output.strip() == ""


def test_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "maf.toml"
    bad.write_text("fqdn = \n")
    r = CliRunner().invoke(app, ["keys", "-c", str(bad)])
    assert r.exit_code == 2 and "cannot read MAF configuration" in r.output


@pytest.mark.parametrize("missing", ["fqdn", "store"])
def test_config_missing_key(tmp_path: Path, missing: str) -> None:
    from m2msec.errors import ParseError
    from m2msec.maf.server import load_config

    text = {"fqdn": f'fqdn = "{MAF}"', "store": 'store = "sqlite:///x.db"'}
    p = tmp_path / "maf.toml"
    p.write_text("\n".join(v for k, v in text.items() if k != missing) + "\n")
    with pytest.raises(ParseError):
        load_config(p)
