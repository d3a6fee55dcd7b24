"""Pure functions of the MEF profile: wire parsing, fetch target, SUID -> key, the MEF's decision."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from m2msec import keys
from m2msec.errors import IdentifierError, ParseError
from m2msec.mef.protocol import (
    DirectKey,
    EnroleePreferences,
    EnrolmentRequest,
    EnrolmentResponse,
    FetchFailure,
    FetchSuccess,
    InstructionType,
    MAFPreference,
    TargetGrant,
    credential_for,
    decide,
    fetch_target,
    parse_fetch_response,
    parse_fetch_target,
)

KE = bytes(range(32))
KEID = "00112233445566778899aabbccddeeff@mef.example.com"
T = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def test_kre_label_and_id() -> None:
    assert keys.LABEL_BOOTSTRAP_REAUTH == "EXPORTER-oneM2M-Bootstrap-Reauth"
    assert keys.LABEL_BOOTSTRAP_REAUTH != keys.LABEL_BOOTSTRAP
    assert keys.kre_id(bytes.fromhex("00112233445566778899aabbccddeeff"), "mef.example.com") == KEID
    with pytest.raises(ParseError):
        keys.kre_id(b"short", "mef.example.com")


@pytest.mark.parametrize("suid", [21, 22, 23, 24, 25])
def test_fetch_target_roundtrip(suid: int) -> None:
    assert parse_fetch_target(fetch_target(KEID, suid), "mef.example.com") == (KEID, suid)


@pytest.mark.parametrize("target,exc", [
    ("/fetchCredentials/zz112233445566778899aabbccddeeff@mef.example.com/22", IdentifierError),
    ("/fetchCredentials/0011@mef.example.com/22", IdentifierError),
    ("/fetchCredentials/00112233445566778899aabbccddeeff/22", IdentifierError),
    (f"/fetchCredentials/{KEID}/12", ParseError),
    (f"/fetchCredentials/{KEID}/x", ParseError),
    (f"/fetchCredentials/{KEID}/-22", ParseError),
    (f"/fetchCredentials/{KEID}", ParseError),
    (f"/fetchCredentials/{KEID}/22/extra", ParseError),
    ("/fetchCredentials/00112233445566778899aabbccddeeff@other.example.com/22", IdentifierError),
    ("/other/x", ParseError),
])
def test_fetch_target_malformed(target: str, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        parse_fetch_target(target, "mef.example.com")


def test_credential_for_uses_the_clause_derivations() -> None:
    assert credential_for(KE, 21, "maf.example.com") == keys.derive_km(KE, "maf.example.com")
    assert credential_for(KE, 22, "//sp/id-in/Cb") == keys.derive_kpsa(KE, "//sp/id-in/Cb")
    for suid in (23, 24, 25):
        assert credential_for(KE, suid, "//sp/id-in/Cb") == keys.derive_usage_key(KE, suid, "//sp/id-in/Cb")
    assert len({credential_for(KE, s, "//sp/id-in/Cb") for s in (21, 22, 23, 24, 25)}) == 5
    with pytest.raises(ParseError):
        credential_for(KE, 12, "x")


def test_enrolment_request_strict() -> None:
    r = EnrolmentRequest(True, False, True, "tok")
    assert EnrolmentRequest.from_json(r.to_json()) == r
    assert "tok" not in repr(r)
    for bad in (b"[]", b"{", b'{"CertificateEnrolmentIndication":1,"MAFEnrolmentIndication":false,'
                b'"RemoteManagementIndication":false}',
                b'{"MAFEnrolmentIndication":false,"RemoteManagementIndication":false}',
                b'{"CertificateEnrolmentIndication":false,"MAFEnrolmentIndication":false,'
                b'"RemoteManagementIndication":false,"Extra":1}'):
        with pytest.raises(ParseError):
            EnrolmentRequest.from_json(bad)


def test_decide_follows_indications_and_preferences() -> None:
    maf = MAFPreference("maf.example.com", "https://maf/reg", "https://maf/ret", "https://maf/client")
    prefs = EnroleePreferences((TargetGrant("//sp/id-in/Cb", (22, 23)),), (maf,), "https://mef/est",
                               "https://dm.example.com")
    d = decide(prefs, EnrolmentRequest(False, False, False), T)
    assert d.instructions == ()
    assert d.direct_keys == (DirectKey("//sp/id-in/Cb", 22), DirectKey("//sp/id-in/Cb", 23))
    assert [g.target_id for g in d.grants] == ["//sp/id-in/Cb"]
    d = decide(prefs, EnrolmentRequest(True, True, True), T)
    assert [i.type for i in d.instructions] == [InstructionType.CERTIFICATE_ENROLMENT, InstructionType.MAF_ENROLMENT,
                                                InstructionType.REMOTE_MANAGEMENT]
    assert d.instructions[1].params["MAFID"] == "maf.example.com"
    assert TargetGrant("maf.example.com", (21,)) in d.grants
    hooked = decide(prefs, EnrolmentRequest(True, False, False), T, certificate_hook=lambda p, r: None)
    assert hooked.instructions == ()


def test_responses_roundtrip() -> None:
    rsp = EnrolmentResponse(KEID, KEID, "/id-in/Ca", T, (), (DirectKey("//sp/id-in/Cb", 22),))
    assert EnrolmentResponse.from_json(rsp.to_json()) == rsp
    ok = parse_fetch_response(FetchSuccess(KE, "/id-in/Ca", T).to_json())
    assert isinstance(ok, FetchSuccess) and ok.credential == KE and ok.lifetime == T
    assert KE.hex() not in repr(ok) and str(list(KE)) not in repr(ok) and "credential=" not in repr(ok)
    bad = parse_fetch_response(FetchFailure("nope").to_json())
    assert bad == FetchFailure("nope")
    with pytest.raises(ParseError):
        parse_fetch_response(b'{"Status":true,"Credential":"!!","EnroleeID":"a","Lifetime":"20261126T120000"}')
    with pytest.raises(ParseError):
        parse_fetch_response(b'{"Status":"yes"}')


def test_no_secret_in_reprs() -> None:
    from m2msec.mef import Enrolment, FetchedCredential

    e = Enrolment(KEID, KE, KEID, bytes(32), "/id-in/Ca", T)
    f = FetchedCredential(KEID, 22, KE, "/id-in/Ca", T)
    for obj in (e, f):
        assert "\\x00\\x01" not in repr(obj) and KE.hex() not in repr(obj) and "ke=" not in repr(obj)
