"""XML ESData (contentSecurity 4/5): every implemented option, independent checks with
plain python-xmlsec (keys manager / signature context, no m2msec code), and rejections."""

from __future__ import annotations

import base64

import pytest
import xmlsec
from cryptography.hazmat.primitives import serialization
from lxml import etree

from m2msec.esdata import (
    CertificateRecipient,
    CertificateSigner,
    ESDataError,
    Reason,
    SecurityClass,
    Source,
    SymmetricRecipient,
    SymmetricSigner,
    Target,
)

SERS = ["xml", "xml-b64"]
PAYLOAD = b"<reading><t>21.5</t></reading>"
DS = "http://www.w3.org/2000/09/xmldsig#"
ENC = "http://www.w3.org/2001/04/xmlenc#"


def xml_of(env) -> bytes:
    return base64.b64decode(env.data) if env.content_security == 5 else env.data


def reject(fn, reason):
    with pytest.raises(ESDataError) as ei:
        fn()
    assert ei.value.reason is reason, str(ei.value)


@pytest.mark.parametrize("ser", SERS)
@pytest.mark.parametrize("name,alg,enc", [
    ("enc16", "dir", "A128GCM"), ("enc24", "dir", "A192GCM"), ("enc32", "dir", "A256GCM"),
    ("enc16", "A128KW", "A256GCM"), ("enc24", "A192KW", "A128GCM"), ("enc32", "A256KW", "A192GCM"),
])
def test_xml_encrypt_symmetric(ser, name, alg, enc, keys, key_source):
    kid = f"{name}@mef.example.com"
    env = Source().seal(PAYLOAD, serialization=ser, recipients=[SymmetricRecipient(kid, keys[name], alg)], enc=enc,
                        content_type="application/xml")
    assert env.media_type == "application/xenc+xml"
    out = Target(key_source).open(env)
    assert (out.payload, out.decrypted_with, out.key_management, out.content_encryption) == (PAYLOAD, kid, alg, enc)
    # independently: plain xmlsec with a keys manager holding the named key
    mgr = xmlsec.KeysManager()
    k = xmlsec.Key.from_binary_data(xmlsec.KeyData.AES, keys[name]); k.name = kid; mgr.add_key(k)
    ctx = xmlsec.EncryptionContext(mgr)
    if alg == "dir":
        ctx.key = xmlsec.Key.from_binary_data(xmlsec.KeyData.AES, keys[name])
    assert ctx.decrypt(etree.fromstring(xml_of(env))) == PAYLOAD


@pytest.mark.parametrize("ser", SERS)
def test_xml_encrypt_rsa_oaep_multi_recipient(ser, keys, key_source, target_rsa_ep):
    env = Source().seal(PAYLOAD, serialization=ser, recipients=[
        CertificateRecipient(target_rsa_ep.cert), SymmetricRecipient("enc32@mef.example.com", keys["enc32"], "A256KW")])
    root = etree.fromstring(xml_of(env))
    assert len(root.findall(f"{{{DS}}}KeyInfo/{{{ENC}}}EncryptedKey")) == 2
    assert root.find(f".//{{{ENC}}}EncryptedKey/{{{ENC}}}EncryptionMethod").get("Algorithm") == "http://www.w3.org/2009/xmlenc11#rsa-oaep"
    assert Target(key_source).open(env).payload == PAYLOAD
    mgr = xmlsec.KeysManager()
    k = xmlsec.Key.from_memory(target_rsa_ep.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()), xmlsec.KeyFormat.PEM)
    k.name = __import__("m2msec.esdata", fromlist=["certificate_kid"]).certificate_kid(target_rsa_ep.cert)
    mgr.add_key(k)
    assert xmlsec.EncryptionContext(mgr).decrypt(etree.fromstring(xml_of(env))) == PAYLOAD


