"""``docs/mef-openapi.yaml`` against the MEF as built (TS-0003 8.3.2.1, 8.3.6; RFC 7030; RFC 2585).

1. The document is a valid OpenAPI 3.1 description (openapi-spec-validator).
2. It describes exactly what the MEF routes: the routing table is read from the code (the
   ``path ==`` / ``path.startswith`` / ``op in`` tests and ``method !=`` guards of
   ``MEFServer``, ``ESTService.handle`` and ``CRLHTTPServer``) and compared with the
   document's paths and methods; a real MEF answers every other method 4005 (405) and an
   unknown path 4004 (404).
3. Every exchange with a real MEF (TLS-PSK, certificate TLS, h11, real store, real EST CA)
   and a real CRL server - successes and refusals - validates against the document: the
   status is listed for that operation, the documented headers are there and match, the
   Content-Type is a documented one, and the body matches its schema (JSON Schema for JSON;
   base64 decoded and parsed as the ``contentMediaType`` says for EST; DER for the CRL).
4. Schema and parser agree on invalid JSON bodies: what the schema refuses, the parser
   refuses with 4000 (and a valid body passes both).
"""

from __future__ import annotations

import ast
import asyncio
import base64
import email.parser
import email.policy
import inspect
import json
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import jsonschema
import pytest
import yaml
from _esthelp import CERT_ENROLEE, World, make_world
from _mefhelp import B_PSK, B_PSK_ID, ENROLEE, ENROLEE_B, KPM_ID, MEF_FQDN, run
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from openapi_spec_validator import validate as validate_openapi

from m2msec.errors import ParseError
from m2msec.mef import EnroleeConfig, MAFPreference, TargetConfig, mef_tls_config
from m2msec.mef import server as server_mod
from m2msec.mef.est import ESTService
from m2msec.mef.est_client import ESTSession, build_est_csr, est_enrol
from m2msec.mef.est_crl import ESTCRLPublisher
from m2msec.mef.estder import decode_csrattrs
from m2msec.mef.protocol import EnrolmentRequest, EnrolmentResponse, FetchSuccess, parse_fetch_response
from m2msec.mef.state import MEFError, SessionPeer
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.pki import crl_http
from m2msec.pki.crl_http import CRLHTTPServer
from m2msec.pki.keypolicy import KeyType, generate_private_key
from m2msec.tls.aio import open_connection
from m2msec.tls.engine import PSKCredentials, TLSConfig

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "mef-openapi.yaml"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
MAF_FQDN = "maf.m2m.example.com"
RM_ENROLEE = "/id-in/Crmdev"
RM_KPM_ID = "kpm-rmdev"
RM_KPM = b"r" * 32


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return yaml.safe_load(DOC_PATH.read_text("utf-8"))


