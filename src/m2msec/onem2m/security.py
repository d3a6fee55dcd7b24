"""oneM2M security data types: securityInfo, ESPrim rand objects, e2eSecInfo.

Implements TS-0004 V3.32.0:

* m2m:securityInfo (clause 6.3.5.48, Table 6.3.5.48-1) with the presence rules
  of the table and its NOTE; m2m:securityInfoType (clause 6.3.4.2.35);
* m2m:originatorESPrimRandObject (clause 6.3.5.50) and
  m2m:receiverESPrimRandObject (clause 6.3.5.51), used by ESPrim
  (TS-0003 V3.18.0 clauses 8.4.2, 8.4.3);
* m2m:e2eSecInfo (clause 6.3.5.52), the ``esi`` attribute of ``<CSEBase>``,
  ``<AE>`` and ``<remoteCSE>``;

with the short names of clause 8.2.3 (Table 8.2.3-2 ... "securityInfoType |
securityInfo | sit" etc.).  ``to_json()`` always emits short names;
``from_json(..., long_names=True)`` reads the long-name form instead.

m2msec profile decisions implemented here (see docs/profile.md):

* esprimRandValue (xs:NCName) is 128 random bits carried as ``x`` followed by
  the 32 lowercase hex digits of the 16 octets; nothing else is accepted.
* esprimRandID must match the XML NCName production restricted to ASCII:
  ``[A-Za-z_][A-Za-z0-9._-]*``.
* esprimRandExpiry (m2m:absRelTimestamp) is held as an aware UTC datetime; a
  relative value is resolved at parse time against an injected clock and is
  always emitted as an absolute UTC m2m:timestamp.
* Lists (esks, espa, esf, escert) must be non-empty and without duplicates.
* securityInfo: the element that belongs to the securityInfoType is mandatory
  (dreq for 1, dres for 2, ero for 4, epo for 5, eckm for 6, darq for 7, dars
  for 8); any other element is rejected; type 3 carries nothing else.
  Dynamic-authorization elements are carried as opaque JSON objects.
* eckm and escert entries are xs:base64Binary decoded strictly (RFC 4648
  alphabet, padding, canonical, no whitespace, not empty).
"""

from __future__ import annotations

import copy
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Mapping, Sequence, TypeVar

from m2msec.errors import ParseError
from m2msec.onem2m import _wire
from m2msec.onem2m.enums import (
    SUID,
    ESPrimKeyGenAlgID,
    ESPrimProtocolAndAlgID,
    SecurityInfoType,
)
from m2msec.onem2m.timestamps import AbsRelTimestamp, Clock, ensure_utc, format_timestamp

T = TypeVar("T")

RAND_VALUE_OCTETS = 16
_RAND_VALUE_RE = re.compile(r"x[0-9a-f]{32}", re.ASCII)

# Long name -> short name (TS-0004 clause 8.2.3).
RAND_OBJECT_LONG_NAMES: dict[str, str] = {
    "esprimRandID": "esri",
    "esprimRandValue": "esrv",
    "esprimRandExpiry": "esrx",
    "esprimKeyGenAlgID": "esk",
    "esprimKeyGenAlgIDs": "esks",
    "esprimProtocolAndAlgIDs": "espa",
}
SECURITY_INFO_LONG_NAMES: dict[str, str] = {
    "securityInfoType": "sit",
    "dasRequest": "dreq",
    "dasResponse": "dres",
    "esprimRandObject": "ero",
    "esprimObject": "epo",
    "escertkeMessage": "eckm",
    "dynAuthRelMapRequest": "darq",
    "dynAuthRelMapResponse": "dars",
}
E2E_SEC_INFO_LONG_NAMES: dict[str, str] = {
    # Table 6.3.5.52-1 spells it supportedE2ESecFeatures, the short-name table
    # (clause 8.2.3) supportede2ESecFeatures: both are accepted.
    "supportedE2ESecFeatures": "esf",
    "supportede2ESecFeatures": "esf",
    "certificates": "escert",
    "sharedReceiverESPrimRandObject": "esro",
}
#: Global element names of m2m:securityInfo inside the Content parameter.
SECI_ELEMENT = "m2m:seci"
SECI_ELEMENT_LONG = "m2m:securityInfo"


