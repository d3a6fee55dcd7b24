"""m2m:securityInfo, ESPrim rand objects, m2m:e2eSecInfo (TS-0004 6.3.5.48-52, 8.2.3)."""

from __future__ import annotations

import base64
import copy
import datetime as dt
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from m2msec.errors import ParseError
from m2msec.onem2m import (
    SUID,
    E2ESecInfo,
    ESPrimKeyGenAlgID,
    ESPrimProtocolAndAlgID,
    OriginatorESPrimRandObject,
    ReceiverESPrimRandObject,
    SecurityInfo,
    SecurityInfoType,
    decode_rand_value,
    encode_rand_value,
    new_originator_rand_object,
    new_receiver_rand_object,
)

UTC = dt.timezone.utc
RAND = bytes.fromhex("00112233445566778899aabbccddeeff")
EXPIRY = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
JWE = "eyJhbGciOiJkaXIiLCJlbmMiOiJBMTI4R0NNIn0..48V1_ALb6US04U3b.5eym8TW_c8SuK0ltJ3rpYIzOeDQz7TALvtu6UG9oMo4vpzs9tX_EFShS8iB7j6jiSdiwkIr3ajwQzaBtQD_A.XFBoMYUZodetZdvTiFvSkQ"

# Golden, hand-written from Tables 6.3.5.48-1/50-1/51-1/52-1 and the short names of clause 8.2.3.
GOLDEN_ERO: dict[str, Any] = {
    "esri": "rcv-1",
    "esrv": "x00112233445566778899aabbccddeeff",
    "esrx": "20261201T120000",
    "esks": [1],
    "espa": [10, 12],
}
GOLDEN_ORO: dict[str, Any] = {
    "esri": "orig_7",
    "esrv": "x00112233445566778899aabbccddeeff",
    "esrx": "20261201T120000",
    "esk": 1,
    "espa": [12],
}
LONG_ERO: dict[str, Any] = {
    "esprimRandID": "rcv-1",
    "esprimRandValue": "x00112233445566778899aabbccddeeff",
    "esprimRandExpiry": "20261201T120000",
    "esprimKeyGenAlgIDs": [1],
    "esprimProtocolAndAlgIDs": [10, 12],
}


def receiver() -> ReceiverESPrimRandObject:
    return ReceiverESPrimRandObject(
        rand_id="rcv-1",
        rand_value=RAND,
        expiry=EXPIRY,
        protocol_and_alg_ids=(ESPrimProtocolAndAlgID.JWE_A128GCM, ESPrimProtocolAndAlgID.JWE_A256GCM),
        key_gen_alg_ids=(ESPrimKeyGenAlgID.HMAC_SHA256,),
    )


def originator() -> OriginatorESPrimRandObject:
    return OriginatorESPrimRandObject(
        rand_id="orig_7",
        rand_value=RAND,
        expiry=EXPIRY,
        protocol_and_alg_ids=(ESPrimProtocolAndAlgID.JWE_A256GCM,),
        key_gen_alg_id=ESPrimKeyGenAlgID.HMAC_SHA256,
    )