def deref(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def validate_json(doc: dict[str, Any], schema: dict[str, Any], value: Any) -> None:
    """``value`` against ``schema`` (an OpenAPI 3.1 Schema Object: JSON Schema 2020-12), refs into the doc."""
    jsonschema.validate(value, {"$schema": "https://json-schema.org/draft/2020-12/schema",
                                "components": doc["components"], "allOf": [schema]},
                        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def component(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


# ------------------------------------------------------------------ 1: the document


def test_document_is_valid_openapi_31(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1")
    validate_openapi(doc)


def test_security_schemes_per_operation(doc: dict[str, Any]) -> None:
    """Which sessions may use what, as the server's peer-kind checks say."""
    schemes = set(doc["components"]["securitySchemes"])
    assert schemes == {"kpm", "enroleeCertificate", "gba", "kre", "targetPsk", "targetCertificate"}
    assert all(s["type"] == "mutualTLS" for s in doc["components"]["securitySchemes"].values())

    def names(op: dict[str, Any]) -> set[str]:
        return {k for req in op.get("security", doc["security"]) for k in req}

    enrolee = {"kpm", "enroleeCertificate", "gba", "kre"}
    p = doc["paths"]
    assert names(p["/enrolment"]["post"]) == enrolee == names(p["/enrolment/complete"]["post"])
    assert names(p["/fetchCredentials/{KeID}/{SUID}"]["get"]) == {"targetPsk", "targetCertificate", "kre"}
    assert names(p["/.well-known/est/cacerts"]["get"]) == schemes
    assert names(p["/.well-known/est/simpleenroll"]["post"]) == enrolee
    assert names(p["/.well-known/est/simplereenroll"]["post"]) == {"enroleeCertificate"}
    assert p["/crl/{signer}.crl"]["get"]["security"] == [] == p["/crl/{signer}.crl"]["head"]["security"]


# ------------------------------------------------------------------ 2: the routing table in the code


def _func_ast(fn: Any) -> ast.Module:
    return ast.parse(textwrap.dedent(inspect.getsource(fn)))


def _const(node: ast.AST, names: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return names[node.id]
    if isinstance(node, ast.Tuple):
        return tuple(_const(e, names) for e in node.elts)
    raise AssertionError(f"not a constant: {ast.dump(node)}")


def _methods_in(body: list[ast.stmt], names: dict[str, Any]) -> set[str]:
    """Methods a branch admits: the right side of ``method != "X"`` / ``method not in (...)``."""
    out: set[str] = set()
    for node in ast.walk(ast.Module(body=body, type_ignores=[])):
        if (isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "method"
                and isinstance(node.ops[0], (ast.NotEq, ast.NotIn))):
            v = _const(node.comparators[0], names)
            out |= set(v) if isinstance(v, tuple) else {v}
    return out


def _path_test(test: ast.expr, var: str, names: dict[str, Any]) -> tuple[str, str] | None:
    """``("==", X)`` for ``var == X``, ``("prefix", X)`` for ``var.startswith(X)``, ``("in", X)`` for ``var in X``."""
    for node in ast.walk(test):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == var:
            if isinstance(node.ops[0], ast.Eq):
                return "==", _const(node.comparators[0], names)
            if isinstance(node.ops[0], ast.In):
                return "in", _const(node.comparators[0], names)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "startswith"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == var):
            return "prefix", _const(node.args[0], names)
    return None


def code_routes() -> dict[str, set[str]]:
    """{path or prefix: methods} as the MEF's code routes them."""
    from m2msec.mef import est as est_mod

    routes: dict[str, set[str]] = {}
    names = vars(server_mod)
    # MEFServer._connection hands EST_PREFIX to the ESTService; _dispatch routes the rest
    conn_ifs = [n for n in ast.walk(_func_ast(server_mod.MEFServer._connection)) if isinstance(n, ast.If)]
    est_prefixes = {t[1] for n in conn_ifs if (t := _path_test(n.test, "path", names)) and t[0] == "prefix"}
    assert est_prefixes == {est_mod.EST_PREFIX}
    for node in ast.walk(_func_ast(server_mod.MEFServer._dispatch)):
        if isinstance(node, ast.If) and (t := _path_test(node.test, "path", names)):
            kind, value = t
            routes[value + ("*" if kind == "prefix" else "")] = {m.lower() for m in _methods_in(node.body, names)}
    enames = vars(est_mod)
    for node in ast.walk(_func_ast(est_mod.ESTService.handle)):
        if isinstance(node, ast.If) and (t := _path_test(node.test, "op", enames)) and t[0] == "in":
            for op in t[1]:
                routes[est_mod.EST_PREFIX + op] = {m.lower() for m in _methods_in(node.body, enames)}
    # CRLHTTPServer._answer: PREFIX<name>.crl for each source; ESTCRLPublisher.signers names them
    src = inspect.getsource(crl_http.CRLHTTPServer._answer)
    assert 'path.startswith(PREFIX) and path.endswith(".crl")' in src
    crl_methods = _methods_in(_func_ast(crl_http.CRLHTTPServer._answer).body, vars(crl_http))
    signers = inspect.getsource(ESTCRLPublisher.signers.fget)  # type: ignore[attr-defined]
    for signer in re.findall(r'"(root|intermediate)"', signers):
        routes[f"{crl_http.PREFIX}{signer}.crl"] = {m.lower() for m in crl_methods}
    return routes


def doc_routes(doc: dict[str, Any]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for tpl, item in doc["paths"].items():
        methods = {m for m in item if m in METHODS}
        if "{signer}" in tpl:
            (param,) = [p for p in item["parameters"] if p["name"] == "signer"]
            for s in param["schema"]["enum"]:
                out[tpl.replace("{signer}", s)] = methods
        elif "{" in tpl:
            out[tpl.split("{", 1)[0] + "*"] = methods
        else:
            out[tpl] = methods
    return out


def test_routes_are_exactly_the_documented_paths(doc: dict[str, Any]) -> None:
    routes = code_routes()
    assert len(routes) >= 10, routes  # the extraction found the routing table
    assert routes == doc_routes(doc)
    assert routes["/fetchCredentials/*"] == {"get"} and routes["/crl/root.crl"] == {"get", "head"}


# ------------------------------------------------------------------ 3: real traffic


def _template(doc: dict[str, Any], path: str) -> tuple[str, dict[str, str]] | None:
    for tpl in doc["paths"]:
        rx = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(tpl)) + "$"
        m = re.match(rx, path)
        if m:
            return tpl, m.groupdict()
    return None


def _media_key(content: dict[str, Any], ctype: str) -> str:
    if ctype in content:
        return ctype
    bare = ctype.split(";", 1)[0].strip().lower()
    assert bare in content, (ctype, list(content))
    return bare


def _decode_b64(body: bytes) -> bytes:
    return base64.b64decode(b"".join(body.split()), validate=True)


def _parse_as(media: str, der: bytes) -> None:
    """Parse ``der`` as the contentMediaType says (raises on anything else)."""
    bare = media.split(";", 1)[0].strip()
    if bare == "application/pkcs7-mime":
        assert pkcs7.load_der_pkcs7_certificates(der)
    elif bare == "application/csrattrs":
        decode_csrattrs(der)
    elif bare == "application/pkcs10":
        x509.load_der_x509_csr(der)
    elif bare == "application/pkcs8":
        serialization.load_der_private_key(der, None)
    elif bare == "application/pkix-crl":
        x509.load_der_x509_crl(der)
    else:
        raise AssertionError(f"no parser for {media}")


def check_body(doc: dict[str, Any], media_key: str, media: dict[str, Any], ctype: str, body: bytes) -> None:
    schema = deref(doc, media["schema"])
    if media_key == "application/json":
        validate_json(doc, media["schema"], json.loads(body))
    elif media_key == "multipart/mixed":
        msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
            f"MIME-Version: 1.0\r\nContent-Type: {ctype}\r\n\r\n".encode() + body)
        parts = msg.get_payload()
        assert not msg.defects and isinstance(parts, list) and len(parts) == len(schema["required"])
        for name, part in zip(schema["required"], parts, strict=True):  # documented order
            enc = media["encoding"][name]
            assert part.get("Content-Type") == enc["contentType"]
            for h, hnode in enc["headers"].items():
                validate_json(doc, deref(doc, hnode)["schema"], part.get(h))
            _parse_as(schema["properties"][name]["contentMediaType"], _decode_b64(part.get_payload().encode()))
    elif schema.get("contentEncoding") == "base64":
        assert schema.get("format") == "byte"
        _parse_as(schema["contentMediaType"], _decode_b64(body))
    elif schema.get("format") == "binary":
        _parse_as(schema["contentMediaType"], body)
    else:
        validate_json(doc, media["schema"], body.decode("utf-8"))


def check_exchange(doc: dict[str, Any], method: str, target: str, req_headers: dict[str, str], req_body: bytes,
                   status: int, headers: dict[str, str], body: bytes, *, oneM2M: bool = True,
                   valid_request: bool | None = None) -> str:
    """Validate one real request/answer against the document; returns ``"<template> <method> <status>"``."""
    path = target.split("?", 1)[0]
    hit = _template(doc, path)
    if oneM2M:
        rsc = int(headers["x-m2m-rsc"])
        assert RSC(rsc).http_status == status, (rsc, status)
        if "x-m2m-ri" in {k.lower() for k in req_headers}:
            assert headers.get("x-m2m-ri") == next(v for k, v in req_headers.items() if k.lower() == "x-m2m-ri")
    if hit is None:  # a path the MEF does not serve
        assert status == 404, (path, status)
        return f"- {method} {status}"
    tpl, params = hit
    item = doc["paths"][tpl]
    op = item.get(method.lower())
    if op is None:  # a method the path does not serve
        assert status == 405, (tpl, method, status)
        return f"{tpl} {method} {status}"
    # the request
    declared = [deref(doc, p) for p in (*item.get("parameters", []), *op.get("parameters", []))]
    problems: list[str] = []
    for p in declared:
        value: Any
        if p["in"] == "path":
            value = unquote(params[p["name"]])  # RFC 3986 percent-decoding of the segment
            if p["schema"].get("type") == "integer":
                value = int(value) if value.isdigit() else value
        else:
            value = next((v for k, v in req_headers.items() if k.lower() == p["name"].lower()), None)
            if value is None:
                if p.get("required"):
                    problems.append(f"missing {p['name']}")
                continue
        try:
            validate_json(doc, p["schema"], value)
        except jsonschema.ValidationError as exc:
            problems.append(f"{p['name']}: {exc.message}")
    if "requestBody" in op:
        rb = deref(doc, op["requestBody"])
        ctype = next((v for k, v in req_headers.items() if k.lower() == "content-type"), None)
        if ctype is not None and ctype not in rb["content"] and ctype.split(";")[0].strip() not in rb["content"]:
            problems.append(f"Content-Type {ctype} is not documented")
        else:
            key = _media_key(rb["content"], ctype) if ctype else next(iter(rb["content"]))
            try:
                check_body(doc, key, rb["content"][key], ctype or key, req_body)
            except Exception as exc:  # noqa: BLE001 - any parse/validation failure makes the request invalid
                problems.append(f"body: {exc}")
    if valid_request is not None:
        assert (not problems) == valid_request, (tpl, method, problems)
    if 200 <= status < 300:
        assert not problems, (tpl, method, problems)
    # the answer
    assert str(status) in op["responses"], (tpl, method, status, body[:200])
    resp = deref(doc, op["responses"][str(status)])
    for name, hnode in resp.get("headers", {}).items():
        h = deref(doc, hnode)
        value = headers.get(name.lower())
        if value is None:
            assert not h.get("required"), (tpl, status, name)
            continue
        validate_json(doc, h["schema"], value)
    if "content" in resp:
        ctype = headers["content-type"]
        key = _media_key(resp["content"], ctype)
        if method.upper() == "HEAD":
            assert body == b""
        else:
            check_body(doc, key, resp["content"][key], ctype, body)
    else:
        assert body == b"" and "content-type" not in headers, (tpl, status)
    return f"{tpl} {method.lower()} {status}"


class Recorder:
    """Opens TLS sessions to a real MEF and validates every exchange on them."""

    def __init__(self, doc: dict[str, Any], host: str, port: int) -> None:
        self.doc, self.host, self.port = doc, host, port
        self.seen: set[str] = set()

    def session(self, tls: TLSConfig) -> _Session:
        return _Session(self, tls)


class _Session:
    def __init__(self, rec: Recorder, tls: TLSConfig) -> None:
        self.rec, self.tls = rec, tls
        self.s: ESTSession | None = None
        self.writer: Any = None

    async def __aenter__(self) -> _Session:
        reader, self.writer = await open_connection(self.rec.host, self.rec.port, self.tls, timeout=10)
        self.s = ESTSession(reader, self.writer, f"{self.rec.host}:{self.rec.port}", 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def __call__(self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None, *,
                       expect: RSC, valid: bool | None = None) -> tuple[dict[str, str], bytes]:
        assert self.s is not None
        hdrs = dict(headers or {})
        status, rh, data = await self.s.request(method, target, body, list(hdrs.items()))
        assert rh["x-m2m-rsc"] == str(int(expect)), (method, target, status, data[:300])
        # ESTSession adds X-M2M-RI; the answer must echo it
        assert rh.get("x-m2m-ri"), (method, target)
        self.rec.seen.add(check_exchange(self.rec.doc, method, target, {**hdrs, "X-M2M-RI": rh["x-m2m-ri"]}, body,
                                         status, rh, data, valid_request=valid))
        return rh, data


def _psk(ident: str, key: bytes) -> TLSConfig:
    return mef_tls_config(psk=PSKCredentials(ident.encode(), key))


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = make_world(tmp_path)
    world.state.add_enrolee(EnroleeConfig(
        RM_ENROLEE, kpm_id=RM_KPM_ID, remote_management_uri="https://dm.m2m.example.com/rm",
        mafs=(MAFPreference(MAF_FQDN, "https://maf.m2m.example.com/keyreg", "https://maf.m2m.example.com/keyret",
                            "https://maf.m2m.example.com/clientreg"),)), kpm=RM_KPM)
    world.state.add_target(TargetConfig(MAF_FQDN, psk_id="maf-psk"), psk=b"k" * 32)
    yield world
    world.state.store.close()


JSONH = {"Content-Type": "application/json"}
P10 = {"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "base64"}


def _challenge(enrolment: bytes) -> str:
    doc = json.loads(enrolment)
    (ins,) = [i for i in doc["Instructions"] if i["InstructionType"] == "CertificateEnrolment"]
    return ins["ChallengePassword"]


async def _csr(sess: _Session, challenge: str, key_type: KeyType = KeyType.EC_P256) -> bytes:
    _, attrs_b64 = await sess("GET", "/.well-known/est/csrattrs", expect=RSC.OK)
    attrs = decode_csrattrs(_decode_b64(attrs_b64))
    csr = build_est_csr(generate_private_key(key_type), challenge, dict(attrs.extensions))
    return base64.encodebytes(csr.public_bytes(serialization.Encoding.DER))


def test_real_mef_traffic_validates(doc: dict[str, Any], w: World) -> None:
    enrol_cert = EnrolmentRequest(certificate_enrolment=True).to_json()

    async def main(rec: Recorder) -> None:
        # -- an enrolee (Kpm): Enrolment Exchange with EST, every EST resource, completion
        async with rec.session(w.psk_tls()) as a:
            _, body = await a("POST", "/enrolment", enrol_cert, JSONH, expect=RSC.OK, valid=True)
            ke_id = json.loads(body)["KeID"]
            challenge = _challenge(body)
            await a("GET", "/.well-known/est/cacerts", expect=RSC.OK)
            csr = await _csr(a, challenge)
            await a("POST", "/.well-known/est/simpleenroll", csr, {"Content-Type": "text/plain"},
                    expect=RSC.UNSUPPORTED_MEDIA_TYPE, valid=False)
            await a("POST", "/.well-known/est/simpleenroll", b"%%%", P10, expect=RSC.BAD_REQUEST, valid=False)
            bad_pop = bytearray(_decode_b64(csr))
            bad_pop[-3] ^= 1  # the signature no longer verifies: no proof of possession
            await a("POST", "/.well-known/est/simpleenroll", base64.encodebytes(bytes(bad_pop)), P10,
                    expect=RSC.BAD_REQUEST)
            _, issued = await a("POST", "/.well-known/est/simpleenroll", csr, P10, expect=RSC.OK, valid=True)
            await a("POST", "/.well-known/est/simpleenroll", csr, P10,  # the challengePassword is used up
                    expect=RSC.ORIGINATOR_HAS_NO_PRIVILEGE, valid=True)
            serial = pkcs7.load_der_pkcs7_certificates(_decode_b64(issued))[0].serial_number
            hexserial = format(serial, "x")
            colons = ":".join(re.findall("..", hexserial.zfill(len(hexserial) + len(hexserial) % 2)))
            done = {"InstructionType": "CertificateEnrolment", "Status": True, "CertificateSerial": colons.upper()}
            await a("POST", "/enrolment/complete", json.dumps(done).encode(), JSONH, expect=RSC.OK, valid=True)
            await a("POST", "/enrolment/complete", json.dumps({**done, "CertificateSerial": "abc"}).encode(), JSONH,
                    expect=RSC.NOT_FOUND, valid=True)
            await a("POST", "/enrolment/complete", b'{"Status":true}', JSONH, expect=RSC.BAD_REQUEST, valid=False)
            await a("POST", "/enrolment", b'{"CertificateEnrolmentIndication":1}', JSONH, expect=RSC.BAD_REQUEST,
                    valid=False)
            # keep-alive: methods and paths the MEF does not serve, on the same session
            await a("GET", "/enrolment", expect=RSC.OPERATION_NOT_ALLOWED)
            await a("GET", "/enrolment/complete", expect=RSC.OPERATION_NOT_ALLOWED)
            await a("GET", "/.well-known/est/simpleenroll", expect=RSC.OPERATION_NOT_ALLOWED)
            await a("POST", "/.well-known/est/cacerts", expect=RSC.OPERATION_NOT_ALLOWED)
            await a("DELETE", f"/fetchCredentials/{ke_id}/22", expect=RSC.OPERATION_NOT_ALLOWED)
            await a("GET", "/.well-known/est/fullcmc", expect=RSC.NOT_FOUND)
            await a("GET", "/elsewhere", expect=RSC.NOT_FOUND)
            # a bootstrap session cannot fetch
            await a("GET", f"/fetchCredentials/{ke_id}/22", headers={"X-M2M-Origin": ENROLEE},
                    expect=RSC.ORIGINATOR_HAS_NO_PRIVILEGE)

        # -- serverkeygen: a fresh enrolment, a placeholder key in the CSR
        async with rec.session(w.psk_tls()) as a:
            _, body = await a("POST", "/enrolment", enrol_cert, JSONH, expect=RSC.OK)
            csr = await _csr(a, _challenge(body))
            await a("POST", "/.well-known/est/serverkeygen", csr, P10, expect=RSC.OK, valid=True)
            await a("POST", "/.well-known/est/simplereenroll", csr, P10,  # not a certificate session
                    expect=RSC.ORIGINATOR_HAS_NO_PRIVILEGE)

        # -- MAF and remote management instructions (table 8.3.2.1-3/-4), a token refused
        async with rec.session(_psk(RM_KPM_ID, RM_KPM)) as r:
            both = EnrolmentRequest(certificate_enrolment=True, maf_enrolment=True, remote_management=True)
            _, body = await r("POST", "/enrolment", both.to_json(), JSONH, expect=RSC.OK, valid=True)
            types = [i["InstructionType"] for i in json.loads(body)["Instructions"]]
            assert types == ["MAFEnrolment", "RemoteManagementServer"]
            rm_ke = json.loads(body)["KeID"]
            await r("POST", "/enrolment", EnrolmentRequest(token="not-issued").to_json(), JSONH,
                    expect=RSC.ORIGINATOR_HAS_NO_PRIVILEGE, valid=True)
            await r("GET", "/.well-known/est/csrattrs", expect=RSC.ORIGINATOR_HAS_NO_PRIVILEGE)  # no EST profile

        # -- Enrolment Targets: MEF Key Retrieval and its refusals
        async with rec.session(_psk(B_PSK_ID, B_PSK)) as b:
            origin = {"X-M2M-Origin": ENROLEE_B}
            for suid in (22, 23):
                _, body = await b("GET", f"/fetchCredentials/{ke_id}/{suid}", headers=origin, expect=RSC.OK,
                                  valid=True)
                assert isinstance(parse_fetch_response(body), FetchSuccess)
            await b("GET", f"/fetchCredentials/{ke_id.replace('@', '%40')}/22", headers=origin, expect=RSC.OK)
            await b("GET", f"/fetchCredentials/{ke_id}/24", headers=origin, expect=RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
                    valid=True)
            await b("GET", f"/fetchCredentials/{ke_id}/99", headers=origin, expect=RSC.BAD_REQUEST, valid=False)
            await b("GET", f"/fetchCredentials/{ke_id}/22", expect=RSC.BAD_REQUEST, valid=False)  # no X-M2M-Origin
            await b("GET", f"/fetchCredentials/nothex@{MEF_FQDN}/22", headers=origin, expect=RSC.BAD_REQUEST,
                    valid=False)
            other = ke_id.split("@")[0] + "@mef.elsewhere.example.com"  # well-formed, another MEF's
            await b("GET", f"/fetchCredentials/{other}/22", headers=origin, expect=RSC.BAD_REQUEST, valid=True)
            await b("GET", f"/fetchCredentials/{'0' * 32}@{MEF_FQDN}/22", headers=origin, expect=RSC.NOT_FOUND,
                    valid=True)
            await b("GET", f"/fetchCredentials/{ke_id}/22", headers={"X-M2M-Origin": "/id-in/Cimpostor"},
                    expect=RSC.ORIGINATOR_NOT_AUTHENTICATED, valid=True)
            await b("GET", f"/fetchCredentials/{rm_ke}/21", headers=origin, expect=RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
            await b("POST", "/enrolment", enrol_cert, JSONH, expect=RSC.ORIGINATOR_HAS_NO_PRIVILEGE, valid=True)
            await b("POST", "/enrolment/complete", json.dumps(done).encode(), JSONH,
                    expect=RSC.ORIGINATOR_HAS_NO_PRIVILEGE, valid=True)
            await b("GET", "/.well-known/est/cacerts", expect=RSC.OK)  # trust anchors for any session
            await b("GET", "/.well-known/est/csrattrs", expect=RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        async with rec.session(_psk("maf-psk", b"k" * 32)) as m:
            await m("GET", f"/fetchCredentials/{rm_ke}/21", headers={"X-M2M-Origin": MAF_FQDN}, expect=RSC.OK)

    with w.mef() as m:
        rec = Recorder(doc, m.host, m.port)
        run(lambda: main(rec), timeout=60)
        # -- certificate RSPF, then simplereenroll with the MEF-provisioned certificate
        _, p1 = run(lambda: est_enrol(m.host, m.port, w.cert_tls(w.maker_dev)))

        async def reenrol() -> None:
            async with rec.session(w.cert_tls(p1.credentials())) as c:
                _, body = await c("POST", "/enrolment", enrol_cert, JSONH, expect=RSC.OK, valid=True)
                assert json.loads(body)["EnroleeID"] == CERT_ENROLEE
                csr = await _csr(c, _challenge(body))
                await c("POST", "/.well-known/est/simplereenroll", csr, P10, expect=RSC.OK, valid=True)

        run(reenrol)

    expected = {
        "/enrolment post 200", "/enrolment post 400", "/enrolment post 403",
        "/enrolment/complete post 200", "/enrolment/complete post 400", "/enrolment/complete post 403",
        "/enrolment/complete post 404",
        "/fetchCredentials/{KeID}/{SUID} get 200", "/fetchCredentials/{KeID}/{SUID} get 400",
        "/fetchCredentials/{KeID}/{SUID} get 403", "/fetchCredentials/{KeID}/{SUID} get 404",
        "/.well-known/est/cacerts get 200", "/.well-known/est/csrattrs get 200", "/.well-known/est/csrattrs get 403",
        "/.well-known/est/simpleenroll post 200", "/.well-known/est/simpleenroll post 400",
        "/.well-known/est/simpleenroll post 403", "/.well-known/est/simpleenroll post 415",
        "/.well-known/est/simplereenroll post 200", "/.well-known/est/simplereenroll post 403",
        "/.well-known/est/serverkeygen post 200",
        "/enrolment GET 405", "/.well-known/est/cacerts POST 405", "- GET 404",
    }
    assert expected <= rec.seen, sorted(expected - rec.seen)
    # every documented operation was exercised
    ops = {f"{tpl} {m}" for tpl, item in doc["paths"].items() for m in item if m in METHODS and "{signer}" not in tpl}
    assert ops <= {s.rsplit(" ", 1)[0] for s in rec.seen}


def test_real_crl_server_validates(doc: dict[str, Any], w: World) -> None:
    pub = ESTCRLPublisher(w.state.store, w.ca, w.clock)
    seen: set[str] = set()

    async def main() -> None:
        async with CRLHTTPServer(pub.sources(), clock=w.clock) as srv, httpx.AsyncClient() as c:
            base = f"http://{srv.host}:{srv.port}"

            async def ex(method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
                r = await c.request(method, base + path, headers=headers or {})
                seen.add(check_exchange(doc, method, path, headers or {}, b"", r.status_code,
                                        {k.lower(): v for k, v in r.headers.items()}, r.content, oneM2M=False))
                return r

            for signer in pub.signers:
                r = await ex("GET", f"/crl/{signer}.crl")
                assert r.status_code == 200
                r2 = await ex("GET", f"/crl/{signer}.crl", {"If-None-Match": r.headers["etag"]})
                assert r2.status_code == 304
                r3 = await ex("HEAD", f"/crl/{signer}.crl")
                assert r3.status_code == 200 and r3.headers["content-length"] == str(len(r.content))
                assert (await ex("HEAD", f"/crl/{signer}.crl", {"If-None-Match": "*"})).status_code == 304
            r = await ex("POST", "/crl/root.crl")
            assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
            assert (await ex("GET", "/crl/other.crl")).status_code == 404
            assert (await ex("GET", "/elsewhere")).status_code == 404

        def broken() -> x509.CertificateRevocationList:
            raise RuntimeError("store down")

        async with CRLHTTPServer({"root": broken}, clock=w.clock) as srv, httpx.AsyncClient() as c:
            r = await c.get(f"http://{srv.host}:{srv.port}/crl/root.crl")
            seen.add(check_exchange(doc, "GET", "/crl/root.crl", {}, b"", r.status_code,
                                    {k.lower(): v for k, v in r.headers.items()}, r.content, oneM2M=False))

    asyncio.run(main())
    assert {"/crl/{signer}.crl get 200", "/crl/{signer}.crl get 304", "/crl/{signer}.crl head 200",
            "/crl/{signer}.crl head 304", "/crl/{signer}.crl get 404", "/crl/{signer}.crl POST 405",
            "/crl/{signer}.crl get 503", "- GET 404"} <= seen


def test_checker_refuses_what_the_document_does_not_say(doc: dict[str, Any]) -> None:
    """The validator above is not vacuous: undocumented statuses, members and media types fail."""
    ok = json.dumps({"Status": False, "ErrorString": "x"}).encode()
    h = {"x-m2m-rsc": "4105", "content-type": "application/json"}
    with pytest.raises(AssertionError):  # 409 is not a fetchCredentials answer
        check_exchange(doc, "GET", f"/fetchCredentials/{'0' * 32}@{MEF_FQDN}/22", {"X-M2M-Origin": "x"}, b"", 409,
                       h, ok)
    with pytest.raises(jsonschema.ValidationError):
        check_exchange(doc, "POST", "/enrolment", {}, b"{}", 400, {**h, "x-m2m-rsc": "4000"},
                       json.dumps({"Status": False, "ErrorString": "x", "More": 1}).encode())
    with pytest.raises(AssertionError):  # EST refusals are text/plain
        check_exchange(doc, "GET", "/.well-known/est/csrattrs", {}, b"", 403,
                       {"x-m2m-rsc": "4103", "content-type": "application/json"}, ok)
    with pytest.raises(Exception):  # noqa: B017 - not base64 DER
        check_exchange(doc, "GET", "/.well-known/est/cacerts", {}, b"", 200,
                       {"x-m2m-rsc": "2000", "content-type": "application/pkcs7-mime",
                        "content-transfer-encoding": "base64"}, b"MIIB")


# ------------------------------------------------------------------ 4: schema and parser agree

_TOKEN_OK = {"CertificateEnrolmentIndication": True, "MAFEnrolmentIndication": False,
             "RemoteManagementIndication": False, "EnrolmentToken": "t-123"}
_DONE_OK = {"InstructionType": "CertificateEnrolment", "Status": True, "CertificateSerial": "1F"}
_VALID: list[tuple[str, dict[str, Any]]] = [
    ("EnrolmentRequest", _TOKEN_OK),
    ("EnrolmentRequest", {k: v for k, v in _TOKEN_OK.items() if k != "EnrolmentToken"}),
    ("EnrolmentRequest", {**_TOKEN_OK, "EnrolmentToken": None}),
    ("EnrolmentCompleteRequest", _DONE_OK),
    ("EnrolmentCompleteRequest", {**_DONE_OK, "CertificateSerial": "0a:1b:2c"}),
    ("EnrolmentCompleteRequest", {**_DONE_OK, "CertificateSerial": "ab" * 20}),
    ("EnrolmentCompleteRequest", {**_DONE_OK, "CertificateSerial": ":".join(["AB"] * 20)}),  # openssl -text, 20 octets
]


def _mutations() -> list[tuple[str, str, Any]]:
    tok, done = _TOKEN_OK, _DONE_OK
    return [
        ("EnrolmentRequest", "missing indication", {k: v for k, v in tok.items() if k != "MAFEnrolmentIndication"}),
        ("EnrolmentRequest", "indication as string", {**tok, "CertificateEnrolmentIndication": "true"}),
        ("EnrolmentRequest", "indication as 1", {**tok, "RemoteManagementIndication": 1}),
        ("EnrolmentRequest", "indication null", {**tok, "MAFEnrolmentIndication": None}),
        ("EnrolmentRequest", "unknown member", {**tok, "KpmID": KPM_ID}),
        ("EnrolmentRequest", "empty token", {**tok, "EnrolmentToken": ""}),
        ("EnrolmentRequest", "513-character token", {**tok, "EnrolmentToken": "t" * 513}),
        ("EnrolmentRequest", "numeric token", {**tok, "EnrolmentToken": 5}),
        ("EnrolmentRequest", "array body", [tok]),
        ("EnrolmentRequest", "string body", "enrol"),
        ("EnrolmentCompleteRequest", "other instruction", {**done, "InstructionType": "MAFEnrolment"}),
        ("EnrolmentCompleteRequest", "Status false", {**done, "Status": False}),
        ("EnrolmentCompleteRequest", "missing serial", {k: v for k, v in done.items() if k != "CertificateSerial"}),
        ("EnrolmentCompleteRequest", "unknown member", {**done, "Serial": "1f"}),
        ("EnrolmentCompleteRequest", "numeric serial", {**done, "CertificateSerial": 31}),
        ("EnrolmentCompleteRequest", "0x serial", {**done, "CertificateSerial": "0x1f"}),
        ("EnrolmentCompleteRequest", "negative serial", {**done, "CertificateSerial": "-1f"}),
        ("EnrolmentCompleteRequest", "underscore serial", {**done, "CertificateSerial": "1_f"}),
        ("EnrolmentCompleteRequest", "padded serial", {**done, "CertificateSerial": " 1f"}),
        ("EnrolmentCompleteRequest", "empty serial", {**done, "CertificateSerial": ""}),
        ("EnrolmentCompleteRequest", "41 digits", {**done, "CertificateSerial": "1" * 41}),
        ("EnrolmentCompleteRequest", "broken colons", {**done, "CertificateSerial": "1f:2"}),
        ("EnrolmentCompleteRequest", "21 octets", {**done, "CertificateSerial": ":".join(["ab"] * 21)}),
    ]


def parse(w: World, name: str, body: bytes) -> None:
    """The MEF's own parser for ``name`` (ParseError when it refuses the body)."""
    if name == "EnrolmentRequest":
        EnrolmentRequest.from_json(body)
        return
    try:  # ESTService.complete parses first; a valid body then meets the store (no such certificate)
        ESTService.complete(w.est, body, SessionPeer("enrolee", ENROLEE, f"kpm:{KPM_ID}"))
    except MEFError as exc:
        assert exc.rsc is RSC.NOT_FOUND, exc


@pytest.mark.parametrize(("name", "obj"), _VALID, ids=[f"{n}-{i}" for i, (n, _) in enumerate(_VALID)])
def test_valid_bodies_pass_schema_and_parser(doc: dict[str, Any], w: World, name: str, obj: Any) -> None:
    validate_json(doc, component(doc, name), obj)
    parse(w, name, json.dumps(obj).encode())


@pytest.mark.parametrize(("name", "what", "obj"), _mutations(), ids=[f"{n}-{w}" for n, w, _ in _mutations()])
def test_invalid_bodies_fail_schema_and_parser(doc: dict[str, Any], w: World, name: str, what: str, obj: Any) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate_json(doc, component(doc, name), obj)
    with pytest.raises(ParseError):
        parse(w, name, json.dumps(obj).encode())


@pytest.mark.parametrize("name", ["EnrolmentRequest", "EnrolmentCompleteRequest"])
@pytest.mark.parametrize("body", [
    b'{"CertificateEnrolmentIndication":true,"MAFEnrolmentIndication":false,"RemoteManagementIndication":false,'
    b'"MAFEnrolmentIndication":true}',
    b'{"InstructionType":"CertificateEnrolment","Status":true,"CertificateSerial":"1f","Status":true}',
    b'{"CertificateEnrolmentIndication":NaN}', b'{"x":Infinity}', b"\xff\xfe{}", b"{", b""],
    ids=["dup-enrol", "dup-complete", "nan", "infinity", "not-utf8", "truncated", "empty"])
def test_what_a_schema_cannot_say_the_parser_refuses(w: World, name: str, body: bytes) -> None:
    """The description's strict-JSON rule: duplicate names, NaN/Infinity, non-UTF-8 are 4000."""
    with pytest.raises(ParseError):
        parse(w, name, body)


_RESPONSE_MUTATIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("EnrolmentResponse", "Status false", {"Status": False}),
    ("EnrolmentResponse", "unknown member", {"Extra": 1}),
    ("EnrolmentResponse", "DirectKeys SUID 21", {"DirectKeys": [{"EnroleeBID": ENROLEE_B, "SUID": 21}]}),
    ("EnrolmentResponse", "KeID without FQDN", {"KeID": "ab" * 16}),
    ("EnrolmentResponse", "zone designator", {"EnrolmentExpiry": "20300101T000000Z"}),
    ("EnrolmentResponse", "Instructions not an array", {"Instructions": {}}),
    ("FetchSuccess", "short credential", {"Credential": base64.b64encode(b"k" * 16).decode()}),
    ("FetchSuccess", "unpadded credential", {"Credential": base64.b64encode(b"k" * 32).decode().rstrip("=")}),
    ("FetchSuccess", "unknown member", {"KeID": "x"}),
    ("FetchSuccess", "no Lifetime", {"Lifetime": None}),
]
_RESPONSE_OK = {
    "EnrolmentResponse": {"Status": True, "KeID": f"{'ab' * 16}@{MEF_FQDN}", "KreID": f"{'cd' * 16}@{MEF_FQDN}",
                          "EnroleeID": ENROLEE, "EnrolmentExpiry": "20300101T000000", "Instructions": [],
                          "DirectKeys": [{"EnroleeBID": ENROLEE_B, "SUID": 22}], "EndOfEnrolment": True},
    "FetchSuccess": {"Status": True, "Credential": base64.b64encode(b"k" * 32).decode(), "EnroleeID": ENROLEE,
                     "Lifetime": "20300101T000000"},
}


def _client_parse(name: str, body: bytes) -> None:
    if name == "EnrolmentResponse":
        EnrolmentResponse.from_json(body)
    else:
        assert isinstance(parse_fetch_response(body), FetchSuccess)


@pytest.mark.parametrize(("name", "what", "change"), _RESPONSE_MUTATIONS,
                         ids=[f"{n}-{w}" for n, w, _ in _RESPONSE_MUTATIONS])
def test_client_parsers_and_response_schemas_agree(doc: dict[str, Any], name: str, what: str,
                                                   change: dict[str, Any]) -> None:
    good = _RESPONSE_OK[name]
    validate_json(doc, component(doc, name), good)
    _client_parse(name, json.dumps(good).encode())
    bad = {k: v for k, v in {**good, **change}.items() if v is not None}
    with pytest.raises(jsonschema.ValidationError):
        validate_json(doc, component(doc, name), bad)
    with pytest.raises((ParseError, AssertionError)):
        _client_parse(name, json.dumps(bad).encode())