def _names(long_map: Mapping[str, str], allowed: Sequence[str], long_names: bool) -> dict[str, str]:
    if long_names:
        return {k: v for k, v in long_map.items() if v in allowed}
    return {s: s for s in allowed}


# ---------------------------------------------------------------- rand values


def encode_rand_value(raw: bytes) -> str:
    """16 octets -> ``x`` + 32 lowercase hex digits (m2msec profile for esprimRandValue)."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != RAND_VALUE_OCTETS:
        raise ValueError("esprimRandValue must be 16 octets")
    return "x" + bytes(raw).hex()


def decode_rand_value(value: object, path: str = "esrv") -> bytes:
    """Inverse of :func:`encode_rand_value`; only the exact profile form is accepted."""
    s = _wire.expect_str(value, path)
    if not _RAND_VALUE_RE.fullmatch(s):
        # Do not echo the value: it is key-derivation input.
        raise _wire.fail(path, "esprimRandValue must be 'x' followed by 32 lowercase hex digits")
    return bytes.fromhex(s[1:])


def _check_unique(items: Sequence[T], path: str) -> None:
    seen: set[Any] = set()
    for i, item in enumerate(items):
        if item in seen:
            raise _wire.fail(f"{path}[{i}]", "duplicate value")
        seen.add(item)


def _enum_tuple(cls: type[Any], values: Sequence[Any], what: str) -> tuple[Any, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{what} must be a sequence")
    if any(isinstance(v, bool) for v in values):
        raise ValueError(f"{what} must hold enumeration values, not booleans")
    out = tuple(cls(v) for v in values)
    if not out:
        raise ValueError(f"{what} must not be empty")
    if len(set(out)) != len(out):
        raise ValueError(f"{what} must not contain duplicates")
    return out


# ---------------------------------------------------------------- rand objects


@dataclass(frozen=True)
class _RandObject(_wire.Codec):
    rand_id: str
    rand_value: bytes = field(repr=False)  # key-derivation input: never in a repr
    expiry: datetime
    protocol_and_alg_ids: tuple[ESPrimProtocolAndAlgID, ...]

    _ROOT: ClassVar[str] = "rand"

    def _check_common(self) -> None:
        if not isinstance(self.rand_id, str) or not _wire.NCNAME_RE.fullmatch(self.rand_id):
            raise ValueError("rand_id must be an (ASCII) NCName")
        if not isinstance(self.rand_value, (bytes, bytearray)) or len(self.rand_value) != RAND_VALUE_OCTETS:
            raise ValueError("rand_value must be 16 octets")
        object.__setattr__(self, "rand_value", bytes(self.rand_value))
        object.__setattr__(self, "expiry", ensure_utc(self.expiry, what="expiry"))
        object.__setattr__(
            self,
            "protocol_and_alg_ids",
            _enum_tuple(ESPrimProtocolAndAlgID, self.protocol_and_alg_ids, "protocol_and_alg_ids"),
        )

    @property
    def rand_value_wire(self) -> str:
        """esprimRandValue as carried on the wire (``x`` + 32 lowercase hex digits)."""
        return encode_rand_value(self.rand_value)

    def is_expired(self, now: datetime | Clock) -> bool:
        ref = now() if callable(now) else now
        return ensure_utc(ref, what="now") >= self.expiry

    def _common_json(self) -> dict[str, Any]:
        return {
            "esri": self.rand_id,
            "esrv": self.rand_value_wire,
            "esrx": format_timestamp(self.expiry),
        }

    @classmethod
    def _read_common(
        cls, values: dict[str, Any], wire: dict[str, str], path: str, clock: Clock | datetime | None
    ) -> dict[str, Any]:
        p = lambda short: _wire.sub(path, wire[short])  # noqa: E731
        rand_id = _wire.expect_ncname(values["esri"], p("esri"))
        rand_value = decode_rand_value(values["esrv"], p("esrv"))
        ts = AbsRelTimestamp.from_json(values["esrx"], path=p("esrx"))
        if ts.is_relative:
            if clock is None:
                raise _wire.fail(p("esrx"), "relative esprimRandExpiry needs a reference clock")
            expiry = ts.resolve(clock)
        else:
            assert ts.absolute is not None
            expiry = ts.absolute
        espa = _wire.expect_enum_list(ESPrimProtocolAndAlgID, values["espa"], p("espa"))
        _check_unique(espa, p("espa"))
        return {
            "rand_id": rand_id,
            "rand_value": rand_value,
            "expiry": expiry,
            "protocol_and_alg_ids": espa,
        }


@dataclass(frozen=True)
class ReceiverESPrimRandObject(_RandObject):
    """m2m:receiverESPrimRandObject (TS-0004 clause 6.3.5.51)."""

    key_gen_alg_ids: tuple[ESPrimKeyGenAlgID, ...]

    _ROOT: ClassVar[str] = "ero"
    _SHORT: ClassVar[tuple[str, ...]] = ("esri", "esrv", "esrx", "esks", "espa")

    def __post_init__(self) -> None:
        self._check_common()
        object.__setattr__(
            self, "key_gen_alg_ids", _enum_tuple(ESPrimKeyGenAlgID, self.key_gen_alg_ids, "key_gen_alg_ids")
        )

    def to_json(self) -> dict[str, Any]:
        out = self._common_json()
        out["esks"] = [int(v) for v in self.key_gen_alg_ids]
        out["espa"] = [int(v) for v in self.protocol_and_alg_ids]
        return out

    @classmethod
    def from_json(
        cls,
        obj: object,
        *,
        long_names: bool = False,
        clock: Clock | datetime | None = None,
        path: str | None = None,
    ) -> ReceiverESPrimRandObject:
        path = cls._ROOT if path is None else path
        names = _names(RAND_OBJECT_LONG_NAMES, cls._SHORT, long_names)
        values, wire = _wire.members(obj, path, names, cls._SHORT)
        common = cls._read_common(values, wire, path, clock)
        p = _wire.sub(path, wire["esks"])
        esks = _wire.expect_enum_list(ESPrimKeyGenAlgID, values["esks"], p)
        _check_unique(esks, p)
        return cls(key_gen_alg_ids=esks, **common)


@dataclass(frozen=True)
class OriginatorESPrimRandObject(_RandObject):
    """m2m:originatorESPrimRandObject (TS-0004 clause 6.3.5.50)."""

    key_gen_alg_id: ESPrimKeyGenAlgID

    _ROOT: ClassVar[str] = "oro"
    _SHORT: ClassVar[tuple[str, ...]] = ("esri", "esrv", "esrx", "esk", "espa")

    def __post_init__(self) -> None:
        self._check_common()
        object.__setattr__(self, "key_gen_alg_id", ESPrimKeyGenAlgID(self.key_gen_alg_id))

    def to_json(self) -> dict[str, Any]:
        out = self._common_json()
        out["esk"] = int(self.key_gen_alg_id)
        out["espa"] = [int(v) for v in self.protocol_and_alg_ids]
        return out

    @classmethod
    def from_json(
        cls,
        obj: object,
        *,
        long_names: bool = False,
        clock: Clock | datetime | None = None,
        path: str | None = None,
    ) -> OriginatorESPrimRandObject:
        path = cls._ROOT if path is None else path
        names = _names(RAND_OBJECT_LONG_NAMES, cls._SHORT, long_names)
        values, wire = _wire.members(obj, path, names, cls._SHORT)
        common = cls._read_common(values, wire, path, clock)
        esk = _wire.expect_enum(ESPrimKeyGenAlgID, values["esk"], _wire.sub(path, wire["esk"]))
        return cls(key_gen_alg_id=esk, **common)


def _new_rand_id() -> str:
    return "r" + secrets.token_hex(16)


def new_receiver_rand_object(
    *,
    expiry: datetime,
    rand_id: str | None = None,
    key_gen_alg_ids: Sequence[ESPrimKeyGenAlgID] = (ESPrimKeyGenAlgID.HMAC_SHA256,),
    protocol_and_alg_ids: Sequence[ESPrimProtocolAndAlgID] = (
        ESPrimProtocolAndAlgID.JWE_A256GCM,
        ESPrimProtocolAndAlgID.JWE_A128GCM,
    ),
) -> ReceiverESPrimRandObject:
    """A fresh receiverESPrimRandObject with 128 bits from :func:`secrets.token_bytes`.

    ``rand_id`` defaults to ``r`` + 32 random hex digits.
    """
    return ReceiverESPrimRandObject(
        rand_id=_new_rand_id() if rand_id is None else rand_id,
        rand_value=secrets.token_bytes(RAND_VALUE_OCTETS),
        expiry=expiry,
        protocol_and_alg_ids=tuple(protocol_and_alg_ids),
        key_gen_alg_ids=tuple(key_gen_alg_ids),
    )


def new_originator_rand_object(
    *,
    expiry: datetime,
    rand_id: str | None = None,
    key_gen_alg_id: ESPrimKeyGenAlgID = ESPrimKeyGenAlgID.HMAC_SHA256,
    protocol_and_alg_ids: Sequence[ESPrimProtocolAndAlgID] = (ESPrimProtocolAndAlgID.JWE_A256GCM,),
) -> OriginatorESPrimRandObject:
    """A fresh originatorESPrimRandObject with 128 bits from :func:`secrets.token_bytes`."""
    return OriginatorESPrimRandObject(
        rand_id=_new_rand_id() if rand_id is None else rand_id,
        rand_value=secrets.token_bytes(RAND_VALUE_OCTETS),
        expiry=expiry,
        protocol_and_alg_ids=tuple(protocol_and_alg_ids),
        key_gen_alg_id=key_gen_alg_id,
    )


# ---------------------------------------------------------------- securityInfo

# securityInfoType -> the one element that type carries (Table 6.3.5.48-1).
_SIT_ELEMENT: dict[SecurityInfoType, str | None] = {
    SecurityInfoType.DYNAMIC_AUTHORIZATION_REQUEST: "dreq",
    SecurityInfoType.DYNAMIC_AUTHORIZATION_RESPONSE: "dres",
    SecurityInfoType.RECEIVER_ESPRIM_RAND_OBJECT_REQUEST: None,
    SecurityInfoType.RECEIVER_ESPRIM_RAND_OBJECT_RESPONSE: "ero",
    SecurityInfoType.ESPRIM_OBJECT: "epo",
    SecurityInfoType.ESCERTKE_MESSAGE: "eckm",
    SecurityInfoType.DYNAMIC_AUTHORIZATION_RELATIONSHIP_MAPPING_REQUEST: "darq",
    SecurityInfoType.DYNAMIC_AUTHORIZATION_RELATIONSHIP_MAPPING_RESPONSE: "dars",
}
_ELEMENT_ATTR: dict[str, str] = {
    "dreq": "das_request",
    "dres": "das_response",
    "ero": "esprim_rand_object",
    "epo": "esprim_object",
    "eckm": "escertke_message",
    "darq": "dyn_auth_rel_map_request",
    "dars": "dyn_auth_rel_map_response",
}
_OPAQUE = ("dreq", "dres", "darq", "dars")


@dataclass(frozen=True)
class SecurityInfo(_wire.Codec):
    """m2m:securityInfo (``m2m:seci``), TS-0004 clause 6.3.5.48."""

    sit: SecurityInfoType
    das_request: dict[str, Any] | None = None
    das_response: dict[str, Any] | None = None
    esprim_rand_object: ReceiverESPrimRandObject | None = None
    esprim_object: str | None = None
    escertke_message: bytes | None = None
    dyn_auth_rel_map_request: dict[str, Any] | None = None
    dyn_auth_rel_map_response: dict[str, Any] | None = None

    _SHORT: ClassVar[tuple[str, ...]] = ("sit", "dreq", "dres", "ero", "epo", "eckm", "darq", "dars")

    def __post_init__(self) -> None:
        sit = SecurityInfoType(self.sit)
        object.__setattr__(self, "sit", sit)
        wanted = _SIT_ELEMENT[sit]
        for short, attr in _ELEMENT_ATTR.items():
            present = getattr(self, attr) is not None
            if short == wanted and not present:
                raise ValueError(f"securityInfoType {int(sit)} needs {attr}")
            if short != wanted and present:
                raise ValueError(f"{attr} is not allowed with securityInfoType {int(sit)}")
        if self.esprim_rand_object is not None and not isinstance(self.esprim_rand_object, ReceiverESPrimRandObject):
            raise ValueError("esprim_rand_object must be a ReceiverESPrimRandObject")
        if self.esprim_object is not None:
            _wire.check_compact_jwe(self.esprim_object, "esprim_object")
        if self.escertke_message is not None:
            if not isinstance(self.escertke_message, (bytes, bytearray)) or not self.escertke_message:
                raise ValueError("escertke_message must be non-empty bytes")
            object.__setattr__(self, "escertke_message", bytes(self.escertke_message))
        for short in _OPAQUE:
            v = getattr(self, _ELEMENT_ATTR[short])
            if v is not None:
                _wire.expect_object(v, _ELEMENT_ATTR[short])

    # -- constructors for the ESPrim / ESCertKE uses (TS-0004 7.5.1.2.11/12, 7.6.2)
    @classmethod
    def rand_object_request(cls) -> SecurityInfo:
        return cls(SecurityInfoType.RECEIVER_ESPRIM_RAND_OBJECT_REQUEST)

    @classmethod
    def rand_object_response(cls, ero: ReceiverESPrimRandObject) -> SecurityInfo:
        return cls(SecurityInfoType.RECEIVER_ESPRIM_RAND_OBJECT_RESPONSE, esprim_rand_object=ero)

    @classmethod
    def esprim(cls, jwe_compact: str) -> SecurityInfo:
        return cls(SecurityInfoType.ESPRIM_OBJECT, esprim_object=jwe_compact)

    @classmethod
    def escertke(cls, message: bytes) -> SecurityInfo:
        return cls(SecurityInfoType.ESCERTKE_MESSAGE, escertke_message=message)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sit": int(self.sit)}
        if self.das_request is not None:
            out["dreq"] = copy.deepcopy(self.das_request)
        if self.das_response is not None:
            out["dres"] = copy.deepcopy(self.das_response)
        if self.esprim_rand_object is not None:
            out["ero"] = self.esprim_rand_object.to_json()
        if self.esprim_object is not None:
            out["epo"] = self.esprim_object
        if self.escertke_message is not None:
            out["eckm"] = _wire.encode_base64(self.escertke_message)
        if self.dyn_auth_rel_map_request is not None:
            out["darq"] = copy.deepcopy(self.dyn_auth_rel_map_request)
        if self.dyn_auth_rel_map_response is not None:
            out["dars"] = copy.deepcopy(self.dyn_auth_rel_map_response)
        return out

    def to_content(self) -> dict[str, Any]:
        """The Content (``pc``) value carrying this element: ``{"m2m:seci": {...}}``."""
        return {SECI_ELEMENT: self.to_json()}

    @classmethod
    def from_json(
        cls,
        obj: object,
        *,
        long_names: bool = False,
        clock: Clock | datetime | None = None,
        path: str = "seci",
    ) -> SecurityInfo:
        names = _names(SECURITY_INFO_LONG_NAMES, cls._SHORT, long_names)
        values, wire = _wire.members(obj, path, names, ("sit",))
        p = lambda short: _wire.sub(path, wire[short])  # noqa: E731
        sit = _wire.expect_enum(SecurityInfoType, values["sit"], p("sit"))
        wanted = _SIT_ELEMENT[sit]
        for short in values:
            if short != "sit" and short != wanted:
                raise _wire.fail(p(short), f"not allowed when securityInfoType is {int(sit)}")
        kwargs: dict[str, Any] = {}
        if wanted is not None:
            if wanted not in values:
                name = wanted
                if long_names:
                    name = next(k for k, v in SECURITY_INFO_LONG_NAMES.items() if v == wanted)
                raise _wire.fail(_wire.sub(path, name), f"mandatory when securityInfoType is {int(sit)}")
            raw = values[wanted]
            if wanted == "ero":
                value: Any = ReceiverESPrimRandObject.from_json(
                    raw, long_names=long_names, clock=clock, path=p("ero")
                )
            elif wanted == "epo":
                value = _wire.check_compact_jwe(raw, p("epo"))
            elif wanted == "eckm":
                value = _wire.decode_base64(raw, p("eckm"))
            else:
                value = _wire.expect_object(raw, p(wanted))
            kwargs[_ELEMENT_ATTR[wanted]] = value
        return cls(sit, **kwargs)

    @classmethod
    def from_content(
        cls, pc: object, *, clock: Clock | datetime | None = None, long_names: bool = False
    ) -> SecurityInfo | None:
        """Extract ``m2m:seci`` from a Content value; ``None`` if the content carries no securityInfo.

        When it is present it must be the only member (TS-0004 clause 8.4.2: the
        Content parameter is an object with a single member).
        """
        key = SECI_ELEMENT_LONG if long_names else SECI_ELEMENT
        if not isinstance(pc, Mapping) or key not in pc:
            return None
        if len(pc) != 1:
            others = sorted(k for k in pc if k != key)
            raise _wire.fail(f"pc.{others[0]}", f"not allowed next to {key}")
        return cls.from_json(pc[key], long_names=long_names, clock=clock, path="seci")


# ---------------------------------------------------------------- e2eSecInfo


@dataclass(frozen=True)
class E2ESecInfo(_wire.Codec):
    """m2m:e2eSecInfo (TS-0004 clause 6.3.5.52): the ``esi`` resource attribute."""

    supported_features: tuple[SUID, ...]
    certificates: tuple[bytes, ...] | None = None
    shared_rand_object: ReceiverESPrimRandObject | None = None

    _SHORT: ClassVar[tuple[str, ...]] = ("esf", "escert", "esro")

    def __post_init__(self) -> None:
        object.__setattr__(self, "supported_features", _enum_tuple(SUID, self.supported_features, "supported_features"))
        if self.certificates is not None:
            certs = tuple(self.certificates)
            if not certs:
                raise ValueError("certificates, when present, must not be empty")
            for c in certs:
                if not isinstance(c, (bytes, bytearray)) or not c:
                    raise ValueError("each certificate must be non-empty DER bytes")
            object.__setattr__(self, "certificates", tuple(bytes(c) for c in certs))
        if self.shared_rand_object is not None and not isinstance(self.shared_rand_object, ReceiverESPrimRandObject):
            raise ValueError("shared_rand_object must be a ReceiverESPrimRandObject")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"esf": [int(v) for v in self.supported_features]}
        if self.certificates is not None:
            out["escert"] = [_wire.encode_base64(c) for c in self.certificates]
        if self.shared_rand_object is not None:
            out["esro"] = self.shared_rand_object.to_json()
        return out

    @classmethod
    def from_json(
        cls,
        obj: object,
        *,
        long_names: bool = False,
        clock: Clock | datetime | None = None,
        path: str = "esi",
    ) -> E2ESecInfo:
        names = _names(E2E_SEC_INFO_LONG_NAMES, cls._SHORT, long_names)
        values, wire = _wire.members(obj, path, names, ("esf",))
        p = lambda short: _wire.sub(path, wire[short])  # noqa: E731
        esf = _wire.expect_enum_list(SUID, values["esf"], p("esf"))
        _check_unique(esf, p("esf"))
        certs: tuple[bytes, ...] | None = None
        if "escert" in values:
            items = _wire.expect_list(values["escert"], p("escert"), nonempty=True)
            certs = tuple(_wire.decode_base64(c, f"{p('escert')}[{i}]") for i, c in enumerate(items))
            _check_unique(certs, p("escert"))
        esro = None
        if "esro" in values:
            esro = ReceiverESPrimRandObject.from_json(values["esro"], long_names=long_names, clock=clock, path=p("esro"))
        return cls(esf, certs, esro)

    def load_certificates(self) -> list[Any]:
        """Parse ``certificates`` as DER X.509 (cryptography); ParseError names the bad entry."""
        from cryptography import x509

        out = []
        for i, der in enumerate(self.certificates or ()):
            try:
                out.append(x509.load_der_x509_certificate(der))
            except ValueError:
                raise ParseError(f"esi.escert[{i}]: not a DER X.509 certificate") from None
        return out
