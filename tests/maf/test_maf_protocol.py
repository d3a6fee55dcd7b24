"""Pure tests of the MAF messages (m2msec.maf.protocol): round trips, strict parsing, SUID rules."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from datetime import UTC, datetime

import pytest

from m2msec.errors import ParseError
from m2msec.maf.protocol import (
    ClientRegistrationRequest,
    KeyRegistrationRequest,
    KeyRegistrationUpdateRequest,
    KeyRetrievalRequest,
    KeyRetrievalResponse,
    MAFError,
    Procedure,
    RegistrationUpdateRequest,
    check_suid_targets,
    decode_body,
    _Message,
    encode_body,
)
from m2msec.onem2m.enums import SUID

T = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def test_key_registration_wire_form_and_round_trip() -> None:
    req = KeyRegistrationRequest("maf.example.com", T, "sp.example.com", SUID.MAF_ESDATA_ENCRYPT,
                                 labels=("a",), target_ids=("//sp/CAE2", "//sp/CAE3"), key_value=bytes(range(32)))
    body = encode_body(req)
    assert body == (b'{"mafFQDN":"maf.example.com","expirationTime":"20300101T120000","adminFQDN":"sp.example.com",'
                    b'"suid":34,"labels":["a"],"targetIDs":["//sp/CAE2","//sp/CAE3"],'
                    b'"keyValue":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}')
    assert decode_body(KeyRegistrationRequest, body) == req
    assert "AAECAw" not in repr(req) and "hidden" in repr(req)
    rsp = KeyRetrievalResponse(T, "//sp/CAE1", "sp.example.com", SUID.MAF_ESPRIM, bytes(32))
    assert "key_value" not in repr(rsp)
    assert decode_body(KeyRetrievalResponse, encode_body(rsp)) == rsp


def test_procedures_have_distinct_paths() -> None:
    assert len({p.path for p in Procedure}) == len(Procedure)
    assert Procedure.by_path("/maf/keyRetrieval") is Procedure.KEY_RETRIEVAL and Procedure.by_path("/x") is None


@pytest.mark.parametrize("body", [
    b'{"mafFQDN":"maf.example.com","expirationTime":"20300101T120000Z","adminFQDN":"sp.example.com"}',
    b'{"mafFQDN":"maf example","expirationTime":"20300101T120000","adminFQDN":"sp.example.com"}',
    b'{"mafFQDN":"maf.example.com","adminFQDN":"sp.example.com"}',
    b'{"mafFQDN":"maf.example.com","expirationTime":"20300101T120000","adminFQDN":null}',
    b'{"mafFQDN":"maf.example.com","expirationTime":"20300101T120000","adminFQDN":"sp.example.com","labels":[1]}',
    b'{"mafFQDN":"maf.example.com","expirationTime":"20300101T120000","adminFQDN":"sp.example.com","x":1}',
    b'{"mafFQDN":"maf.example.com","expirationTime":"20300101T120000","adminFQDN":"sp.example.com",'
    b'"labels":["a b"]}',
])
def test_client_registration_rejections(body: bytes) -> None:
    with pytest.raises(ParseError) as ei:
        decode_body(ClientRegistrationRequest, body)
    assert int(ei.value.rsc) == 4000


@pytest.mark.parametrize("body", [
    b'{"relativeKeyID":"00112233445566778899aabbccddeeff","relativeKeyID":"00112233445566778899aabbccddeeff"}',
    b'{"relativeKeyID":NaN}', b'{"relativeKeyID":Infinity}', b'\xff\xfe', b'', b'[]', b'{"relativeKeyID":"0011"} x',
    b'{"relativeKeyID":' * 5000,
])
def test_bodies_outside_strict_json_refused(body: bytes) -> None:
    with pytest.raises(ParseError) as ei:
        decode_body(KeyRetrievalRequest, body)
    assert int(ei.value.rsc) == 4000


def test_every_message_names_each_field_once_in_field_order() -> None:
    """to_json walks ``_names``: it must list exactly the dataclass fields, in their order."""
    todo, seen = list(_Message.__subclasses__()), []
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if is_dataclass(cls):
            seen.append(cls.__name__)
            assert list(cls._names) == [f.name for f in fields(cls)], cls.__name__
    assert {"DeregistrationResponse", "KeyDeregistrationResponse", "KeyRetrievalResponse"} <= set(seen)


def test_update_needs_a_change() -> None:
    with pytest.raises(ParseError):
        decode_body(RegistrationUpdateRequest, b'{"mafFQDN":"maf.example.com","mafClientRegID":"' + b"a" * 32 + b'"}')
    with pytest.raises(ParseError):
        decode_body(KeyRegistrationUpdateRequest,
                    b'{"mafFQDN":"maf.example.com","relativeKeyID":"' + b"a" * 32 + b'"}')


@pytest.mark.parametrize("kv", ['"AAAA"', '"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"', '"%%"', "5"])
def test_key_value_must_be_32_octets_of_canonical_base64(kv: str) -> None:
    body = ('{"mafFQDN":"maf.example.com","expirationTime":"20300101T120000","adminFQDN":"sp.example.com",'
            '"suid":34,"keyValue":%s}' % kv).encode()
    with pytest.raises(ParseError):
        decode_body(KeyRegistrationRequest, body)


def test_suid_rules() -> None:
    check_suid_targets(SUID.MAF_SAEF, ("a",), required=True)
    check_suid_targets(SUID.MAF_ESPRIM, ("a",), required=True)
    check_suid_targets(SUID.MAF_ESDATA_ENCRYPT, ("a", "b", "c"), required=True)
    check_suid_targets(SUID.MAF_ESDATA_SIGN, None, required=False)
    for suid, targets in ((SUID.MAF_SAEF, ("a", "b")), (SUID.MAF_ESPRIM, ()), (SUID.MAF_ESDATA_SIGN, ()),
                          (SUID.PRE_PROVISIONED_SAEF, ("a",)), (SUID.RSPF_ESPRIM, ("a",)),
                          (SUID.MAF_ESDATA_ENCRYPT, None)):
        with pytest.raises(MAFError) as ei:
            check_suid_targets(suid, targets, required=True)
        assert int(ei.value.rsc) == 4102
    with pytest.raises(ParseError):
        decode_body(KeyRegistrationRequest, b'{"mafFQDN":"maf.example.com","expirationTime":"20300101T120000",'
                                            b'"adminFQDN":"sp.example.com","suid":99}')
    with pytest.raises(ParseError):
        decode_body(KeyRegistrationRequest, b'{"mafFQDN":"maf.example.com","expirationTime":"20300101T120000",'
                                            b'"adminFQDN":"sp.example.com","suid":true}')
