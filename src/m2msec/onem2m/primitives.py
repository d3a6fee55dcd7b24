"""oneM2M request and response primitives with short names, JSON and CBOR.

Implements TS-0004 V3.32.0:

* clause 6.4.1 (Table 6.4.1-1, request primitive parameter data types) and
  clause 6.4.2 (Table 6.4.2-1, response primitive parameter data types);
* clause 8.2.2 (Table 8.2.2-1, primitive parameter short names);
* clause 8.4 (JSON serialization: short names, enumerations as numbers, no
  ``m2m:rqp``/``m2m:rsp`` wrapper, unique member names) and clause 8.5 (CBOR:
  the same data model, text-string keys, integers as major types 0/1);
* the ``m2m:securityInfo`` Content of Notify primitives used by ESPrim and
  ESCertKE (clauses 6.3.5.48, 7.5.1.2.11, 7.5.1.2.12, 7.6.2) and the
  ``e2eSecInfo`` (``esi``) attribute of ``<AE>``, ``<remoteCSE>`` and ``<CSEBase>``
  (clause 6.3.5.52; Table 8.2.3-6 ... "e2eSecInfo | CSEBase, remoteCSE, AE | esi").

The Content parameter (``pc``) is carried untouched: whatever JSON value was
received is emitted again (the library only checks that it is within the JSON
data model).  Parameters of Table 8.2.2-1 that are not modelled as fields
(``rids``, ``oet``, ``tkns``, ``cnst`` ...) are kept verbatim in ``extra``;
any other member name is rejected.

m2msec profile decisions:

* ``fr`` is optional at this layer (protocol bindings carry it in a header;
  TS-0004 also allows it to be absent for ``<AE>`` CREATE); ``rvi`` is optional
  (absent in Release-1 primitives) and when present must look like a release
  version (``1``, ``2``, ``2a``, ``3`` ...: ``[1-9][0-9]?[a-z]?``).  Factory
  helpers emit ``rvi`` = ``"3"``.
* ``rsc``: values of :class:`ResponseStatusCode` become members; other values
  inside the RSC classes (1000-1999, 2000-2999, 4000-6999) are kept as plain
  ``int`` so that codes from later releases survive; anything else is rejected.
* ``ec`` must be an m2m:eventCat: 2, 3, 4 (m2m:stdEventCats) or 100-999.
* ``rt`` (m2m:responseTypeInfo) and ``fc`` (m2m:filterCriteria) are opaque JSON objects.
* JSON ``null`` is rejected for every modelled parameter including ``pc``.
"""

from __future__ import annotations

from abc import abstractmethod

import copy
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, ClassVar, Mapping, TypeVar, Union

from m2msec.errors import ParseError
from m2msec.onem2m import _wire
from m2msec.onem2m.enums import DesIdResType, Operation, ResourceType, ResultContent
from m2msec.onem2m.rsc import ResponseStatusCode
from m2msec.onem2m.security import E2ESecInfo, SecurityInfo
from m2msec.onem2m.timestamps import AbsRelTimestamp, Clock, ensure_utc, format_timestamp, parse_timestamp

DEFAULT_RVI = "3"
_RVI_RE = re.compile(r"[1-9][0-9]?[a-z]?", re.ASCII)

# Table 8.2.2-1 parameters not modelled as fields: carried verbatim in ``extra``.
REQUEST_EXTRA_PARAMS = frozenset(
    {"rids", "oet", "rp", "da", "gid", "tkns", "tids", "tqi", "ltids", "grtm", "asi", "aus", "auri", "sqi"}
)
RESPONSE_EXTRA_PARAMS = frozenset({"cnst", "cnot", "ati", "tqf", "asri"})

RscValue = Union[ResponseStatusCode, int]

