"""MEF wire messages and pure decisions (TS-0003 8.3.2.1, tables 8.3.2.1-1 to -6; seed 004 8.3.3).

Sans-I/O: JSON bodies <-> frozen dataclasses, the ``/fetchCredentials/<KeID>/<SUID>``
target, which key a SUID selects (10.3.2, 10.3.3, 10.3.7) and the MEF's decision
from an enrolee's preferences (8.3.2.1 step "The MEF shall process the request
against the preferences for this Enrolee" - processing the clause leaves to the
MEF, NOTE 4).  The wire format is m2msec's profile (the published text says the
parameters "could be serialized using, for example, XML or JSON"); it is
documented in ``docs/mef-protocol.md``.

Parsing is strict: duplicate member names, NaN/Infinity, unknown members, wrong JSON
types and malformed identifiers raise :class:`~m2msec.errors.ParseError` (BAD_REQUEST,
4000).  ``docs/mef-openapi.yaml`` is the machine-readable form of the messages.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from urllib.parse import unquote

from m2msec.errors import IdentifierError, ParseError
from m2msec.keys import derive_km, derive_kpsa, derive_usage_key, parse_key_id
from m2msec.onem2m._wire import loads_json
from m2msec.onem2m.timestamps import format_timestamp, parse_timestamp

__all__ = [
    "ENROLMENT_PATH",
    "FETCH_PREFIX",
    "RSPF_SUIDS",
    "DirectKey",
    "EnroleePreferences",
    "EnrolmentRequest",
    "EnrolmentResponse",
    "FetchFailure",
    "FetchSuccess",
    "Instruction",
    "InstructionType",
    "MAFPreference",
    "TargetGrant",
    "credential_for",
    "decide",
    "fetch_target",
    "parse_fetch_target",
    "parse_fetch_response",
]

ENROLMENT_PATH: Final = "/enrolment"
FETCH_PREFIX: Final = "/fetchCredentials/"
#: SUIDs of RSPF-provisioned symmetric keys (TS-0004 table 6.3.4.2.39-1): 21 MAF, 22 SAEF,
#: 23 ESPrim, 24 ESData encryption, 25 ESData signature.
RSPF_SUIDS: Final = frozenset({21, 22, 23, 24, 25})
SUID_MAF: Final = 21
SUID_SAEF: Final = 22


def _obj(body: bytes | str | Mapping[str, Any], what: str) -> dict[str, Any]:
    """A JSON object, decoded strictly: UTF-8, unique member names, no NaN/Infinity (as the MAF)."""
    if isinstance(body, Mapping):
        return dict(body)
    try:
        doc = loads_json(body)
    except ParseError as exc:
        raise ParseError(f"{what}: body is not strict JSON ({exc.args[0][:80]})") from None
    if not isinstance(doc, dict):
        raise ParseError(f"{what}: body must be a JSON object")
    return doc


def _only(doc: Mapping[str, Any], allowed: set[str], what: str) -> None:
    extra = sorted(set(doc) - allowed)
    if extra:
        raise ParseError(f"{what}: unknown member(s) {', '.join(extra)}")


def _bool(doc: Mapping[str, Any], key: str, what: str, default: bool | None = None) -> bool:
    if key not in doc:
        if default is None:
            raise ParseError(f"{what}: {key} is missing")
        return default
    v = doc[key]
    if not isinstance(v, bool):
        raise ParseError(f"{what}: {key} must be true or false")
    return v


def _str(doc: Mapping[str, Any], key: str, what: str, *, optional: bool = False) -> str | None:
    if key not in doc or (optional and doc[key] is None):
        if optional:
            return None
        raise ParseError(f"{what}: {key} is missing")
    v = doc[key]
    if not isinstance(v, str) or not v:
        raise ParseError(f"{what}: {key} must be a non-empty string")
    return v


def _dump(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=False).encode("utf-8")


# ------------------------------------------------------------------ Enrolment Exchange


@dataclass(frozen=True)
class EnrolmentRequest:
    """Table 8.3.2.1-1 plus the optional Enrolment-Token of seed 8.3.3.1 step 2c."""

    certificate_enrolment: bool = False
    maf_enrolment: bool = False
    remote_management: bool = False
    token: str | None = field(default=None, repr=False)

    _MEMBERS = {"CertificateEnrolmentIndication", "MAFEnrolmentIndication", "RemoteManagementIndication",
                "EnrolmentToken"}

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "CertificateEnrolmentIndication": self.certificate_enrolment,
            "MAFEnrolmentIndication": self.maf_enrolment,
            "RemoteManagementIndication": self.remote_management,
        }
        if self.token is not None:
            doc["EnrolmentToken"] = self.token
        return _dump(doc)

    @classmethod
    def from_json(cls, body: bytes | str | Mapping[str, Any]) -> EnrolmentRequest:
        what = "enrolment request"
        doc = _obj(body, what)
        _only(doc, cls._MEMBERS, what)
        token = _str(doc, "EnrolmentToken", what, optional=True)
        if token is not None and len(token) > 512:
            raise ParseError(f"{what}: EnrolmentToken too long")
        return cls(_bool(doc, "CertificateEnrolmentIndication", what),
                   _bool(doc, "MAFEnrolmentIndication", what),
                   _bool(doc, "RemoteManagementIndication", what), token)


class InstructionType(str, enum.Enum):
    CERTIFICATE_ENROLMENT = "CertificateEnrolment"  # table 8.3.2.1-2
    MAF_ENROLMENT = "MAFEnrolment"  # table 8.3.2.1-3
    REMOTE_MANAGEMENT = "RemoteManagementServer"  # table 8.3.2.1-4


@dataclass(frozen=True)
class Instruction:
    """One instruction of tables 8.3.2.1-2/-3/-4; ``params`` are the table's other rows."""

    type: InstructionType
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        return {"InstructionType": self.type.value, **dict(self.params)}

    @classmethod
    def from_doc(cls, doc: Any) -> Instruction:
        if not isinstance(doc, dict):
            raise ParseError("instruction must be a JSON object")
        try:
            t = InstructionType(doc.get("InstructionType"))
        except ValueError:
            raise ParseError(f"unknown InstructionType {doc.get('InstructionType')!r}") from None
        return cls(t, {k: v for k, v in doc.items() if k != "InstructionType"})


