"""Strict helpers for reading oneM2M JSON/CBOR data (TS-0004 V3.32.0 clauses 8.4 and 8.5).

Every check raises :class:`~m2msec.errors.ParseError` whose message starts with
the member path (``seci.ero.esks[1]: ...``).  JSON text is decoded with
duplicate member names rejected (clause 8.4.2: "The names in each object in
the JSON shall be unique") and NaN/Infinity rejected; CBOR is decoded with
cbor2 and must be a single data item whose content fits the JSON data model
(clause 8.5: text-string keys, no tags, no byte strings, no undefined).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import binascii
import base64
import io
import json
import math
import re
from enum import IntEnum
from collections.abc import Callable
from typing import Any, Mapping, TypeVar

import cbor2

from m2msec.errors import ParseError

E = TypeVar("E", bound=IntEnum)

# XML NCName restricted to ASCII (m2msec profile): NameStartChar minus ':' and
# the non-ASCII ranges, followed by NameChar minus ':' and the non-ASCII ranges.
NCNAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9._-]*", re.ASCII)
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*", re.ASCII)


def fail(path: str, problem: str) -> ParseError:
    return ParseError(f"{path}: {problem}" if path else problem)


def sub(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def members(
    obj: object,
    path: str,
    names: Mapping[str, str],
    required: tuple[str, ...] | frozenset[str] = (),
) -> tuple[dict[str, Any], dict[str, str]]:
    """Check a JSON object against ``names`` (wire name -> canonical short name).

    Returns ``(values, wire)``: values keyed by short name, and the wire name
    each short name was read under (for building error paths).
    """
    if not isinstance(obj, Mapping):
        raise fail(path, f"expected an object, got {type_name(obj)}")
    values: dict[str, Any] = {}
    wire: dict[str, str] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise fail(path, f"member name must be a string, got {type_name(key)}")
        short = names.get(key)
        if short is None:
            raise fail(sub(path, key), "unknown member")
        if short in values:
            raise fail(sub(path, key), f"member given twice (also as {wire[short]!r})")
        values[short] = value
        wire[short] = key
    for short in required:
        if short not in values:
            long_for: dict[str, str] = {}
            for k, v in names.items():
                long_for.setdefault(v, k)
            raise fail(sub(path, long_for.get(short, short)), "missing mandatory member")
    return values, wire


def expect_int(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(path, f"expected an integer, got {type_name(value)}")
    return value


def expect_str(value: object, path: str, *, nonempty: bool = True) -> str:
    if not isinstance(value, str):
        raise fail(path, f"expected a string, got {type_name(value)}")
    if nonempty and not value:
        raise fail(path, "must not be empty")
    return value


def expect_bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise fail(path, f"expected a boolean, got {type_name(value)}")
    return value


def expect_object(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise fail(path, f"expected an object, got {type_name(value)}")
    check_json_model(value, path)
    return dict(value)


def expect_list(value: object, path: str, *, nonempty: bool = False) -> list[Any]:
    if not isinstance(value, list):
        raise fail(path, f"expected an array, got {type_name(value)}")
    if nonempty and not value:
        raise fail(path, "must contain at least one value")
    return value


def expect_enum(cls: type[E], value: object, path: str) -> E:
    if type(value) is int:  # the usual case: a plain int naming a member
        member = cls._value2member_map_.get(value)
        if member is not None:
            return member  # type: ignore[return-value]
    n = expect_int(value, path)
    try:
        return cls(n)
    except ValueError:
        raise fail(path, f"unknown {cls.__name__} value {n}") from None


def expect_enum_list(cls: type[E], value: object, path: str, *, nonempty: bool = True) -> tuple[E, ...]:
    items = expect_list(value, path, nonempty=nonempty)
    return tuple(expect_enum(cls, v, f"{path}[{i}]") for i, v in enumerate(items))


def expect_ncname(value: object, path: str) -> str:
    s = expect_str(value, path)
    if not NCNAME_RE.fullmatch(s):
        raise fail(path, f"not an (ASCII) xs:NCName: {s!r}")
    return s


def decode_base64(value: object, path: str, *, nonempty: bool = True) -> bytes:
    """Strict xs:base64Binary (RFC 4648 section 4 alphabet, padding required, canonical)."""
    s = expect_str(value, path, nonempty=nonempty)
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise fail(path, "malformed base64") from None
    if base64.b64encode(raw).decode("ascii") != s:
        raise fail(path, "non-canonical base64 (unused bits set or stray padding)")
    if nonempty and not raw:
        raise fail(path, "must not be empty")
    return raw


def encode_base64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def check_compact_jwe(value: object, path: str) -> str:
    """Shape of m2m:e2eCompactJWE (TS-0004 Table 6.3.3-1): ``a.b.c.d.e``, a and d non-empty,
    every part base64url without padding (RFC 7515 section 2)."""
    s = expect_str(value, path)
    parts = s.split(".")
    if len(parts) != 5:
        raise fail(path, f"JWE compact serialization needs 5 dot-separated parts, got {len(parts)}")
    for i, part in enumerate(parts):
        if not _B64URL_RE.fullmatch(part):
            raise fail(path, f"JWE part {i + 1} is not base64url (no padding)")
        if len(part) % 4 == 1:
            raise fail(path, f"JWE part {i + 1} has an impossible base64url length")
    if not parts[0]:
        raise fail(path, "JWE protected header (part 1) is empty")
    if not parts[3]:
        raise fail(path, "JWE ciphertext (part 4) is empty")
    return s


#: Deepest nesting of arrays/objects accepted in any value (m2msec profile).
MAX_DEPTH = 100


def _resolve(p: Any) -> str:
    """The text path of a lazily built (parent, key) path (built only for error messages)."""
    keys: list[Any] = []
    while isinstance(p, tuple):
        p, k = p
        keys.append(k)
    out = p
    for k in reversed(keys):
        out = f"{out}[{k}]" if isinstance(k, int) else sub(out, k)
    return out  # type: ignore[no-any-return]


def _fast_ok(v: object, depth: int) -> bool:
    """True if ``v`` is plainly within the JSON data model and :data:`MAX_DEPTH` (exact
    ``dict``/``list``/``str``/``int``/``bool``/``None``/finite ``float`` only).  False means
    "not sure": the general check below decides and spells out the error."""
    t = type(v)
    if t is dict:
        if depth >= MAX_DEPTH:
            return False
        depth += 1
        for k, x in v.items():  # type: ignore[attr-defined]
            if type(k) is not str:
                return False
            tx = type(x)
            if tx is str or tx is int or tx is bool or x is None:
                continue
            if not _fast_ok(x, depth):
                return False
        return True
    if t is list:
        if depth >= MAX_DEPTH:
            return False
        depth += 1
        for x in v:  # type: ignore[attr-defined]
            tx = type(x)
            if tx is str or tx is int or tx is bool or x is None:
                continue
            if not _fast_ok(x, depth):
                return False
        return True
    if t is str or t is int or t is bool or v is None:
        return True
    if t is float:
        return math.isfinite(v)  # type: ignore[arg-type]
    return False


def check_json_model(value: object, path: str) -> None:
    """Reject anything outside the JSON data model (used for opaque content).

    Containers nested deeper than :data:`MAX_DEPTH` are rejected too.  (Exact-type fast
    paths first; element paths are only spelled out for an error message.)
    """
    if _fast_ok(value, 0):  # the common case: plain values decoded from JSON/CBOR
        return
    stack: list[tuple[object, Any, int]] = [(value, path, 0)]
    while stack:
        v, p, depth = stack.pop()
        t = type(v)
        if v is None or t is str or t is int or t is bool:
            continue
        if t is dict or t is list or isinstance(v, (list, Mapping)):
            if depth >= MAX_DEPTH:
                raise fail(_resolve(p), f"nested deeper than {MAX_DEPTH} levels")
            if isinstance(v, list):
                stack.extend((x, (p, i), depth + 1) for i, x in enumerate(v))
            else:
                for k, x in v.items():  # type: ignore[attr-defined]
                    if type(k) is not str and not isinstance(k, str):
                        raise fail(_resolve(p), f"member name must be a string, got {type_name(k)}")
                    stack.append((x, (p, k), depth + 1))
            continue
        if isinstance(v, (bool, int, str)):
            continue
        if isinstance(v, float):
            if not math.isfinite(v):
                raise fail(_resolve(p), "non-finite number is not JSON")
            continue
        raise fail(_resolve(p), f"{type_name(v)} is not a JSON value")


# ---------------------------------------------------------------- text codecs


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # rare: find the repeated name for the message
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise ParseError(f"duplicate JSON member name {k!r}")
            seen.add(k)
    return out


def _no_constant(name: str) -> Any:
    raise ParseError(f"{name} is not valid JSON")


class _NonFinite(Exception):
    """A JSON number too large for a float (it would decode to infinity)."""


def _finite_float(text: str) -> float:
    f = float(text)
    if f - f != 0.0:  # inf or nan
        raise _NonFinite
    return f


# One decoder/encoder for every call (json.loads/json.dumps with options build a new one each time).
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
_MODEL_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant, parse_float=_finite_float)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_WHITESPACE = json.decoder.WHITESPACE.match


def _decode(decoder: json.JSONDecoder, text: str) -> Any:
    """``decoder.decode(text)`` without its two Python-level wrapper calls (same errors)."""
    try:
        value, end = decoder.scan_once(text, _WHITESPACE(text, 0).end())
    except StopIteration as err:
        raise json.JSONDecodeError("Expecting value", text, err.value) from None
    end = _WHITESPACE(text, end).end()
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def _make_c_encoder() -> Callable[[Any], Any] | None:
    """The C one-shot encoder ``_ENCODER.encode`` would build on every call, built once per
    call here without the Python layers (a fresh ``markers`` dict keeps the circular-reference
    check); None when this interpreter has no C encoder or it does not behave the same."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None

    def encode(value: Any) -> Any:
        return make({}, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False, False)(value, 0)

    try:
        sample: Any = {"a": [1, 2.5, True, None, "é\n\""], "b": {}}
        if "".join(encode(sample)) != _ENCODER.encode(sample):
            return None
        encode({"x": float("nan")})
    except ValueError:
        return encode  # allow_nan=False is honoured
    except Exception:  # noqa: BLE001 - any surprise: use the documented API
        return None
    return None


