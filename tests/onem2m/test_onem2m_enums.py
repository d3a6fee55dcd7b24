"""Enumerations of TS-0004 clause 6.3.4.2 and the RSC table of clause 6.6.3."""

from __future__ import annotations

import pytest

from m2msec.errors import ParseError
from m2msec.onem2m import (
    SUID,
    ContentSecurity,
    CredentialClass,
    EncodingType,
    ESPrimKeyGenAlgID,
    ESPrimProtocolAndAlgID,
    Operation,
    ResourceType,
    ResponseStatusCode,
    ResultContent,
    SecurityInfoType,
    SUIDScope,
    parse_enum,
)


def test_suid_values_exactly_as_table_6_3_4_2_39_1() -> None:
    assert sorted(int(s) for s in SUID) == [10, 11, 12, 13, 14, 15, 21, 22, 23, 24, 25, 32, 33, 34, 35, 40, 41, 42, 43, 44, 45]


@pytest.mark.parametrize(
    ("value", "cls", "scope"),
    [
        (10, CredentialClass.PRE_PROVISIONED, SUIDScope.MEF),
        (11, CredentialClass.PRE_PROVISIONED, SUIDScope.MAF),
        (12, CredentialClass.PRE_PROVISIONED, SUIDScope.SAEF),
        (13, CredentialClass.PRE_PROVISIONED, SUIDScope.ESPRIM),
        (14, CredentialClass.PRE_PROVISIONED, SUIDScope.ESDATA_ENCRYPT),
        (15, CredentialClass.PRE_PROVISIONED, SUIDScope.ESDATA_SIGN),
        (21, CredentialClass.RSPF, SUIDScope.MAF),
        (22, CredentialClass.RSPF, SUIDScope.SAEF),
        (23, CredentialClass.RSPF, SUIDScope.ESPRIM),
        (24, CredentialClass.RSPF, SUIDScope.ESDATA_ENCRYPT),
        (25, CredentialClass.RSPF, SUIDScope.ESDATA_SIGN),
        (32, CredentialClass.MAF, SUIDScope.SAEF),
        (33, CredentialClass.MAF, SUIDScope.ESPRIM),
        (34, CredentialClass.MAF, SUIDScope.ESDATA_ENCRYPT),
        (35, CredentialClass.MAF, SUIDScope.ESDATA_SIGN),
        (40, CredentialClass.CERTIFICATE, SUIDScope.MEF),
        (41, CredentialClass.CERTIFICATE, SUIDScope.MAF),
        (42, CredentialClass.CERTIFICATE, SUIDScope.SAEF),
        (43, CredentialClass.CERTIFICATE, SUIDScope.ESPRIM),
        (44, CredentialClass.CERTIFICATE, SUIDScope.ESDATA_ENCRYPT),
        (45, CredentialClass.CERTIFICATE, SUIDScope.ESDATA_SIGN),
    ],
)
def test_suid_decomposition(value: int, cls: CredentialClass, scope: SUIDScope) -> None:
    s = SUID(value)
    assert s.credential_class is cls
    assert s.scope is scope
    assert SUID.of(cls, scope) is s
    assert s.is_symmetric == (cls is not CredentialClass.CERTIFICATE)


@pytest.mark.parametrize(("cls", "scope"), [(CredentialClass.RSPF, SUIDScope.MEF), (CredentialClass.MAF, SUIDScope.MEF), (CredentialClass.MAF, SUIDScope.MAF)])
def test_suid_of_rejects_combinations_absent_from_the_table(cls: CredentialClass, scope: SUIDScope) -> None:
    with pytest.raises(ValueError):
        SUID.of(cls, scope)


@pytest.mark.parametrize("bad", [0, 16, 20, 30, 31, 36, 46, 9])
def test_unknown_suid_is_a_parse_error_naming_the_enum(bad: int) -> None:
    with pytest.raises(ParseError, match=rf"unknown SUID value {bad}") as ei:
        parse_enum(SUID, bad, "esi.esf[0]")
    assert ei.value.rsc == ResponseStatusCode.BAD_REQUEST
    assert "esi.esf[0]" in str(ei.value)


@pytest.mark.parametrize("bad", [True, False, "13", 13.0, None, [13]])
def test_parse_enum_rejects_non_integers(bad: object) -> None:
    with pytest.raises(ParseError, match="expected an integer"):
        parse_enum(SUID, bad)


