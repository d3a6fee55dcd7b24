"""m2msec.secret_input: key material from an option or a file (pure functions)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from m2msec.secret_input import (
    MAX_SECRET_FILE,
    SecretInputError,
    parse_hex_secret,
    read_secret_file,
    secret_from_options,
)

KEY = bytes(range(32))


def _file(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "secret"
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("content", [
    KEY.hex().encode(),
    KEY.hex().encode() + b"\n",
    KEY.hex().upper().encode() + b"\r\n",
    b"  " + KEY.hex()[:20].encode() + b"\n\t" + KEY.hex()[20:].encode() + b" \n",
])
def test_hex_text_files_decode(tmp_path: Path, content: bytes) -> None:
    assert read_secret_file(_file(tmp_path, content), option="--x-file") == KEY


@pytest.mark.parametrize("content", [
    KEY,                      # raw octets (not all hex digits)
    b"secret\n",              # a text passphrase, newline included: raw is raw
    b"abc",                   # odd number of hex digits: raw
    b"0x" + KEY.hex().encode(),  # a 0x prefix is not hex text
    b"\n\n",                  # only whitespace: raw
    b"\xff" * 5 + b" ",
])
def test_everything_else_is_raw_and_unstripped(tmp_path: Path, content: bytes) -> None:
    assert read_secret_file(_file(tmp_path, content), option="--x-file") == content


def test_stdin_dash(tmp_path: Path) -> None:
    assert read_secret_file("-", option="--x-file", stdin=io.BytesIO(KEY.hex().encode() + b"\n")) == KEY
    assert read_secret_file("-", option="--x-file", stdin=io.BytesIO(KEY)) == KEY
    with pytest.raises(SecretInputError, match="--x-file: standard input is empty"):
        read_secret_file("-", option="--x-file", stdin=io.BytesIO(b""))


def test_file_refusals_name_the_option_and_path_not_the_content(tmp_path: Path) -> None:
    with pytest.raises(SecretInputError, match=r"--x-file: cannot read file .*missing"):
        read_secret_file(tmp_path / "missing", option="--x-file")
    with pytest.raises(SecretInputError, match="is empty"):
        read_secret_file(_file(tmp_path, b""), option="--x-file")
    big = os.urandom(MAX_SECRET_FILE + 1)
    with pytest.raises(SecretInputError, match="larger than") as ei:
        read_secret_file(_file(tmp_path, big), option="--x-file")
    assert big[:8].hex() not in str(ei.value)
    assert len(read_secret_file(_file(tmp_path, big[:MAX_SECRET_FILE]), option="--x-file")) == MAX_SECRET_FILE
    with pytest.raises(SecretInputError, match="cannot read"):
        read_secret_file(tmp_path, option="--x-file")  # a directory


def test_hex_option() -> None:
    assert parse_hex_secret(KEY.hex(), option="--x-hex") == KEY
    assert parse_hex_secret(" 0011 2233 ", option="--x-hex") == bytes.fromhex("00112233")
    for bad in ("", "   ", "0", "zz" + "ab" * 15, "0x00"):
        with pytest.raises(SecretInputError) as ei:
            parse_hex_secret(bad, option="--x-hex")
        assert str(ei.value).startswith("--x-hex is ")
        if len(bad) > 4:
            assert bad not in str(ei.value)
    assert issubclass(SecretInputError, ValueError)


def test_option_pairs(tmp_path: Path) -> None:
    f = _file(tmp_path, KEY)
    kw = {"hex_option": "--k-hex", "file_option": "--k-file"}
    assert secret_from_options(KEY.hex(), None, **kw) == KEY
    assert secret_from_options(None, f, **kw) == KEY
    assert secret_from_options(None, str(f), **kw, required=True) == KEY
    assert secret_from_options(None, None, **kw) is None
    with pytest.raises(SecretInputError, match="^give --k-hex or --k-file$"):
        secret_from_options(None, None, **kw, required=True)
    with pytest.raises(SecretInputError, match="^give --k-hex or --k-file, not both$"):
        secret_from_options(KEY.hex(), f, **kw)
    assert secret_from_options(None, "-", **kw, stdin=io.BytesIO(KEY)) == KEY