_C_ENCODE = _make_c_encoder()


def loads_json(data: bytes | str) -> Any:
    """Decode JSON text strictly (UTF-8, unique member names, no NaN/Infinity)."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        if not isinstance(text, str):
            raise TypeError(f"the JSON object must be str, bytes or bytearray, not {type(data).__name__}")
        return _decode(_DECODER, text)
    except ParseError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise ParseError("malformed JSON: nested too deeply") from None


def loads_json_model(data: bytes | str) -> tuple[Any, bool]:
    """:func:`loads_json`, and whether every value in the result is certainly within the JSON
    data model and :data:`MAX_DEPTH` (then :func:`check_json_model` would find nothing).

    Text decoded strictly yields only exact dict/list/str/int/float/bool/None; what remains
    is a number too large for a float (caught while decoding) and the nesting depth: a text
    with at most MAX_DEPTH brackets in all cannot nest deeper (brackets inside strings only
    make the count larger).  When in doubt the answer is False and the caller checks fully.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        if not isinstance(text, str):
            raise TypeError(f"the JSON object must be str, bytes or bytearray, not {type(data).__name__}")
        try:
            value = _decode(_MODEL_DECODER, text)
        except _NonFinite:
            return _decode(_DECODER, text), False  # let the full check name the member
    except ParseError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise ParseError("malformed JSON: nested too deeply") from None
    return value, text.count("{") + text.count("[") <= MAX_DEPTH


