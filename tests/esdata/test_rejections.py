"""Every ESData rejection path gives a precise ESDataError reason (TS-0003 8.5 policy)."""

from __future__ import annotations

import base64
import json

import pytest
from jwcrypto import jwe as jw_jwe
from jwcrypto import jwk as jw_jwk
from jwcrypto import jws as jw_jws

from m2msec.esdata import (
    CertificateSigner,
    ESDataError,
    InMemoryKeySource,
    Policy,
    Reason,
    SecurityClass,
    Source,
    SymmetricRecipient,
    SymmetricSigner,
    Target,
    certificate_kid,
)
from m2msec.esdata.credentials import b64url

K16 = "enc16@mef.example.com"
M32 = "mic32@mef.example.com"


def reject(fn, reason: Reason) -> ESDataError:
    with pytest.raises(ESDataError) as ei:
        fn()
    assert ei.value.reason is reason, str(ei.value)
    assert "Traceback" not in str(ei.value)
    return ei.value


def T(ks, pki=None, **kw):
    return Target(ks, certificate_verifier=pki.verifier() if pki else None, **kw)


def _oct(key: bytes) -> jw_jwk.JWK:
    return jw_jwk.JWK(kty="oct", k=b64url(key))


def test_wrong_key(keys, key_source):
    import secrets
    env = Source().seal(b"x", serialization="compact", recipients=[SymmetricRecipient(K16, secrets.token_bytes(16), "A128KW")])
    reject(lambda: T(key_source).open(env), Reason.DECRYPTION_FAILED)


def test_unknown_kid(keys, key_source):
    env = Source().seal(b"x", serialization="json", recipients=[SymmetricRecipient("nobody@x.example", keys["enc16"], "A128KW")])
    e = reject(lambda: T(key_source).open(env), Reason.UNKNOWN_KID)
    assert e.rsc == 4004


def test_no_kid_and_no_default(keys, key_source):
    k = _oct(keys["enc16"])
    o = jw_jwe.JWE(b"x", protected='{"alg":"A128KW","enc":"A128GCM"}'); o.add_recipient(k)
    reject(lambda: T(key_source).open(o.serialize(compact=True), 1), Reason.MALFORMED)
    assert T(key_source, default_kid=K16).open(o.serialize(compact=True), 1).payload == b"x"