def self_signed_der() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ae1")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(2025, 1, 1, tzinfo=UTC))
        .not_valid_after(dt.datetime(2027, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


# ------------------------------------------------------------------ golden JSON


def test_receiver_rand_object_golden() -> None:
    assert receiver().to_json() == GOLDEN_ERO
    assert ReceiverESPrimRandObject.from_json(GOLDEN_ERO) == receiver()


def test_originator_rand_object_golden() -> None:
    assert originator().to_json() == GOLDEN_ORO
    assert OriginatorESPrimRandObject.from_json(GOLDEN_ORO) == originator()


def test_security_info_golden_per_type() -> None:
    assert SecurityInfo.rand_object_request().to_json() == {"sit": 3}
    assert SecurityInfo.rand_object_response(receiver()).to_json() == {"sit": 4, "ero": GOLDEN_ERO}
    assert SecurityInfo.esprim(JWE).to_json() == {"sit": 5, "epo": JWE}
    assert SecurityInfo.escertke(b"\x16\x03\x03\x00\x01\x01").to_json() == {"sit": 6, "eckm": "FgMDAAEB"}
    das = {"trt": 2, "trid": "/cse/ae1"}
    assert SecurityInfo(SecurityInfoType.DYNAMIC_AUTHORIZATION_REQUEST, das_request=das).to_json() == {"sit": 1, "dreq": das}
    assert SecurityInfo(SecurityInfoType(2), das_response={"gp": {}}).to_json() == {"sit": 2, "dres": {"gp": {}}}
    assert SecurityInfo(SecurityInfoType(7), dyn_auth_rel_map_request={"a": 1}).to_json() == {"sit": 7, "darq": {"a": 1}}
    assert SecurityInfo(SecurityInfoType(8), dyn_auth_rel_map_response={"b": [1]}).to_json() == {"sit": 8, "dars": {"b": [1]}}
    assert SecurityInfo.rand_object_request().to_content() == {"m2m:seci": {"sit": 3}}


def test_e2e_sec_info_golden() -> None:
    der = b"\x30\x03\x02\x01\x01"
    info = E2ESecInfo(
        supported_features=(SUID.PRE_PROVISIONED_ESPRIM, SUID.MAF_ESPRIM, SUID.CERTIFICATE_ESPRIM),
        certificates=(der,),
        shared_rand_object=receiver(),
    )
    golden = {"esf": [13, 33, 43], "escert": ["MAMCAQE="], "esro": GOLDEN_ERO}
    assert info.to_json() == golden
    assert E2ESecInfo.from_json(golden) == info
    assert E2ESecInfo((SUID.RSPF_ESPRIM,)).to_json() == {"esf": [23]}


# ------------------------------------------------------------------ long names


def test_long_names_are_accepted() -> None:
    assert ReceiverESPrimRandObject.from_json(LONG_ERO, long_names=True) == receiver()
    long_oro = {
        "esprimRandID": "orig_7",
        "esprimRandValue": "x00112233445566778899aabbccddeeff",
        "esprimRandExpiry": "20261201T120000",
        "esprimKeyGenAlgID": 1,
        "esprimProtocolAndAlgIDs": [12],
    }
    assert OriginatorESPrimRandObject.from_json(long_oro, long_names=True) == originator()
    seci = SecurityInfo.from_json({"securityInfoType": 4, "esprimRandObject": LONG_ERO}, long_names=True)
    assert seci == SecurityInfo.rand_object_response(receiver())
    assert SecurityInfo.from_json({"securityInfoType": 5, "esprimObject": JWE}, long_names=True).esprim_object == JWE
    assert SecurityInfo.from_json({"securityInfoType": 6, "escertkeMessage": "AQI="}, long_names=True).escertke_message == b"\x01\x02"
    for spelling in ("supportedE2ESecFeatures", "supportede2ESecFeatures"):
        esi = E2ESecInfo.from_json({spelling: [43], "certificates": ["MAMCAQE="], "sharedReceiverESPrimRandObject": LONG_ERO}, long_names=True)
        assert esi.supported_features == (SUID.CERTIFICATE_ESPRIM,)
        assert esi.shared_rand_object == receiver()
    # emitting is always short names
    assert seci.to_json() == {"sit": 4, "ero": GOLDEN_ERO}


def test_long_and_short_names_do_not_mix() -> None:
    with pytest.raises(ParseError, match=r"seci\.securityInfoType: unknown member"):
        SecurityInfo.from_json({"securityInfoType": 3})
    with pytest.raises(ParseError, match=r"seci\.sit: unknown member"):
        SecurityInfo.from_json({"sit": 3}, long_names=True)
    with pytest.raises(ParseError, match=r"esi\.supportede2ESecFeatures: member given twice"):
        E2ESecInfo.from_json({"supportedE2ESecFeatures": [13], "supportede2ESecFeatures": [13]}, long_names=True)
    with pytest.raises(ParseError, match=r"ero\.esprimKeyGenAlgID: unknown member"):
        ReceiverESPrimRandObject.from_json({**LONG_ERO, "esprimKeyGenAlgID": 1}, long_names=True)
    with pytest.raises(ParseError, match=r"seci\.esprimObject: mandatory when securityInfoType is 5"):
        SecurityInfo.from_json({"securityInfoType": 5}, long_names=True)


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize(
    "obj",
    [
        receiver(),
        originator(),
        SecurityInfo.rand_object_request(),
        SecurityInfo.rand_object_response(receiver()),
        SecurityInfo.esprim(JWE),
        SecurityInfo.escertke(bytes(range(256))),
        SecurityInfo(SecurityInfoType(1), das_request={"x": [1, 2.5, None, True, "s", {"y": {}}]}),
        E2ESecInfo((SUID.CERTIFICATE_ESPRIM,), (b"\x30\x00", b"\x30\x01\x00"), receiver()),
    ],
    ids=lambda o: type(o).__name__,
)
def test_json_text_and_cbor_round_trip(obj: Any) -> None:
    cls = type(obj)
    assert cls.from_json(obj.to_json()) == obj
    assert cls.from_json_bytes(obj.to_json_bytes()) == obj
    assert cls.from_cbor(obj.to_cbor()) == obj
    # CBOR carries exactly the JSON data model: text-string keys (major type 3)
    assert cbor2.loads(obj.to_cbor()) == obj.to_json()


def test_relative_expiry_needs_a_clock_and_is_emitted_absolute() -> None:
    now = dt.datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
    rel = {**GOLDEN_ERO, "esrx": 3600000}
    with pytest.raises(ParseError, match=r"ero\.esrx: relative esprimRandExpiry needs a reference clock"):
        ReceiverESPrimRandObject.from_json(rel)
    ero = ReceiverESPrimRandObject.from_json(rel, clock=lambda: now)
    assert ero.expiry == now + dt.timedelta(hours=1)
    assert ero.to_json()["esrx"] == "20261126T110000"
    assert not ero.is_expired(now) and ero.is_expired(now + dt.timedelta(hours=1))
    seci = SecurityInfo.from_json({"sit": 4, "ero": {**GOLDEN_ERO, "esrx": "60000"}}, clock=now)
    assert seci.esprim_rand_object is not None
    assert seci.esprim_rand_object.expiry == now + dt.timedelta(minutes=1)


def test_fractional_expiry_round_trips() -> None:
    ero = ReceiverESPrimRandObject.from_json({**GOLDEN_ERO, "esrx": "20261201T120000,25"})
    assert ero.expiry.microsecond == 250000
    assert ero.to_json()["esrx"] == "20261201T120000,25"


# ------------------------------------------------------------------ rand value / id profile


def test_rand_value_profile() -> None:
    assert encode_rand_value(RAND) == "x00112233445566778899aabbccddeeff"
    assert decode_rand_value("x00112233445566778899aabbccddeeff") == RAND
    with pytest.raises(ValueError):
        encode_rand_value(b"\x00" * 15)


@pytest.mark.parametrize(
    "bad",
    [
        "x00112233445566778899AABBCCDDEEFF",  # uppercase hex
        "X00112233445566778899aabbccddeeff",  # uppercase prefix
        "00112233445566778899aabbccddeeff",  # no prefix
        "x00112233445566778899aabbccddee",  # 15 octets
        "x00112233445566778899aabbccddeeff00",  # 17 octets
        "x00112233445566778899aabbccddeefg",
        "ABEiM0RVZneImaq7zN3u/w==",  # base64 form
        "x00112233445566778899aabbccddeef",  # odd length
        "",
        16,
        None,
    ],
)
def test_bad_rand_value_forms(bad: object) -> None:
    with pytest.raises(ParseError, match=r"seci\.ero\.esrv: ") as ei:
        SecurityInfo.from_json({"sit": 4, "ero": {**GOLDEN_ERO, "esrv": bad}})
    if isinstance(bad, str) and bad:
        assert bad not in str(ei.value)  # never echo key-derivation input


@pytest.mark.parametrize("bad", ["1abc", "-abc", ".abc", "a:b", "a b", "", "é", "a/b", "ab\n", 7, None])
def test_bad_ncname(bad: object) -> None:
    with pytest.raises(ParseError, match=r"ero\.esri: "):
        ReceiverESPrimRandObject.from_json({**GOLDEN_ERO, "esri": bad})


@pytest.mark.parametrize("good", ["_a", "a", "A.b-c_9", "r" + "0" * 64])
def test_good_ncname(good: str) -> None:
    assert ReceiverESPrimRandObject.from_json({**GOLDEN_ERO, "esri": good}).rand_id == good


def test_factories_use_fresh_randomness_and_reprs_hide_the_value() -> None:
    a = new_receiver_rand_object(expiry=EXPIRY, rand_id="r1")
    b = new_receiver_rand_object(expiry=EXPIRY)
    o = new_originator_rand_object(expiry=EXPIRY, protocol_and_alg_ids=[ESPrimProtocolAndAlgID.JWE_A128GCM])
    assert len(a.rand_value) == 16 and a.rand_value != b.rand_value
    assert b.rand_id.startswith("r") and len(b.rand_id) == 33
    assert a.key_gen_alg_ids == (ESPrimKeyGenAlgID.HMAC_SHA256,)
    assert o.key_gen_alg_id is ESPrimKeyGenAlgID.HMAC_SHA256
    assert o.protocol_and_alg_ids == (ESPrimProtocolAndAlgID.JWE_A128GCM,)
    for obj in (a, b, o, SecurityInfo.rand_object_response(a), E2ESecInfo((SUID.MAF_ESPRIM,), None, a)):
        text = repr(obj)
        for rv in (a.rand_value, b.rand_value, o.rand_value):
            assert rv.hex() not in text and repr(rv) not in text
    assert "r1" in repr(a)
    with pytest.raises(ValueError):
        new_receiver_rand_object(expiry=EXPIRY, rand_id="1bad")
    with pytest.raises(ValueError):
        new_receiver_rand_object(expiry=dt.datetime(2026, 1, 1))  # naive expiry
    with pytest.raises(ValueError):
        new_receiver_rand_object(expiry=EXPIRY, key_gen_alg_ids=[])


# ------------------------------------------------------------------ rejections: securityInfo


def seci_err(obj: object, match: str) -> None:
    with pytest.raises(ParseError, match=match):
        SecurityInfo.from_json(obj)


def test_sit_rules() -> None:
    seci_err({"sit": 9}, r"seci\.sit: unknown SecurityInfoType value 9")
    seci_err({"sit": 0}, r"seci\.sit: unknown SecurityInfoType value 0")
    seci_err({}, r"seci\.sit: missing mandatory member")
    seci_err({"sit": 5}, r"seci\.epo: mandatory when securityInfoType is 5")
    seci_err({"sit": 4}, r"seci\.ero: mandatory when securityInfoType is 4")
    seci_err({"sit": 6}, r"seci\.eckm: mandatory when securityInfoType is 6")
    seci_err({"sit": 1}, r"seci\.dreq: mandatory when securityInfoType is 1")
    seci_err({"sit": 8}, r"seci\.dars: mandatory when securityInfoType is 8")
    seci_err({"sit": 3, "epo": JWE}, r"seci\.epo: not allowed when securityInfoType is 3")
    seci_err({"sit": 3, "ero": GOLDEN_ERO}, r"seci\.ero: not allowed when securityInfoType is 3")
    seci_err({"sit": 5, "epo": JWE, "eckm": "AQI="}, r"seci\.eckm: not allowed when securityInfoType is 5")
    seci_err({"sit": 4, "ero": GOLDEN_ERO, "dreq": {}}, r"seci\.dreq: not allowed")
    seci_err({"sit": 3, "vendor": 1}, r"seci\.vendor: unknown member")
    seci_err([], r"seci: expected an object, got array")
    seci_err(None, r"seci: expected an object, got null")


@pytest.mark.parametrize("bad", [True, "3", 3.0, None, [3]])
def test_sit_ill_typed(bad: object) -> None:
    seci_err({"sit": bad}, r"seci\.sit: expected an integer")


@pytest.mark.parametrize(
    "bad",
    [
        "AQI",  # missing padding
        "AQI=\n",
        "AQ I=",
        "AQJ=",  # non-canonical (unused bits set)
        "AQI==",
        "AQ-_",  # base64url alphabet
        "*",
        "",
        "====",
    ],
)
def test_eckm_malformed_base64(bad: str) -> None:
    seci_err({"sit": 6, "eckm": bad}, r"seci\.eckm: ")


def test_eckm_wrong_type() -> None:
    seci_err({"sit": 6, "eckm": [1, 2]}, r"seci\.eckm: expected a string, got array")


@pytest.mark.parametrize(
    "bad",
    [
        "a.b.c.d",  # 4 parts
        "a.b.c.d.e.f",
        ".b.c.d.e",  # empty protected header
        "a.b.c..e",  # empty ciphertext
        "a+b.c.d.e.f",
        "eyJ=.b.c.d.e",  # padding
        "eyJ.b.c.d.e",  # impossible base64url length (4k+1)
        "eyJh bGc.b.c.d.e",
        "",
    ],
)
def test_epo_malformed_jwe(bad: str) -> None:
    seci_err({"sit": 5, "epo": bad}, r"seci\.epo: ")


def test_epo_accepts_dir_shape_with_empty_key() -> None:
    assert SecurityInfo.from_json({"sit": 5, "epo": "eyJh..aXY.Y3Q."}).esprim_object == "eyJh..aXY.Y3Q."


def test_opaque_dyn_auth_elements_must_be_objects() -> None:
    seci_err({"sit": 1, "dreq": [1]}, r"seci\.dreq: expected an object, got array")
    seci_err({"sit": 2, "dres": "x"}, r"seci\.dres: expected an object, got string")


# ------------------------------------------------------------------ rejections: rand objects


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda o: o.pop("esrv"), r"seci\.ero\.esrv: missing mandatory member"),
        (lambda o: o.pop("esks"), r"seci\.ero\.esks: missing mandatory member"),
        (lambda o: o.update(esk=1), r"seci\.ero\.esk: unknown member"),
        (lambda o: o.update(vendorExt="x"), r"seci\.ero\.vendorExt: unknown member"),
        (lambda o: o.update(esks=[1, 2]), r"seci\.ero\.esks\[1\]: unknown ESPrimKeyGenAlgID value 2"),
        (lambda o: o.update(esks=[1, True]), r"seci\.ero\.esks\[1\]: expected an integer, got boolean"),
        (lambda o: o.update(esks=["1"]), r"seci\.ero\.esks\[0\]: expected an integer, got string"),
        (lambda o: o.update(esks=[]), r"seci\.ero\.esks: must contain at least one value"),
        (lambda o: o.update(esks=1), r"seci\.ero\.esks: expected an array, got integer"),
        (lambda o: o.update(esks=[1, 1]), r"seci\.ero\.esks\[1\]: duplicate value"),
        (lambda o: o.update(espa=[10, 13]), r"seci\.ero\.espa\[1\]: unknown ESPrimProtocolAndAlgID value 13"),
        (lambda o: o.update(espa=[]), r"seci\.ero\.espa: must contain at least one value"),
        (lambda o: o.update(espa=[10.0]), r"seci\.ero\.espa\[0\]: expected an integer, got number"),
        (lambda o: o.update(esrx="2026-12-01T12:00:00"), r"seci\.ero\.esrx: not an m2m:timestamp"),
        (lambda o: o.update(esrx="20261201T120000Z"), r"seci\.ero\.esrx: m2m:timestamp must not carry time-zone"),
        (lambda o: o.update(esrx=True), r"seci\.ero\.esrx: expected an m2m:absRelTimestamp, got bool"),
        (lambda o: o.update(esrx=-5), r"seci\.ero\.esrx: relative m2m:absRelTimestamp out of range"),
        (lambda o: o.update(esri=None), r"seci\.ero\.esri: expected a string, got null"),
    ],
)
def test_receiver_rand_object_rejections(mutate: Any, match: str) -> None:
    ero = copy.deepcopy(GOLDEN_ERO)
    mutate(ero)
    seci_err({"sit": 4, "ero": ero}, match)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda o: o.update(esk=[1]), r"oro\.esk: expected an integer, got array"),
        (lambda o: o.update(esk=True), r"oro\.esk: expected an integer, got boolean"),
        (lambda o: o.update(esk=2), r"oro\.esk: unknown ESPrimKeyGenAlgID value 2"),
        (lambda o: o.update(esks=[1]), r"oro\.esks: unknown member"),
        (lambda o: o.pop("esk"), r"oro\.esk: missing mandatory member"),
        (lambda o: o.pop("espa"), r"oro\.espa: missing mandatory member"),
    ],
)
def test_originator_rand_object_rejections(mutate: Any, match: str) -> None:
    oro = copy.deepcopy(GOLDEN_ORO)
    mutate(oro)
    with pytest.raises(ParseError, match=match):
        OriginatorESPrimRandObject.from_json(oro)


