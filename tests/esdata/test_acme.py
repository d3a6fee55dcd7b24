"""ESData through a real CSE (ACME, PyPI ``acmecse``): the CSE stores and serves the
envelope but can neither read nor undetectably change it (TS-0003 clause 8.5.1: ESData
protects data end-to-end across untrusted hosting CSEs; TS-0004 6.3.4.2.38 contentSecurity
and Table 6.3.3-1 ``cnf`` carry the envelope in a <contentInstance>).

AE1 (Source End-Point) seals, creates a <contentInstance> in its <container>; AE2 (and, for
the multi-recipient case, AE3) retrieves it and opens it with its own credentials only.
A fourth AE ("mallory", granted CREATE on the container but holding no key of AE2's)
writes tampered and substituted envelopes that AE2 must refuse.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from m2msec.esdata import (
    CertificateRecipient,
    CertificateSigner,
    ContentSecurity,
    Envelope,
    ESDataError,
    InMemoryKeySource,
    Reason,
    SecurityClass,
    Source,
    SymmetricRecipient,
    Target,
    from_content_instance,
    to_content_instance,
)
from m2msec.esdata.credentials import b64url

pytestmark = [pytest.mark.acme, pytest.mark.timeout(60)]

acme_mod = pytest.importorskip("m2msec.net.acme")
client_mod = pytest.importorskip("m2msec.net.client")
onem2m = pytest.importorskip("m2msec.onem2m")
AcmeCSE = acme_mod.AcmeCSE
OneM2MClient = client_mod.OneM2MClient
ResourceType = onem2m.ResourceType
RSC = onem2m.ResponseStatusCode

ACP_CREATE, ACP_RETRIEVE, ACP_ALL = 1, 2, 63
MEDIA = "application/json"


@dataclass
class Party:
    client: Any  # OneM2MClient
    ident: str  # SP-relative AE-ID, the identifier in its certificate's URI subjectAltName
    target: Target | None = None


@dataclass
class World:
    acme: Any
    ae1: Party
    ae2: Party
    ae3: Party
    mallory: Party
    container: str
    ae1_signer: CertificateSigner
    mallory_signer: CertificateSigner
    ae2_cert_recipient: CertificateRecipient
    ae2_keys: dict[str, bytes]
    ae3_key: bytes
    tag: str  # makes resource names, originators and kids unique to this module run


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, pki, ec_keys) -> Iterator[World]:
    if not acme_mod.acme_available():
        pytest.skip("acmecse is not installed")
    from cryptography.hazmat.primitives.asymmetric import ec

    cse = AcmeCSE(tmp_path_factory.mktemp("acme-esdata"))
    cse.start()
    clients: list[Any] = []
    try:
        tag = secrets.token_hex(3)
        parties: dict[str, Party] = {}
        for name in ("ae1", "ae2", "ae3", "mallory"):
            c = OneM2MClient(cse.url, f"Cesd-{name}-{tag}")
            clients.append(c)
            rsp = c.create(cse.cse_base, ResourceType.AE,
                           {"m2m:ae": {"rn": f"{name}-{tag}", "api": "Nm2msec-esdata", "rr": False, "srv": ["3"]}})
            assert rsp.rsc == RSC.CREATED
            parties[name] = Party(c, f"{cse.csi}/{c.originator}")
        ae1, ae2, ae3, mallory = (parties[n] for n in ("ae1", "ae2", "ae3", "mallory"))
        ae1_path = f"{cse.cse_base}/ae1-{tag}"
        acp = ae1.client.create(ae1_path, ResourceType.ACCESS_CONTROL_POLICY, {"m2m:acp": {
            "rn": "acp-esdata",
            "pv": {"acr": [
                {"acor": [ae1.client.originator], "acop": ACP_ALL},
                {"acor": [ae2.client.originator, ae3.client.originator], "acop": ACP_RETRIEVE},
                {"acor": [mallory.client.originator], "acop": ACP_CREATE | ACP_RETRIEVE},
            ]},
            "pvs": {"acr": [{"acor": [ae1.client.originator], "acop": ACP_ALL}]},
        }}).pc["m2m:acp"]["ri"]
        ae1.client.create(ae1_path, ResourceType.CONTAINER, {"m2m:cnt": {"rn": "esdata", "acpi": [acp]}})

        # credentials: certificates from the test PKI name each AE's AE-ID
        ae1_ep = pki.issue(ec_keys["P-256"], ae1.ident)
        mallory_ep = pki.issue(ec.generate_private_key(ec.SECP256R1()), mallory.ident)
        ae2_ep = pki.issue(ec_keys["P-384"], ae2.ident)
        ae2_keys = {"kw": secrets.token_bytes(16), "dir": secrets.token_bytes(32)}
        ae3_key = secrets.token_bytes(32)
        ks2 = InMemoryKeySource()
        ks2.add_certificate_key(ae2_ep.key, ae2_ep.cert, suid=44)
        ks2.add_symmetric(f"kw-{tag}@ae2", ae2_keys["kw"], suid=14)
        ks2.add_symmetric(f"dir-{tag}@ae2", ae2_keys["dir"], suid=24)
        ks3 = InMemoryKeySource()
        ks3.add_symmetric(f"kw-{tag}@ae3", ae3_key, suid=14)
        ae2.target = Target(ks2, certificate_verifier=pki.verifier())
        ae3.target = Target(ks3, certificate_verifier=pki.verifier())
        yield World(
            cse, ae1, ae2, ae3, mallory, f"{ae1_path}/esdata",
            CertificateSigner(ae1_ep.key, ae1_ep.chain), CertificateSigner(mallory_ep.key, mallory_ep.chain),
            CertificateRecipient(ae2_ep.cert), ae2_keys, ae3_key, tag,
        )
    finally:
        for c in clients:
            c.close()
        cse.stop()


def _kid(world: World, name: str) -> str:
    return f"{name}-{world.tag}"


def _seal(world: World, cs: int, plaintext: bytes) -> Envelope:
    """One sealing per contentSecurity value, each with different ESData options."""
    src = Source()
    kw2 = SymmetricRecipient(_kid(world, "kw") + "@ae2", world.ae2_keys["kw"], "A128KW")
    dir2 = SymmetricRecipient(_kid(world, "dir") + "@ae2", world.ae2_keys["dir"], "dir", suid=24)
    if cs == 1:  # compact, Nested Sign-then-Encrypt: ES256 + x5c, ECDH-ES+A128KW to AE2's certificate
        return src.seal(plaintext, serialization=1, signers=[world.ae1_signer],
                        recipients=[world.ae2_cert_recipient], content_type=MEDIA)
    if cs == 2:  # JSON, Encryption-only, A128KW, with AAD
        return src.seal(plaintext, serialization=2, recipients=[kw2], aad=b"cnt=esdata", content_type=MEDIA)
    if cs == 3:  # JSON in base64, Nested with a symmetric key-management recipient, A256GCM
        return src.seal(plaintext, serialization=3, signers=[world.ae1_signer], recipients=[kw2], enc="A256GCM",
                        content_type=MEDIA)
    if cs == 4:  # XML, Nested: XML-DSig ECDSA inside XML-Enc kw-aes128
        return src.seal(plaintext, serialization=4, signers=[world.ae1_signer], recipients=[kw2], content_type=MEDIA)
    if cs == 5:  # XML in base64, Encryption-only, dir A256GCM
        return src.seal(plaintext, serialization=5, recipients=[dir2], enc="A256GCM", content_type=MEDIA)
    raise AssertionError(cs)


def _store(party: Party, container: str, cin: dict[str, Any]) -> str:
    rsp = party.client.create(container, ResourceType.CONTENT_INSTANCE, {"m2m:cin": cin})
    assert rsp.rsc == RSC.CREATED
    assert rsp.pc["m2m:cin"]["con"] == cin["con"]
    return f"{container}/{rsp.pc['m2m:cin']['rn']}"


def _plaintext() -> bytes:
    return json.dumps({"temperature": 21.5, "marker": f"esdata-secret-{secrets.token_hex(8)}"}).encode()


def _leaks(resource_json: str, plaintext: bytes) -> list[str]:
    """Forms of the plaintext (or of its distinctive marker) found in the CSE's copy."""
    marker = json.loads(plaintext)["marker"].encode()
    forms = {
        "plaintext": plaintext, "marker": marker,
        "base64url(plaintext)": b64url(plaintext).encode(), "base64(plaintext)": base64.b64encode(plaintext),
    }
    return [name for name, form in forms.items() if form.decode() in resource_json]