#: Resource roots that carry the e2eSecInfo (``esi``) attribute.
ESI_RESOURCE_ROOTS: dict[str, ResourceType] = {
    "m2m:ae": ResourceType.AE,
    "m2m:csr": ResourceType.REMOTE_CSE,
    "m2m:cb": ResourceType.CSE_BASE,
}


def new_request_id() -> str:
    """A fresh Request Identifier (``m2msec-`` + 24 random hex digits)."""
    return "m2msec-" + secrets.token_hex(12)


# ------------------------------------------------------------------ field readers


def _not_null(value: object, path: str) -> object:
    if value is None:
        raise _wire.fail(path, "null is not allowed")
    return value


_COMMON_RVI = frozenset({"1", "2", "2a", "3", "4", "5"})  # all match _RVI_RE


def _read_rvi(value: object, path: str) -> str:
    if type(value) is str and value in _COMMON_RVI:
        return value
    s = _wire.expect_str(value, path)
    if not _RVI_RE.fullmatch(s):
        raise _wire.fail(path, f"not an m2m:releaseVersion: {s!r}")
    return s


def _read_ec(value: object, path: str) -> int:
    n = _wire.expect_int(value, path)
    if n not in (2, 3, 4) and not 100 <= n <= 999:
        raise _wire.fail(path, f"not an m2m:eventCat (2, 3, 4 or 100-999): {n}")
    return n


def parse_rsc(value: object, path: str = "rsc") -> RscValue:
    """Parse a Response Status Code (see the module docstring for unknown codes)."""
    if type(value) is int:
        member = ResponseStatusCode._value2member_map_.get(value)
        if member is not None:
            return member  # type: ignore[return-value]
    n = _wire.expect_int(value, path)
    try:
        return ResponseStatusCode(n)
    except ValueError:
        pass
    if 1000 <= n <= 2999 or 4000 <= n <= 6999:
        return n
    raise _wire.fail(path, f"not a ResponseStatusCode: {n}")


def _read_pc(value: object, path: str, model_checked: bool = False) -> Any:
    _not_null(value, path)
    if not model_checked:
        _wire.check_json_model(value, path)
    return value


def _read_opaque_object(value: object, path: str) -> dict[str, Any]:
    return _wire.expect_object(value, path)


