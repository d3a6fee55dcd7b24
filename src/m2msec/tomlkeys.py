"""Refuse unknown keys and tables in the services' TOML files (``maf.toml``, ``mef.toml``, ``gateway.toml``).

A misspelt key in a security service's configuration must not silently keep its default
(``revocaton = "require"`` would leave certificate status checking at ``if-available``), so each
loader declares the keys it reads and :func:`check_keys` refuses anything else with a
:class:`~m2msec.errors.ParseError` (the services exit with code 2) that names the key, where it
is, and the closest known key.  The declarations are what ``docs/configuration.md`` documents
(``tests/test_configuration_doc.py`` compares them).

A schema maps a table path to the keys allowed in it: ``""`` is the top level, ``"tls"`` the
table ``[tls]``, ``"admin[]"`` every entry of the array of tables ``[[admin]]``.  A key whose
value is a table or array of tables needs its own schema entry, unless it is listed in
``free`` (its content is not checked: a free-form table such as ``[[admin]] client_config``).
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from typing import Any

from m2msec.errors import ParseError

__all__ = ["Schema", "check_keys"]

Schema = Mapping[str, Collection[str]]


def _where(path: str) -> str:
    if not path:
        return "at the top level"
    return f"in [[{path[:-2]}]]" if path.endswith("[]") else f"in [{path}]"


def _unknown(key: str, path: str, allowed: Collection[str], source: str) -> ParseError:
    hint = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    also = f" (did you mean {hint[0]!r}?)" if hint else f" (known here: {', '.join(sorted(allowed))})"
    return ParseError(f"{source}: unknown key {key!r} {_where(path)}{also}")


def check_keys(doc: Mapping[str, Any], schema: Schema, *, source: str,
               free: Collection[str] = ()) -> None:
    """Raise :class:`ParseError` for the first key of ``doc`` that ``schema`` does not allow.

    ``free`` names dotted key paths (``"admin[].client_config"``) whose values are not checked.
    Type checks stay with the loader; a table where the schema expects a value (or the
    reverse) is the loader's to refuse."""

    def walk(table: Mapping[str, Any], path: str) -> None:
        allowed = schema.get(path, ())
        for key, value in table.items():
            if key not in allowed:
                raise _unknown(key, path, allowed, source)
            child = f"{path}.{key}" if path else key
            if child in free or f"{child}[]" in free:
                continue
            if isinstance(value, Mapping) and child in schema:
                walk(value, child)
            elif isinstance(value, list) and f"{child}[]" in schema:
                for entry in value:
                    if isinstance(entry, Mapping):
                        walk(entry, f"{child}[]")

    walk(doc, "")
