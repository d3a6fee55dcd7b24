"""``docs/maf-openapi.yaml`` against the MAF as built (TS-0003 8.8.2 message tables).

1. The document is a valid OpenAPI 3.1 description (openapi-spec-validator).
2. It describes exactly the procedures of :class:`m2msec.maf.protocol.Procedure`: every path,
   its success status (TS-0009 mapping of the success RSC), and for every message the JSON
   members and which of them are mandatory, compared with the message classes.
3. Every body a real MAF (TLS-PSK, h11, real store) receives and sends in a run of all eight
   procedures, and the refusals, validates against the schema of its operation and status.
4. Schema and parser agree on invalid bodies: what the schema refuses, the MAF refuses with
   4000 (and a valid body passes both).
"""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from _mafhelp import ADMIN, AE1, AE2, MAF, FakeClock, connected, make_service, make_store, run, running
from openapi_spec_validator import validate as validate_openapi

from m2msec.errors import ParseError
from m2msec.maf.protocol import (
    ClientRegistrationRequest,
    ConfigurationRetrievalRequest,
    DeregistrationRequest,
    KeyDeregistrationRequest,
    KeyRegistrationRequest,
    KeyRegistrationUpdateRequest,
    KeyRetrievalRequest,
    Procedure,
    RegistrationUpdateRequest,
    _EmptyMessage,
    decode_body,
    encode_body,
)
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode as RSC

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "maf-openapi.yaml"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return yaml.safe_load(DOC_PATH.read_text("utf-8"))


def node_ref(ref: str) -> list[str]:
    assert ref.startswith("#/"), ref
    return ref[2:].split("/")


