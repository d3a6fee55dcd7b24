"""oneM2M HTTP binding: request/response primitives <-> HTTP messages (TS-0009 clause 6).

Pure functions, no I/O and no HTTP framing (h11 or any other HTTP library does
that): a primitive becomes ``(method, target, headers, body)`` and back.

* 6.2.1 Method: Create/Notify -> POST, Retrieve -> GET, Update -> PUT,
  Delete -> DELETE; at the receiver POST with ``ty`` in Content-Type is a Create,
  POST without it a Notify; any other method is OPERATION_NOT_ALLOWED (4005).
* 6.2.2.1 Path: CSE-relative ``to`` -> ``/`` + to, SP-relative -> ``/~`` + to,
  absolute -> ``/_`` + to without its first ``/``; the reverse at the receiver.
* 6.2.2.2 Query: ``rcn``, ``drt``, ``rt`` (responseType element of
  ``rt``, i.e. ``rtv``), ``rp``, ``rids``/``tids`` (``+``-joined lists) and the
  filterCriteria conditions of table 6.2.2.2-1 (multi-valued ``ty``, ``lbl``,
  ``cty`` as ``+``-joined lists).  Other query fields are attribute conditions
  (``atr``, carried as ``{"nm": name, "val": value}``).
* 6.4 Headers: X-M2M-Origin <-> fr, X-M2M-RI <-> rqi, X-M2M-RVI <-> rvi,
  X-M2M-OT <-> ot, X-M2M-RET <-> rqet, X-M2M-RST <-> rset, X-M2M-EC <-> ec,
  X-M2M-VSI <-> vsi, X-M2M-RTU <-> rt.nu (``&``-joined), X-M2M-RSC <-> rsc;
  Content-Type carries ``ty`` for Create (``application/json; ty=3``);
  header names are matched case-insensitively (5.1).
* 6.3.2 Status-Code from the RSC (table 6.3.2-1 via
  :meth:`ResponseStatusCode.http_status`), Reason-Phrase empty (6.3.3).
* 6.5 Message-body <-> Content (``pc``): JSON (``application/json`` and the
  ``application/vnd.onem2m-*+json`` types of TS-0004 6.7) or CBOR
  (``application/cbor``, ``+cbor``); XML is refused with
  UNSUPPORTED_MEDIA_TYPE (4015).

m2msec profile decisions (docs/profile.md): requests are emitted in origin-form;
Content-Type is ``application/json`` (Notify and bodies of Update), with
``; ty=N`` appended for Create; responses use ``application/json``; a missing
X-M2M-RI is BAD_REQUEST; the response X-M2M-RVI echoes the request's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import cbor2

from m2msec.errors import ParseError
from m2msec.onem2m.enums import DesIdResType, Operation, ResourceType, ResultContent
from m2msec.onem2m.primitives import RequestPrimitive, ResponsePrimitive, parse_rsc
from m2msec.onem2m.rsc import ResponseStatusCode
from m2msec.onem2m.timestamps import AbsRelTimestamp, format_timestamp, parse_timestamp

__all__ = [
    "HTTPBindingError",
    "HTTPRequest",
    "HTTPResponse",
    "JSON",
    "CBOR",
    "UnsupportedMediaType",
    "OperationNotAllowed",
    "http_status_for",
    "http_to_request",
    "http_to_response",
    "path_to_to",
    "request_to_http",
    "response_to_http",
    "to_to_path",
]

JSON = "application/json"
CBOR = "application/cbor"

Headers = tuple[tuple[str, str], ...]

_JSON_TYPES = frozenset({JSON, "application/vnd.onem2m-res+json", "application/vnd.onem2m-ntfy+json",
                         "application/vnd.onem2m-preq+json", "application/vnd.onem2m-prsp+json"})
_CBOR_TYPES = frozenset({CBOR, "application/vnd.onem2m-res+cbor", "application/vnd.onem2m-ntfy+cbor",
                         "application/vnd.onem2m-preq+cbor", "application/vnd.onem2m-prsp+cbor"})

_METHODS = {Operation.CREATE: "POST", Operation.RETRIEVE: "GET", Operation.UPDATE: "PUT",
            Operation.DELETE: "DELETE", Operation.NOTIFY: "POST"}

# Table 6.2.2.2-1 filterCriteria conditions: name -> kind ("int", "str", "list-int", "list-str")
_FC_FIELDS: dict[str, str] = {
    "crb": "str", "cra": "str", "ms": "str", "us": "str", "sts": "int", "stb": "int", "exb": "str", "exa": "str",
    "lbl": "list-str", "ty": "list-int", "sza": "int", "szb": "int", "cty": "list-str", "fu": "int",
    "smf": "list-str", "fo": "int", "cfs": "int", "cfq": "str", "lim": "int", "lvl": "int", "ofst": "int",
}
_LIST_EXTRA = ("rids", "tids", "ltids")
_BOOL_EXTRA = ("da", "tqi", "asi", "auri", "sqi")


class HTTPBindingError(ParseError):
    """An HTTP message that does not map to a oneM2M primitive (BAD_REQUEST unless stated)."""


class UnsupportedMediaType(HTTPBindingError):
    default_rsc = ResponseStatusCode.UNSUPPORTED_MEDIA_TYPE


class OperationNotAllowed(HTTPBindingError):
    default_rsc = ResponseStatusCode.OPERATION_NOT_ALLOWED


@dataclass(frozen=True)
class HTTPRequest:
    method: str
    target: str
    headers: Headers
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return _get(self.headers, name)


@dataclass(frozen=True)
class HTTPResponse:
    status: int
    headers: Headers
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return _get(self.headers, name)


# ------------------------------------------------------------------ helpers


def _get(headers: Any, name: str) -> str | None:
    """Case-insensitive header lookup (5.1); bytes or str pairs; repeated -> error."""
    want = name.lower()
    found: list[str] = []
    for k, v in headers:
        ks = k.decode("latin-1") if isinstance(k, (bytes, bytearray)) else str(k)
        if ks.lower() == want:
            found.append(v.decode("latin-1") if isinstance(v, (bytes, bytearray)) else str(v))
    if len(found) > 1:
        raise HTTPBindingError(f"header {name} appears {len(found)} times")
    return found[0] if found else None


def to_to_path(to: str) -> str:
    """``To`` parameter -> origin-form path component (6.2.2.1)."""
    if not to:
        raise HTTPBindingError("empty To parameter")
    if to.startswith("//"):
        path = "/_" + to[1:]
    elif to.startswith("/"):
        path = "/~" + to
    else:
        path = "/" + to
    return quote(path, safe="/~_-.!$&'()*+,;=:@")


def path_to_to(path: str) -> str:
    """Origin-form path component -> ``To`` parameter (reverse of 6.2.2.1)."""
    from urllib.parse import unquote

    p = unquote(path)
    if not p.startswith("/") or p == "/":
        raise HTTPBindingError(f"request target path {path!r} names no resource")
    if p.startswith("/~/"):
        return p[2:]
    if p.startswith("/_/"):
        return "/" + p[2:]
    if p in ("/~", "/_"):
        raise HTTPBindingError(f"request target path {path!r} names no resource")
    return p[1:]


def _media(content_type: str | None) -> tuple[str | None, dict[str, str]]:
    if content_type is None:
        return None, {}
    parts = [x.strip() for x in content_type.split(";")]
    params: dict[str, str] = {}
    for item in parts[1:]:
        if not item:
            continue
        if "=" not in item:
            raise HTTPBindingError(f"malformed Content-Type parameter {item!r}")
        k, v = item.split("=", 1)
        params[k.strip().lower()] = v.strip().strip('"')
    return parts[0].lower(), params


def _decode_body(body: bytes, media: str | None) -> Any:
    if not body:
        return None
    if media is None:
        raise HTTPBindingError("message-body without Content-Type")
    if media in _JSON_TYPES:
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise HTTPBindingError(f"message-body is not JSON: {type(exc).__name__}") from None
    if media in _CBOR_TYPES:
        try:
            return cbor2.loads(body)
        except Exception as exc:  # cbor2 raises several decoder error types
            raise HTTPBindingError(f"message-body is not CBOR: {type(exc).__name__}") from None
    raise UnsupportedMediaType(f"media type {media!r} is not supported (JSON and CBOR are)")


def _encode_body(pc: Any, serialization: str) -> bytes:
    if pc is None:
        return b""
    if serialization == CBOR:
        return cbor2.dumps(pc)
    return json.dumps(pc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _int(value: str, what: str) -> int:
    try:
        if not value.lstrip("-").isdigit():
            raise ValueError
        return int(value)
    except ValueError:
        raise HTTPBindingError(f"{what} must be an integer, got {value!r}") from None


def _bool(value: str, what: str) -> bool:
    v = value.lower()
    if v in ("true", "1"):
        return True
    if v in ("false", "0"):
        return False
    raise HTTPBindingError(f"{what} must be true/false/1/0, got {value!r}")


def http_status_for(rsc: int) -> int:
    """HTTP Status-Code for a Response Status Code (TS-0009 table 6.3.2-1).

    Codes outside the enumeration map by class: 1xxx -> 202, 2xxx -> 200,
    4xxx -> 400, 5xxx/6xxx -> 500.
    """
    try:
        return ResponseStatusCode(int(rsc)).http_status
    except ValueError:
        cls = int(rsc) // 1000
        return {1: 202, 2: 200, 4: 400}.get(cls, 500)


# ------------------------------------------------------------------ request


def request_to_http(req: RequestPrimitive, *, host: str, serialization: str = JSON) -> HTTPRequest:
    """Request primitive -> HTTP request (originator side, origin-form target)."""
    if serialization not in (JSON, CBOR):
        raise ValueError("serialization must be JSON or CBOR")
    method = _METHODS[req.op]
    query: list[tuple[str, str]] = []
    if req.rcn is not None:
        query.append(("rcn", str(int(req.rcn))))
    if req.drt is not None:
        query.append(("drt", str(int(req.drt))))
    rtu: str | None = None
    if req.rt is not None:
        if "rtv" in req.rt:
            query.append(("rt", str(req.rt["rtv"])))
        nus = req.rt.get("nu")
        if nus:
            rtu = "&".join(str(n) for n in nus)
    extra = dict(req.extra)
    if "rp" in extra:
        query.append(("rp", str(extra.pop("rp"))))
    for name in _LIST_EXTRA:
        if name in extra:
            v = extra.pop(name)
            query.append((name, "+".join(str(x) for x in (v if isinstance(v, list) else [v]))))
    for name in _BOOL_EXTRA:
        if name in extra:
            query.append((name, "true" if extra.pop(name) else "false"))
    if extra:
        raise HTTPBindingError(f"parameters {sorted(extra)} have no HTTP binding in this profile")
    if req.fc:
        for k, v in req.fc.items():
            if k == "atr":
                for a in v if isinstance(v, list) else [v]:
                    query.append((str(a["nm"]), str(a["val"])))
            elif k in _FC_FIELDS:
                if _FC_FIELDS[k].startswith("list"):
                    query.append((k, "+".join(str(x) for x in (v if isinstance(v, list) else [v]))))
                else:
                    query.append((k, str(v)))
            else:
                raise HTTPBindingError(f"filterCriteria element {k!r} has no query-string binding")
    target = to_to_path(req.to)
    if query:
        target += "?" + urlencode(query, safe="+:/", quote_via=quote)
    headers: list[tuple[str, str]] = [("Host", host), ("Accept", serialization)]
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
    if req.ec is not None:
        headers.append(("X-M2M-EC", str(req.ec)))
    if req.vsi is not None:
        headers.append(("X-M2M-VSI", req.vsi))
    if rtu is not None:
        headers.append(("X-M2M-RTU", rtu))
    body = _encode_body(req.pc, serialization)
    if req.op is Operation.CREATE:
        if req.ty is None:
            raise HTTPBindingError("a Create request needs a resource type (ty)")
        headers.append(("Content-Type", f"{serialization}; ty={int(req.ty)}"))
    elif body:
        headers.append(("Content-Type", serialization))
    if body or method in ("POST", "PUT"):
        headers.append(("Content-Length", str(len(body))))
    return HTTPRequest(method, target, tuple(headers), body)


def _parse_query(query: str, kw: dict[str, Any]) -> None:
    fc: dict[str, Any] = {}
    atr: list[dict[str, str]] = []
    extra: dict[str, Any] = {}
    seen: set[str] = set()
    for name, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        kind = _FC_FIELDS.get(name)
        if name in seen and not (kind or "").startswith("list") and name in (
                "rcn", "drt", "rt", "rp", *_BOOL_EXTRA, *_FC_FIELDS):
            raise HTTPBindingError(f"query field {name!r} may occur at most once")
        seen.add(name)
        value = value.replace(" ", "+")  # '+' in a query string decodes to a space
        if name == "rcn":
            try:
                kw["rcn"] = ResultContent(_int(value, "rcn"))
            except ValueError:
                raise HTTPBindingError(f"rcn {value!r} is not a resultContent") from None
        elif name == "drt":
            try:
                kw["drt"] = DesIdResType(_int(value, "drt"))
            except ValueError:
                raise HTTPBindingError(f"drt {value!r} is not a desIdResType") from None
        elif name == "rt":
            kw.setdefault("rt", {})["rtv"] = _int(value, "rt")
        elif name == "rp":
            extra["rp"] = value
        elif name in _LIST_EXTRA:
            extra.setdefault(name, []).extend(x for x in value.split("+") if x)
        elif name in _BOOL_EXTRA:
            extra[name] = _bool(value, name)
        elif name == "atrl":
            kw.setdefault("_atrl", []).extend(x for x in value.split("+") if x)
        elif kind == "int":
            fc[name] = _int(value, name)
        elif kind == "str":
            fc[name] = value
        elif kind == "list-int":
            fc.setdefault(name, []).extend(_int(x, name) for x in value.split("+") if x)
        elif kind == "list-str":
            fc.setdefault(name, []).extend(x for x in value.split("+") if x)
        else:
            atr.append({"nm": name, "val": value})
    if atr:
        fc["atr"] = atr
    if fc:
        kw["fc"] = fc
    if extra:
        kw["extra"] = extra


def http_to_request(method: str | bytes, target: str | bytes, headers: Any, body: bytes = b"") -> RequestPrimitive:
    """HTTP request -> request primitive (receiver side); raises :class:`HTTPBindingError`."""
    m = (method.decode("ascii", "replace") if isinstance(method, (bytes, bytearray)) else method).upper()
    t = target.decode("ascii", "replace") if isinstance(target, (bytes, bytearray)) else target
    media, params = _media(_get(headers, "Content-Type"))
    ty: ResourceType | None = None
    if "ty" in params:
        try:
            ty = ResourceType(_int(params["ty"], "ty"))
        except ValueError:
            raise HTTPBindingError(f"Content-Type ty={params['ty']!r} is not a resource type") from None
    if m == "POST":
        op = Operation.CREATE if ty is not None else Operation.NOTIFY
    elif m == "GET":
        op = Operation.RETRIEVE
    elif m == "PUT":
        op = Operation.UPDATE
    elif m == "DELETE":
        op = Operation.DELETE
    else:
        raise OperationNotAllowed(f"HTTP method {m} has no oneM2M operation")
    if t.startswith("http://") or t.startswith("https://"):
        parts = urlsplit(t)  # absolute-form (sent to a proxy)
        path, query = parts.path, parts.query
    else:
        path, _, query = t.partition("?")
        path = path.partition("#")[0]
    kw: dict[str, Any] = {"op": op, "to": path_to_to(path)}
    rqi = _get(headers, "X-M2M-RI")
    if not rqi:
        raise HTTPBindingError("X-M2M-RI (Request Identifier) is missing")
    kw["rqi"] = rqi
    fr = _get(headers, "X-M2M-Origin")
    if fr is not None:
        if not fr:
            raise HTTPBindingError("X-M2M-Origin is empty")
        kw["fr"] = fr
    rvi = _get(headers, "X-M2M-RVI")
    if rvi is not None:
        kw["rvi"] = rvi
    if op is Operation.CREATE:
        kw["ty"] = ty
    ot = _get(headers, "X-M2M-OT")
    if ot is not None:
        kw["ot"] = parse_timestamp(ot, path="X-M2M-OT")
    for header, name in (("X-M2M-RET", "rqet"), ("X-M2M-RST", "rset")):
        v = _get(headers, header)
        if v is not None:
            kw[name] = AbsRelTimestamp.from_json(v, path=header)
    ec = _get(headers, "X-M2M-EC")
    if ec is not None:
        kw["ec"] = _int(ec, "X-M2M-EC")
    vsi = _get(headers, "X-M2M-VSI")
    if vsi is not None:
        kw["vsi"] = vsi
    if query:
        _parse_query(query, kw)
    rtu = _get(headers, "X-M2M-RTU")
    if rtu:
        kw.setdefault("rt", {})["nu"] = [x for x in rtu.split("&") if x]
    pc = _decode_body(bytes(body), media)
    atrl = kw.pop("_atrl", None)
    if atrl:
        if pc is not None:
            raise HTTPBindingError("attribute list in both query (atrl) and message-body")
        pc = {"m2m:atrl": atrl}
    if pc is not None:
        kw["pc"] = pc
    try:
        return RequestPrimitive(**kw)
    except ParseError:
        raise
    except (ValueError, TypeError) as exc:
        raise HTTPBindingError(f"HTTP request does not form a request primitive: {exc}") from None


# ------------------------------------------------------------------ response


def response_to_http(rsp: ResponsePrimitive, *, serialization: str = JSON) -> HTTPResponse:
    """Response primitive -> HTTP response (Status-Code per table 6.3.2-1, X-M2M-RSC)."""
    if serialization not in (JSON, CBOR):
        raise ValueError("serialization must be JSON or CBOR")
    headers: list[tuple[str, str]] = [("X-M2M-RSC", str(int(rsp.rsc))), ("X-M2M-RI", rsp.rqi)]
    if rsp.rvi is not None:
        headers.append(("X-M2M-RVI", rsp.rvi))
    if rsp.fr is not None:
        headers.append(("X-M2M-Origin", rsp.fr))
    if rsp.ot is not None:
        headers.append(("X-M2M-OT", format_timestamp(rsp.ot)))
    if rsp.rset is not None:
        headers.append(("X-M2M-RST", str(rsp.rset.to_json())))
    if rsp.ec is not None:
        headers.append(("X-M2M-EC", str(rsp.ec)))
    if rsp.vsi is not None:
        headers.append(("X-M2M-VSI", rsp.vsi))
    body = _encode_body(rsp.pc, serialization)
    if body:
        headers.append(("Content-Type", serialization))
    headers.append(("Content-Length", str(len(body))))
    return HTTPResponse(http_status_for(int(rsp.rsc)), tuple(headers), body)


def http_to_response(status: int, headers: Any, body: bytes = b"", *, rqi: str | None = None) -> ResponsePrimitive:
    """HTTP response -> response primitive (originator side).

    X-M2M-RSC is mandatory; X-M2M-RI falls back to ``rqi`` (the request's).
    A Status-Code that disagrees with the RSC's class is refused.
    """
    rsc_text = _get(headers, "X-M2M-RSC")
    if rsc_text is None:
        raise HTTPBindingError(f"HTTP {status} response without X-M2M-RSC")
    rsc = parse_rsc(_int(rsc_text, "X-M2M-RSC"), "X-M2M-RSC")
    if http_status_for(int(rsc)) // 100 != int(status) // 100:
        raise HTTPBindingError(f"HTTP status {status} contradicts X-M2M-RSC {int(rsc)}")
    kw: dict[str, Any] = {"rsc": rsc, "rqi": _get(headers, "X-M2M-RI") or rqi}
    if not kw["rqi"]:
        raise HTTPBindingError("response without X-M2M-RI")
    for header, name in (("X-M2M-RVI", "rvi"), ("X-M2M-Origin", "fr"), ("X-M2M-VSI", "vsi")):
        v = _get(headers, header)
        if v is not None:
            kw[name] = v
    ot = _get(headers, "X-M2M-OT")
    if ot is not None:
        kw["ot"] = parse_timestamp(ot, path="X-M2M-OT")
    rst = _get(headers, "X-M2M-RST")
    if rst is not None:
        kw["rset"] = AbsRelTimestamp.from_json(rst, path="X-M2M-RST")
    ec = _get(headers, "X-M2M-EC")
    if ec is not None:
        kw["ec"] = _int(ec, "X-M2M-EC")
    media, _ = _media(_get(headers, "Content-Type"))
    pc = _decode_body(bytes(body), media)
    if pc is not None:
        kw["pc"] = pc
    try:
        return ResponsePrimitive(**kw)
    except ParseError:
        raise
    except (ValueError, TypeError) as exc:
        raise HTTPBindingError(f"HTTP response does not form a response primitive: {exc}") from None
