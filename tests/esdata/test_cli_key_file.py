"""``m2msec esdata seal|open --key-file`` (hex text or raw octets, ``-`` = stdin): the symmetric key
stays out of the process arguments (docs/threat-model.md 5.4; TS-0003 8.5 ESData)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from m2msec.esdata.cli import app

runner = CliRunner()
KID = "k1@mef.example.com"


def test_seal_with_key_on_stdin_open_with_raw_key_file(tmp_path: Path) -> None:
    key = os.urandom(16)
    while key[-1:] in (b" ", b"\n", b"\t", b"\r", b"\v", b"\f"):  # a trailing whitespace octet stays part of the key
        key = os.urandom(16)
    (tmp_path / "in.txt").write_bytes(b"21.5 C")
    r = runner.invoke(app, ["seal", "--in", str(tmp_path / "in.txt"), "--out", str(tmp_path / "env"), "--class", "enc",
                            "--serialization", "compact", "--key-file", "-", "--kid", KID], input=key.hex() + "\n")
    assert r.exit_code == 0, r.output
    (tmp_path / "raw.key").write_bytes(key)
    r = runner.invoke(app, ["open", "--in", str(tmp_path / "env"), "--out", str(tmp_path / "out"),
                            "--serialization", "compact", "--key-file", str(tmp_path / "raw.key"), "--kid", KID])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out").read_bytes() == b"21.5 C"
    # another key in the file: refused by the Target (so the file's content was used)
    (tmp_path / "other.key").write_text(os.urandom(16).hex())
    r = runner.invoke(app, ["open", "--in", str(tmp_path / "env"), "--out", str(tmp_path / "out2"),
                            "--serialization", "compact", "--key-file", str(tmp_path / "other.key"), "--kid", KID])
    assert r.exit_code == 2 and "DECRYPTION_FAILED" in r.output


def test_raw_key_with_trailing_whitespace_octet_is_not_stripped(tmp_path: Path) -> None:
    key = os.urandom(15) + b"\n"
    (tmp_path / "in.txt").write_bytes(b"payload")
    (tmp_path / "k").write_bytes(key)
    r = runner.invoke(app, ["seal", "--in", str(tmp_path / "in.txt"), "--out", str(tmp_path / "env"), "--class", "enc",
                            "--serialization", "compact", "--key-file", str(tmp_path / "k"), "--kid", KID])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["open", "--in", str(tmp_path / "env"), "--out", str(tmp_path / "out"),
                            "--serialization", "compact", "--key-hex", key.hex(), "--kid", KID])
    assert r.exit_code == 0 and (tmp_path / "out").read_bytes() == b"payload", r.output


@pytest.mark.parametrize(("extra", "message"), [
    (["--key-hex", "00" * 16, "--key-file", "k"], "give --key-hex or --key-file, not both"),
    (["--key-file", "/nonexistent/k"], "--key-file: cannot read file /nonexistent/k"),
    (["--key-hex", "0q" * 16], "--key-hex is not hexadecimal"),
])
def test_key_option_refusals(tmp_path: Path, extra: list[str], message: str) -> None:
    (tmp_path / "in.txt").write_bytes(b"x")
    r = runner.invoke(app, ["seal", "--in", str(tmp_path / "in.txt"), "--out", str(tmp_path / "env"), "--class", "enc",
                            "--serialization", "compact", "--kid", KID, *extra])
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "env").exists()
