"""oneM2M enumerations used by m2msec (TS-0004 V3.32.0 clause 6.3.4.2).

* :class:`ResourceType` - m2m:resourceType, Table 6.3.4.2.1-1
* :class:`Operation` - m2m:operation, Table 6.3.4.2.5-1
* :class:`ResponseType` - m2m:responseType, Table 6.3.4.2.6-1
* :class:`ResultContent` - m2m:resultContent, Table 6.3.4.2.7-1
* :class:`DesIdResType` - m2m:desIdResType, Table 6.3.4.2.8-1
* :class:`EncodingType` - m2m:encodingType, Table 6.3.4.2.28-1
* :class:`SecurityInfoType` - m2m:securityInfoType, Table 6.3.4.2.35-1
* :class:`ContentSecurity` - m2m:contentSecurity, Table 6.3.4.2.38-1
* :class:`SUID` - m2m:suid, Table 6.3.4.2.39-1 (TS-0003 clause 8.1.1 / Annex)
* :class:`ESPrimKeyGenAlgID` - m2m:esprimKeyGenAlgID, Table 6.3.4.2.40-1
* :class:`ESPrimProtocolAndAlgID` - m2m:esprimProtocolAndAlgID, Table 6.3.4.2.41-1

:func:`parse_enum` turns a JSON value into a member, rejecting booleans,
strings and unknown values with a :class:`~m2msec.errors.ParseError` that names
the enumeration (``unknown SUID value 16``).
"""

from __future__ import annotations

from enum import Enum, IntEnum
from typing import TypeVar

from m2msec.onem2m import _wire

E = TypeVar("E", bound=IntEnum)


def parse_enum(cls: type[E], value: object, path: str = "") -> E:
    """Strictly parse a JSON number into ``cls`` (bool and str are rejected)."""
    return _wire.expect_enum(cls, value, path or cls.__name__)


class ResourceType(IntEnum):
    """m2m:resourceType (TS-0004 Table 6.3.4.2.1-1); the 'void' values 33/10033 are omitted."""

    ACCESS_CONTROL_POLICY = 1
    AE = 2
    CONTAINER = 3
    CONTENT_INSTANCE = 4
    CSE_BASE = 5
    DELIVERY = 6
    EVENT_CONFIG = 7
    EXEC_INSTANCE = 8
    GROUP = 9
    LOCATION_POLICY = 10
    M2M_SERVICE_SUBSCRIPTION_PROFILE = 11
    MGMT_CMD = 12
    MGMT_OBJ = 13
    NODE = 14
    POLLING_CHANNEL = 15
    REMOTE_CSE = 16
    REQUEST = 17
    SCHEDULE = 18
    SERVICE_SUBSCRIBED_APP_RULE = 19
    SERVICE_SUBSCRIBED_NODE = 20
    STATS_COLLECT = 21
    STATS_CONFIG = 22
    SUBSCRIPTION = 23
    SEMANTIC_DESCRIPTOR = 24
    NOTIFICATION_TARGET_MGMT_POLICY_REF = 25
    NOTIFICATION_TARGET_POLICY = 26
    POLICY_DELETION_RULES = 27
    FLEX_CONTAINER = 28
    TIME_SERIES = 29
    TIME_SERIES_INSTANCE = 30
    ROLE = 31
    TOKEN = 32
    DYNAMIC_AUTHORIZATION_CONSULTATION = 34
    AUTHORIZATION_DECISION = 35
    AUTHORIZATION_POLICY = 36
    AUTHORIZATION_INFORMATION = 37
    ONTOLOGY_REPOSITORY = 38
    ONTOLOGY = 39
    SEMANTIC_MASHUP_JOB_PROFILE = 40
    SEMANTIC_MASHUP_INSTANCE = 41
    SEMANTIC_MASHUP_RESULT = 42
    AE_CONTACT_LIST = 43
    AE_CONTACT_LIST_PER_CSE = 44
    LOCAL_MULTICAST_GROUP = 45
    MULTIMEDIA_SESSION = 46
    TRIGGER_REQUEST = 47
    CROSS_RESOURCE_SUBSCRIPTION = 48
    BACKGROUND_DATA_TRANSFER = 49
    TRANSACTION_MGMT = 50
    TRANSACTION = 51
    ACCESS_CONTROL_POLICY_ANNC = 10001
    AE_ANNC = 10002
    CONTAINER_ANNC = 10003
    CONTENT_INSTANCE_ANNC = 10004
    CSE_BASE_ANNC = 10005
    GROUP_ANNC = 10009
    LOCATION_POLICY_ANNC = 10010
    MGMT_OBJ_ANNC = 10013
    NODE_ANNC = 10014
    REMOTE_CSE_ANNC = 10016
    SCHEDULE_ANNC = 10018
    SEMANTIC_DESCRIPTOR_ANNC = 10024
    FLEX_CONTAINER_ANNC = 10028
    TIME_SERIES_ANNC = 10029
    TIME_SERIES_INSTANCE_ANNC = 10030
    ONTOLOGY_REPOSITORY_ANNC = 10038
    ONTOLOGY_ANNC = 10039
    SEMANTIC_MASHUP_JOB_PROFILE_ANNC = 10040
    SEMANTIC_MASHUP_INSTANCE_ANNC = 10041
    SEMANTIC_MASHUP_RESULT_ANNC = 10042
    MULTIMEDIA_SESSION_ANNC = 10046