@pytest.mark.parametrize("cs", [1, 2, 3, 4, 5])
def test_envelope_through_acme(world: World, cs: int) -> None:
    plaintext = _plaintext()
    env = _seal(world, cs, plaintext)
    cin = to_content_instance(env)
    assert cin["cnf"] == f"{MEDIA}:0:{cs}"
    path = _store(world.ae1, world.container, cin)

    rsp = world.ae2.client.retrieve(path)
    assert rsp.rsc == RSC.OK
    stored = rsp.pc["m2m:cin"]
    assert stored["con"] == cin["con"] and stored["cnf"] == cin["cnf"]  # byte for byte
    assert _leaks(json.dumps(rsp.pc, ensure_ascii=False), plaintext) == []
    assert _leaks(json.dumps(rsp.pc), plaintext) == []

    received = from_content_instance(stored)
    assert received.content_security is ContentSecurity(cs) and received.content_type == MEDIA
    opened = world.ae2.target.open(received, expected_source_id=world.ae1.ident)  # type: ignore[union-attr]
    assert opened.payload == plaintext
    assert opened.security_class is env.security_class
    if env.security_class is SecurityClass.SIGN_ENCRYPT:
        assert [s.source_id for s in opened.signatures] == [world.ae1.ident]
    if cs == 2:
        assert opened.aad == b"cnt=esdata"
    # the latest instance read through the virtual <latest> resource is the same envelope
    assert world.ae2.client.retrieve(f"{world.container}/la").pc["m2m:cin"]["con"] == cin["con"]


