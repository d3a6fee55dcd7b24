"""Cross-library checks: joserfc (independent of the jwcrypto engine inside m2msec.esdata)
opens what we seal, and we open what joserfc / plain jwcrypto produce."""

from __future__ import annotations

import json

import pytest
from joserfc import jwe as fjwe
from joserfc import jws as fjws
from joserfc.jwk import ECKey, OctKey, RSAKey
from jwcrypto import jwe as jw_jwe
from jwcrypto import jwk as jw_jwk

from m2msec.esdata import (
    CertificateRecipient,
    CertificateSigner,
    SecurityClass,
    Source,
    SymmetricRecipient,
    SymmetricSigner,
    Target,
    certificate_kid,
)

ALL_ALGS = ["dir", "A128KW", "A192KW", "A256KW", "RSA-OAEP-256", "ECDH-ES+A128KW", "ECDH-ES+A192KW", "ECDH-ES+A256KW",
            "A128GCM", "A192GCM", "A256GCM", "HS256", "HS384", "HS512", "ES256", "ES384", "ES512", "RS256", "RS384", "RS512"]
K16, K32, M32 = "enc16@mef.example.com", "enc32@mef.example.com", "mic32@mef.example.com"


def sreg(algs):
    # x5c makes protected headers larger than joserfc's 512-byte default limit
    reg = fjws.JWSRegistry(algorithms=algs)
    reg.max_header_length = 8192
    return reg


def freg(**kw):
    return fjwe.JWERegistry(algorithms=ALL_ALGS, verify_all_recipients=False, **kw)


def test_ours_compact_opened_by_joserfc(keys, target_ec_ep, target_rsa_ep):
    cases = [
        (SymmetricRecipient(K16, keys["enc16"], "dir"), OctKey.import_key(keys["enc16"])),
        (SymmetricRecipient(K32, keys["enc32"], "A256KW"), OctKey.import_key(keys["enc32"])),
        (CertificateRecipient(target_ec_ep.cert, alg="ECDH-ES+A192KW"), ECKey.import_key(target_ec_ep.key)),
        (CertificateRecipient(target_rsa_ep.cert), RSAKey.import_key(target_rsa_ep.key)),
    ]
    for rec, fkey in cases:
        env = Source().seal(b"hello oneM2M", serialization="compact", recipients=[rec], content_type="text/plain")
        out = fjwe.decrypt_compact(env.data, fkey, registry=freg())
        assert out.plaintext == b"hello oneM2M"
        assert out.protected["cty"] == "text/plain"


def test_ours_multi_recipient_json_opened_by_joserfc_and_jwcrypto(keys, target_ec_ep, target_rsa_ep):
    env = Source().seal(b"multi", serialization="json", aad=b"aad!", recipients=[
        SymmetricRecipient(K16, keys["enc16"], "A128KW"), CertificateRecipient(target_ec_ep.cert),
        CertificateRecipient(target_rsa_ep.cert)])
    d = json.loads(env.data)
    for fkey in (OctKey.import_key(keys["enc16"]), ECKey.import_key(target_ec_ep.key), RSAKey.import_key(target_rsa_ep.key)):
        out = fjwe.decrypt_json(d, fkey, registry=freg())
        assert out.plaintext == b"multi" and out.aad == b"aad!"
    o = jw_jwe.JWE()
    o.deserialize(env.data.decode(), key=jw_jwk.JWK.from_pyca(target_rsa_ep.key))
    assert o.plaintext == b"multi"


def test_ours_jws_verified_by_joserfc(keys, source_ep, rsa_source_ep):
    env = Source().seal(b"signed", serialization="compact", signers=[CertificateSigner(source_ep.key, source_ep.chain)])
    assert fjws.deserialize_compact(env.data, ECKey.import_key(source_ep.key.public_key()), registry=sreg(["ES256"])).payload == b"signed"
    env = Source().seal(b"signed", serialization="json", signers=[
        SymmetricSigner(M32, keys["mic32"]), CertificateSigner(rsa_source_ep.key, rsa_source_ep.chain, "RS384")])
    d = json.loads(env.data)
    keymap = {M32: OctKey.import_key(keys["mic32"]), certificate_kid(rsa_source_ep.cert): RSAKey.import_key(rsa_source_ep.key.public_key())}
    out = fjws.deserialize_json(d, lambda obj: keymap[obj.headers()["kid"]], registry=sreg(["HS256", "RS384"]))
    assert out.payload == b"signed"


def test_ours_nested_opened_by_joserfc(source_ep, target_rsa_ep):
    env = Source().seal(b"nested", serialization="json", signers=[CertificateSigner(source_ep.key, source_ep.chain)],
                        recipients=[CertificateRecipient(target_rsa_ep.cert)])
    outer = fjwe.decrypt_json(json.loads(env.data), RSAKey.import_key(target_rsa_ep.key), registry=freg())
    assert outer.protected["cty"] == "JOSE+JSON"
    inner = fjws.deserialize_json(json.loads(outer.plaintext), ECKey.import_key(source_ep.key.public_key()), registry=sreg(["ES256"]))
    assert inner.payload == b"nested"


