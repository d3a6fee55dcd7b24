"""The ``m2msec`` command: help, keys sub-commands and the demo, run as a real process."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from m2msec.cli import app

runner = CliRunner()
BIN = Path(sys.executable).with_name("m2msec")


def _commands(cmd, path):  # type: ignore[no-untyped-def]
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, [*path, name])


def test_help_texts_keep_their_square_brackets():
    """Help is rendered with rich markup, which eats an unescaped ``[tls]``: every ``[table]``
    named in a command's or option's help must show in ``--help`` (escape it as ``\\[tls]``)."""
    bracket = re.compile(r"\[\[?[A-Za-z_][\w.-]*\]?\]")
    checked = 0
    for path, cmd in _commands(typer.main.get_command(app), []):
        texts = [cmd.help or "", *(getattr(p, "help", None) or "" for p in cmd.params)]
        tokens = {t for text in texts for t in bracket.findall(text)}
        if not tokens:
            continue
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "250"})
        shown = " ".join(result.output.split())
        assert result.exit_code == 0 and not [t for t in tokens if t not in shown], (path, tokens)
        checked += 1
    assert checked >= 3  # maf serve, mef serve, mef est-ca name tables


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "keys", "store", "pki", "tls", "esdata", "gateway", "maf", "mef"):
        assert command in result.output


def test_keys_split_matches_profile():
    result = runner.invoke(app, ["keys", "split", bytes(range(48)).hex()])
    assert result.exit_code == 0, result.output
    assert "key_id: " + bytes(range(16)).hex() in result.output
    assert "key: " + bytes(range(16, 48)).hex() in result.output


def test_keys_km_independent():
    ke = bytes(range(32))
    expected = hmac.new(ke, b"oneM2M Enrolment Key to Master Credential derivation" + b"maf.example", hashlib.sha256)
    result = runner.invoke(app, ["keys", "km", ke.hex(), "maf.example"])
    assert result.exit_code == 0
    assert result.output.strip() == f"km: {expected.hexdigest()}"


def test_keys_errors_are_clean():
    result = runner.invoke(app, ["keys", "split", "00" * 47])
    assert result.exit_code == 2
    assert "4000 BAD_REQUEST" in result.output and "48 octets" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["keys", "parse-id", "no-at-sign"])
    assert result.exit_code == 2 and "exactly one '@'" in result.output
    result = runner.invoke(app, ["keys", "usage", "00" * 32, "16", "t.example"])
    assert result.exit_code == 2 and "unknown SUID 16" in result.output
    result = runner.invoke(app, ["keys", "km", "zz", "maf"])
    assert result.exit_code == 2 and "hexadecimal" in result.output


def test_demo_runs_as_a_process(tmp_path):
    assert BIN.exists(), "console script not installed"
    proc = subprocess.run(
        [str(BIN), "demo", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=180, env={**os.environ, "COLUMNS": "120"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all steps passed" in proc.stdout
    assert "FAILED" not in proc.stdout
    out = " ".join(proc.stdout.split())  # rich wraps table cells
    # step 13: certificate MAF Handshake, then MAF-based SAEF over DTLS with the retrieved Kc
    assert "MAF Client ID //m2msec.example/id-in/Cdemo-saef-ae" in out
    assert "PSK-AES128-CCM8" in out and "4103 ORIGINATOR_HAS_NO_PRIVILEGE" in out
    # step 6: nested sign-then-encrypt in XML, opened and the signer checked
    assert "application/json:0:4: sign-enc" in out
    # step 6: signature-only MIC in JWS compact; a changed reading is refused
    assert "application/json:0:1: verified by the key holder" in out
    assert "same JWS with the reading changed refused: BAD_SIGNATURE (rsc 4000)" in out