def test_multi_recipient_json_two_targets(world: World) -> None:
    plaintext = _plaintext()
    env = Source().seal(
        plaintext, serialization="json", signers=[world.ae1_signer], content_type=MEDIA,
        recipients=[world.ae2_cert_recipient, SymmetricRecipient(_kid(world, "kw") + "@ae3", world.ae3_key, "A256KW")],
    )
    cin = to_content_instance(env)
    path = _store(world.ae1, world.container, cin)
    for party in (world.ae2, world.ae3):
        rsp = party.client.retrieve(path)
        stored = rsp.pc["m2m:cin"]
        assert stored["con"] == cin["con"] and stored["cnf"] == cin["cnf"] == f"{MEDIA}:0:2"
        assert _leaks(json.dumps(rsp.pc), plaintext) == []
        opened = party.target.open(from_content_instance(stored), expected_source_id=world.ae1.ident)  # type: ignore[union-attr]
        assert opened.payload == plaintext and opened.security_class is SecurityClass.SIGN_ENCRYPT
    assert len(json.loads(cin["con"])["recipients"]) == 2
    # each target used its own credential
    ae2_kid = world.ae2.target.open(from_content_instance(cin), expected_source_id=world.ae1.ident).decrypted_with  # type: ignore[union-attr]
    ae3_kid = world.ae3.target.open(from_content_instance(cin), expected_source_id=world.ae1.ident).decrypted_with  # type: ignore[union-attr]
    assert ae2_kid == world.ae2_cert_recipient.effective_kid and ae3_kid.endswith("@ae3")


def _flip_char(s: str, index: int) -> str:
    c = s[index]
    return s[:index] + ("B" if c != "B" else "C") + s[index + 1:]