@pytest.mark.parametrize("ser", SERS)
@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512", "ES256", "ES384", "ES512", "RS256", "RS384", "RS512"])
def test_xml_signature(ser, alg, keys, key_source, pki, ec_keys, rsa_source_ep):
    if alg.startswith("HS"):
        name = "mic32" if alg == "HS256" else "mic64"
        signer = SymmetricSigner(f"{name}@mef.example.com", keys[name], alg, suid=15 if name == "mic32" else 25)
        ident, key = None, keys[name]
    else:
        ep = rsa_source_ep if alg.startswith("RS") else pki.issue(
            ec_keys[{"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}[alg]], "/id-in/Cxml")
        signer, ident, key = CertificateSigner(ep.key, ep.chain, alg), ep.ident, ep.key.public_key()
    env = Source().seal(PAYLOAD, serialization=ser, signers=[signer], content_type="application/xml")
    assert env.media_type == "application/xml"
    out = Target(key_source, certificate_verifier=pki.verifier()).open(env, expected_source_id=ident)
    assert out.payload == PAYLOAD and out.signatures[0].alg == alg and out.content_type == "application/xml"
    # independently with plain xmlsec
    root = etree.fromstring(xml_of(env))
    ctx = xmlsec.SignatureContext()
    ctx.register_id(root.find("{urn:m2msec:esdata:1}Payload"), "Id")
    if isinstance(key, bytes):
        ctx.key = xmlsec.Key.from_binary_data(xmlsec.KeyData.HMAC, key)
    else:
        ctx.key = xmlsec.Key.from_memory(key.public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo), xmlsec.KeyFormat.PEM)
    ctx.verify(root.find(f"{{{DS}}}Signature"))


@pytest.mark.parametrize("ser", SERS)
def test_xml_nested(ser, keys, key_source, pki, source_ep, rsa_source_ep, target_rsa_ep):
    env = Source().seal(PAYLOAD, serialization=ser,
                        signers=[CertificateSigner(source_ep.key, source_ep.chain), CertificateSigner(rsa_source_ep.key, rsa_source_ep.chain)],
                        recipients=[CertificateRecipient(target_rsa_ep.cert), SymmetricRecipient("enc16@mef.example.com", keys["enc16"], "A128KW")])
    t = Target(key_source, certificate_verifier=lambda chain, ident: None if chain[0] in (source_ep.cert, rsa_source_ep.cert) else 1 / 0)
    out = t.open(env, expected_source_id=source_ep.ident)
    assert out.security_class is SecurityClass.SIGN_ENCRYPT and out.payload == PAYLOAD and len(out.signatures) == 2


def test_xml_rejections(keys, key_source, pki, source_ep):
    t = Target(key_source, certificate_verifier=pki.verifier())
    K = "enc16@mef.example.com"
    env = Source().seal(PAYLOAD, serialization="xml", recipients=[SymmetricRecipient(K, keys["enc16"], "A128KW")])
    # tampered ciphertext
    root = etree.fromstring(env.data)
    cv = root.find(f"{{{ENC}}}CipherData/{{{ENC}}}CipherValue")
    raw = bytearray(base64.b64decode(cv.text)); raw[-1] ^= 1; cv.text = base64.b64encode(bytes(raw)).decode()
    reject(lambda: t.open(etree.tostring(root), 4), Reason.DECRYPTION_FAILED)
    # wrong key / unknown kid
    import secrets
    env2 = Source().seal(PAYLOAD, serialization="xml", recipients=[SymmetricRecipient(K, secrets.token_bytes(16), "A128KW")])
    reject(lambda: t.open(env2), Reason.DECRYPTION_FAILED)
    env3 = Source().seal(PAYLOAD, serialization="xml", recipients=[SymmetricRecipient("who", keys["enc16"], "A128KW")])
    reject(lambda: t.open(env3), Reason.UNKNOWN_KID)
    # algorithm outside the profile (RSA-OAEP with SHA-1 MGF, AES-CBC)
    bad = env.data.replace(b"xmlenc11#aes128-gcm", b"xmlenc#aes128-cbc")
    reject(lambda: t.open(bad, 4), Reason.ALGORITHM_NOT_ALLOWED)
    # AAD unsupported in XML (ECDH-ES: tests/esdata/test_xml_ecdh.py)
    reject(lambda: Source().seal(b"x", serialization="xml", aad=b"a", recipients=[SymmetricRecipient(K, keys["enc16"], "dir")]),
           Reason.UNSUPPORTED)
    # DOCTYPE / entity expansion
    xxe = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'
    reject(lambda: t.open(xxe, 4), Reason.MALFORMED)
    reject(lambda: t.open(b"<not-xml", 4), Reason.MALFORMED)
    reject(lambda: t.open(b"!!notbase64", 5), Reason.MALFORMED)


def test_xml_signature_rejections(keys, key_source, pki, source_ep):
    t = Target(key_source, certificate_verifier=pki.verifier())
    env = Source().seal(PAYLOAD, serialization="xml", signers=[SymmetricSigner("mic32@mef.example.com", keys["mic32"])])
    # tampered payload
    root = etree.fromstring(env.data)
    root.find("{urn:m2msec:esdata:1}Payload").text = base64.b64encode(b"forged").decode()
    reject(lambda: t.open(etree.tostring(root), 4), Reason.BAD_SIGNATURE)
    # signature wrapping: a second element with the payload Id
    root = etree.fromstring(env.data)
    extra = etree.SubElement(root, "{urn:m2msec:esdata:1}Payload", Id="esd-payload"); extra.text = "Zm9yZ2Vk"
    reject(lambda: t.open(etree.tostring(root), 4), Reason.MALFORMED)
    # truncated HMAC (HMACOutputLength) refused
    root = etree.fromstring(env.data)
    sm = root.find(f".//{{{DS}}}SignatureMethod"); etree.SubElement(sm, f"{{{DS}}}HMACOutputLength").text = "80"
    reject(lambda: t.open(etree.tostring(root), 4), Reason.UNSUPPORTED)
    # untrusted / wrong identifier
    env = Source().seal(PAYLOAD, serialization="xml", signers=[CertificateSigner(source_ep.key, source_ep.chain)])
    reject(lambda: t.open(env, expected_source_id="/id-in/Cother"), Reason.UNTRUSTED_CERTIFICATE)
    # nested XML with a MIC is refused by the Source
    reject(lambda: Source().seal(b"x", serialization="xml", signers=[SymmetricSigner("mic32@mef.example.com", keys["mic32"])],
                                 recipients=[SymmetricRecipient("enc16@mef.example.com", keys["enc16"], "dir")]), Reason.WRONG_CLASS)


def test_signxml_interop_hmac(keys, key_source):
    """signxml (an independent XML-DSig implementation) verifies our HMAC signature, and we
    verify an HMAC signature signxml made over an esd:Payload."""
    signxml = pytest.importorskip("signxml")
    from signxml.verifier import SignatureConfiguration

    k = keys["mic32"]
    env = Source().seal(PAYLOAD, serialization="xml", signers=[SymmetricSigner("mic32@mef.example.com", k)])
    cfg = SignatureConfiguration(require_x509=False, ignore_ambiguous_key_info=True)
    result = signxml.XMLVerifier().verify(env.data, hmac_key=k, id_attribute="Id", expect_config=cfg)
    assert base64.b64decode(result.signed_xml.text) == PAYLOAD

    root = etree.Element("{urn:m2msec:esdata:1}Signed", nsmap={"esd": "urn:m2msec:esdata:1"})
    node = etree.SubElement(root, "{urn:m2msec:esdata:1}Payload", Id="esd-payload")
    node.text = base64.b64encode(b"made by signxml").decode()
    signer = signxml.XMLSigner(method=signxml.SignatureConstructionMethod.detached, signature_algorithm="hmac-sha256",
                               digest_algorithm="sha256", c14n_algorithm="http://www.w3.org/2001/10/xml-exc-c14n#")
    sig = signer.sign(root, key=k, reference_uri="#esd-payload", id_attribute="Id")
    root.append(sig)
    out = Target(key_source, default_kid="mic32@mef.example.com").open(etree.tostring(root), 4)
    assert out.payload == b"made by signxml" and out.signatures[0].alg == "HS256"