def dumps_json(value: Any) -> bytes:
    if _C_ENCODE is not None:
        return "".join(_C_ENCODE(value)).encode("utf-8")
    return _ENCODER.encode(value).encode("utf-8")


def loads_cbor(data: bytes) -> Any:
    """Decode exactly one CBOR data item that fits the JSON data model."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ParseError(f"CBOR input must be bytes, got {type(data).__name__}")
    buf = io.BytesIO(bytes(data))
    try:
        value = cbor2.CBORDecoder(buf).decode()
    except (cbor2.CBORDecodeError, ValueError, EOFError, TypeError) as exc:
        raise ParseError(f"malformed CBOR: {exc}") from None
    except RecursionError:
        raise ParseError("malformed CBOR: nested too deeply") from None
    if buf.tell() != len(data):
        raise ParseError("trailing bytes after the CBOR data item")
    check_json_model(value, "")
    return value


def dumps_cbor(value: Any) -> bytes:
    return cbor2.dumps(value)


class Codec(ABC):
    """JSON-text and CBOR wrappers around ``to_json``/``from_json`` (which subclasses define)."""

    @abstractmethod
    def to_json(self) -> Any:
        """The short-name JSON value of this object."""

    def to_json_bytes(self) -> bytes:
        return dumps_json(self.to_json())

    def to_cbor(self) -> bytes:
        return dumps_cbor(self.to_json())

    @classmethod
    @abstractmethod
    def from_json(cls, obj: object, **kwargs: Any) -> Any:
        """Strictly parse the short-name JSON value ``obj``."""

    @classmethod
    def from_json_bytes(cls, data: bytes | str, **kwargs: Any) -> Any:
        return cls.from_json(loads_json(data), **kwargs)

    @classmethod
    def from_cbor(cls, data: bytes, **kwargs: Any) -> Any:
        return cls.from_json(loads_cbor(data), **kwargs)