def _tamper(cs: int, con: str) -> str:
    """Change the envelope where the CSE (or a writer) could: ciphertext, header, AAD, signature."""
    if cs == 1:  # compact: a character in the middle of the JWE ciphertext
        parts = con.split(".")
        parts[3] = _flip_char(parts[3], len(parts[3]) // 2)
        return ".".join(parts)
    if cs == 2:  # JSON: the AAD
        d = json.loads(con)
        d["aad"] = b64url(b"cnt=other")
        return json.dumps(d)
    if cs == 3:  # base64 of JSON: the JWE tag
        d = json.loads(base64.b64decode(con))
        d["tag"] = _flip_char(d["tag"], 0)
        return base64.b64encode(json.dumps(d).encode()).decode()
    if cs in (4, 5):  # XML: a character of the EncryptedData's own CipherValue (the last one)
        xml = base64.b64decode(con).decode() if cs == 5 else con
        value = list(re.finditer(r"<xenc:CipherValue>([A-Za-z0-9+/=\s]+)</xenc:CipherValue>", xml))[-1]
        xml = _flip_char(xml, value.start(1) + 20)
        return base64.b64encode(xml.encode()).decode() if cs == 5 else xml
    raise AssertionError(cs)


@pytest.mark.parametrize("cs", [1, 2, 3, 4, 5])
def test_tampered_con_from_a_third_ae_is_rejected(world: World, cs: int) -> None:
    env = _seal(world, cs, _plaintext())
    genuine = to_content_instance(env)
    forged = {"cnf": genuine["cnf"], "con": _tamper(cs, genuine["con"])}
    assert forged["con"] != genuine["con"]
    path = _store(world.mallory, world.container, forged)
    stored = world.ae2.client.retrieve(path).pc["m2m:cin"]
    assert stored["con"] == forged["con"]  # the CSE delivered what mallory wrote
    with pytest.raises(ESDataError) as ei:
        world.ae2.target.open(from_content_instance(stored), expected_source_id=world.ae1.ident)  # type: ignore[union-attr]
    assert ei.value.reason is Reason.DECRYPTION_FAILED, str(ei.value)
    # the genuine envelope still opens: the rejection is due to the change alone
    assert world.ae2.target.open(from_content_instance(genuine), expected_source_id=world.ae1.ident).payload


def test_substituted_envelope_signed_by_a_third_ae_is_rejected(world: World) -> None:
    """Mallory seals her own payload to AE2's certificate, signed with her own (valid)
    certificate: it decrypts, but the signer is not the expected Source End-Point AE1."""
    env = Source().seal(b'{"temperature": 99}', serialization="compact", signers=[world.mallory_signer],
                        recipients=[world.ae2_cert_recipient], content_type=MEDIA)
    path = _store(world.mallory, world.container, to_content_instance(env))
    stored = world.ae2.client.retrieve(path).pc["m2m:cin"]
    with pytest.raises(ESDataError) as ei:
        world.ae2.target.open(from_content_instance(stored), expected_source_id=world.ae1.ident)  # type: ignore[union-attr]
    assert ei.value.reason is Reason.UNTRUSTED_CERTIFICATE
    # and without ESData (contentSecurity 0) the resource is refused, not read as plaintext
    plain = _store(world.mallory, world.container, {"cnf": f"{MEDIA}:0", "con": '{"temperature": 99}'})
    with pytest.raises(ESDataError) as ei:
        from_content_instance(world.ae2.client.retrieve(plain).pc["m2m:cin"])
    assert ei.value.reason is Reason.WRONG_CLASS


def test_third_ae_cannot_read_without_a_credential(world: World) -> None:
    """Mallory may RETRIEVE the resource (ACP) but holds no credential for it."""
    env = _seal(world, 2, _plaintext())
    path = _store(world.ae1, world.container, to_content_instance(env))
    stored = world.mallory.client.retrieve(path).pc["m2m:cin"]
    with pytest.raises(ESDataError) as ei:
        Target(InMemoryKeySource()).open(from_content_instance(stored))
    assert ei.value.reason is Reason.UNKNOWN_KID


def test_leak_check_detects_a_signature_only_payload(world: World) -> None:
    """Control for :func:`_leaks`: Signature-only protects integrity, not confidentiality, so
    the CSE's copy does show the payload (base64url) - the check above is not vacuous."""
    plaintext = _plaintext()
    env = Source().seal(plaintext, serialization="json", signers=[world.ae1_signer], content_type=MEDIA)
    path = _store(world.ae1, world.container, to_content_instance(env))
    rsp = world.ae2.client.retrieve(path)
    assert _leaks(json.dumps(rsp.pc), plaintext) == ["base64url(plaintext)"]
    opened = world.ae2.target.open(from_content_instance(rsp.pc["m2m:cin"]), expected_source_id=world.ae1.ident)  # type: ignore[union-attr]
    assert opened.payload == plaintext and opened.security_class is SecurityClass.SIGN
