"""MAF procedure messages, sans-I/O (TS-0003 8.8.2.3-8.8.2.10, 8.8.3, 10.3.5, 10.6).

TS-0032 (the MAF wire protocol) is not public; m2msec carries exactly the parameters of the
TS-0003 8.8.2 message tables as JSON objects in the bodies of HTTP/1.1 ``POST`` requests on
the MAF's TLS session (see ``docs/maf-protocol.md``).  This module holds:

* one frozen dataclass per request and response message (the parameters of tables
  8.8.2.3-1/2, 8.8.2.4-1/2, 8.8.2.5-1/2, 8.8.2.6-1, 8.8.2.7-1/2, 8.8.2.8-1/2, 8.8.2.9-1/2,
  8.8.2.10-1), each with ``to_json()`` / ``from_json()``;
* :class:`Procedure` — the procedures with their request path and message classes;
* strict parsing: a body must be a UTF-8 JSON object without duplicate or unknown members,
  every member has its type checked, timestamps are ``m2m:timestamp`` (TS-0004 6.3.3), a key
  value is padded standard base64 of exactly 32 octets;
* the SUID rules of 8.8.2.7 / 8.8.2.9 and table 8.8.1-1 (:func:`check_suid_targets`);
* :class:`MAFError`, the failure of a procedure, carrying the oneM2M RSC it is answered with.

Nothing here does I/O, reads a clock or derives keys (:mod:`m2msec.keys` does that).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import base64
import binascii
import enum
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from m2msec.errors import M2MSecError, ParseError
from m2msec.keys import parse_key_id
from m2msec.onem2m._wire import dumps_json, loads_json
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode
from m2msec.onem2m.timestamps import format_timestamp, parse_timestamp

__all__ = [
    "KEY_VALUE_LENGTH",
    "MAF_SUIDS",
    "SINGLE_TARGET_SUIDS",
    "MAFError",
    "Procedure",
    "ClientRegistrationRequest",
    "ClientRegistrationResponse",
    "ConfigurationRetrievalRequest",
    "ConfigurationRetrievalResponse",
    "RegistrationUpdateRequest",
    "RegistrationUpdateResponse",
    "DeregistrationRequest",
    "DeregistrationResponse",
    "KeyRegistrationRequest",
    "KeyRegistrationResponse",
    "KeyRegistrationUpdateRequest",
    "KeyRegistrationUpdateResponse",
    "KeyDeregistrationRequest",
    "KeyDeregistrationResponse",
    "KeyRetrievalRequest",
    "KeyRetrievalResponse",
    "ErrorBody",
    "check_suid_targets",
    "check_relative_key_id",
    "decode_body",
    "encode_body",
]

KEY_VALUE_LENGTH = 32
"""Octets of a distributed key value (Kc from the exporter, or supplied by the client)."""

#: SUIDs of MAF-distributed keys (TS-0004 table 6.3.4.2.39-1): SAEF, ESPrim, ESData encrypt/sign.
MAF_SUIDS = frozenset({SUID.MAF_SAEF, SUID.MAF_ESPRIM, SUID.MAF_ESDATA_ENCRYPT, SUID.MAF_ESDATA_SIGN})
#: Table 8.8.1-1: SAEF and ESPrim keys have exactly one Target MAF Client; ESData keys 1..n.
SINGLE_TARGET_SUIDS = frozenset({SUID.MAF_SAEF, SUID.MAF_ESPRIM})

MAX_LABELS = 64
MAX_TARGETS = 256
MAX_STRING = 512
_REL_KEY_RE = re.compile(r"^[0-9a-f]{32}$")
_REG_ID_RE = re.compile(r"^[0-9a-f]{32}$")


class MAFError(M2MSecError):
    """A refused MAF procedure; ``rsc`` is the oneM2M Response Status Code of the answer."""

    default_rsc = ResponseStatusCode.BAD_REQUEST


# --------------------------------------------------------------------------- field checks


#: \s in a str pattern is exactly str.isspace() (Py_UNICODE_ISSPACE); plus C0 controls
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f]")


def _bad(path: str, problem: str) -> ParseError:
    return ParseError(f"{path}: {problem}")


def _str(obj: dict[str, Any], name: str, *, required: bool) -> str | None:
    v = obj.get(name)
    if v is None:
        if name in obj:
            raise _bad(name, "must not be null")
        if required:
            raise _bad(name, "missing mandatory parameter")
        return None
    if not isinstance(v, str) or not v or len(v) > MAX_STRING:
        raise _bad(name, f"expected a non-empty string of at most {MAX_STRING} characters")
    if _SPACE_OR_CONTROL.search(v):
        raise _bad(name, "must not contain whitespace or control characters")
    return v


def _fqdn(obj: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    v = _str(obj, name, required=required)
    if v is None:
        return None
    try:
        # reuse the FQDN check of m2msec.keys through a dummy identifier
        parse_key_id(f"x@{v}")
    except ParseError:
        raise _bad(name, f"not a valid FQDN: {v!r}") from None
    return v.lower().rstrip(".")


def _ts(obj: dict[str, Any], name: str, *, required: bool) -> datetime | None:
    if name not in obj:
        if required:
            raise _bad(name, "missing mandatory parameter")
        return None
    return parse_timestamp(obj[name], path=name)


def _list(obj: dict[str, Any], name: str, *, required: bool, limit: int) -> tuple[str, ...] | None:
    if name not in obj:
        if required:
            raise _bad(name, "missing mandatory parameter")
        return None
    v = obj[name]
    if not isinstance(v, list) or len(v) > limit:
        raise _bad(name, f"expected a list of at most {limit} strings")
    out: list[str] = []
    for i, item in enumerate(v):
        if not isinstance(item, str) or not item or len(item) > MAX_STRING:
            raise _bad(f"{name}[{i}]", "expected a non-empty string")
        if any(c.isspace() or ord(c) < 0x20 for c in item):
            raise _bad(f"{name}[{i}]", "must not contain whitespace or control characters")
        if item in out:
            raise _bad(f"{name}[{i}]", f"duplicate entry {item!r}")
        out.append(item)
    return tuple(out)


def _suid(obj: dict[str, Any], name: str = "suid") -> SUID:
    if name not in obj:
        raise _bad(name, "missing mandatory parameter")
    v = obj[name]
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(name, "expected an integer (m2m:suid)")
    try:
        return SUID(v)
    except ValueError:
        raise _bad(name, f"{v} is not an m2m:suid value") from None


def _key_value(obj: dict[str, Any], name: str, *, required: bool) -> bytes | None:
    if name not in obj:
        if required:
            raise _bad(name, "missing mandatory parameter")
        return None
    v = obj[name]
    if not isinstance(v, str):
        raise _bad(name, "expected a base64 string")
    try:
        raw = base64.b64decode(v.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise _bad(name, "not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != v:
        raise _bad(name, "not canonical padded base64")
    if len(raw) != KEY_VALUE_LENGTH:
        raise _bad(name, f"a key value must be {KEY_VALUE_LENGTH} octets, got {len(raw)}")
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def check_relative_key_id(value: str, *, path: str = "relativeKeyID") -> str:
    """RelativeKeyID = hexBinary of 16 octets, lowercase (10.3.5; our canonical form)."""
    if not isinstance(value, str) or not _REL_KEY_RE.match(value):
        raise _bad(path, "expected 32 lowercase hexadecimal digits (hexBinary of 16 octets)")
    return value


def _rel(obj: dict[str, Any], name: str = "relativeKeyID") -> str:
    v = _str(obj, name, required=True)
    assert v is not None
    return check_relative_key_id(v, path=name)


def _reg_id(obj: dict[str, Any], name: str = "mafClientRegID") -> str:
    v = _str(obj, name, required=True)
    assert v is not None
    if not _REG_ID_RE.match(v):
        raise _bad(name, "expected 32 lowercase hexadecimal digits")
    return v


def _only(obj: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise ParseError(f"{what}: unknown parameter(s) {', '.join(extra)}")


def check_suid_targets(suid: SUID, targets: tuple[str, ...] | None, *, required: bool) -> None:
    """8.8.2.7 / 8.8.2.9: SUID 32/33 take exactly one target, 34/35 any non-zero number.

    Raises :class:`MAFError` (CONTENTS_UNACCEPTABLE 4102); a missing list only when
    ``required`` (the MAF has no policy to create one).
    """
    if suid not in MAF_SUIDS:
        raise MAFError(
            f"SUID {int(suid)} is not a MAF-distributed key usage (32, 33, 34, 35)",
            rsc=ResponseStatusCode.CONTENTS_UNACCEPTABLE,
        )
    if targets is None:
        if required:
            raise MAFError("targetIDs: the MAF has no list of Target MAF Clients for this key; give one",
                           rsc=ResponseStatusCode.CONTENTS_UNACCEPTABLE)
        return
    if not targets:
        raise MAFError("targetIDs must not be empty", rsc=ResponseStatusCode.CONTENTS_UNACCEPTABLE)
    if suid in SINGLE_TARGET_SUIDS and len(targets) != 1:
        raise MAFError(
            f"SUID {int(suid)} ({'SAEF' if suid is SUID.MAF_SAEF else 'ESPrim'}) takes exactly one target, "
            f"got {len(targets)}",
            rsc=ResponseStatusCode.CONTENTS_UNACCEPTABLE,
        )


# --------------------------------------------------------------------------- messages

M = TypeVar("M", bound="_Message")


class _Message(ABC):
    """Common JSON handling: ``_names`` maps attribute -> JSON member name."""

    _names: ClassVar[dict[str, str]] = {}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for attr, name in self._names.items():
            v = getattr(self, attr)
            if v is None:
                continue
            if isinstance(v, datetime):
                v = format_timestamp(v)
            elif isinstance(v, bytes):
                v = _b64(v)
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, SUID):
                v = int(v)
            out[name] = v
        return out

    @classmethod
    @abstractmethod
    def _parse(cls: type[M], obj: dict[str, Any]) -> dict[str, Any]:
        """The constructor arguments parsed from the members of ``obj``."""

    @classmethod
    def from_json(cls: type[M], obj: object) -> M:
        if not isinstance(obj, dict):
            raise ParseError(f"{cls.__name__}: the body must be a JSON object")
        _only(obj, frozenset(cls._names.values()), cls.__name__)
        return cls(**cls._parse(obj))


class _EmptyMessage(_Message):
    """A message without parameters: the empty JSON object."""

    _names: ClassVar[dict[str, str]] = {}

    @classmethod
    def _parse(cls, obj: dict[str, Any]) -> dict[str, Any]:
        return {}


def _n(**names: str) -> dict[str, str]:
    return names


@dataclass(frozen=True)
class ClientRegistrationRequest(_Message):
    """Table 8.8.2.3-1."""

    maf_fqdn: str
    expiration_time: datetime
    admin_fqdn: str
    labels: tuple[str, ...] | None = None
    _names: ClassVar[dict[str, str]] = _n(maf_fqdn="mafFQDN", expiration_time="expirationTime",
                                          admin_fqdn="adminFQDN", labels="labels")

    @classmethod
    def _parse(cls, obj: dict[str, Any]) -> dict[str, Any]:
        return {"maf_fqdn": _fqdn(obj, "mafFQDN"), "expiration_time": _ts(obj, "expirationTime", required=True),
                "admin_fqdn": _fqdn(obj, "adminFQDN"), "labels": _list(obj, "labels", required=False, limit=MAX_LABELS)}


@dataclass(frozen=True)
class ClientRegistrationResponse(_Message):
    """Table 8.8.2.3-2."""

    maf_client_reg_id: str
    expiration_time: datetime
    maf_client_id: str
    admin_fqdn: str
    labels: tuple[str, ...] | None = None
    assigned_symm_key_id: str | None = None
    _names: ClassVar[dict[str, str]] = _n(maf_client_reg_id="mafClientRegID", expiration_time="expirationTime",
                                          maf_client_id="mafClientID", admin_fqdn="adminFQDN", labels="labels",
                                          assigned_symm_key_id="assignedSymmKeyID")

    @classmethod
    def _parse(cls, obj: dict[str, Any]) -> dict[str, Any]:
        return {"maf_client_reg_id": _reg_id(obj), "expiration_time": _ts(obj, "expirationTime", required=True),
                "maf_client_id": _str(obj, "mafClientID", required=True), "admin_fqdn": _fqdn(obj, "adminFQDN"),
                "labels": _list(obj, "labels", required=False, limit=MAX_LABELS),
                "assigned_symm_key_id": _str(obj, "assignedSymmKeyID", required=False)}


@dataclass(frozen=True)
class ConfigurationRetrievalRequest(_Message):
    """Table 8.8.2.4-1."""

    maf_fqdn: str
    maf_client_reg_id: str
    _names: ClassVar[dict[str, str]] = _n(maf_fqdn="mafFQDN", maf_client_reg_id="mafClientRegID")

    @classmethod
    def _parse(cls, obj: dict[str, Any]) -> dict[str, Any]:
        return {"maf_fqdn": _fqdn(obj, "mafFQDN"), "maf_client_reg_id": _reg_id(obj)}


@dataclass(frozen=True)
class ConfigurationRetrievalResponse(_Message):
    """Table 8.8.2.4-2: ``mafClientCfg`` is a JSON object (sec:clientRegCfg members, 8.8.3.2)."""

    maf_client_cfg: dict[str, Any]
    _names: ClassVar[dict[str, str]] = _n(maf_client_cfg="mafClientCfg")

    def __hash__(self) -> int:
        return hash(json.dumps(self.maf_client_cfg, sort_keys=True))

    @classmethod
    def _parse(cls, obj: dict[str, Any]) -> dict[str, Any]:
        cfg = obj.get("mafClientCfg")
        if not isinstance(cfg, dict):
            raise _bad("mafClientCfg", "missing or not a JSON object")
        return {"maf_client_cfg": cfg}


@dataclass(frozen=True)
class RegistrationUpdateRequest(_Message):
    """Table 8.8.2.5-1 (at least one of expirationTime and labels)."""

    maf_fqdn: str
    maf_client_reg_id: str
    expiration_time: datetime | None = None
    labels: tuple[str, ...] | None = None
    _names: ClassVar[dict[str, str]] = _n(maf_fqdn="mafFQDN", maf_client_reg_id="mafClientRegID",
                                          expiration_time="expirationTime", labels="labels")

    @classmethod
    def _parse(cls, obj: dict[str, Any]) -> dict[str, Any]:
        out = {"maf_fqdn": _fqdn(obj, "mafFQDN"), "maf_client_reg_id": _reg_id(obj),
               "expiration_time": _ts(obj, "expirationTime", required=False),
               "labels": _list(obj, "labels", required=False, limit=MAX_LABELS)}
        if out["expiration_time"] is None and out["labels"] is None:
            raise ParseError("RegistrationUpdateRequest: at least one of expirationTime and labels is required")
        return out


@dataclass(frozen=True)
class RegistrationUpdateResponse(_Message):
    """Table 8.8.2.5-2."""

    expiration_time: datetime | None = None
    labels: tuple[str, ...] | None = None
    assigned_symm_key_id: str | None = None
    _names: ClassVar[dict[str, str]] = _n(expiration_time="expirationTime", labels="labels",
                                          assigned_symm_key_id="assignedSymmKeyID")

    @classmethod
    def _parse(cls, obj: dict[str, Any]) -> dict[str, Any]:
        return {"expiration_time": _ts(obj, "expirationTime", required=False),
                "labels": _list(obj, "labels", required=False, limit=MAX_LABELS),
                "assigned_symm_key_id": _str(obj, "assignedSymmKeyID", required=False)}


@dataclass(frozen=True)
class DeregistrationRequest(_Message):
    """Table 8.8.2.6-1."""

    maf_fqdn: str
    maf_client_reg_id: str
    _names: ClassVar[dict[str, str]] = _n(maf_fqdn="mafFQDN", maf_client_reg_id="mafClientRegID")

    @classmethod
    def _parse(cls, obj: dict[str, Any]) -> dict[str, Any]:
        return {"maf_fqdn": _fqdn(obj, "mafFQDN"), "maf_client_reg_id": _reg_id(obj)}


@dataclass(frozen=True)
class DeregistrationResponse(_EmptyMessage):
    """8.8.2.6: success only (an empty JSON object)."""


@dataclass(frozen=True)
class KeyRegistrationRequest(_Message):
    """Table 8.8.2.7-1.  Without ``key_value`` the key is Kc exported from the TLS session
    (label EXPORTER-oneM2M-Connection, 10.3.1)."""

    maf_fqdn: str
    expiration_time: datetime
    admin_fqdn: str
    suid: SUID
    labels: tuple[str, ...] | None = None
    target_ids: tuple[str, ...] | None = None
    key_value: bytes | None = field(default=None, repr=False)
    _names: ClassVar[dict[str, str]] = _n(maf_fqdn="mafFQDN", expiration_time="expirationTime",
                                          admin_fqdn="adminFQDN", suid="suid", labels="labels",
                                          target_ids="targetIDs", key_value="keyValue")

    def __repr__(self) -> str:
        kv = "<hidden>" if self.key_value is not None else None
        return (f"KeyRegistrationRequest(maf_fqdn={self.maf_fqdn!r}, suid={int(self.suid)}, "
                f"targets={self.target_ids!r}, expiration_time={self.expiration_time.isoformat()}, key_value={kv})")

    @classmethod
    def _parse(cls, obj: dict[str, Any]) -> dict[str, Any]:
        return {"maf_fqdn": _fqdn(obj, "mafFQDN"), "expiration_time": _ts(obj, "expirationTime", required=True),
                "admin_fqdn": _fqdn(obj, "adminFQDN"), "suid": _suid(obj),
                "labels": _list(obj, "labels", required=False, limit=MAX_LABELS),
                "target_ids": _list(obj, "targetIDs", required=False, limit=MAX_TARGETS),
                "key_value": _key_value(obj, "keyValue", required=False)}


@dataclass(frozen=True)
class KeyRegistrationResponse(_Message):
    """Table 8.8.2.7-2."""

    relative_key_id: str
    expiration_time: datetime
    source_maf_client_id: str
    admin_fqdn: str
    suid: SUID
    target_ids: tuple[str, ...]
    labels: tuple[str, ...] | None = None
    _names: ClassVar[dict[str, str]] = _n(relative_key_id="relativeKeyID", expiration_time="expirationTime",
                                          source_maf_client_id="sourceMAFClientID", admin_fqdn="adminFQDN",
                                          suid="suid", target_ids="targetIDs", labels="labels")

    @classmethod
    def _parse(cls, obj: dict[str, Any]) -> dict[str, Any]:
        return {"relative_key_id": _rel(obj), "expiration_time": _ts(obj, "expirationTime", required=True),
                "source_maf_client_id": _str(obj, "sourceMAFClientID", required=True),
                "admin_fqdn": _fqdn(obj, "adminFQDN"), "suid": _suid(obj),
                "target_ids": _list(obj, "targetIDs", required=True, limit=MAX_TARGETS),
                "labels": _list(obj, "labels", required=False, limit=MAX_LABELS)}


@dataclass(frozen=True)
class KeyRetrievalRequest(_Message):
    """Table 8.8.2.8-1."""

    relative_key_id: str
    _names: ClassVar[dict[str, str]] = _n(relative_key_id="relativeKeyID")

    @classmethod
    def _parse(cls, obj: dict[str, Any]) -> dict[str, Any]:
        return {"relative_key_id": _rel(obj)}


@dataclass(frozen=True)
class KeyRetrievalResponse(_Message):
    """Table 8.8.2.8-2."""

    expiration_time: datetime
    source_maf_client_id: str
    admin_fqdn: str
    suid: SUID
    key_value: bytes = field(repr=False)
    labels: tuple[str, ...] | None = None
    _names: ClassVar[dict[str, str]] = _n(expiration_time="expirationTime", source_maf_client_id="sourceMAFClientID",
                                          admin_fqdn="adminFQDN", suid="suid", key_value="keyValue", labels="labels")

    @classmethod
    def _parse(cls, obj: dict[str, Any]) -> dict[str, Any]:
        return {"expiration_time": _ts(obj, "expirationTime", required=True),
                "source_maf_client_id": _str(obj, "sourceMAFClientID", required=True),
                "admin_fqdn": _fqdn(obj, "adminFQDN"), "suid": _suid(obj),
                "key_value": _key_value(obj, "keyValue", required=True),
                "labels": _list(obj, "labels", required=False, limit=MAX_LABELS)}


@dataclass(frozen=True)
class KeyRegistrationUpdateRequest(_Message):
    """Table 8.8.2.9-1 (at least one of expirationTime, labels, targetIDs)."""

    maf_fqdn: str
    relative_key_id: str
    expiration_time: datetime | None = None
    labels: tuple[str, ...] | None = None
    target_ids: tuple[str, ...] | None = None
    _names: ClassVar[dict[str, str]] = _n(maf_fqdn="mafFQDN", relative_key_id="relativeKeyID",
                                          expiration_time="expirationTime", labels="labels", target_ids="targetIDs")

    @classmethod
    def _parse(cls, obj: dict[str, Any]) -> dict[str, Any]:
        out = {"maf_fqdn": _fqdn(obj, "mafFQDN"), "relative_key_id": _rel(obj),
               "expiration_time": _ts(obj, "expirationTime", required=False),
               "labels": _list(obj, "labels", required=False, limit=MAX_LABELS),
               "target_ids": _list(obj, "targetIDs", required=False, limit=MAX_TARGETS)}
        if out["expiration_time"] is None and out["labels"] is None and out["target_ids"] is None:
            raise ParseError("KeyRegistrationUpdateRequest: at least one of expirationTime, labels or targetIDs")
        return out


@dataclass(frozen=True)
class KeyRegistrationUpdateResponse(_Message):
    """Table 8.8.2.9-2 (only the parameters present in the request)."""

    expiration_time: datetime | None = None
    labels: tuple[str, ...] | None = None
    target_ids: tuple[str, ...] | None = None
    _names: ClassVar[dict[str, str]] = _n(expiration_time="expirationTime", labels="labels", target_ids="targetIDs")

    @classmethod
    def _parse(cls, obj: dict[str, Any]) -> dict[str, Any]:
        return {"expiration_time": _ts(obj, "expirationTime", required=False),
                "labels": _list(obj, "labels", required=False, limit=MAX_LABELS),
                "target_ids": _list(obj, "targetIDs", required=False, limit=MAX_TARGETS)}


@dataclass(frozen=True)
class KeyDeregistrationRequest(_Message):
    """Table 8.8.2.10-1."""

    maf_fqdn: str
    relative_key_id: str
    _names: ClassVar[dict[str, str]] = _n(maf_fqdn="mafFQDN", relative_key_id="relativeKeyID")

    @classmethod
    def _parse(cls, obj: dict[str, Any]) -> dict[str, Any]:
        return {"maf_fqdn": _fqdn(obj, "mafFQDN"), "relative_key_id": _rel(obj)}


@dataclass(frozen=True)
class KeyDeregistrationResponse(_EmptyMessage):
    """8.8.2.10: success only (an empty JSON object)."""


@dataclass(frozen=True)
class ErrorBody(_Message):
    """Body of every refusal: ``{"rsc": <int>, "error": <text>}`` (profile)."""

    rsc: int
    error: str
    _names: ClassVar[dict[str, str]] = _n(rsc="rsc", error="error")

    @classmethod
    def _parse(cls, obj: dict[str, Any]) -> dict[str, Any]:
        rsc = obj.get("rsc")
        if isinstance(rsc, bool) or not isinstance(rsc, int):
            raise _bad("rsc", "expected an integer")
        err = obj.get("error")
        if not isinstance(err, str):
            raise _bad("error", "expected a string")
        return {"rsc": rsc, "error": err}


class Procedure(enum.Enum):
    """The MAF procedures: (clause, path, request class, response class, success RSC)."""

    CLIENT_REGISTRATION = ("8.8.2.3", "/maf/clientRegistration", ClientRegistrationRequest,
                           ClientRegistrationResponse, ResponseStatusCode.CREATED)
    CONFIGURATION_RETRIEVAL = ("8.8.2.4", "/maf/clientConfigurationRetrieval", ConfigurationRetrievalRequest,
                               ConfigurationRetrievalResponse, ResponseStatusCode.OK)
    REGISTRATION_UPDATE = ("8.8.2.5", "/maf/clientRegistrationUpdate", RegistrationUpdateRequest,
                           RegistrationUpdateResponse, ResponseStatusCode.UPDATED)
    DEREGISTRATION = ("8.8.2.6", "/maf/clientDeregistration", DeregistrationRequest,
                      DeregistrationResponse, ResponseStatusCode.DELETED)
    KEY_REGISTRATION = ("8.8.2.7", "/maf/keyRegistration", KeyRegistrationRequest,
                        KeyRegistrationResponse, ResponseStatusCode.CREATED)
    KEY_RETRIEVAL = ("8.8.2.8", "/maf/keyRetrieval", KeyRetrievalRequest, KeyRetrievalResponse,
                     ResponseStatusCode.OK)
    KEY_REGISTRATION_UPDATE = ("8.8.2.9", "/maf/keyRegistrationUpdate", KeyRegistrationUpdateRequest,
                               KeyRegistrationUpdateResponse, ResponseStatusCode.UPDATED)
    KEY_DEREGISTRATION = ("8.8.2.10", "/maf/keyDeregistration", KeyDeregistrationRequest,
                          KeyDeregistrationResponse, ResponseStatusCode.DELETED)

    def __init__(self, clause: str, path: str, request: type[_Message], response: type[_Message],
                 success: ResponseStatusCode) -> None:
        self.clause = clause
        self.path = path
        self.request_type = request
        self.response_type = response
        self.success = success

    @classmethod
    def by_path(cls, path: str) -> Procedure | None:
        return _BY_PATH.get(path)


_BY_PATH: dict[str, Procedure] = {p.path: p for p in Procedure}


# --------------------------------------------------------------------------- bodies


def decode_body(cls: type[M], body: bytes) -> M:
    """Parse a request/response body strictly into ``cls`` (ParseError, RSC 4000): UTF-8 JSON
    with unique member names and no NaN/Infinity (the same decoder as oneM2M primitives)."""
    if not isinstance(body, (bytes, bytearray)):
        raise ParseError("body must be bytes")
    return cls.from_json(loads_json(body))


def encode_body(msg: _Message) -> bytes:
    """Compact JSON of a message (UTF-8)."""
    return dumps_json(msg.to_json())