# ------------------------------------------------------------------ rejections: e2eSecInfo


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({}, r"esi\.esf: missing mandatory member"),
        ({"esf": []}, r"esi\.esf: must contain at least one value"),
        ({"esf": [16]}, r"esi\.esf\[0\]: unknown SUID value 16"),
        ({"esf": [13, 31]}, r"esi\.esf\[1\]: unknown SUID value 31"),
        ({"esf": [13, True]}, r"esi\.esf\[1\]: expected an integer, got boolean"),
        ({"esf": ["13"]}, r"esi\.esf\[0\]: expected an integer, got string"),
        ({"esf": [13, 13]}, r"esi\.esf\[1\]: duplicate value"),
        ({"esf": [13], "escert": []}, r"esi\.escert: must contain at least one value"),
        ({"esf": [13], "escert": "MAMCAQE="}, r"esi\.escert: expected an array, got string"),
        ({"esf": [13], "escert": ["MAMCAQE=", "MAMCAQ"]}, r"esi\.escert\[1\]: malformed base64"),
        ({"esf": [13], "escert": ["MAMCAQE=", "MAMCAQE="]}, r"esi\.escert\[1\]: duplicate value"),
        ({"esf": [13], "esro": {**GOLDEN_ERO, "esrv": "x00"}}, r"esi\.esro\.esrv: "),
        ({"esf": [13], "esro": {"sit": 3}}, r"esi\.esro\.sit: unknown member"),
        ({"esf": [13], "supportedE2ESecFeatures": [13]}, r"esi\.supportedE2ESecFeatures: unknown member"),
    ],
)
def test_e2e_sec_info_rejections(obj: object, match: str) -> None:
    with pytest.raises(ParseError, match=match):
        E2ESecInfo.from_json(obj)


