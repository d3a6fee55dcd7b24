"""oneM2M vocabulary for m2msec (TS-0004 V3.32.0).

Enumerations (clause 6.3.4.2), timestamps (clause 6.3.3), m2m:contentInfo
(Table 6.3.3-1), the security data types m2m:securityInfo, the ESPrim rand
objects and m2m:e2eSecInfo (clauses 6.3.5.48-52), request/response primitives
(clause 6.4) with the short names of clause 8.2 and the JSON/CBOR serializations
of clauses 8.4/8.5, and the Response Status Codes (clause 6.6.3).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Re-exports are resolved lazily (PEP 562): m2msec.errors imports m2msec.onem2m.rsc,
# and the modules below import m2msec.errors, so eager imports here would be circular.
if TYPE_CHECKING:  # pragma: no cover
    from m2msec.onem2m.contentinfo import ContentInfo
    from m2msec.onem2m.enums import (
        RESOURCE_SHORT_NAMES,
        SUID,
        ContentSecurity,
        CredentialClass,
        DesIdResType,
        EncodingType,
        ESPrimKeyGenAlgID,
        ESPrimProtocolAndAlgID,
        Operation,
        ResourceType,
        ResponseType,
        ResultContent,
        SecurityInfoType,
        SUIDScope,
        parse_enum,
    )
    from m2msec.onem2m.primitives import (
        DEFAULT_RVI,
        ESI_RESOURCE_ROOTS,
        RequestPrimitive,
        ResponsePrimitive,
        get_e2e_sec_info,
        new_request_id,
        parse_rsc,
        resource_content,
        with_e2e_sec_info,
    )
    from m2msec.onem2m.rsc import ResponseStatusCode
    from m2msec.onem2m.security import (
        SECI_ELEMENT,
        E2ESecInfo,
        OriginatorESPrimRandObject,
        ReceiverESPrimRandObject,
        SecurityInfo,
        decode_rand_value,
        encode_rand_value,
        new_originator_rand_object,
        new_receiver_rand_object,
    )
    from m2msec.onem2m.timestamps import AbsRelTimestamp, format_timestamp, parse_timestamp

_EXPORTS: dict[str, str] = {
    "AbsRelTimestamp": "m2msec.onem2m.timestamps",
    "ContentInfo": "m2msec.onem2m.contentinfo",
    "ContentSecurity": "m2msec.onem2m.enums",
    "CredentialClass": "m2msec.onem2m.enums",
    "DEFAULT_RVI": "m2msec.onem2m.primitives",
    "DesIdResType": "m2msec.onem2m.enums",
    "E2ESecInfo": "m2msec.onem2m.security",
    "ESI_RESOURCE_ROOTS": "m2msec.onem2m.primitives",
    "ESPrimKeyGenAlgID": "m2msec.onem2m.enums",
    "ESPrimProtocolAndAlgID": "m2msec.onem2m.enums",
    "EncodingType": "m2msec.onem2m.enums",
    "Operation": "m2msec.onem2m.enums",
    "OriginatorESPrimRandObject": "m2msec.onem2m.security",
    "RESOURCE_SHORT_NAMES": "m2msec.onem2m.enums",
    "ReceiverESPrimRandObject": "m2msec.onem2m.security",
    "RequestPrimitive": "m2msec.onem2m.primitives",
    "ResourceType": "m2msec.onem2m.enums",
    "ResponsePrimitive": "m2msec.onem2m.primitives",
    "ResponseStatusCode": "m2msec.onem2m.rsc",
    "ResponseType": "m2msec.onem2m.enums",
    "ResultContent": "m2msec.onem2m.enums",
    "SECI_ELEMENT": "m2msec.onem2m.security",
    "SUID": "m2msec.onem2m.enums",
    "SUIDScope": "m2msec.onem2m.enums",
    "SecurityInfo": "m2msec.onem2m.security",
    "SecurityInfoType": "m2msec.onem2m.enums",
    "decode_rand_value": "m2msec.onem2m.security",
    "encode_rand_value": "m2msec.onem2m.security",
    "format_timestamp": "m2msec.onem2m.timestamps",
    "get_e2e_sec_info": "m2msec.onem2m.primitives",
    "new_originator_rand_object": "m2msec.onem2m.security",
    "new_receiver_rand_object": "m2msec.onem2m.security",
    "new_request_id": "m2msec.onem2m.primitives",
    "parse_enum": "m2msec.onem2m.enums",
    "parse_rsc": "m2msec.onem2m.primitives",
    "parse_timestamp": "m2msec.onem2m.timestamps",
    "resource_content": "m2msec.onem2m.primitives",
    "with_e2e_sec_info": "m2msec.onem2m.primitives",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