# TS-0004 Table 8.2.4-1: resource type short names (the subset m2msec touches).
RESOURCE_SHORT_NAMES: dict[ResourceType, str] = {
    ResourceType.ACCESS_CONTROL_POLICY: "acp",
    ResourceType.AE: "ae",
    ResourceType.CONTAINER: "cnt",
    ResourceType.CONTENT_INSTANCE: "cin",
    ResourceType.CSE_BASE: "cb",
    ResourceType.REMOTE_CSE: "csr",
    ResourceType.SUBSCRIPTION: "sub",
    ResourceType.GROUP: "grp",
    ResourceType.NODE: "nod",
}


class Operation(IntEnum):
    """m2m:operation (TS-0004 Table 6.3.4.2.5-1)."""

    CREATE = 1
    RETRIEVE = 2
    UPDATE = 3
    DELETE = 4
    NOTIFY = 5


class ResponseType(IntEnum):
    """m2m:responseType (TS-0004 Table 6.3.4.2.6-1)."""

    NON_BLOCKING_REQUEST_SYNCH = 1
    NON_BLOCKING_REQUEST_ASYNCH = 2
    BLOCKING_REQUEST = 3
    FLEX_BLOCKING = 4
    NO_RESPONSE = 5


class ResultContent(IntEnum):
    """m2m:resultContent (TS-0004 Table 6.3.4.2.7-1)."""

    NOTHING = 0
    ATTRIBUTES = 1
    HIERARCHICAL_ADDRESS = 2
    HIERARCHICAL_ADDRESS_AND_ATTRIBUTES = 3
    ATTRIBUTES_AND_CHILD_RESOURCES = 4
    ATTRIBUTES_AND_CHILD_RESOURCE_REFERENCES = 5
    CHILD_RESOURCE_REFERENCES = 6
    ORIGINAL_RESOURCE = 7
    CHILD_RESOURCES = 8
    MODIFIED_ATTRIBUTES = 9
    SEMANTIC_CONTENT = 10


class DesIdResType(IntEnum):
    """m2m:desIdResType (TS-0004 Table 6.3.4.2.8-1)."""

    STRUCTURED = 1
    UNSTRUCTURED = 2


class EncodingType(IntEnum):
    """m2m:encodingType (TS-0004 Table 6.3.4.2.28-1)."""

    PLAIN = 0  # no transfer encoding
    BASE64_STRING = 1  # base64 applied on string data
    BASE64_BINARY = 2  # base64 applied on binary data


class SecurityInfoType(IntEnum):
    """m2m:securityInfoType (TS-0004 Table 6.3.4.2.35-1)."""

    DYNAMIC_AUTHORIZATION_REQUEST = 1
    DYNAMIC_AUTHORIZATION_RESPONSE = 2
    RECEIVER_ESPRIM_RAND_OBJECT_REQUEST = 3
    RECEIVER_ESPRIM_RAND_OBJECT_RESPONSE = 4
    ESPRIM_OBJECT = 5
    ESCERTKE_MESSAGE = 6
    DYNAMIC_AUTHORIZATION_RELATIONSHIP_MAPPING_REQUEST = 7
    DYNAMIC_AUTHORIZATION_RELATIONSHIP_MAPPING_RESPONSE = 8


class ContentSecurity(IntEnum):
    """m2m:contentSecurity (TS-0004 Table 6.3.4.2.38-1)."""

    NONE = 0
    JOSE_COMPACT = 1
    JOSE_JSON = 2
    JOSE_JSON_BASE64 = 3
    XML = 4
    XML_BASE64 = 5

    @property
    def envelope_media_types(self) -> tuple[str, ...]:
        """Media type(s) of the ESData envelope (notes 3-5 of Table 6.3.4.2.38-1).

        Empty for NONE; for the XML values, ``application/xenc+xml`` (XML
        Encryption) or ``application/xml`` (XML Signature).
        """
        return _ENVELOPE_MEDIA_TYPES[self]

    @property
    def is_jose(self) -> bool:
        return self in (ContentSecurity.JOSE_COMPACT, ContentSecurity.JOSE_JSON, ContentSecurity.JOSE_JSON_BASE64)

    @property
    def is_xml(self) -> bool:
        return self in (ContentSecurity.XML, ContentSecurity.XML_BASE64)

    @property
    def is_base64(self) -> bool:
        """True when base64 was applied to the envelope after ESData (values 3 and 5)."""
        return self in (ContentSecurity.JOSE_JSON_BASE64, ContentSecurity.XML_BASE64)