def deref(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = doc
        for part in node_ref(node["$ref"]):
            target = target[part]
        node = target
    return node


def schema_of(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """A self-contained JSON Schema (2020-12) for components/schemas/<name>."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": doc["components"], "$ref": f"#/components/schemas/{name}"}


def body_schema_name(doc: dict[str, Any], node: dict[str, Any]) -> str:
    media = deref(doc, node)["content"]["application/json"]["schema"]
    return media["$ref"].rsplit("/", 1)[-1]


def check(doc: dict[str, Any], name: str, body: bytes) -> None:
    jsonschema.validate(json.loads(body), schema_of(doc, name),
                        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def _json_members(cls: type) -> tuple[set[str], set[str]]:
    """(all JSON members, mandatory JSON members) of a message class."""
    names: dict[str, str] = cls._names  # type: ignore[attr-defined]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = {names[a] for a in names
                if fields[a].default is dataclasses.MISSING and fields[a].default_factory is dataclasses.MISSING}
    return set(names.values()), required


# ------------------------------------------------------------------ 1 and 2: the document itself


def test_document_is_valid_openapi_31(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1")
    validate_openapi(doc)


def test_document_describes_exactly_the_procedures(doc: dict[str, Any]) -> None:
    assert set(doc["paths"]) == {p.path for p in Procedure}
    for proc in Procedure:
        item = doc["paths"][proc.path]
        assert set(item) == {"post"}, f"{proc.path}: only POST is served"
        op = item["post"]
        assert proc.clause in op["summary"], (proc, op["summary"])
        req_name = body_schema_name(doc, op["requestBody"])
        assert req_name == proc.request_type.__name__
        ok = str(proc.success.http_status)
        assert ok in op["responses"], (proc, ok)
        rsp_name = body_schema_name(doc, op["responses"][ok])
        assert rsp_name == ("Empty" if issubclass(proc.response_type, _EmptyMessage) else proc.response_type.__name__)
        assert str(int(proc.success)) in deref(doc, op["responses"][ok])["description"]
        for status, node in op["responses"].items():
            if status != ok:
                assert body_schema_name(doc, node) == "Error", (proc, status)


@pytest.mark.parametrize("proc", list(Procedure), ids=lambda p: p.name.lower())
def test_members_match_the_message_classes(doc: dict[str, Any], proc: Procedure) -> None:
    schemas = doc["components"]["schemas"]
    for cls in (proc.request_type, proc.response_type):
        if issubclass(cls, _EmptyMessage):
            assert schemas["Empty"]["maxProperties"] == 0
            continue
        members, required = _json_members(cls)
        schema = schemas[cls.__name__]
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        assert set(schema["properties"]) == members, cls.__name__
        assert set(schema.get("required", [])) == required, cls.__name__


# ------------------------------------------------------------------ 3: real traffic


@pytest.fixture()
def env(tmp_path: Path):
    clock = FakeClock()
    store = make_store(tmp_path / "maf.db", clock)
    svc = make_service(store, clock)
    yield clock, svc
    store.close()


def test_real_bodies_validate(doc: dict[str, Any], env) -> None:
    clock, svc = env
    exp = clock.now + timedelta(days=1)
    seen: set[tuple[str, int]] = set()

    async def exchange(c: Any, proc: Procedure, msg: Any, expect: RSC) -> dict[str, Any]:
        body = encode_body(msg)
        check(doc, proc.request_type.__name__, body)
        status, rsc, out = await c.raw(proc, body)
        assert rsc == int(expect), out
        op = doc["paths"][proc.path]["post"]
        node = op["responses"].get(str(status), op["responses"]["default"])
        check(doc, body_schema_name(doc, node), out)
        assert status == RSC(rsc).http_status
        seen.add((proc.path, status))
        return json.loads(out)

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as a, connected(srv.port, AE2) as b:
            reg = await exchange(a, Procedure.CLIENT_REGISTRATION,
                                 ClientRegistrationRequest(MAF, exp, ADMIN, ("dev",)), RSC.CREATED)
            await exchange(b, Procedure.CLIENT_REGISTRATION, ClientRegistrationRequest(MAF, exp, ADMIN), RSC.CREATED)
            await exchange(a, Procedure.CLIENT_REGISTRATION, ClientRegistrationRequest(MAF, exp, ADMIN),
                           RSC.ORIGINATOR_HAS_ALREADY_REGISTERED)
            reg_id = reg["mafClientRegID"]
            await exchange(a, Procedure.CONFIGURATION_RETRIEVAL, ConfigurationRetrievalRequest(MAF, reg_id), RSC.OK)
            await exchange(a, Procedure.REGISTRATION_UPDATE,
                           RegistrationUpdateRequest(MAF, reg_id, expiration_time=exp, labels=("x",)), RSC.UPDATED)
            exported = await exchange(a, Procedure.KEY_REGISTRATION,
                                      KeyRegistrationRequest(MAF, exp, ADMIN, SUID.MAF_ESPRIM, None, (AE2,)),
                                      RSC.CREATED)
            supplied = await exchange(a, Procedure.KEY_REGISTRATION,
                                      KeyRegistrationRequest(MAF, exp, ADMIN, SUID.MAF_ESDATA_ENCRYPT, ("l",),
                                                             (AE1, AE2), bytes(range(32))), RSC.CREATED)
            await exchange(a, Procedure.KEY_REGISTRATION,  # SUID 33 with two targets: 4102
                           KeyRegistrationRequest(MAF, exp, ADMIN, SUID.MAF_ESPRIM, None, (AE1, AE2), bytes(32)),
                           RSC.CONTENTS_UNACCEPTABLE)
            rel = exported["relativeKeyID"]
            await exchange(b, Procedure.KEY_RETRIEVAL, KeyRetrievalRequest(rel), RSC.OK)
            await exchange(b, Procedure.KEY_RETRIEVAL, KeyRetrievalRequest(supplied["relativeKeyID"]), RSC.OK)
            await exchange(a, Procedure.KEY_RETRIEVAL, KeyRetrievalRequest(rel), RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
            await exchange(b, Procedure.KEY_RETRIEVAL, KeyRetrievalRequest("0" * 32), RSC.NOT_FOUND)
            await exchange(a, Procedure.KEY_REGISTRATION_UPDATE,
                           KeyRegistrationUpdateRequest(MAF, rel, labels=("y",)), RSC.UPDATED)
            await exchange(b, Procedure.KEY_REGISTRATION_UPDATE,
                           KeyRegistrationUpdateRequest(MAF, rel, labels=("z",)), RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
            await exchange(a, Procedure.KEY_DEREGISTRATION, KeyDeregistrationRequest(MAF, rel), RSC.DELETED)
            await exchange(a, Procedure.DEREGISTRATION, DeregistrationRequest(MAF, reg_id), RSC.DELETED)
            # a malformed body: 4000 with an Error body
            status, rsc, out = await b.raw(Procedure.KEY_RETRIEVAL, b'{"relativeKeyID": 1}')
            assert (status, rsc) == (400, int(RSC.BAD_REQUEST))
            check(doc, "Error", out)

    run(main)
    assert {p.path for p in Procedure} <= {path for path, _ in seen}


# ------------------------------------------------------------------ 4: schema and parser agree

_VALID: dict[str, dict[str, Any]] = {
    "ClientRegistrationRequest": {"mafFQDN": MAF, "expirationTime": "20300101T120000", "adminFQDN": ADMIN},
    "KeyRegistrationRequest": {"mafFQDN": MAF, "expirationTime": "20300101T120000,5", "adminFQDN": ADMIN,
                               "suid": 34, "targetIDs": [AE1, AE2], "labels": ["a"],
                               "keyValue": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="},
    "KeyRetrievalRequest": {"relativeKeyID": "00112233445566778899aabbccddeeff"},
    "RegistrationUpdateRequest": {"mafFQDN": MAF, "mafClientRegID": "ab" * 16, "labels": ["x"]},
    "KeyRegistrationUpdateRequest": {"mafFQDN": MAF, "relativeKeyID": "ab" * 16, "targetIDs": [AE1]},
}
_CLASSES = {c.__name__: c for c in (ClientRegistrationRequest, KeyRegistrationRequest, KeyRetrievalRequest,
                                    RegistrationUpdateRequest, KeyRegistrationUpdateRequest)}


def _mutations() -> list[tuple[str, str, dict[str, Any]]]:
    out: list[tuple[str, str, dict[str, Any]]] = []
    reg = _VALID["ClientRegistrationRequest"]
    key = _VALID["KeyRegistrationRequest"]
    ret = _VALID["KeyRetrievalRequest"]
    out += [
        ("ClientRegistrationRequest", "missing mandatory", {k: v for k, v in reg.items() if k != "adminFQDN"}),
        ("ClientRegistrationRequest", "unknown member", {**reg, "extra": 1}),
        ("ClientRegistrationRequest", "zone designator", {**reg, "expirationTime": "20300101T120000Z"}),
        ("ClientRegistrationRequest", "ISO 8601 extended", {**reg, "expirationTime": "2030-01-01T12:00:00"}),
        ("ClientRegistrationRequest", "FQDN label with _", {**reg, "mafFQDN": "maf_1.example.com"}),
        ("ClientRegistrationRequest", "label with space", {**reg, "labels": ["a b"]}),
        ("ClientRegistrationRequest", "duplicate label", {**reg, "labels": ["a", "a"]}),
        ("ClientRegistrationRequest", "labels not a list", {**reg, "labels": "a"}),
        ("ClientRegistrationRequest", "null member", {**reg, "labels": None}),
        ("KeyRegistrationRequest", "suid as string", {**key, "suid": "34"}),
        ("KeyRegistrationRequest", "suid not an m2m:suid", {**key, "suid": 99}),
        ("KeyRegistrationRequest", "suid true", {**key, "suid": True}),
        ("KeyRegistrationRequest", "short key", {**key, "keyValue": "AAECAw=="}),
        ("KeyRegistrationRequest", "unpadded key", {**key, "keyValue": key["keyValue"].rstrip("=")}),
        ("KeyRegistrationRequest", "base64url key", {**key, "keyValue": "_" + key["keyValue"][1:]}),
        ("KeyRegistrationRequest", "257 targets", {**key, "targetIDs": [f"C{i}" for i in range(257)]}),
        ("KeyRetrievalRequest", "upper-case hex", {"relativeKeyID": ret["relativeKeyID"].upper()}),
        ("KeyRetrievalRequest", "31 digits", {"relativeKeyID": ret["relativeKeyID"][:-1]}),
        ("KeyRetrievalRequest", "full key identifier", {"relativeKeyID": f"{ret['relativeKeyID']}@{MAF}"}),
        ("KeyRetrievalRequest", "empty object", {}),
        ("RegistrationUpdateRequest", "nothing to update", {"mafFQDN": MAF, "mafClientRegID": "ab" * 16}),
        ("RegistrationUpdateRequest", "bad reg ID", {**_VALID["RegistrationUpdateRequest"], "mafClientRegID": "x"}),
        ("KeyRegistrationUpdateRequest", "nothing to update", {"mafFQDN": MAF, "relativeKeyID": "ab" * 16}),
    ]
    return out


@pytest.mark.parametrize("name", sorted(_VALID))
def test_valid_bodies_pass_schema_and_parser(doc: dict[str, Any], name: str) -> None:
    body = json.dumps(_VALID[name]).encode()
    check(doc, name, body)
    decode_body(_CLASSES[name], body)


@pytest.mark.parametrize(("name", "what", "obj"), _mutations(), ids=[f"{n}-{w}" for n, w, _ in _mutations()])
def test_invalid_bodies_fail_schema_and_parser(doc: dict[str, Any], name: str, what: str, obj: dict[str, Any]) -> None:
    body = json.dumps(obj).encode()
    with pytest.raises(jsonschema.ValidationError):
        check(doc, name, body)
    with pytest.raises(ParseError):
        decode_body(_CLASSES[name], body)
