"""Key material for command-line tools, from an option or from a file (or stdin).

Key material given as ``--…-hex`` lands in the process arguments, visible to other local
users in ``ps``/``/proc/<pid>/cmdline`` and kept in shell history.  Every admin and test
command that takes a key therefore also accepts a file (``-`` = standard input); this module
is the one parser they share.  It supports the key provisioning of TS-0003 clause 8.3.2
(pre-provisioned Kpm), 8.3.5 (MEF Key Retrieval Targets' PSKs), 8.8.2 (MAF Clients' Km),
8.2 (SAEF PSKs) and 8.5 (ESData symmetric keys) and the Sensitive Data Handling of
clause 6.2.5.2 (no key in an error message).

File content (an m2msec decision, docs/profile.md):

* after removing all ASCII whitespace, a non-empty even-length string of hexadecimal digits is
  **hex text** and is decoded (so ``openssl rand -hex 32 > key`` works);
* anything else is the **raw octets**, taken exactly as they are (not stripped: ``printf`` or
  ``echo -n`` a text passphrase);
* an empty file and a file larger than 64 KiB are refused.

Error messages name the option and the path, never the content.
"""

from __future__ import annotations

import os
import string
import sys
from typing import BinaryIO

__all__ = ["MAX_SECRET_FILE", "SecretInputError", "parse_hex_secret", "read_secret_file", "secret_from_options"]

#: largest secret file accepted (octets)
MAX_SECRET_FILE = 64 * 1024
_HEX = frozenset(string.hexdigits.encode("ascii"))
_WS = b" \t\r\n\v\f"


class SecretInputError(ValueError):
    """Key material given on the command line or in a file is unusable (the text never
    contains the material itself)."""


def parse_hex_secret(value: str, *, option: str) -> bytes:
    """Hexadecimal text (whitespace ignored) to octets; refuses empty or non-hex values."""
    compact = "".join(value.split())
    if not compact:
        raise SecretInputError(f"{option} is empty")
    try:
        return bytes.fromhex(compact)
    except ValueError:
        raise SecretInputError(f"{option} is not hexadecimal") from None


def _decode_content(data: bytes) -> bytes:
    compact = data.translate(None, _WS)
    if compact and len(compact) % 2 == 0 and all(c in _HEX for c in compact):
        return bytes.fromhex(compact.decode("ascii"))
    return data


def read_secret_file(path: str | os.PathLike[str], *, option: str, stdin: BinaryIO | None = None) -> bytes:
    """The key in ``path`` (hex text or raw octets, see the module docstring); ``-`` reads
    ``stdin`` (default: the process's binary standard input)."""
    where = "standard input" if str(path) == "-" else f"file {os.fspath(path)}"
    try:
        if str(path) == "-":
            stream = stdin if stdin is not None else sys.stdin.buffer
            data = stream.read(MAX_SECRET_FILE + 1)
        else:
            with open(path, "rb") as fh:
                data = fh.read(MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise SecretInputError(f"{option}: cannot read {where}: {exc.strerror}") from None
    if len(data) > MAX_SECRET_FILE:
        raise SecretInputError(f"{option}: {where} is larger than {MAX_SECRET_FILE} octets")
    if not data:
        raise SecretInputError(f"{option}: {where} is empty")
    return _decode_content(data)


def secret_from_options(hex_value: str | None, file_value: str | os.PathLike[str] | None, *, hex_option: str,
                        file_option: str, required: bool = False, stdin: BinaryIO | None = None) -> bytes | None:
    """The key of a ``--X-hex`` / ``--X-file`` option pair: at most one of them (exactly one
    when ``required``); None when neither is given and the key is optional."""
    if hex_value is not None and file_value is not None:
        raise SecretInputError(f"give {hex_option} or {file_option}, not both")
    if hex_value is not None:
        return parse_hex_secret(hex_value, option=hex_option)
    if file_value is not None:
        return read_secret_file(file_value, option=file_option, stdin=stdin)
    if required:
        raise SecretInputError(f"give {hex_option} or {file_option}")
    return None