_ENVELOPE_MEDIA_TYPES: dict[ContentSecurity, tuple[str, ...]] = {
    ContentSecurity.NONE: (),
    ContentSecurity.JOSE_COMPACT: ("application/jose",),
    ContentSecurity.JOSE_JSON: ("application/jose+json",),
    ContentSecurity.JOSE_JSON_BASE64: ("application/jose+json",),
    ContentSecurity.XML: ("application/xenc+xml", "application/xml"),
    ContentSecurity.XML_BASE64: ("application/xenc+xml", "application/xml"),
}


class CredentialClass(Enum):
    """First digit of an m2m:suid: how the credential was obtained."""

    PRE_PROVISIONED = 1  # pre-provisioned symmetric key
    RSPF = 2  # symmetric key provisioned via a Remote Security Provisioning Framework
    MAF = 3  # symmetric key distributed via a MAF
    CERTIFICATE = 4  # certificate

    @property
    def is_symmetric(self) -> bool:
        return self is not CredentialClass.CERTIFICATE


class SUIDScope(Enum):
    """Second digit of an m2m:suid: where the credential is to be used."""

    MEF = 0  # shared with a MEF
    MAF = 1  # shared with a MAF
    SAEF = 2  # Security Association Establishment Framework
    ESPRIM = 3  # End-to-End Security of Primitives
    ESDATA_ENCRYPT = 4  # authenticated encryption in Encryption-only / Nested ESData
    ESDATA_SIGN = 5  # Signature-only ESData


class SUID(IntEnum):
    """m2m:suid, Security Usage Identifier (TS-0004 Table 6.3.4.2.39-1).

    The value is the concatenation of a credential-class digit and a scope digit
    (see the NOTE of the table); :attr:`credential_class` and :attr:`scope`
    decompose it.
    """

    PRE_PROVISIONED_MEF = 10
    PRE_PROVISIONED_MAF = 11
    PRE_PROVISIONED_SAEF = 12
    PRE_PROVISIONED_ESPRIM = 13
    PRE_PROVISIONED_ESDATA_ENCRYPT = 14
    PRE_PROVISIONED_ESDATA_SIGN = 15
    RSPF_MAF = 21
    RSPF_SAEF = 22
    RSPF_ESPRIM = 23
    RSPF_ESDATA_ENCRYPT = 24
    RSPF_ESDATA_SIGN = 25
    MAF_SAEF = 32
    MAF_ESPRIM = 33
    MAF_ESDATA_ENCRYPT = 34
    MAF_ESDATA_SIGN = 35
    CERTIFICATE_MEF = 40
    CERTIFICATE_MAF = 41
    CERTIFICATE_SAEF = 42
    CERTIFICATE_ESPRIM = 43
    CERTIFICATE_ESDATA_ENCRYPT = 44
    CERTIFICATE_ESDATA_SIGN = 45

    @property
    def credential_class(self) -> CredentialClass:
        return CredentialClass(self.value // 10)

    @property
    def scope(self) -> SUIDScope:
        return SUIDScope(self.value % 10)

    @property
    def is_symmetric(self) -> bool:
        return self.credential_class.is_symmetric

    @classmethod
    def of(cls, credential_class: CredentialClass, scope: SUIDScope) -> SUID:
        """The SUID for a (class, scope) pair; ValueError if the table has no such row."""
        try:
            return cls(credential_class.value * 10 + scope.value)
        except ValueError:
            raise ValueError(f"no SUID for {credential_class.name} / {scope.name}") from None


class ESPrimKeyGenAlgID(IntEnum):
    """m2m:esprimKeyGenAlgID (TS-0004 Table 6.3.4.2.40-1; TS-0003 clause 8.4.2)."""

    HMAC_SHA256 = 1


class ESPrimProtocolAndAlgID(IntEnum):
    """m2m:esprimProtocolAndAlgID (TS-0004 Table 6.3.4.2.41-1)."""

    JWE_A128GCM = 10
    JWE_A192GCM = 11
    JWE_A256GCM = 12

    @property
    def jwe_enc(self) -> str:
        """The JWE ``enc`` header value (RFC 7518 section 5.3)."""
        return _ENC[self][0]

    @property
    def key_length(self) -> int:
        """AES key length in octets (16, 24 or 32)."""
        return _ENC[self][1]

    @classmethod
    def from_jwe_enc(cls, enc: str) -> ESPrimProtocolAndAlgID:
        for member, (name, _) in _ENC.items():
            if name == enc:
                return member
        raise ValueError(f"no esprimProtocolAndAlgID for JWE enc {enc!r}")


_ENC: dict[ESPrimProtocolAndAlgID, tuple[str, int]] = {
    ESPrimProtocolAndAlgID.JWE_A128GCM: ("A128GCM", 16),
    ESPrimProtocolAndAlgID.JWE_A192GCM: ("A192GCM", 24),
    ESPrimProtocolAndAlgID.JWE_A256GCM: ("A256GCM", 32),
}
