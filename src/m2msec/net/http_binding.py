"""oneM2M primitives <-> HTTP/1.1 messages (TS-0009 V3.9.1 clause 6), sans-I/O.

The four mappings of TS-0009 clause 6.1 as pure functions:

* :func:`request_to_http`  -- request primitive -> (method, request-target, headers, body)
* :func:`http_to_request`  -- the reverse, at the HTTP server (Receiver)
* :func:`response_to_http` -- response primitive -> (status, headers, body)
* :func:`http_to_response` -- the reverse, at the HTTP client (Originator)

What is mapped where:

* Method (6.2.1): Create/Notify -> POST, Retrieve -> GET, Update -> PUT,
  Delete -> DELETE.  A POST is a Create exactly when the Content-Type carries
  the ``ty`` parameter.
* Path (6.2.2.1): CSE-relative ``to`` -> ``/`` + to; SP-relative (``/cse/...``)
  -> ``/~`` + to; absolute (``//sp/cse/...``) -> ``/_`` + to without its first
  ``/``.  The server applies the reverse; an absolute-form target
  (``http://host/path``) is accepted too.
* Query (6.2.2.2): ``rt`` (the responseType element of ``rt``), ``rp``, ``rcn``,
  ``da``, ``drt``, ``rids``, ``tids``, ``ltids``, ``tqi``, ``asi``, ``auri``,
  ``sqi``, ``atrl`` (partial Retrieve) and the filterCriteria elements (``crb``
  ... ``ofst``, ``atr`` as ``name=value``, ``catr``/``patr`` as
  ``c.name``/``p.name``).
* Headers (6.4): X-M2M-Origin (fr), X-M2M-RI (rqi), X-M2M-RVI, X-M2M-OT,
  X-M2M-RET (rqet), X-M2M-RST (rset), X-M2M-OET, X-M2M-EC, X-M2M-VSI, X-M2M-GID,
  X-M2M-RTU (the ``nu`` element of ``rt``, joined by ``&``), Authorization
  (``tkns`` joined by ``+``), X-M2M-AS (``aus`` joined by ``+``); on responses
  X-M2M-RSC, X-M2M-CTS (cnst), X-M2M-CTO (cnot), X-M2M-ATI (``lti:tkid`` pairs
  joined by ``+``).  Header names are matched case-insensitively (5.1).
* Status (6.3.2): ``ResponseStatusCode.http_status`` (table 6.3.2-1); the RSC
  itself travels in X-M2M-RSC; the Reason-Phrase is empty (6.3.3).
* Body (6.5): the Content parameter, serialized as JSON (default) or CBOR,
  decoded strictly (:mod:`m2msec.onem2m._wire`: unique member names, no NaN).

m2msec profile decisions (the places TS-0009 leaves open):

* Emitted Content-Type: ``application/json`` (``application/cbor`` for CBOR),
  with ``;ty=N`` appended on Create.  Accepted: ``application/json``,
  ``application/cbor`` and the ``vnd.onem2m-res`` / ``vnd.onem2m-ntfy`` JSON and
  CBOR types of TS-0004 clause 6.7 (parameters other than ``ty`` and a UTF-8
  ``charset`` are ignored).  XML and anything else -> UNSUPPORTED_MEDIA_TYPE (4015).
* A non-empty body without Content-Type, a ``ty`` parameter on anything but a
  POST, a missing X-M2M-RI, a repeated X-M2M-* header, an unknown method and any
  malformed value -> BAD_REQUEST (4000) via :class:`BindingError`.
* List-valued query fields are joined with ``+`` after percent-encoding each
  element (so a literal ``+`` in a value travels as ``%2B`` and a space as
  ``%20``); on input a list field may also be repeated.  ``smf`` is emitted as
  repeated fields.  Query values are percent-decoded, never form-decoded.
* Booleans are emitted ``true``/``false``; ``true``, ``false``, ``1``, ``0`` are accepted.
* The response ``to`` parameter has no HTTP header and is not carried.
  ``grtm`` and ``asri`` have no TS-0009 mapping: emitting them is an error.
* A response's RSC is taken from X-M2M-RSC only (it is mandatory); the HTTP
  status is not cross-checked, because CSEs differ in the HTTP code they pick
  for codes outside table 6.3.2-1.  For an RSC outside our table the status is
  the class default (1xxx -> 202, 2xxx -> 200, 4xxx -> 400, 5xxx/6xxx -> 500).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from email.message import Message
from typing import Any, Literal, Union

from m2msec.errors import ParseError
from m2msec.onem2m import _wire
from m2msec.onem2m.enums import DesIdResType, Operation, ResourceType, ResultContent
from m2msec.onem2m.primitives import RequestPrimitive, ResponsePrimitive, parse_rsc
from m2msec.onem2m.rsc import ResponseStatusCode
from m2msec.onem2m.timestamps import AbsRelTimestamp, format_timestamp, parse_timestamp

__all__ = [
    "BindingError",
    "Headers",
    "HttpRequest",
    "HttpResponse",
    "Serialization",
    "UnsupportedMediaTypeError",
    "header_value",
    "http_status_for",
    "http_to_request",
    "http_to_response",
    "parse_content_type",
    "path_to_to",
    "request_to_http",
    "response_to_http",
    "to_to_path",
]

Serialization = Literal["json", "cbor"]
Headers = list[tuple[str, str]]
HttpRequest = tuple[str, str, Headers, bytes]
HttpResponse = tuple[int, Headers, bytes]
HeaderInput = Union[Iterable[tuple[Union[str, bytes], Union[str, bytes]]], Mapping[str, str]]


class BindingError(ParseError):
    """An HTTP message that does not map onto a oneM2M primitive (BAD_REQUEST, 4000)."""


class UnsupportedMediaTypeError(BindingError):
    """A Content-Type this binding does not read (UNSUPPORTED_MEDIA_TYPE, 4015)."""

    default_rsc = ResponseStatusCode.UNSUPPORTED_MEDIA_TYPE


# ---------------------------------------------------------------- tables

_METHOD_OF_OP: dict[Operation, str] = {
    Operation.CREATE: "POST",
    Operation.RETRIEVE: "GET",
    Operation.UPDATE: "PUT",
    Operation.DELETE: "DELETE",
    Operation.NOTIFY: "POST",
}

_MEDIA_JSON = frozenset({"application/json", "application/vnd.onem2m-res+json", "application/vnd.onem2m-ntfy+json"})
_MEDIA_CBOR = frozenset({"application/cbor", "application/vnd.onem2m-res+cbor", "application/vnd.onem2m-ntfy+cbor"})
_EMIT_MEDIA: dict[str, str] = {"json": "application/json", "cbor": "application/cbor"}

# Filter Criteria elements carried in the query (TS-0009 table 6.2.2.2-1).
_FC_INT = frozenset({"sts", "stb", "sza", "szb", "lim", "fu", "fo", "cfs", "lvl", "ofst"})
_FC_STR = frozenset({"crb", "cra", "ms", "us", "exb", "exa", "cfq"})
_FC_LIST_STR = frozenset({"lbl", "cty"})
_FC_LIST_INT = frozenset({"ty"})
_FC_REPEATED = frozenset({"smf"})
_FC_ATTR = {"atr": "", "catr": "c.", "patr": "p."}
# Request parameters carried in the query.
_Q_BOOL = frozenset({"da", "tqi", "asi", "auri", "sqi"})
_Q_LIST = frozenset({"rids", "tids", "ltids"})
_Q_MULTI = _Q_LIST | _FC_LIST_STR | _FC_LIST_INT | _FC_REPEATED
_Q_SINGLE = frozenset({"rt", "rp", "rcn", "drt", "atrl"}) | _Q_BOOL | _FC_INT | _FC_STR

_SINGLE_HEADERS = frozenset(
    {
        "x-m2m-origin",
        "x-m2m-ri",
        "x-m2m-rvi",
        "x-m2m-ot",
        "x-m2m-ret",
        "x-m2m-rst",
        "x-m2m-oet",
        "x-m2m-ec",
        "x-m2m-vsi",
        "x-m2m-gid",
        "x-m2m-rtu",
        "x-m2m-rsc",
        "x-m2m-cts",
        "x-m2m-cto",
        "x-m2m-ati",
        "x-m2m-as",
        "x-m2m-asri",
        "authorization",
        "content-type",
    }
)

# RFC 3986 pchar (unreserved / sub-delims / ":" / "@") plus "/", minus "+" (kept encoded).
_PATH_SAFE = "/:@!$&'()*,;=~-._"


# ---------------------------------------------------------------- small helpers


def http_status_for(rsc: ResponseStatusCode | int) -> int:
    """HTTP status for an RSC (table 6.3.2-1; class default outside the table)."""
    n = int(rsc)
    try:
        return ResponseStatusCode(n).http_status
    except ValueError:
        pass
    if 1000 <= n < 2000:
        return 202
    if 2000 <= n < 3000:
        return 200
    if 4000 <= n < 5000:
        return 400
    return 500


def _fail(problem: str) -> BindingError:
    return BindingError(problem)


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _bool_text(value: object, name: str) -> str:
    if value is True or value in ("true", "1"):
        return "true"
    if value is False or value in ("false", "0"):
        return "false"
    raise BindingError(f"{name}: not a boolean: {value!r}")


def _parse_bool(text: str, name: str) -> bool:
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise _fail(f"query {name}: not a boolean (true/false/1/0): {text!r}")


def _parse_int(text: str, name: str) -> int:
    body = text[1:] if text.startswith("-") else text
    if not body or not body.isascii() or not body.isdigit():
        raise _fail(f"{name}: not an integer: {text!r}")
    return int(text)


def _str_list(value: object, name: str) -> list[str]:
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, (str, int)) and not isinstance(v, bool) for v in value
    ):
        raise BindingError(f"{name}: expected a list of strings")
    return [str(v) for v in value]


def to_to_path(to: str) -> str:
    """The origin-form path for a To parameter (TS-0009 6.2.2.1, percent-encoded)."""
    if not to:
        raise BindingError("empty To parameter")
    if to.startswith("//"):
        path = "/_" + to[1:]
    elif to.startswith("/"):
        path = "/~" + to
    else:
        path = "/" + to
    return urllib.parse.quote(path, safe=_PATH_SAFE)


def path_to_to(path: str) -> str:
    """The To parameter for an origin-form path (the reverse of :func:`to_to_path`)."""
    if not path.startswith("/"):
        raise _fail(f"request-target path must start with '/': {path!r}")
    try:
        raw = urllib.parse.unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise _fail("request-target path is not UTF-8") from None
    if raw.startswith("/~/"):
        to = raw[2:]
    elif raw.startswith("/_/"):
        to = "/" + raw[2:]
    elif raw in ("/~", "/_"):
        to = ""
    else:
        to = raw[1:]
    if to in ("", "/", "//"):
        raise _fail(f"request-target {path!r} does not name a resource")
    return to


def parse_content_type(value: str) -> tuple[str, ResourceType | None, Serialization]:
    """(media type, ``ty`` parameter, serialization) of a Content-Type value.

    Raises :class:`UnsupportedMediaTypeError` for media types this binding does
    not read and :class:`BindingError` for a malformed value, ``ty`` or charset.
    """
    head = value.split(";", 1)[0].strip().lower()
    if not head or "/" not in head:
        raise _fail(f"malformed Content-Type: {value!r}")
    msg = Message()
    msg["content-type"] = value
    media = msg.get_content_type().lower()
    if media != head:
        raise _fail(f"malformed Content-Type: {value!r}")
    if media in _MEDIA_JSON:
        ser: Serialization = "json"
    elif media in _MEDIA_CBOR:
        ser = "cbor"
    else:
        raise UnsupportedMediaTypeError(f"unsupported Content-Type {media!r} (JSON and CBOR only)")
    charset = msg.get_param("charset")
    if charset is not None and (not isinstance(charset, str) or charset.lower() not in ("utf-8", "utf8")):
        raise _fail(f"unsupported charset in Content-Type: {charset!r}")
    ty_raw = msg.get_param("ty")
    ty: ResourceType | None = None
    if ty_raw is not None:
        if not isinstance(ty_raw, str):
            raise _fail("malformed ty parameter in Content-Type")
        n = _parse_int(ty_raw.strip(), "Content-Type ty")
        try:
            ty = ResourceType(n)
        except ValueError:
            raise _fail(f"Content-Type ty: not a resourceType: {n}") from None
    return media, ty, ser


def _encode_body(pc: Any, serialization: Serialization) -> bytes:
    if pc is None:
        return b""
    if serialization == "json":
        return _wire.dumps_json(pc)
    if serialization == "cbor":
        return _wire.dumps_cbor(pc)
    raise ValueError(f"unknown serialization {serialization!r}")


def _decode_body(body: bytes, content_type: str | None) -> tuple[Any, ResourceType | None]:
    ty: ResourceType | None = None
    ser: Serialization = "json"
    if content_type is not None:
        _media, ty, ser = parse_content_type(content_type)
    if not body:
        return None, ty
    if content_type is None:
        raise _fail("message-body without Content-Type (TS-0009 6.4.3)")
    value = _wire.loads_json(body) if ser == "json" else _wire.loads_cbor(bytes(body))
    if value is None:
        raise _fail("message-body is null")
    return value, ty


def _normalise_headers(headers: HeaderInput) -> dict[str, str]:
    items: Iterable[tuple[str | bytes, str | bytes]]
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for name, value in items:
        n = (name.decode("latin-1") if isinstance(name, (bytes, bytearray)) else name).strip().lower()
        v = (value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else value).strip()
        if n in out and n in _SINGLE_HEADERS:
            raise _fail(f"header {n} appears more than once")
        out[n] = v
    return out


def _nonempty(headers: dict[str, str], name: str) -> str | None:
    v = headers.get(name)
    if v is None:
        return None
    if not v:
        raise _fail(f"header {name} is empty")
    return v


def _plus_list(text: str) -> list[str]:
    return [p.strip() for p in text.split("+") if p.strip()]


def header_value(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    """The value of ``name`` (case-insensitive) in a header list, or None."""
    lname = name.lower()
    for k, v in headers:
        if k.lower() == lname:
            return v
    return None


# ---------------------------------------------------------------- request: primitive -> HTTP


def _fc_pairs(fc: Mapping[str, Any]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, value in fc.items():
        if key in _FC_INT:
            pairs.append((key, str(_wire.expect_int(value, f"fc.{key}"))))
        elif key in _FC_STR:
            pairs.append((key, _q(_wire.expect_str(value, f"fc.{key}"))))
        elif key in _FC_LIST_STR or key in _FC_LIST_INT:
            items = value if isinstance(value, (list, tuple)) else [value]
            pairs.append((key, "+".join(_q(str(v)) for v in items)))
        elif key in _FC_REPEATED:
            items = value if isinstance(value, (list, tuple)) else [value]
            pairs.extend((key, _q(_wire.expect_str(v, f"fc.{key}"))) for v in items)
        elif key in _FC_ATTR:
            prefix = _FC_ATTR[key]
            items = value if isinstance(value, (list, tuple)) else [value]
            for i, item in enumerate(items):
                obj = _wire.expect_object(item, f"fc.{key}[{i}]")
                if set(obj) != {"nm", "val"}:
                    raise BindingError(f"fc.{key}[{i}]: expected exactly nm and val")
                nm = _wire.expect_str(obj["nm"], f"fc.{key}[{i}].nm")
                val = obj["val"]
                if isinstance(val, bool):
                    text = "true" if val else "false"
                elif isinstance(val, (str, int, float)):
                    text = str(val)
                else:
                    raise BindingError(f"fc.{key}[{i}].val: a {_wire.type_name(val)} has no query form")
                pairs.append((_q(prefix + nm), _q(text)))
        else:
            raise BindingError(f"fc.{key}: filterCriteria element without HTTP query mapping")
    return pairs


def _query_pairs(req: RequestPrimitive) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    if req.rt is not None:
        unknown = set(req.rt) - {"rtv", "nu"}
        if unknown:
            raise BindingError(f"rt: elements without HTTP mapping: {sorted(unknown)}")
        if "rtv" in req.rt:
            pairs.append(("rt", str(_wire.expect_int(req.rt["rtv"], "rt.rtv"))))
    extra = req.extra
    if "rp" in extra:
        pairs.append(("rp", _q(str(extra["rp"]))))
    if req.rcn is not None:
        pairs.append(("rcn", str(int(req.rcn))))
    if "da" in extra:
        pairs.append(("da", _bool_text(extra["da"], "da")))
    if req.drt is not None:
        pairs.append(("drt", str(int(req.drt))))
    for name in ("rids", "tids", "ltids"):
        if name in extra:
            pairs.append((name, "+".join(_q(v) for v in _str_list(extra[name], name))))
    for name in ("tqi", "asi", "auri", "sqi"):
        if name in extra:
            pairs.append((name, _bool_text(extra[name], name)))
    if req.fc is not None:
        pairs.extend(_fc_pairs(req.fc))
    if req.op is Operation.RETRIEVE and isinstance(req.pc, Mapping) and set(req.pc) == {"m2m:atrl"}:
        pairs.append(("atrl", "+".join(_q(v) for v in _str_list(req.pc["m2m:atrl"], "m2m:atrl"))))
    return pairs


def request_to_http(req: RequestPrimitive, *, serialization: Serialization = "json") -> HttpRequest:
    """Map a request primitive onto ``(method, request-target, headers, body)``.

    The request-target is origin-form (path and query, percent-encoded);
    Host and Content-Length are left to the HTTP library.
    """
    if "grtm" in req.extra:
        raise BindingError("grtm has no TS-0009 HTTP mapping")
    method = _METHOD_OF_OP[req.op]
    to = req.to
    pc = req.pc
    pairs = _query_pairs(req)
    if any(k == "atrl" for k, _ in pairs):
        pc = None  # the attribute list travels in the query (6.2.2.2), not the body
    if req.op is Operation.RETRIEVE and "#" in to:
        to, _, frag = to.partition("#")
        if not frag or "#" in frag or req.pc is not None:
            raise BindingError("partial retrieve: To#attribute needs one attribute name and no Content")
        pairs.append(("atrl", _q(frag)))
    target = to_to_path(to)
    if pairs:
        target += "?" + "&".join(f"{k}={v}" for k, v in pairs)

    headers: Headers = []
    if req.fr is not None:
        headers.append(("X-M2M-Origin", req.fr))
    headers.append(("X-M2M-RI", req.rqi))
    if req.rvi is not None:
        headers.append(("X-M2M-RVI", req.rvi))
    if req.ot is not None:
        headers.append(("X-M2M-OT", format_timestamp(req.ot)))
    if req.rqet is not None:
        headers.append(("X-M2M-RET", str(req.rqet.to_json())))
    if req.rset is not None:
        headers.append(("X-M2M-RST", str(req.rset.to_json())))
    if "oet" in req.extra:
        headers.append(("X-M2M-OET", str(AbsRelTimestamp.from_json(req.extra["oet"], path="oet").to_json())))
    if req.ec is not None:
        headers.append(("X-M2M-EC", str(req.ec)))
    if req.vsi is not None:
        headers.append(("X-M2M-VSI", req.vsi))
    if "gid" in req.extra:
        headers.append(("X-M2M-GID", _wire.expect_str(req.extra["gid"], "gid")))
    if req.rt is not None and "nu" in req.rt:
        headers.append(("X-M2M-RTU", "&".join(_str_list(req.rt["nu"], "rt.nu"))))
    if "tkns" in req.extra:
        headers.append(("Authorization", "+".join(_str_list(req.extra["tkns"], "tkns"))))
    if "aus" in req.extra:
        headers.append(("X-M2M-AS", "+".join(_str_list(req.extra["aus"], "aus"))))
    body = _encode_body(pc, serialization)
    headers.append(("Accept", _EMIT_MEDIA[serialization]))
    if body or req.op is Operation.CREATE:
        ctype = _EMIT_MEDIA[serialization]
        if req.op is Operation.CREATE:
            if req.ty is None:
                raise BindingError("a Create request needs the Resource Type (ty)")
            ctype += f";ty={int(req.ty)}"
        headers.append(("Content-Type", ctype))
    return method, target, headers, body


# ---------------------------------------------------------------- request: HTTP -> primitive


def _split_target(target: str) -> tuple[str, str]:
    if target.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(target)
        return parts.path or "/", parts.query
    if "#" in target:
        raise _fail("request-target must not carry a fragment")
    path, _, query = target.partition("?")
    return path, query


def _unq(raw: str, name: str) -> str:
    try:
        return urllib.parse.unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise _fail(f"query {name}: not UTF-8") from None


def _parse_query(query: str) -> list[tuple[str, str]]:
    """(decoded name, still percent-encoded value) pairs; '+' separates list items."""
    pairs: list[tuple[str, str]] = []
    for part in query.split("&") if query else ():
        if not part:
            continue
        if "=" not in part:
            raise _fail(f"query field without value: {part!r}")
        k, v = part.split("=", 1)
        key = _unq(k, "field name")
        if not key:
            raise _fail("empty query field name")
        pairs.append((key, v))
    return pairs


def _apply_query(pairs: list[tuple[str, str]], kw: dict[str, Any], extra: dict[str, Any]) -> list[str] | None:
    seen: set[str] = set()
    fc: dict[str, Any] = {}
    atrl: list[str] | None = None
    for key, raw in pairs:
        if key in _Q_SINGLE:
            if key in seen:
                raise _fail(f"query field {key} appears more than once")
            seen.add(key)
        if key == "rt":
            kw.setdefault("rt", {})["rtv"] = _parse_int(_unq(raw, key), "query rt")
        elif key == "rp":
            extra["rp"] = _unq(raw, key)
        elif key == "rcn":
            n = _parse_int(_unq(raw, key), "query rcn")
            try:
                kw["rcn"] = ResultContent(n)
            except ValueError:
                raise _fail(f"query rcn: not a resultContent: {n}") from None
        elif key == "drt":
            n = _parse_int(_unq(raw, key), "query drt")
            try:
                kw["drt"] = DesIdResType(n)
            except ValueError:
                raise _fail(f"query drt: not a desIdResType: {n}") from None
        elif key in _Q_BOOL:
            extra[key] = _parse_bool(_unq(raw, key), key)
        elif key in _Q_LIST:
            extra.setdefault(key, []).extend(_unq(v, key) for v in _plus_list(raw))
        elif key == "atrl":
            atrl = [_unq(v, key) for v in _plus_list(raw)]
            if not atrl:
                raise _fail("query atrl: empty attribute list")
        elif key in _FC_INT:
            fc[key] = _parse_int(_unq(raw, key), f"query {key}")
        elif key in _FC_STR:
            fc[key] = _unq(raw, key)
        elif key in _FC_LIST_STR:
            fc.setdefault(key, []).extend(_unq(v, key) for v in _plus_list(raw))
        elif key in _FC_LIST_INT:
            fc.setdefault(key, []).extend(_parse_int(_unq(v, key), f"query {key}") for v in _plus_list(raw))
        elif key in _FC_REPEATED:
            fc.setdefault(key, []).append(_unq(raw, key))
        elif key == "atr":
            raise _fail("query field 'atr' is not used; attributes appear as name=value (TS-0009 6.2.2.2)")
        else:
            value = _unq(raw, key)
            if key.startswith("c.") and _wire.NCNAME_RE.fullmatch(key[2:]):
                fc.setdefault("catr", []).append({"nm": key[2:], "val": value})
            elif key.startswith("p.") and _wire.NCNAME_RE.fullmatch(key[2:]):
                fc.setdefault("patr", []).append({"nm": key[2:], "val": value})
            elif _wire.NCNAME_RE.fullmatch(key):
                fc.setdefault("atr", []).append({"nm": key, "val": value})
            else:
                raise _fail(f"query field {key!r} is neither a request parameter nor an attribute short name")
    if fc:
        kw["fc"] = fc
    return atrl


def _as_binding_error(exc: ParseError) -> BindingError:
    if isinstance(exc, BindingError):
        return exc
    return BindingError(exc.args[0] if exc.args else "malformed message", rsc=exc.rsc)


def http_to_request(
    method: str | bytes, target: str | bytes, headers: HeaderInput, body: bytes = b""
) -> RequestPrimitive:
    """Map a received HTTP request onto a request primitive (TS-0009 6.1, receiver side).

    Raises :class:`BindingError` (4000) or :class:`UnsupportedMediaTypeError` (4015).
    """
    try:
        return _http_to_request(method, target, headers, body)
    except ParseError as exc:
        raise _as_binding_error(exc) from None


def _http_to_request(
    method: str | bytes, target: str | bytes, headers: HeaderInput, body: bytes
) -> RequestPrimitive:
    m = (method.decode("ascii", "replace") if isinstance(method, (bytes, bytearray)) else method).upper()
    t = target.decode("ascii", "replace") if isinstance(target, (bytes, bytearray)) else target
    h = _normalise_headers(headers)
    rqi = _nonempty(h, "x-m2m-ri")
    if rqi is None:
        raise _fail("X-M2M-RI header is missing")
    pc, ty = _decode_body(bytes(body), h.get("content-type"))
    if m == "POST":
        op = Operation.CREATE if ty is not None else Operation.NOTIFY
    elif m in ("GET", "PUT", "DELETE"):
        if ty is not None:
            raise _fail(f"Content-Type ty parameter on a {m} request (Create only, TS-0009 6.4.3)")
        op = {"GET": Operation.RETRIEVE, "PUT": Operation.UPDATE, "DELETE": Operation.DELETE}[m]
    else:
        raise _fail(f"HTTP method {m!r} has no oneM2M operation (TS-0009 6.2.1)")
    path, query = _split_target(t)
    to = path_to_to(path)

    kw: dict[str, Any] = {"op": op, "to": to, "rqi": rqi, "ty": ty}
    extra: dict[str, Any] = {}
    atrl = _apply_query(_parse_query(query), kw, extra)
    if atrl is not None:
        if op is not Operation.RETRIEVE or pc is not None:
            raise _fail("query atrl is only allowed on a Retrieve without Content")
        pc = {"m2m:atrl": atrl}
    kw["pc"] = pc
    if (v := _nonempty(h, "x-m2m-origin")) is not None:
        kw["fr"] = v
    if (v := _nonempty(h, "x-m2m-rvi")) is not None:
        kw["rvi"] = v
    if (v := _nonempty(h, "x-m2m-ot")) is not None:
        kw["ot"] = parse_timestamp(v, path="X-M2M-OT")
    if (v := _nonempty(h, "x-m2m-ret")) is not None:
        kw["rqet"] = AbsRelTimestamp.from_json(v, path="X-M2M-RET")
    if (v := _nonempty(h, "x-m2m-rst")) is not None:
        kw["rset"] = AbsRelTimestamp.from_json(v, path="X-M2M-RST")
    if (v := _nonempty(h, "x-m2m-oet")) is not None:
        extra["oet"] = AbsRelTimestamp.from_json(v, path="X-M2M-OET").to_json()
    if (v := _nonempty(h, "x-m2m-ec")) is not None:
        kw["ec"] = _parse_int(v, "X-M2M-EC")
    if "x-m2m-vsi" in h:
        kw["vsi"] = h["x-m2m-vsi"]
    if (v := _nonempty(h, "x-m2m-gid")) is not None:
        extra["gid"] = v
    if (v := _nonempty(h, "x-m2m-rtu")) is not None:
        kw.setdefault("rt", {})["nu"] = [u for u in v.split("&") if u]
    if (v := _nonempty(h, "authorization")) is not None:
        extra["tkns"] = _plus_list(v)
    if (v := _nonempty(h, "x-m2m-as")) is not None:
        extra["aus"] = _plus_list(v)
    kw["extra"] = extra
    try:
        return RequestPrimitive(**kw)
    except ValueError as exc:
        raise _fail(f"request does not form a valid primitive: {exc}") from None


# ---------------------------------------------------------------- response


def response_to_http(
    rsp: ResponsePrimitive,
    *,
    serialization: Serialization = "json",
    content_location: str | None = None,
) -> HttpResponse:
    """Map a response primitive onto ``(status, headers, body)`` (TS-0009 6.3, 6.4, 6.5)."""
    if "asri" in rsp.extra:
        raise BindingError("asri has no HTTP header mapping in this binding")
    headers: Headers = [("X-M2M-RSC", str(int(rsp.rsc))), ("X-M2M-RI", rsp.rqi)]
    if rsp.fr is not None:
        headers.append(("X-M2M-Origin", rsp.fr))
    if rsp.rvi is not None:
        headers.append(("X-M2M-RVI", rsp.rvi))
    if rsp.ot is not None:
        headers.append(("X-M2M-OT", format_timestamp(rsp.ot)))
    if rsp.rset is not None:
        headers.append(("X-M2M-RST", str(rsp.rset.to_json())))
    if rsp.ec is not None:
        headers.append(("X-M2M-EC", str(rsp.ec)))
    if rsp.vsi is not None:
        headers.append(("X-M2M-VSI", rsp.vsi))
    if "cnst" in rsp.extra:
        headers.append(("X-M2M-CTS", str(_wire.expect_int(rsp.extra["cnst"], "cnst"))))
    if "cnot" in rsp.extra:
        headers.append(("X-M2M-CTO", str(_wire.expect_int(rsp.extra["cnot"], "cnot"))))
    if "ati" in rsp.extra:
        items = rsp.extra["ati"]
        if isinstance(items, Mapping):
            items = items.get("ltia", [])
        pairs = []
        for i, it in enumerate(_wire.expect_list(items, "ati")):
            obj = _wire.expect_object(it, f"ati[{i}]")
            lti = _wire.expect_str(obj.get("lti"), f"ati[{i}].lti")
            tkid = _wire.expect_str(obj.get("tkid"), f"ati[{i}].tkid")
            pairs.append(f"{lti}:{tkid}")
        headers.append(("X-M2M-ATI", "+".join(pairs)))
    if content_location is not None:
        headers.append(("Content-Location", content_location))
    body = _encode_body(rsp.pc, serialization)
    if body:
        headers.append(("Content-Type", _EMIT_MEDIA[serialization]))
    return http_status_for(rsp.rsc), headers, body


def http_to_response(status: int, headers: HeaderInput, body: bytes = b"") -> ResponsePrimitive:
    """Map a received HTTP response onto a response primitive (TS-0009 6.1, originator side).

    X-M2M-RSC and X-M2M-RI are mandatory.  Raises :class:`BindingError`.
    """
    try:
        return _http_to_response(status, headers, body)
    except ParseError as exc:
        raise _as_binding_error(exc) from None


def _http_to_response(status: int, headers: HeaderInput, body: bytes) -> ResponsePrimitive:
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise _fail(f"not an HTTP status code: {status!r}")
    h = _normalise_headers(headers)
    rsc_text = _nonempty(h, "x-m2m-rsc")
    if rsc_text is None:
        raise _fail(f"X-M2M-RSC header is missing (HTTP status {status})")
    rsc = parse_rsc(_parse_int(rsc_text, "X-M2M-RSC"), "X-M2M-RSC")
    rqi = _nonempty(h, "x-m2m-ri")
    if rqi is None:
        raise _fail("X-M2M-RI header is missing")
    pc, ty = _decode_body(bytes(body), h.get("content-type"))
    if ty is not None:
        raise _fail("Content-Type ty parameter on a response")
    kw: dict[str, Any] = {"rsc": rsc, "rqi": rqi, "pc": pc}
    if (v := _nonempty(h, "x-m2m-origin")) is not None:
        kw["fr"] = v
    if (v := _nonempty(h, "x-m2m-rvi")) is not None:
        kw["rvi"] = v
    if (v := _nonempty(h, "x-m2m-ot")) is not None:
        kw["ot"] = parse_timestamp(v, path="X-M2M-OT")
    if (v := _nonempty(h, "x-m2m-rst")) is not None:
        kw["rset"] = AbsRelTimestamp.from_json(v, path="X-M2M-RST")
    if (v := _nonempty(h, "x-m2m-ec")) is not None:
        kw["ec"] = _parse_int(v, "X-M2M-EC")
    if "x-m2m-vsi" in h:
        kw["vsi"] = h["x-m2m-vsi"]
    extra: dict[str, Any] = {}
    if (v := _nonempty(h, "x-m2m-cts")) is not None:
        extra["cnst"] = _parse_int(v, "X-M2M-CTS")
    if (v := _nonempty(h, "x-m2m-cto")) is not None:
        extra["cnot"] = _parse_int(v, "X-M2M-CTO")
    if (v := _nonempty(h, "x-m2m-ati")) is not None:
        ltia = []
        for pair in _plus_list(v):
            lti, sep, tkid = pair.partition(":")
            if not sep or not lti or not tkid:
                raise _fail(f"X-M2M-ATI: not an lti:tkid pair: {pair!r}")
            ltia.append({"lti": lti, "tkid": tkid})
        extra["ati"] = ltia
    kw["extra"] = extra
    try:
        return ResponsePrimitive(**kw)
    except ValueError as exc:
        raise _fail(f"response does not form a valid primitive: {exc}") from None
