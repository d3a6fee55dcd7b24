"""Every ESData protection option x JOSE serialization (TS-0003 8.5.3, table X.2.2-1)."""

from __future__ import annotations

import json

import pytest

from m2msec.esdata import (
    CertificateRecipient,
    CertificateSigner,
    ContentSecurity,
    SecurityClass,
    Source,
    SymmetricRecipient,
    SymmetricSigner,
    Target,
)

SERS = ["compact", "json", "json-b64"]
PAYLOAD = b'{"temp": 21.5, "unit": "C"}'


def target(key_source, pki):
    return Target(key_source, certificate_verifier=pki.verifier())


@pytest.mark.parametrize("ser", SERS)
@pytest.mark.parametrize(
    "kid,alg,enc",
    [
        ("enc16@mef.example.com", "dir", "A128GCM"),
        ("enc24@mef.example.com", "dir", "A192GCM"),
        ("enc32@mef.example.com", "dir", "A256GCM"),
        ("enc16@mef.example.com", "A128KW", "A256GCM"),
        ("enc24@mef.example.com", "A192KW", "A128GCM"),
        ("enc32@mef.example.com", "A256KW", "A192GCM"),
    ],
)
def test_encrypt_symmetric(ser, kid, alg, enc, keys, key_source, pki):
    key = keys[kid.split("@")[0]]
    env = Source().seal(PAYLOAD, serialization=ser, recipients=[SymmetricRecipient(kid, key, alg)], enc=enc,
                        content_type="application/json")
    assert env.security_class is SecurityClass.ENCRYPT
    assert PAYLOAD not in env.data
    out = target(key_source, pki).open(env.data, env.content_security)
    assert (out.payload, out.decrypted_with, out.key_management, out.content_encryption) == (PAYLOAD, kid, alg, enc)
    assert out.content_type == "application/json"
    assert out.security_class is SecurityClass.ENCRYPT


@pytest.mark.parametrize("ser", SERS)
@pytest.mark.parametrize("alg", ["ECDH-ES+A128KW", "ECDH-ES+A192KW", "ECDH-ES+A256KW", "RSA-OAEP-256"])
def test_encrypt_certificate(ser, alg, key_source, pki, target_ec_ep, target_rsa_ep):
    ep = target_rsa_ep if alg.startswith("RSA") else target_ec_ep
    env = Source().seal(PAYLOAD, serialization=ser, recipients=[CertificateRecipient(ep.cert, alg=alg)], enc="A256GCM")
    out = target(key_source, pki).open(env)
    assert out.payload == PAYLOAD and out.key_management == alg


@pytest.mark.parametrize("ser", SERS)
@pytest.mark.parametrize("alg,name", [("HS256", "mic32"), ("HS384", "mic64"), ("HS512", "mic64")])
def test_mic(ser, alg, name, keys, key_source, pki):
    kid = f"{name}@mef.example.com"
    suid = 15 if name == "mic32" else 25
    env = Source().seal(PAYLOAD, serialization=ser, signers=[SymmetricSigner(kid, keys[name], alg, suid=suid)])
    assert env.security_class is SecurityClass.SIGN
    out = target(key_source, pki).open(env)
    assert out.payload == PAYLOAD
    assert [(s.alg, s.kid, s.suid) for s in out.signatures] == [(alg, kid, suid)]