def _flip(s: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
    raw[0] ^= 1
    return b64url(bytes(raw))


@pytest.mark.parametrize("member", ["ciphertext", "tag", "iv", "aad", "protected", "encrypted_key"])
def test_tampered_jwe(member, keys, key_source):
    env = Source().seal(b"payload", serialization="json", aad=b"aad",
                        recipients=[SymmetricRecipient(K16, keys["enc16"], "A128KW")])
    d = json.loads(env.data)
    if member == "encrypted_key":
        d["recipients"][0]["encrypted_key"] = _flip(d["recipients"][0]["encrypted_key"])
    elif member == "protected":
        d["protected"] = b64url(b'{"enc":"A128GCM","x":1}')
    else:
        d[member] = _flip(d[member])
    reject(lambda: T(key_source).open(json.dumps(d), 2), Reason.DECRYPTION_FAILED)


def test_tampered_compact_header(keys, key_source):
    env = Source().seal(b"payload", serialization="compact", recipients=[SymmetricRecipient(K16, keys["enc16"], "dir")])
    parts = env.data.decode().split(".")
    parts[0] = b64url(b'{"alg":"dir","enc":"A128GCM","kid":"%s","cty":"x"}' % K16.encode())
    reject(lambda: T(key_source).open(".".join(parts), 1), Reason.DECRYPTION_FAILED)


@pytest.mark.parametrize("ser", ["compact", "json"])
def test_tampered_signature_and_payload(ser, keys, key_source, pki, source_ep):
    for signer in (SymmetricSigner(M32, keys["mic32"]), CertificateSigner(source_ep.key, source_ep.chain)):
        env = Source().seal(b"payload", serialization=ser, signers=[signer])
        if ser == "compact":
            h, p, s = env.data.decode().split(".")
            bad_sig, bad_payload = f"{h}.{p}.{_flip(s)}", f"{h}.{b64url(b'other')}.{s}"
        else:
            d = json.loads(env.data)
            d2 = json.loads(env.data); d2["signatures"][0]["signature"] = _flip(d2["signatures"][0]["signature"])
            d["payload"] = b64url(b"other")
            bad_sig, bad_payload = json.dumps(d2), json.dumps(d)
        for bad in (bad_sig, bad_payload):
            reject(lambda: T(key_source, pki).open(bad, ser, expected_source_id=source_ep.ident), Reason.BAD_SIGNATURE)


def test_alg_none_refused(key_source):
    tok = b64url(b'{"alg":"none","kid":"%s"}' % M32.encode()) + "." + b64url(b"x") + "."
    reject(lambda: T(key_source).open(tok, 1), Reason.ALGORITHM_NOT_ALLOWED)
    tok2 = b64url(b'{"alg":"none","kid":"%s"}' % M32.encode()) + "." + b64url(b"x") + "." + b64url(b"sig")
    reject(lambda: T(key_source).open(tok2, 1), Reason.ALGORITHM_NOT_ALLOWED)


def test_rsa1_5_refused(key_source, target_rsa_ep):
    o = jw_jwe.JWE(b"x", protected=json.dumps({"alg": "RSA1_5", "enc": "A128GCM", "kid": certificate_kid(target_rsa_ep.cert)}))
    o.allowed_algs = ["RSA1_5", "A128GCM"]
    o.add_recipient(jw_jwk.JWK.from_pyca(target_rsa_ep.cert.public_key()))
    reject(lambda: T(key_source).open(o.serialize(compact=True), 1), Reason.ALGORITHM_NOT_ALLOWED)


def test_cbc_hmac_enc_refused(keys, key_source):
    o = jw_jwe.JWE(b"x", protected=json.dumps({"alg": "A128KW", "enc": "A128CBC-HS256", "kid": K16}))
    o.add_recipient(_oct(keys["enc16"]))
    reject(lambda: T(key_source).open(o.serialize(compact=True), 1), Reason.ALGORITHM_NOT_ALLOWED)


def test_dir_with_certificate_key_refused(key_source, target_ec_ep):
    kid = certificate_kid(target_ec_ep.cert)
    o = jw_jwe.JWE(b"x", protected=json.dumps({"alg": "dir", "enc": "A128GCM", "kid": kid}))
    o.add_recipient(jw_jwk.JWK.generate(kty="oct", size=128))
    reject(lambda: T(key_source).open(o.serialize(compact=True), 1), Reason.ALGORITHM_NOT_ALLOWED)


def test_dir_with_several_recipients_refused(keys, key_source):
    with pytest.raises(ESDataError):
        Source().seal(b"x", serialization="json", recipients=[SymmetricRecipient(K16, keys["enc16"], "dir"),
                                                                SymmetricRecipient("b", keys["enc16"], "A128KW")])


def test_policy_narrowing(keys, key_source):
    env = Source().seal(b"x", serialization="compact", recipients=[SymmetricRecipient(K16, keys["enc16"], "A128KW")])
    narrow = Policy(key_management=frozenset({"dir"}))
    reject(lambda: T(key_source, policy=narrow).open(env), Reason.ALGORITHM_NOT_ALLOWED)
    with pytest.raises(ESDataError):
        Policy(key_management=frozenset({"RSA1_5"}))
    with pytest.raises(ESDataError):
        Policy(signature=frozenset({"none"}))


def test_key_not_allowed_for_alg(keys):
    ks = InMemoryKeySource(); ks.add_symmetric(K16, keys["enc16"], suid=14, algorithms={"dir"})
    env = Source().seal(b"x", serialization="compact", recipients=[SymmetricRecipient(K16, keys["enc16"], "A128KW")])
    reject(lambda: T(ks).open(env), Reason.ALGORITHM_NOT_ALLOWED)


def test_hs_with_public_key_refused(key_source, pki, source_ep):
    """Classic alg confusion: HS256 keyed with the signer's public key bytes."""
    ks = InMemoryKeySource(); ks.add_public_key("src-pub", source_ep.key.public_key())
    from cryptography.hazmat.primitives import serialization
    pub = source_ep.key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    s = jw_jws.JWS(b"x"); s.add_signature(_oct(pub), alg="HS256", protected=json.dumps({"alg": "HS256", "kid": "src-pub"}))
    reject(lambda: T(ks).open(s.serialize(compact=True), 1), Reason.ALGORITHM_NOT_ALLOWED)
    # and a raw public key does verify a genuine ES256 without x5c
    s = jw_jws.JWS(b"x"); s.add_signature(jw_jwk.JWK.from_pyca(source_ep.key), alg="ES256", protected=json.dumps({"alg": "ES256", "kid": "src-pub"}))
    assert T(ks).open(s.serialize(compact=True), 1).signatures[0].suid == 45


def test_suid_policy(keys, key_source):
    # an encryption key (SUID 14) may not make a MIC, a signature key (15) may not encrypt
    reject(lambda: SymmetricSigner(K16, keys["enc32"], suid=14), Reason.KEY_USAGE)
    reject(lambda: SymmetricRecipient(M32, keys["enc16"], "A128KW", suid=15), Reason.KEY_USAGE)
    # Target side: an HS256 MIC named with the kid of an encryption key
    ks = InMemoryKeySource(); ks.add_symmetric("k", keys["enc32"], suid=24, algorithms={"HS256", "A256KW"})
    s = jw_jws.JWS(b"x"); s.add_signature(_oct(keys["enc32"]), alg="HS256", protected=json.dumps({"alg": "HS256", "kid": "k"}))
    reject(lambda: T(ks).open(s.serialize(compact=True), 1), Reason.KEY_USAGE)
    # a JWE naming a MIC key
    ks.add_symmetric("m", keys["enc16"], suid=15, algorithms={"A128KW"})
    o = jw_jwe.JWE(b"x", protected=json.dumps({"alg": "A128KW", "enc": "A128GCM", "kid": "m"})); o.add_recipient(_oct(keys["enc16"]))
    reject(lambda: T(ks).open(o.serialize(compact=True), 1), Reason.KEY_USAGE)


def test_untrusted_signer(key_source, pki, other_pki, ec_keys):
    rogue = other_pki.issue(ec_keys["P-256"], "/id-in/Csource-ae")
    env = Source().seal(b"x", serialization="json", signers=[CertificateSigner(rogue.key, rogue.chain)])
    e = reject(lambda: T(key_source, pki).open(env, expected_source_id="/id-in/Csource-ae"), Reason.UNTRUSTED_CERTIFICATE)
    assert e.rsc == 4106


def test_wrong_identifier(key_source, pki, source_ep):
    env = Source().seal(b"x", serialization="compact", signers=[CertificateSigner(source_ep.key, source_ep.chain)])
    reject(lambda: T(key_source, pki).open(env, expected_source_id="/id-in/Cother"), Reason.UNTRUSTED_CERTIFICATE)
    reject(lambda: T(key_source, pki).open(env), Reason.UNTRUSTED_CERTIFICATE)  # no expected id given
    reject(lambda: T(key_source).open(env, expected_source_id=source_ep.ident), Reason.UNTRUSTED_CERTIFICATE)  # no verifier


def test_expired_signer(key_source, pki, ec_keys, now):
    import datetime as dt
    old = pki.issue(ec_keys["P-256"], "/id-in/Cold", days=10, not_before=now - dt.timedelta(days=30))
    env = Source().seal(b"x", serialization="compact", signers=[CertificateSigner(old.key, old.chain)])
    reject(lambda: T(key_source, pki).open(env, expected_source_id="/id-in/Cold"), Reason.UNTRUSTED_CERTIFICATE)


@pytest.mark.parametrize("bad,cs", [
    ("not a jose object", 1), ("a.b", 1), ("a.b.c.d", 1), ("!!!.eyJ9.x", 1), ("[]", 2), ("{}", 2),
    ('{"ciphertext":"AA","iv":"AA","tag":"AA","recipients":[]}', 2),
    ('{"payload":"eA","signatures":[{"signature":"AA"}]}', 2),
    ('{"payload":"eA","payload":"eA"}', 2), ("@@@", 3), ("{", 2), ("\xff", 1),
])
def test_malformed(bad, cs, key_source):
    reject(lambda: T(key_source).open(bad, cs), Reason.MALFORMED)


def test_oversized(keys, key_source):
    env = Source().seal(b"x" * 5000, serialization="json", recipients=[SymmetricRecipient(K16, keys["enc16"], "A128KW")])
    e = reject(lambda: T(key_source, policy=Policy(max_envelope_size=4096)).open(env), Reason.TOO_LARGE)
    assert e.rsc == 4000
    reject(lambda: T(key_source).open(b"{" * (2 * 1024 * 1024), 2), Reason.TOO_LARGE)
    with pytest.raises(ESDataError):
        Source(Policy(max_envelope_size=100)).seal(b"x" * 500, serialization="json",
                                                   recipients=[SymmetricRecipient(K16, keys["enc16"], "A128KW")])


def test_zip_refused(keys, key_source):
    o = jw_jwe.JWE(b"x" * 100, protected=json.dumps({"alg": "A128KW", "enc": "A128GCM", "kid": K16, "zip": "DEF"}))
    o.add_recipient(_oct(keys["enc16"]))
    reject(lambda: T(key_source).open(o.serialize(compact=True), 1), Reason.UNSUPPORTED)


def test_crit_refused(keys, key_source):
    import hashlib
    import hmac
    h = b64url(json.dumps({"alg": "HS256", "kid": M32, "crit": ["exp"], "exp": 1}).encode()) + "." + b64url(b"x")
    tok = h + "." + b64url(hmac.new(keys["mic32"], h.encode(), hashlib.sha256).digest())
    reject(lambda: T(key_source).open(tok, 1), Reason.UNSUPPORTED)


def test_compact_aad_refused(keys):
    reject(lambda: Source().seal(b"x", serialization="compact", aad=b"a",
                                 recipients=[SymmetricRecipient(K16, keys["enc16"], "dir")]), Reason.UNSUPPORTED)
    reject(lambda: Source().seal(b"x", serialization="json", aad=b"a",
                                 signers=[SymmetricSigner(M32, keys["mic32"])]), Reason.UNSUPPORTED)


def test_nested_with_mic_refused(keys, key_source):
    reject(lambda: Source().seal(b"x", serialization="json", signers=[SymmetricSigner(M32, keys["mic32"])],
                                 recipients=[SymmetricRecipient(K16, keys["enc16"], "dir")]), Reason.WRONG_CLASS)
    # a forged nested envelope whose inner JWS is a MIC
    inner = Source().seal(b"x", serialization="json", signers=[SymmetricSigner(M32, keys["mic32"])])
    o = jw_jwe.JWE(inner.data, protected=json.dumps({"alg": "dir", "enc": "A128GCM", "kid": K16, "cty": "JOSE+JSON"}))
    o.add_recipient(_oct(keys["enc16"]))
    reject(lambda: T(key_source).open(o.serialize(compact=True), 1), Reason.WRONG_CLASS)


def test_require_class(keys, key_source):
    env = Source().seal(b"x", serialization="json", recipients=[SymmetricRecipient(K16, keys["enc16"], "dir")])
    reject(lambda: T(key_source).open(env, require_class=SecurityClass.SIGN_ENCRYPT), Reason.WRONG_CLASS)


def test_duplicate_header_params(keys, key_source):
    env = Source().seal(b"x", serialization="json", recipients=[SymmetricRecipient(K16, keys["enc16"], "A128KW")])
    d = json.loads(env.data); d["recipients"][0]["header"]["enc"] = "A128GCM"
    reject(lambda: T(key_source).open(json.dumps(d), 2), Reason.MALFORMED)


def test_short_hmac_key_refused(key_source):
    reject(lambda: SymmetricSigner(M32, b"k" * 16, "HS256"), Reason.ALGORITHM_NOT_ALLOWED)


def test_secrets_not_in_repr(keys, key_source):
    r = SymmetricRecipient(K16, keys["enc16"], "dir")
    assert keys["enc16"].hex() not in repr(r) and repr(keys["enc16"]) not in repr(r)
    assert keys["mic32"].hex() not in repr(key_source.resolve(M32))
    assert repr(keys["mic32"]) not in repr(key_source.resolve(M32))


def test_unprotected_x5c_refused(key_source, pki, source_ep):
    env = Source().seal(b"x", serialization="json", signers=[CertificateSigner(source_ep.key, source_ep.chain)])
    d = json.loads(env.data)
    sig = d["signatures"][0]
    prot = json.loads(base64.urlsafe_b64decode(sig["protected"] + "=="))
    sig["header"] = {"x5c": prot.pop("x5c")}
    sig["protected"] = b64url(json.dumps(prot).encode())
    reject(lambda: T(key_source, pki).open(json.dumps(d), 2, expected_source_id=source_ep.ident), Reason.MALFORMED)