@dataclass(frozen=True)
class DirectKey:
    """Seed 8.3.3.1 step 9: one (Enrolee-B-ID, usage SUID) pair the Enrolee may derive from Ke."""

    target_id: str
    suid: int

    def to_doc(self) -> dict[str, Any]:
        return {"EnroleeBID": self.target_id, "SUID": self.suid}

    @classmethod
    def from_doc(cls, doc: Any) -> DirectKey:
        if not isinstance(doc, dict):
            raise ParseError("DirectKeys entry must be a JSON object")
        _only(doc, {"EnroleeBID", "SUID"}, "DirectKeys entry")
        tid = _str(doc, "EnroleeBID", "DirectKeys entry")
        suid = doc.get("SUID")
        if isinstance(suid, bool) or not isinstance(suid, int) or suid not in RSPF_SUIDS - {SUID_MAF}:
            raise ParseError(f"DirectKeys entry: SUID must be one of 22-25, got {suid!r}")
        assert tid is not None
        return cls(tid, suid)


@dataclass(frozen=True)
class EnrolmentResponse:
    """The MEF's answer: KeID/KreID, Enrolee-ID, expiry, instructions, direct-key list."""

    ke_id: str
    kre_id: str
    enrolee_id: str
    expiry: datetime
    instructions: tuple[Instruction, ...] = ()
    direct_keys: tuple[DirectKey, ...] = ()

    def to_json(self) -> bytes:
        return _dump({
            "Status": True,
            "KeID": self.ke_id,
            "KreID": self.kre_id,
            "EnroleeID": self.enrolee_id,
            "EnrolmentExpiry": format_timestamp(self.expiry),
            "Instructions": [i.to_doc() for i in self.instructions],
            "DirectKeys": [d.to_doc() for d in self.direct_keys],
            "EndOfEnrolment": True,
        })

    @classmethod
    def from_json(cls, body: bytes | str | Mapping[str, Any]) -> EnrolmentResponse:
        what = "enrolment response"
        doc = _obj(body, what)
        if doc.get("Status") is not True:
            raise ParseError(f"{what}: Status is not true")
        _only(doc, {"Status", "KeID", "KreID", "EnroleeID", "EnrolmentExpiry", "Instructions", "DirectKeys",
                    "EndOfEnrolment"}, what)
        ke, kre, eid = (_str(doc, k, what) for k in ("KeID", "KreID", "EnroleeID"))
        parse_key_id(ke or "", hex_length=16)
        parse_key_id(kre or "", hex_length=16)
        expiry = parse_timestamp(doc.get("EnrolmentExpiry"), path="EnrolmentExpiry")
        ins, dks = doc.get("Instructions", []), doc.get("DirectKeys", [])
        if not isinstance(ins, list) or not isinstance(dks, list):
            raise ParseError(f"{what}: Instructions and DirectKeys must be arrays")
        return cls(ke or "", kre or "", eid or "", expiry, tuple(Instruction.from_doc(i) for i in ins),
                   tuple(DirectKey.from_doc(d) for d in dks))


# ------------------------------------------------------------------ MEF Key Retrieval