@pytest.mark.parametrize("ser", SERS)
@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512", "RS256", "RS384", "RS512"])
def test_digital_signature(ser, alg, key_source, pki, ec_keys, rsa_source_ep):
    if alg.startswith("RS"):
        ep = rsa_source_ep
    else:
        ep = pki.issue(ec_keys[{"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}[alg]], "/id-in/Csigner")
    env = Source().seal(PAYLOAD, serialization=ser, signers=[CertificateSigner(ep.key, ep.chain, alg)])
    out = target(key_source, pki).open(env, expected_source_id=ep.ident)
    assert out.payload == PAYLOAD
    (sig,) = out.signatures
    assert sig.alg == alg and sig.source_id == ep.ident and sig.certificate_chain[0] == ep.cert


@pytest.mark.parametrize("ser", SERS)
def test_nested_sign_then_encrypt(ser, keys, key_source, pki, source_ep, rsa_source_ep, target_ec_ep, target_rsa_ep):
    signers = [CertificateSigner(source_ep.key, source_ep.chain)]
    if ser != "compact":
        signers.append(CertificateSigner(rsa_source_ep.key, rsa_source_ep.chain, "RS512"))
    recipients = [CertificateRecipient(target_ec_ep.cert, alg="ECDH-ES+A256KW")]
    if ser != "compact":
        recipients += [CertificateRecipient(target_rsa_ep.cert), SymmetricRecipient("enc32@mef.example.com", keys["enc32"], "A256KW")]
    env = Source().seal(PAYLOAD, serialization=ser, signers=signers, recipients=recipients, content_type="application/json")
    assert env.security_class is SecurityClass.SIGN_ENCRYPT
    # the outer cty says what is inside
    if ser == "compact":
        from m2msec.esdata.jose import b64url_decode
        assert json.loads(b64url_decode(env.data.split(b".")[0].decode(), "h"))["cty"] == "JOSE"
    # the signer's identity: both signers carry /id-in/C... identifiers; verify against the first
    t = Target(key_source, certificate_verifier=lambda chain, ident: None if chain[0] in (source_ep.cert, rsa_source_ep.cert) else 1 / 0)
    out = t.open(env, expected_source_id=source_ep.ident)
    assert out.payload == PAYLOAD and out.security_class is SecurityClass.SIGN_ENCRYPT
    assert out.content_type == "application/json"
    assert len(out.signatures) == len(signers)


def test_nested_real_verifier(key_source, pki, source_ep, target_rsa_ep):
    env = Source().seal(PAYLOAD, serialization="json", signers=[CertificateSigner(source_ep.key, source_ep.chain)],
                        recipients=[CertificateRecipient(target_rsa_ep.cert)])
    out = target(key_source, pki).open(env, expected_source_id=source_ep.ident, require_class=SecurityClass.SIGN_ENCRYPT)
    assert out.signatures[0].source_id == "/id-in/Csource-ae"


def test_several_recipients_each_target_opens_with_its_own(keys, pki, target_ec_ep, target_rsa_ep):
    from m2msec.esdata import InMemoryKeySource

    recipients = [
        SymmetricRecipient("enc16@mef.example.com", keys["enc16"], "A128KW"),
        SymmetricRecipient("enc32@maf.example.com", keys["enc32"], "A256KW", suid=34),
        CertificateRecipient(target_ec_ep.cert),
        CertificateRecipient(target_rsa_ep.cert),
    ]
    env = Source().seal(PAYLOAD, serialization="json", recipients=recipients, aad=b"routing-info")
    assert len(json.loads(env.data)["recipients"]) == 4
    holders = []
    a = InMemoryKeySource(); a.add_symmetric("enc16@mef.example.com", keys["enc16"], suid=14); holders.append(a)
    b = InMemoryKeySource(); b.add_symmetric("enc32@maf.example.com", keys["enc32"], suid=34); holders.append(b)
    c = InMemoryKeySource(); c.add_certificate_key(target_ec_ep.key, target_ec_ep.cert); holders.append(c)
    d = InMemoryKeySource(); d.add_certificate_key(target_rsa_ep.key, target_rsa_ep.cert); holders.append(d)
    opened_by = set()
    for ks in holders:
        out = Target(ks).open(env)
        assert out.payload == PAYLOAD and out.aad == b"routing-info"
        opened_by.add(out.decrypted_with)
    assert len(opened_by) == 4


def test_several_signers_mixed(keys, key_source, pki, source_ep, rsa_source_ep):
    signers = [
        SymmetricSigner("mic32@mef.example.com", keys["mic32"]),
        CertificateSigner(source_ep.key, source_ep.chain),
        SymmetricSigner("unknown@mef.example.com", keys["mic64"], "HS512"),
    ]
    env = Source().seal(PAYLOAD, serialization="json", signers=signers)
    assert len(json.loads(env.data)["signatures"]) == 3
    out = target(key_source, pki).open(env, expected_source_id=source_ep.ident)
    # the unknown MIC key is skipped (8.5.2.3.1 C.2), the other two verify
    assert sorted(s.alg for s in out.signatures) == ["ES256", "HS256"]


def test_aad_json_and_b64(keys, key_source, pki):
    for ser in ("json", "json-b64"):
        env = Source().seal(b"secret", serialization=ser, aad=b"\x00integrity only",
                            recipients=[SymmetricRecipient("enc16@mef.example.com", keys["enc16"], "dir")])
        out = target(key_source, pki).open(env)
        assert (out.payload, out.aad) == (b"secret", b"\x00integrity only")
    assert env.content_security is ContentSecurity.JOSE_JSON_BASE64


def test_media_types(keys, source_ep):
    r = [SymmetricRecipient("k", keys["enc16"], "dir")]
    assert Source().seal(b"x", serialization="compact", recipients=r).media_type == "application/jose"
    assert Source().seal(b"x", serialization="json", recipients=r).media_type == "application/jose+json"
    assert Source().seal(b"x", serialization=3, recipients=r).media_type == "application/jose+json"


def test_empty_payload(keys, key_source, pki, source_ep):
    # Signature-only: fine.  Encryption: refused (profile limit, jwcrypto cannot open it).
    env = Source().seal(b"", serialization="compact", signers=[SymmetricSigner("mic32@mef.example.com", keys["mic32"])])
    assert target(key_source, pki).open(env).payload == b""
    from m2msec.esdata import ESDataError, Reason
    with pytest.raises(ESDataError) as ei:
        Source().seal(b"", serialization="compact", recipients=[SymmetricRecipient("enc16@mef.example.com", keys["enc16"], "dir")])
    assert ei.value.reason is Reason.UNSUPPORTED