def test_security_info_type_values() -> None:
    assert [int(v) for v in SecurityInfoType] == [1, 2, 3, 4, 5, 6, 7, 8]
    with pytest.raises(ParseError, match="unknown SecurityInfoType value 9"):
        parse_enum(SecurityInfoType, 9)


def test_esprim_algorithm_ids() -> None:
    assert ESPrimKeyGenAlgID.HMAC_SHA256 == 1
    assert [(int(a), a.jwe_enc, a.key_length) for a in ESPrimProtocolAndAlgID] == [
        (10, "A128GCM", 16),
        (11, "A192GCM", 24),
        (12, "A256GCM", 32),
    ]
    assert ESPrimProtocolAndAlgID.from_jwe_enc("A192GCM") is ESPrimProtocolAndAlgID.JWE_A192GCM
    with pytest.raises(ValueError):
        ESPrimProtocolAndAlgID.from_jwe_enc("A128CBC-HS256")
    with pytest.raises(ParseError, match="unknown ESPrimProtocolAndAlgID value 13"):
        parse_enum(ESPrimProtocolAndAlgID, 13)
    with pytest.raises(ParseError, match="unknown ESPrimKeyGenAlgID value 2"):
        parse_enum(ESPrimKeyGenAlgID, 2)


def test_content_security_envelope_media_types() -> None:
    assert ContentSecurity.NONE.envelope_media_types == ()
    assert ContentSecurity.JOSE_COMPACT.envelope_media_types == ("application/jose",)
    assert ContentSecurity.JOSE_JSON.envelope_media_types == ("application/jose+json",)
    assert ContentSecurity.JOSE_JSON_BASE64.envelope_media_types == ("application/jose+json",)
    assert ContentSecurity.XML.envelope_media_types == ("application/xenc+xml", "application/xml")
    assert ContentSecurity.XML_BASE64.envelope_media_types == ("application/xenc+xml", "application/xml")
    assert [c.is_base64 for c in ContentSecurity] == [False, False, False, True, False, True]
    assert [c.is_jose for c in ContentSecurity] == [False, True, True, True, False, False]
    assert [c.is_xml for c in ContentSecurity] == [False, False, False, False, True, True]


def test_misc_enum_values() -> None:
    assert [int(e) for e in EncodingType] == [0, 1, 2]
    assert [int(o) for o in Operation] == [1, 2, 3, 4, 5]
    assert Operation.NOTIFY == 5
    assert (ResourceType.ACCESS_CONTROL_POLICY, ResourceType.AE, ResourceType.CONTAINER) == (1, 2, 3)
    assert (ResourceType.CONTENT_INSTANCE, ResourceType.CSE_BASE, ResourceType.REMOTE_CSE) == (4, 5, 16)
    assert ResourceType.SUBSCRIPTION == 23
    assert ResourceType.FLEX_CONTAINER == 28
    assert ResourceType.AE_ANNC == 10002
    assert [int(r) for r in ResultContent] == list(range(11))
    with pytest.raises(ParseError, match="unknown ResourceType value 33"):
        parse_enum(ResourceType, 33)  # 'void' in Table 6.3.4.2.1-1


def test_rsc_table_is_complete_and_http_mapping_matches_ts_0009() -> None:
    assert len(ResponseStatusCode) == 81
    expected = {
        1000: 202, 2000: 200, 2001: 201, 2002: 200, 2004: 200, 4000: 400, 4102: 400, 4103: 403,
        4004: 404, 4005: 405, 4008: 504, 4015: 415, 4104: 409, 4001: 501, 5000: 500, 5207: 406,
        4111: 403, 4112: 403, 4113: 403, 4114: 403, 4115: 403, 4116: 403, 5210: 500, 5211: 500,
        6031: 504, 6029: 409,
    }
    for code, http in expected.items():
        assert ResponseStatusCode(code).http_status == http, code
    assert ResponseStatusCode.ESPRIM_BAD_MAC.name == "ESPRIM_BAD_MAC"
    assert ResponseStatusCode(1001).name == "ACCEPTED_NON_BLOCKING_REQUEST_SYNCH"


def test_package_re_exports_resolve() -> None:
    import m2msec.onem2m as pkg

    for name in pkg.__all__:
        assert getattr(pkg, name) is not None, name
    assert pkg.SUID is SUID
    with pytest.raises(AttributeError):
        pkg.DoesNotExist  # noqa: B018