def _read_extra(values: Mapping[str, Any], keys: frozenset[str]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if keys.isdisjoint(values):
        return extra
    for k in sorted(keys & values.keys()):
        _wire.check_json_model(values[k], k)
        extra[k] = values[k]
    return extra


def _same(value: Any) -> Any:
    return value


def _members(obj: object, names: dict[str, str], required: frozenset[str]) -> Mapping[str, Any]:
    """The members of a primitive (wire names are the short names, so no renaming is needed);
    the general :func:`_wire.members` reports any problem."""
    if type(obj) is dict and names.keys() >= obj.keys() and obj.keys() >= required:
        return obj
    return _wire.members(obj, "", names, tuple(sorted(required, key=_REQUIRED_ORDER.index)))[0]


_Prim = TypeVar("_Prim", "RequestPrimitive", "ResponsePrimitive")


def _checked(cls: type[_Prim], base: type[Any], kw: dict[str, Any]) -> _Prim:
    """Build a primitive from values ``from_json`` has already checked and normalised one by
    one, without ``__post_init__`` checking them (``pc`` above all) a second time."""
    if cls is not base:  # a subclass may check more in its own __post_init__
        return cls(**kw)
    obj = object.__new__(cls)
    d = obj.__dict__
    d.update(_DEFAULTS[base])
    d.update(kw)
    return obj  # type: ignore[no-any-return]


def _check_json_value(value: object, what: str) -> None:
    try:
        _wire.check_json_model(value, what)
    except ParseError as exc:
        raise ValueError(str(exc)) from None


# ------------------------------------------------------------------ request


class _PrimitiveCodec(_wire.Codec):
    """Decoding entry points shared by request and response primitives: each class
    implements ``_from_json(obj, model_checked)``; ``model_checked`` says the value is
    already known to be within the JSON data model (its ``pc`` need not be walked again)."""

    @classmethod
    @abstractmethod
    def _from_json(cls, obj: object, model_checked: bool) -> Any:
        """Strictly parse a primitive (the fast path first for the common shapes)."""

    @classmethod
    def from_json(cls, obj: object, **_: Any) -> Any:
        return cls._from_json(obj, False)

    @classmethod
    def from_json_bytes(cls, data: bytes | str, **kwargs: Any) -> Any:
        value, model_checked = _wire.loads_json_model(data)
        return cls._from_json(value, model_checked)

    @classmethod
    def from_cbor(cls, data: bytes, **kwargs: Any) -> Any:
        return cls._from_json(_wire.loads_cbor(data), True)  # loads_cbor checked the whole value


@dataclass(frozen=True)
class RequestPrimitive(_PrimitiveCodec):
    """A oneM2M request primitive (TS-0004 Table 6.4.1-1)."""

    op: Operation
    to: str
    rqi: str
    fr: str | None = None
    rvi: str | None = None
    ty: ResourceType | None = None
    pc: Any = None
    ot: datetime | None = None
    rqet: AbsRelTimestamp | None = None
    rset: AbsRelTimestamp | None = None
    rt: dict[str, Any] | None = None
    rcn: ResultContent | None = None
    ec: int | None = None
    fc: dict[str, Any] | None = None
    drt: DesIdResType | None = None
    vsi: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    _NAMES: ClassVar[frozenset[str]] = frozenset(
        {"op", "to", "fr", "rqi", "rvi", "ty", "pc", "ot", "rqet", "rset", "rt", "rcn", "ec", "fc", "drt", "vsi"}
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "op", Operation(self.op))
        for name in ("to", "rqi"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise ValueError(f"{name} must be a non-empty string")
        if self.fr is not None and (not isinstance(self.fr, str) or not self.fr):
            raise ValueError("fr must be a non-empty string")
        if self.rvi is not None and (not isinstance(self.rvi, str) or not _RVI_RE.fullmatch(self.rvi)):
            raise ValueError("rvi must be a release version string")
        if self.ty is not None:
            object.__setattr__(self, "ty", ResourceType(self.ty))
        if self.rcn is not None:
            object.__setattr__(self, "rcn", ResultContent(self.rcn))
        if self.drt is not None:
            object.__setattr__(self, "drt", DesIdResType(self.drt))
        if self.ot is not None:
            object.__setattr__(self, "ot", ensure_utc(self.ot, what="ot"))
        if self.ec is not None:
            _read_ec(self.ec, "ec")
        for name in ("rqet", "rset"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, AbsRelTimestamp):
                raise ValueError(f"{name} must be an AbsRelTimestamp")
        if self.vsi is not None and not isinstance(self.vsi, str):
            raise ValueError("vsi must be a string")
        _check_json_value(self.pc, "pc")
        for name in ("rt", "fc"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, Mapping):
                raise ValueError(f"{name} must be a JSON object")
        unknown = set(self.extra) - REQUEST_EXTRA_PARAMS
        if unknown:
            raise ValueError(f"extra holds parameters that are not Table 8.2.2-1 request parameters: {sorted(unknown)}")
        object.__setattr__(self, "extra", dict(self.extra))

    # -- serialization
    def to_json(self) -> dict[str, Any]:
        return self._members(copy.deepcopy)

    def to_json_bytes(self) -> bytes:
        return _wire.dumps_json(self._members(_same))  # serialized at once: no copy needed

    def to_cbor(self) -> bytes:
        return _wire.dumps_cbor(self._members(_same))

    def _members(self, cp: Callable[[Any], Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"op": int(self.op), "to": self.to}
        if self.fr is not None:
            out["fr"] = self.fr
        out["rqi"] = self.rqi
        if self.ty is not None:
            out["ty"] = int(self.ty)
        if self.pc is not None:
            out["pc"] = cp(self.pc)
        if self.ot is not None:
            out["ot"] = format_timestamp(self.ot)
        if self.rqet is not None:
            out["rqet"] = self.rqet.to_json()
        if self.rset is not None:
            out["rset"] = self.rset.to_json()
        if self.rt is not None:
            out["rt"] = cp(self.rt)
        if self.rcn is not None:
            out["rcn"] = int(self.rcn)
        if self.ec is not None:
            out["ec"] = self.ec
        if self.fc is not None:
            out["fc"] = cp(self.fc)
        if self.drt is not None:
            out["drt"] = int(self.drt)
        if self.rvi is not None:
            out["rvi"] = self.rvi
        if self.vsi is not None:
            out["vsi"] = self.vsi
        for k, v in self.extra.items():
            out[k] = cp(v)
        return out

    @classmethod
    def _from_json(cls, obj: object, model_checked: bool) -> RequestPrimitive:
        """``model_checked``: ``obj`` is known to be within the JSON data model (pc need not be walked)."""
        if cls is RequestPrimitive:
            fast = _fast_request(obj, model_checked)
            if fast is not None:
                return fast
        v = _members(obj, _REQUEST_NAMES, _REQUEST_REQUIRED)
        kw: dict[str, Any] = {
            "op": _wire.expect_enum(Operation, v["op"], "op"),
            "to": _wire.expect_str(v["to"], "to"),
            "rqi": _wire.expect_str(v["rqi"], "rqi"),
        }
        if "fr" in v:
            kw["fr"] = _wire.expect_str(v["fr"], "fr")
        if "rvi" in v:
            kw["rvi"] = _read_rvi(v["rvi"], "rvi")
        if "ty" in v:
            kw["ty"] = _wire.expect_enum(ResourceType, v["ty"], "ty")
        if "pc" in v:
            kw["pc"] = _read_pc(v["pc"], "pc", model_checked)
        if "ot" in v:
            kw["ot"] = parse_timestamp(v["ot"], path="ot")
        for name in ("rqet", "rset"):
            if name in v:
                kw[name] = AbsRelTimestamp.from_json(v[name], path=name)
        if "rt" in v:
            kw["rt"] = _read_opaque_object(v["rt"], "rt")
        if "rcn" in v:
            kw["rcn"] = _wire.expect_enum(ResultContent, v["rcn"], "rcn")
        if "ec" in v:
            kw["ec"] = _read_ec(v["ec"], "ec")
        if "fc" in v:
            kw["fc"] = _read_opaque_object(v["fc"], "fc")
        if "drt" in v:
            kw["drt"] = _wire.expect_enum(DesIdResType, v["drt"], "drt")
        if "vsi" in v:
            kw["vsi"] = _wire.expect_str(v["vsi"], "vsi", nonempty=False)
        kw["extra"] = _read_extra(v, REQUEST_EXTRA_PARAMS)
        return _checked(cls, RequestPrimitive, kw)

    # -- security helpers
    def security_info(self, *, clock: Clock | datetime | None = None) -> SecurityInfo | None:
        """The ``m2m:seci`` carried in ``pc``, or ``None``."""
        return SecurityInfo.from_content(self.pc, clock=clock)

    def e2e_sec_info(self, *, clock: Clock | datetime | None = None) -> E2ESecInfo | None:
        """The ``esi`` attribute of an ``<AE>``/``<remoteCSE>``/``<CSEBase>`` in ``pc``, or ``None``."""
        return get_e2e_sec_info(self.pc, clock=clock)

    @classmethod
    def notify_security_info(
        cls,
        *,
        to: str,
        fr: str,
        seci: SecurityInfo,
        rqi: str | None = None,
        rvi: str = DEFAULT_RVI,
        ot: datetime | None = None,
    ) -> RequestPrimitive:
        """A NOTIFY request whose Content is ``{"m2m:seci": ...}`` (TS-0004 7.5.1.2.11/12, 7.6.2)."""
        return cls(
            op=Operation.NOTIFY,
            to=to,
            fr=fr,
            rqi=new_request_id() if rqi is None else rqi,
            rvi=rvi,
            pc=seci.to_content(),
            ot=ot,
        )


# ------------------------------------------------------------------ response


@dataclass(frozen=True)
class ResponsePrimitive(_PrimitiveCodec):
    """A oneM2M response primitive (TS-0004 Table 6.4.2-1)."""

    rsc: RscValue
    rqi: str
    pc: Any = None
    to: str | None = None
    fr: str | None = None
    ot: datetime | None = None
    rset: AbsRelTimestamp | None = None
    ec: int | None = None
    rvi: str | None = None
    vsi: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    _NAMES: ClassVar[frozenset[str]] = frozenset({"rsc", "rqi", "pc", "to", "fr", "ot", "rset", "ec", "rvi", "vsi"})

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "rsc", parse_rsc(self.rsc))
        except ParseError as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(self.rqi, str) or not self.rqi:
            raise ValueError("rqi must be a non-empty string")
        for name in ("to", "fr"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v):
                raise ValueError(f"{name} must be a non-empty string")
        if self.rvi is not None and (not isinstance(self.rvi, str) or not _RVI_RE.fullmatch(self.rvi)):
            raise ValueError("rvi must be a release version string")
        if self.ot is not None:
            object.__setattr__(self, "ot", ensure_utc(self.ot, what="ot"))
        if self.rset is not None and not isinstance(self.rset, AbsRelTimestamp):
            raise ValueError("rset must be an AbsRelTimestamp")
        if self.ec is not None:
            _read_ec(self.ec, "ec")
        if self.vsi is not None and not isinstance(self.vsi, str):
            raise ValueError("vsi must be a string")
        _check_json_value(self.pc, "pc")
        unknown = set(self.extra) - RESPONSE_EXTRA_PARAMS
        if unknown:
            raise ValueError(f"extra holds parameters that are not Table 8.2.2-1 response parameters: {sorted(unknown)}")
        object.__setattr__(self, "extra", dict(self.extra))

    @property
    def is_success(self) -> bool:
        return 2000 <= int(self.rsc) < 3000

    def to_json(self) -> dict[str, Any]:
        return self._members(copy.deepcopy)

    def to_json_bytes(self) -> bytes:
        return _wire.dumps_json(self._members(_same))  # serialized at once: no copy needed

    def to_cbor(self) -> bytes:
        return _wire.dumps_cbor(self._members(_same))

    def _members(self, cp: Callable[[Any], Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"rsc": int(self.rsc), "rqi": self.rqi}
        if self.pc is not None:
            out["pc"] = cp(self.pc)
        if self.to is not None:
            out["to"] = self.to
        if self.fr is not None:
            out["fr"] = self.fr
        if self.ot is not None:
            out["ot"] = format_timestamp(self.ot)
        if self.rset is not None:
            out["rset"] = self.rset.to_json()
        if self.ec is not None:
            out["ec"] = self.ec
        if self.rvi is not None:
            out["rvi"] = self.rvi
        if self.vsi is not None:
            out["vsi"] = self.vsi
        for k, v in self.extra.items():
            out[k] = cp(v)
        return out

    @classmethod
    def _from_json(cls, obj: object, model_checked: bool) -> ResponsePrimitive:
        """``model_checked``: ``obj`` is known to be within the JSON data model (pc need not be walked)."""
        if cls is ResponsePrimitive:
            fast = _fast_response(obj, model_checked)
            if fast is not None:
                return fast
        v = _members(obj, _RESPONSE_NAMES, _RESPONSE_REQUIRED)
        kw: dict[str, Any] = {
            "rsc": parse_rsc(v["rsc"], "rsc"),
            "rqi": _wire.expect_str(v["rqi"], "rqi"),
        }
        if "pc" in v:
            kw["pc"] = _read_pc(v["pc"], "pc", model_checked)
        for name in ("to", "fr"):
            if name in v:
                kw[name] = _wire.expect_str(v[name], name)
        if "ot" in v:
            kw["ot"] = parse_timestamp(v["ot"], path="ot")
        if "rset" in v:
            kw["rset"] = AbsRelTimestamp.from_json(v["rset"], path="rset")
        if "ec" in v:
            kw["ec"] = _read_ec(v["ec"], "ec")
        if "rvi" in v:
            kw["rvi"] = _read_rvi(v["rvi"], "rvi")
        if "vsi" in v:
            kw["vsi"] = _wire.expect_str(v["vsi"], "vsi", nonempty=False)
        kw["extra"] = _read_extra(v, RESPONSE_EXTRA_PARAMS)
        return _checked(cls, ResponsePrimitive, kw)

    def security_info(self, *, clock: Clock | datetime | None = None) -> SecurityInfo | None:
        """The ``m2m:seci`` carried in ``pc``, or ``None``."""
        return SecurityInfo.from_content(self.pc, clock=clock)

    def e2e_sec_info(self, *, clock: Clock | datetime | None = None) -> E2ESecInfo | None:
        return get_e2e_sec_info(self.pc, clock=clock)

    @classmethod
    def with_security_info(
        cls,
        request: RequestPrimitive,
        seci: SecurityInfo,
        *,
        rsc: ResponseStatusCode = ResponseStatusCode.OK,
        ot: datetime | None = None,
    ) -> ResponsePrimitive:
        """The response to ``request`` carrying ``{"m2m:seci": ...}`` (same rqi and rvi)."""
        return cls(
            rsc=rsc,
            rqi=request.rqi,
            pc=seci.to_content(),
            rvi=request.rvi if request.rvi is not None else DEFAULT_RVI,
            ot=ot,
        )


_REQUEST_REQUIRED = frozenset({"op", "to", "rqi"})
_RESPONSE_REQUIRED = frozenset({"rsc", "rqi"})
_REQUIRED_ORDER = ("op", "to", "rsc", "rqi")  # the order missing members are reported in
_REQUEST_NAMES: dict[str, str] = {n: n for n in RequestPrimitive._NAMES | REQUEST_EXTRA_PARAMS}
_RESPONSE_NAMES: dict[str, str] = {n: n for n in ResponsePrimitive._NAMES | RESPONSE_EXTRA_PARAMS}
# Field defaults (every field but the mandatory ones defaults to None; ``extra`` is always given).
_DEFAULTS: dict[type[Any], dict[str, Any]] = {
    c: {f.name: None for f in fields(c)} for c in (RequestPrimitive, ResponsePrimitive)
}


# The common shapes, read without the general per-member machinery: only the members below,
# each plainly valid.  Anything else (another member, a value the quick test does not accept)
# returns None and the general reader decides -- so results and errors are the same.
_FAST_REQUEST_NAMES = frozenset({"op", "to", "fr", "rqi", "rvi", "pc"})
_FAST_RESPONSE_NAMES = frozenset({"rsc", "rqi", "rvi", "pc"})
_OPERATIONS: dict[Any, Operation] = dict(Operation._value2member_map_)  # type: ignore[arg-type]
_RSCS: dict[Any, ResponseStatusCode] = dict(ResponseStatusCode._value2member_map_)  # type: ignore[arg-type]


def _fast_optional(obj: dict[str, Any], model_checked: bool) -> tuple[Any, Any] | None:
    """``rvi`` and ``pc`` of a primitive object, or None when either needs the general reader."""
    rvi = obj.get("rvi")
    if (rvi is not None or "rvi" in obj) and (type(rvi) is not str or rvi not in _COMMON_RVI):
        return None
    pc = obj.get("pc")
    if pc is None:
        if "pc" in obj:
            return None  # null: the general reader refuses it
    elif not model_checked and not _wire._fast_ok(pc, 0):
        return None
    return rvi, pc


def _fast_request(obj: object, model_checked: bool) -> RequestPrimitive | None:
    if type(obj) is not dict or not obj.keys() <= _FAST_REQUEST_NAMES:
        return None
    op, to, rqi, fr = obj.get("op"), obj.get("to"), obj.get("rqi"), obj.get("fr")
    if type(op) is not int or type(to) is not str or not to or type(rqi) is not str or not rqi:
        return None
    if (fr is not None or "fr" in obj) and (type(fr) is not str or not fr):
        return None
    operation = _OPERATIONS.get(op)
    rest = _fast_optional(obj, model_checked)
    if operation is None or rest is None:
        return None
    prim = object.__new__(RequestPrimitive)
    d = prim.__dict__
    d.update(_DEFAULTS[RequestPrimitive])
    d["op"], d["to"], d["rqi"], d["fr"], d["extra"] = operation, to, rqi, fr, {}
    d["rvi"], d["pc"] = rest
    return prim


def _fast_response(obj: object, model_checked: bool) -> ResponsePrimitive | None:
    if type(obj) is not dict or not obj.keys() <= _FAST_RESPONSE_NAMES:
        return None
    rsc, rqi = obj.get("rsc"), obj.get("rqi")
    if type(rsc) is not int or type(rqi) is not str or not rqi:
        return None
    code = _RSCS.get(rsc)
    rest = _fast_optional(obj, model_checked)
    if code is None or rest is None:
        return None
    prim = object.__new__(ResponsePrimitive)
    d = prim.__dict__
    d.update(_DEFAULTS[ResponsePrimitive])
    d["rsc"], d["rqi"], d["extra"] = code, rqi, {}
    d["rvi"], d["pc"] = rest
    return prim


# ------------------------------------------------------------------ e2eSecInfo attribute helpers


def _esi_root(pc: object) -> str | None:
    if not isinstance(pc, Mapping) or len(pc) != 1:
        return None
    (key,) = pc.keys()
    return key if key in ESI_RESOURCE_ROOTS else None


def get_e2e_sec_info(pc: object, *, clock: Clock | datetime | None = None) -> E2ESecInfo | None:
    """Read ``esi`` from a Content ``{"m2m:ae"|"m2m:csr"|"m2m:cb": {...}}``; ``None`` if absent."""
    root = _esi_root(pc)
    if root is None:
        return None
    assert isinstance(pc, Mapping)
    resource = pc[root]
    if not isinstance(resource, Mapping):
        raise _wire.fail(f"pc.{root}", f"expected an object, got {_wire.type_name(resource)}")
    if "esi" not in resource:
        return None
    return E2ESecInfo.from_json(resource["esi"], clock=clock, path=f"pc.{root}.esi")


def with_e2e_sec_info(pc: Mapping[str, Any], info: E2ESecInfo | None) -> dict[str, Any]:
    """A copy of the resource Content with ``esi`` set (or removed when ``info`` is None)."""
    root = _esi_root(pc)
    if root is None:
        raise ValueError(f"Content is not a single {sorted(ESI_RESOURCE_ROOTS)} resource")
    resource = copy.deepcopy(dict(pc[root]))
    if info is None:
        resource.pop("esi", None)
    else:
        resource["esi"] = info.to_json()
    return {root: resource}


def resource_content(resource_type: ResourceType, attributes: Mapping[str, Any]) -> dict[str, Any]:
    """``{"m2m:<short>": attributes}`` for one of the resources carrying ``esi``."""
    for root, rt in ESI_RESOURCE_ROOTS.items():
        if rt == resource_type:
            return {root: copy.deepcopy(dict(attributes))}
    raise ValueError(f"{resource_type!r} does not carry e2eSecInfo")