def test_joserfc_compact_opened_by_us(keys, key_source, target_ec_ep, target_rsa_ep):
    t = Target(key_source)
    for prot, fkey in [
        ({"alg": "dir", "enc": "A128GCM", "kid": K16}, OctKey.import_key(keys["enc16"])),
        ({"alg": "A128KW", "enc": "A256GCM", "kid": K16}, OctKey.import_key(keys["enc16"])),
        ({"alg": "ECDH-ES+A256KW", "enc": "A128GCM", "kid": certificate_kid(target_ec_ep.cert)}, ECKey.import_key(target_ec_ep.cert.public_key())),
        ({"alg": "RSA-OAEP-256", "enc": "A192GCM", "kid": certificate_kid(target_rsa_ep.cert)}, RSAKey.import_key(target_rsa_ep.cert.public_key())),
    ]:
        tok = fjwe.encrypt_compact(prot, b"from joserfc", fkey, registry=freg())
        out = t.open(tok, 1)
        assert out.payload == b"from joserfc" and out.key_management == prot["alg"]


def test_joserfc_multi_recipient_json_opened_by_us(keys, key_source, target_ec_ep, target_rsa_ep):
    obj = fjwe.GeneralJSONEncryption({"enc": "A256GCM"}, b"general", aad=b"meta")
    obj.add_recipient({"alg": "A128KW", "kid": "someone-else"}, OctKey.generate_key(128))
    obj.add_recipient({"alg": "RSA-OAEP-256", "kid": certificate_kid(target_rsa_ep.cert)}, RSAKey.import_key(target_rsa_ep.cert.public_key()))
    obj.add_recipient({"alg": "A256KW", "kid": K32}, OctKey.import_key(keys["enc32"]))
    d = fjwe.encrypt_json(obj, None, registry=freg())
    out = Target(key_source).open(json.dumps(d), 2)
    assert (out.payload, out.aad) == (b"general", b"meta")
    assert out.decrypted_with in (certificate_kid(target_rsa_ep.cert), K32)


def test_joserfc_multi_signature_json_opened_by_us(keys, key_source, pki, source_ep):
    from cryptography.hazmat.primitives.serialization import Encoding
    import base64
    x5c = [base64.b64encode(c.public_bytes(Encoding.DER)).decode() for c in source_ep.chain]
    members = [{"protected": {"alg": "HS256", "kid": M32}}, {"protected": {"alg": "ES256", "x5c": x5c}}]
    keymap = {"HS256": OctKey.import_key(keys["mic32"]), "ES256": ECKey.import_key(source_ep.key)}
    d = fjws.serialize_json(members, b"two signers", lambda obj: keymap[obj.headers()["alg"]], algorithms=["HS256", "ES256"])
    out = Target(key_source, certificate_verifier=pki.verifier()).open(json.dumps(d), 2, expected_source_id=source_ep.ident)
    assert out.payload == b"two signers" and sorted(s.alg for s in out.signatures) == ["ES256", "HS256"]


def test_jwcrypto_non_compact_protected_header(keys, key_source, target_rsa_ep):
    """The case joserfc 1.8 cannot open: a protected header written with spaces."""
    o = jw_jwe.JWE(b"spaced", protected=json.dumps({"enc": "A128GCM"}))  # '{"enc": "A128GCM"}'
    o.add_recipient(jw_jwk.JWK(kty="oct", k=__import__("m2msec.esdata.credentials", fromlist=["b64url"]).b64url(keys["enc16"])),
                    header=json.dumps({"alg": "A128KW", "kid": K16}))
    o.add_recipient(jw_jwk.JWK.from_pyca(target_rsa_ep.cert.public_key()),
                    header=json.dumps({"alg": "RSA-OAEP-256", "kid": certificate_kid(target_rsa_ep.cert)}))
    out = Target(key_source).open(o.serialize(), 2)
    assert out.payload == b"spaced" and out.security_class is SecurityClass.ENCRYPT


@pytest.mark.parametrize("ser", ["json", "json-b64"])
def test_joserfc_nested_opened_by_us(ser, key_source, pki, source_ep, target_ec_ep):
    import base64
    from cryptography.hazmat.primitives.serialization import Encoding
    x5c = [base64.b64encode(c.public_bytes(Encoding.DER)).decode() for c in source_ep.chain]
    inner = fjws.serialize_json({"protected": {"alg": "ES256", "x5c": x5c, "cty": "text/plain"}}, b"nested by joserfc",
                                ECKey.import_key(source_ep.key), algorithms=["ES256"])
    obj = fjwe.GeneralJSONEncryption({"enc": "A128GCM", "cty": "JOSE+JSON"}, json.dumps(inner).encode())
    obj.add_recipient({"alg": "ECDH-ES+A128KW", "kid": certificate_kid(target_ec_ep.cert)}, ECKey.import_key(target_ec_ep.cert.public_key()))
    data = json.dumps(fjwe.encrypt_json(obj, None, registry=freg())).encode()
    if ser == "json-b64":
        data = base64.b64encode(data)
    out = Target(key_source, certificate_verifier=pki.verifier()).open(data, ser, expected_source_id=source_ep.ident)
    assert out.payload == b"nested by joserfc" and out.security_class is SecurityClass.SIGN_ENCRYPT
    assert out.content_type == "text/plain"