def fetch_target(ke_id: str, suid: int) -> str:
    """``/fetchCredentials/<KeID>/<SUID>`` (8.3.2.1 "Use of Remotely Provisioned Credential" e)."""
    parse_key_id(ke_id, hex_length=16)
    return f"{FETCH_PREFIX}{ke_id}/{int(suid)}"


def parse_fetch_target(target: str, mef_fqdn: str | None = None) -> tuple[str, int]:
    """(KeID, SUID) from a request target; ParseError/IdentifierError (4000) when malformed.

    ``mef_fqdn``: the KeID must name this MEF (else IdentifierError).
    """
    path = target.split("?", 1)[0]
    if not path.startswith(FETCH_PREFIX):
        raise ParseError(f"not a fetchCredentials target: {path[:60]!r}")
    parts = path[len(FETCH_PREFIX):].split("/")
    if len(parts) != 2:
        raise ParseError("fetchCredentials target must be /fetchCredentials/<KeID>/<SUID>")
    ke_text, suid_text = unquote(parts[0]), parts[1]
    kid = parse_key_id(ke_text, hex_length=16)
    if mef_fqdn is not None and kid.fqdn.lower() != mef_fqdn.lower().rstrip("."):
        raise IdentifierError(f"KeID {ke_text!r} was not issued by this MEF")
    if not suid_text.isdigit() or len(suid_text) > 3:
        raise ParseError(f"SUID must be a decimal integer, got {suid_text[:10]!r}")
    suid = int(suid_text)
    if suid not in RSPF_SUIDS:
        raise ParseError(f"SUID {suid} is not an RSPF-provisioned usage (21-25)")
    return str(kid), suid


def credential_for(ke: bytes, suid: int, target_id: str) -> bytes:
    """The key an Enrolment Target fetches for ``suid`` (all keys from :mod:`m2msec.keys`).

    21 (MAF): Km = derive_km(Ke, MAF-FQDN) (10.3.2; the target is the MAF);
    22 (SAEF): Kpsa = derive_kpsa(Ke, Enrolee-B-ID) (10.3.3);
    23/24/25: usage-constrained key derive_usage_key(Ke, SUID, Enrolment-Target-ID) (10.3.7).
    """
    if suid == SUID_MAF:
        return derive_km(ke, target_id)
    if suid == SUID_SAEF:
        return derive_kpsa(ke, target_id)
    if suid in RSPF_SUIDS:
        return derive_usage_key(ke, suid, target_id)
    raise ParseError(f"SUID {suid} is not an RSPF-provisioned usage (21-25)")


@dataclass(frozen=True)
class FetchSuccess:
    """Table 8.3.2.1-5."""

    credential: bytes = field(repr=False)
    enrolee_id: str
    lifetime: datetime

    def to_json(self) -> bytes:
        return _dump({"Status": True, "Credential": base64.b64encode(self.credential).decode("ascii"),
                      "EnroleeID": self.enrolee_id, "Lifetime": format_timestamp(self.lifetime)})


@dataclass(frozen=True)
class FetchFailure:
    """Table 8.3.2.1-6."""

    error: str

    def to_json(self) -> bytes:
        return _dump({"Status": False, "ErrorString": self.error})


def parse_fetch_response(body: bytes) -> FetchSuccess | FetchFailure:
    what = "fetchCredentials response"
    doc = _obj(body, what)
    status = doc.get("Status")
    if status is False:
        _only(doc, {"Status", "ErrorString"}, what)
        return FetchFailure(str(doc.get("ErrorString", "")))
    if status is not True:
        raise ParseError(f"{what}: Status must be true or false")
    _only(doc, {"Status", "Credential", "EnroleeID", "Lifetime"}, what)
    try:
        key = base64.b64decode(_str(doc, "Credential", what) or "", validate=True)
    except (binascii.Error, ValueError):  # ValueError: a non-ASCII string
        raise ParseError(f"{what}: Credential is not base64") from None
    if len(key) != 32:
        raise ParseError(f"{what}: Credential must be 32 octets")
    return FetchSuccess(key, _str(doc, "EnroleeID", what) or "",
                        parse_timestamp(doc.get("Lifetime"), path="Lifetime"))


# ------------------------------------------------------------------ the MEF's decision


@dataclass(frozen=True)
class TargetGrant:
    """An Enrolment Target the enrolee is configured for, with the usages (SUIDs) allowed."""

    target_id: str
    suids: tuple[int, ...]

    def to_doc(self) -> dict[str, Any]:
        return {"id": self.target_id, "suids": list(self.suids)}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> TargetGrant:
        return cls(str(doc["id"]), tuple(int(s) for s in doc["suids"]))


