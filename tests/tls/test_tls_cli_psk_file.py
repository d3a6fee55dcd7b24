"""``m2msec tls server|client --psk-file`` (hex text or raw octets, ``-`` = stdin): the PSK stays
out of the process arguments (docs/threat-model.md 5.4; TS-0003 8.2.2 PSK SAEF)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _tlshelp import Proc
from typer.testing import CliRunner

from m2msec.tls.cli import app

ID = "test@onem2m.com"


def _fields(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ": " in line:
            k, v = line.split(": ", 1)
            out.setdefault(k, []).append(v)
    return out


def _session(server_args: list[str], client_args: list[str], client_stdin: bytes | None
             ) -> tuple[dict[str, list[str]], dict[str, list[str]], int]:
    server = Proc([sys.executable, "-m", "m2msec.tls.cli", "server", "--once", "--timeout", "15", *server_args])
    try:
        port = server.wait_for(r"listening: 127\.0\.0\.1:(\d+)").group(1)
        client = subprocess.run([sys.executable, "-m", "m2msec.tls.cli", "client", "--port", port, *client_args],
                                input=client_stdin, capture_output=True, timeout=20)
        server.wait(15)
    finally:
        server.kill()
    return _fields(server.text), _fields(client.stdout.decode()), client.returncode


def test_psk_from_a_hex_file_and_from_raw_stdin(tmp_path: Path) -> None:
    psk = os.urandom(32)
    hex_file = tmp_path / "psk.hex"
    hex_file.write_text(psk.hex() + "\n")
    srv, cli, rc = _session(["--psk-identity", ID, "--psk-file", str(hex_file)],
                            ["--psk-identity", ID, "--psk-file", "-", "--send", "hi"], client_stdin=psk)
    assert rc == 0, cli
    assert srv["psk_identity"] == [ID] and cli["received"] == ["hi"]
    assert psk.hex() not in " ".join(" ".join(v) for v in (*srv.values(), *cli.values()) if v)


def test_a_different_psk_in_the_file_fails_the_handshake(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"secret-one")
    _srv, cli, rc = _session(["--psk-identity", ID, "--psk-file", str(tmp_path / "a")],
                            ["--psk-identity", ID, "--psk-text", "secret-two"], client_stdin=None)
    assert rc == 1 and cli["error"] == ["PSK_MISMATCH"]
    # control: the same raw octets as text match
    _srv, cli, rc = _session(["--psk-identity", ID, "--psk-file", str(tmp_path / "a")],
                            ["--psk-identity", ID, "--psk-text", "secret-one"], client_stdin=None)
    assert rc == 0, cli


@pytest.mark.parametrize(("args", "message"), [
    (["--psk-hex", "00", "--psk-file", "x"], "give one of --psk-hex, --psk-text and --psk-file"),
    (["--psk-text", "a", "--psk-file", "x"], "give one of --psk-hex, --psk-text and --psk-file"),
    (["--psk-file", "/nonexistent/psk"], "--psk-file: cannot read file /nonexistent/psk"),
    (["--psk-hex", "xyz"], "--psk-hex is not hexadecimal"),
])
def test_psk_option_refusals(args: list[str], message: str) -> None:
    for cmd in (["client", "--port", "1"], ["server", "--once", "--timeout", "1"]):
        r = CliRunner().invoke(app, [*cmd, "--psk-identity", ID, *args])
        assert r.exit_code == 2 and message in " ".join(r.output.replace("│", " ").split()), r.output


def test_empty_psk_file_from_stdin_is_refused() -> None:
    r = CliRunner().invoke(app, ["client", "--port", "1", "--psk-identity", ID, "--psk-file", "-"], input=b"")
    assert r.exit_code == 2 and "standard input is empty" in " ".join(r.output.replace("│", " ").split())