def test_e2e_sec_info_certificates_load_as_x509() -> None:
    der = self_signed_der()
    info = E2ESecInfo.from_json({"esf": [43], "escert": [base64.b64encode(der).decode()]})
    assert info.certificates == (der,)
    (cert,) = info.load_certificates()
    assert cert.subject.rfc4514_string() == "CN=ae1"
    with pytest.raises(ParseError, match=r"esi\.escert\[0\]: not a DER X\.509 certificate"):
        E2ESecInfo((SUID.CERTIFICATE_ESPRIM,), (b"\x30\x00",)).load_certificates()


def test_constructor_rejects_inconsistent_objects() -> None:
    with pytest.raises(ValueError):
        SecurityInfo(SecurityInfoType.ESPRIM_OBJECT)
    with pytest.raises(ValueError):
        SecurityInfo(SecurityInfoType.RECEIVER_ESPRIM_RAND_OBJECT_REQUEST, esprim_object=JWE)
    with pytest.raises(ValueError):
        SecurityInfo(SecurityInfoType.ESPRIM_OBJECT, esprim_object="not-a-jwe")
    with pytest.raises(ValueError):
        SecurityInfo(SecurityInfoType.ESCERTKE_MESSAGE, escertke_message=b"")
    with pytest.raises(ValueError):
        SecurityInfo(9)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        E2ESecInfo(())
    with pytest.raises(ValueError):
        E2ESecInfo((SUID.MAF_ESPRIM,), ())
    with pytest.raises(ValueError):
        ReceiverESPrimRandObject("a", b"\x00" * 16, EXPIRY, (10,), (1, 1))  # type: ignore[arg-type]