@dataclass(frozen=True)
class MAFPreference:
    """A MAF the enrolee is to be enrolled with (table 8.3.2.1-3 rows)."""

    maf_fqdn: str
    key_registration_uri: str
    key_retrieval_uri: str
    client_registration_uri: str | None = None
    credential_type: str = "SymmetricKey"  # or "Certificate"
    trust_anchors_pem: tuple[str, ...] = ()

    def to_doc(self) -> dict[str, Any]:
        return {"maf_fqdn": self.maf_fqdn, "key_registration_uri": self.key_registration_uri,
                "key_retrieval_uri": self.key_retrieval_uri, "client_registration_uri": self.client_registration_uri,
                "credential_type": self.credential_type, "trust_anchors_pem": list(self.trust_anchors_pem)}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> MAFPreference:
        return cls(doc["maf_fqdn"], doc["key_registration_uri"], doc["key_retrieval_uri"],
                   doc.get("client_registration_uri"), doc.get("credential_type", "SymmetricKey"),
                   tuple(doc.get("trust_anchors_pem", ())))


@dataclass(frozen=True)
class EnroleePreferences:
    """The MEF's per-enrolee preferences (seed 8.3.3.1 pre-conditions)."""

    targets: tuple[TargetGrant, ...] = ()
    mafs: tuple[MAFPreference, ...] = ()
    certificate_enrolment_uri: str | None = None
    remote_management_uri: str | None = None


@dataclass(frozen=True)
class Decision:
    instructions: tuple[Instruction, ...]
    direct_keys: tuple[DirectKey, ...]
    grants: tuple[TargetGrant, ...]  # what Enrolment Targets may fetch (stored with Ke)


CertificateEnrolmentHook = Callable[[EnroleePreferences, EnrolmentRequest], 'Instruction | None']
"""Extension point for Certificate Enrolment (EST, RFC 7030, F9): returns the instruction or None."""


def decide(prefs: EnroleePreferences, request: EnrolmentRequest, expiry: datetime, *,
           certificate_hook: CertificateEnrolmentHook | None = None) -> Decision:
    """m2msec's processing of the Enrolment Exchange request (8.3.2.1 NOTE 4 leaves it open).

    * certificate enrolment instruction: only if the enrolee indicated support and a
      certificate enrolment URI is configured (``certificate_hook`` may replace it: the
      extension point for EST, RFC 7030, F9);
    * MAF enrolment instructions (table 8.3.2.1-3), one per configured MAF, only if the
      enrolee indicated MAF support; each authorises that MAF to fetch Km (SUID 21);
    * remote management instruction only if indicated and configured;
    * direct keys: every configured (target, SUID 22-25) pair.
    """
    ins: list[Instruction] = []
    grants: list[TargetGrant] = []
    if request.certificate_enrolment:
        if certificate_hook is not None:
            extra = certificate_hook(prefs, request)
            if extra is not None:
                ins.append(extra)
        elif prefs.certificate_enrolment_uri:
            ins.append(Instruction(InstructionType.CERTIFICATE_ENROLMENT, {"URI": prefs.certificate_enrolment_uri}))
    if request.maf_enrolment:
        for maf in prefs.mafs:
            params: dict[str, Any] = {"CredentialType": maf.credential_type, "MAFID": maf.maf_fqdn,
                                      "MAFKeyRegistrationURI": maf.key_registration_uri,
                                      "MAFKeyRetrievalURI": maf.key_retrieval_uri,
                                      "Lifetime": format_timestamp(expiry)}
            if maf.client_registration_uri:
                params["MAFClientRegistrationURI"] = maf.client_registration_uri
            if maf.trust_anchors_pem:
                params["TrustAnchors"] = list(maf.trust_anchors_pem)
            ins.append(Instruction(InstructionType.MAF_ENROLMENT, params))
            if maf.credential_type == "SymmetricKey":
                grants.append(TargetGrant(maf.maf_fqdn, (SUID_MAF,)))
    if request.remote_management and prefs.remote_management_uri:
        ins.append(Instruction(InstructionType.REMOTE_MANAGEMENT, {"URI": prefs.remote_management_uri}))
    direct: list[DirectKey] = []
    for t in prefs.targets:
        suids = tuple(s for s in t.suids if s in RSPF_SUIDS and s != SUID_MAF)
        if suids:
            grants.append(TargetGrant(t.target_id, suids))
            direct.extend(DirectKey(t.target_id, s) for s in suids)
    return Decision(tuple(ins), tuple(direct), tuple(grants))


def grants_allow(grants: Sequence[Mapping[str, Any]], target_id: str, suid: int) -> bool:
    """Whether the stored grants let ``target_id`` fetch the key for ``suid``."""
    return any(g.get("id") == target_id and suid in g.get("suids", ()) for g in grants)