# ------------------------------------------------------------------ text / CBOR decoding strictness


def test_json_text_rejects_duplicates_and_nan() -> None:
    with pytest.raises(ParseError, match="duplicate JSON member name 'sit'"):
        SecurityInfo.from_json_bytes(b'{"sit": 3, "sit": 3}')
    with pytest.raises(ParseError, match="NaN is not valid JSON"):
        SecurityInfo.from_json_bytes(b'{"sit": NaN}')
    with pytest.raises(ParseError, match="malformed JSON"):
        SecurityInfo.from_json_bytes(b'{"sit": 3')
    with pytest.raises(ParseError, match="malformed JSON"):
        SecurityInfo.from_json_bytes(b'{"sit": 3}\xff')


def test_cbor_rejects_non_json_items_and_trailing_bytes() -> None:
    with pytest.raises(ParseError, match="trailing bytes"):
        SecurityInfo.from_cbor(cbor2.dumps({"sit": 3}) + b"\x00")
    with pytest.raises(ParseError, match="bytes is not a JSON value"):
        SecurityInfo.from_cbor(cbor2.dumps({"sit": 6, "eckm": b"\x01"}))
    with pytest.raises(ParseError, match="member name must be a string"):
        SecurityInfo.from_cbor(cbor2.dumps({1: 3}))
    with pytest.raises(ParseError, match="malformed CBOR"):
        SecurityInfo.from_cbor(b"\xa1")
    with pytest.raises(ParseError, match="not a JSON value"):
        SecurityInfo.from_cbor(cbor2.dumps({"sit": cbor2.CBORTag(1, 0)}))


def test_long_name_missing_member_uses_the_data_type_table_spelling() -> None:
    with pytest.raises(ParseError, match=r"esi\.supportedE2ESecFeatures: missing mandatory member"):
        E2ESecInfo.from_json({"certificates": ["MAMCAQE="]}, long_names=True)
    with pytest.raises(ParseError, match=r"ero\.esprimRandValue: missing mandatory member"):
        ReceiverESPrimRandObject.from_json({k: v for k, v in LONG_ERO.items() if k != "esprimRandValue"}, long_names=True)


def test_constructor_rejects_booleans_as_enum_values() -> None:
    with pytest.raises(ValueError):
        E2ESecInfo((True,))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ReceiverESPrimRandObject("a", RAND, EXPIRY, (10,), (True,))  # type: ignore[arg-type]
