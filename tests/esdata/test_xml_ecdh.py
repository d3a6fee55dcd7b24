"""XML ESData ECDH-ES key agreement (TS-0003 8.5.3.2 table 8.5.3.2-1; XML Encryption 1.1
AgreementMethod / ECDH-ES / ConcatKDF): round trips, python-xmlsec (libxmlsec1) decrypting our
envelopes and producing envelopes we open, the ConcatKDF against a hashlib computation, and
every rejection path."""

from __future__ import annotations

import base64
import hashlib
import secrets

import pytest
import xmlsec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from lxml import etree

from m2msec.esdata import (
    CertificateRecipient,
    CertificateSigner,
    ESDataError,
    InMemoryKeySource,
    Policy,
    Reason,
    SecurityClass,
    Source,
    SymmetricRecipient,
    Target,
    certificate_kid,
)
from m2msec.esdata.credentials import KEY_MANAGEMENT_ALGS
from m2msec.esdata.errors import SealError
from m2msec.esdata.xmlsecdata import _kdf
from m2msec.onem2m.rsc import ResponseStatusCode

PAYLOAD = b"<reading><t>21.5</t></reading>"
ENC = "http://www.w3.org/2001/04/xmlenc#"
ENC11 = "http://www.w3.org/2009/xmlenc11#"
DS = "http://www.w3.org/2000/09/xmldsig#"
DS11 = "http://www.w3.org/2009/xmldsig11#"
NS = {"xenc": ENC, "xenc11": ENC11, "ds": DS, "dsig11": DS11}
OID = {"secp256r1": "urn:oid:1.2.840.10045.3.1.7", "secp384r1": "urn:oid:1.3.132.0.34", "secp521r1": "urn:oid:1.3.132.0.35"}
CURVE = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}
CURVE_OF_NAME = {"secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1, "secp521r1": ec.SECP521R1}


def q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def reject(fn, reason: Reason, rsc: ResponseStatusCode = ResponseStatusCode.BAD_REQUEST) -> ESDataError:
    with pytest.raises(ESDataError) as ei:
        fn()
    assert ei.value.reason is reason, str(ei.value)
    assert ei.value.rsc == rsc, str(ei.value)
    return ei.value


def pem_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def pem_public(key) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def point(key: ec.EllipticCurvePublicKey) -> str:
    return base64.b64encode(key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)).decode()


@pytest.fixture(scope="module")
def ec_eps(pki):
    """An EC end-point (key + certificate) per curve, with a key source holding all of them."""
    eps = {name: pki.issue(ec.generate_private_key(cls()), f"/id-in/Cecdh-{name}") for name, cls in CURVE.items()}
    return eps


@pytest.fixture()
def ks(ec_eps, target_rsa_ep, keys) -> InMemoryKeySource:
    src = InMemoryKeySource()
    for ep in ec_eps.values():
        src.add_certificate_key(ep.key, ep.cert)
    src.add_certificate_key(target_rsa_ep.key, target_rsa_ep.cert)
    src.add_symmetric("enc32@mef.example.com", keys["enc32"], suid=14)
    return src


def seal(recipients, **kw) -> bytes:
    return Source().seal(PAYLOAD, serialization="xml", recipients=recipients, **kw).data


def agreement_of(root: etree._Element, index: int = 0) -> etree._Element:
    return root.findall("ds:KeyInfo/xenc:EncryptedKey", NS)[index].find("ds:KeyInfo/xenc:AgreementMethod", NS)


# --- round trips and layout -------------------------------------------------------------


@pytest.mark.parametrize("curve,alg,kw,enc", [
    ("P-256", None, "kw-aes128", "A128GCM"),
    ("P-384", "ECDH-ES+A192KW", "kw-aes192", "A256GCM"),
    ("P-384", "ECDH-ES+A256KW", "kw-aes256", "A128GCM"),
    ("P-521", "ECDH-ES+A256KW", "kw-aes256", "A192GCM"),
])
def test_round_trip_and_layout(curve, alg, kw, enc, ec_eps, ks):
    ep = ec_eps[curve]
    kid = certificate_kid(ep.cert)
    data = seal([CertificateRecipient(ep.cert, alg=alg)], enc=enc, content_type="application/xml")
    out = Target(ks).open(data, 4)
    expected_alg = alg or "ECDH-ES+A128KW"
    assert (out.payload, out.decrypted_with, out.key_management, out.content_encryption) == (PAYLOAD, kid, expected_alg, enc)
    assert out.content_type == "application/xml"

    root = etree.fromstring(data)
    (ek,) = root.findall("ds:KeyInfo/xenc:EncryptedKey", NS)
    assert ek.find("xenc:EncryptionMethod", NS).get("Algorithm") == ENC + kw
    (am,) = ek.find("ds:KeyInfo", NS)
    assert am.tag == q(ENC, "AgreementMethod") and am.get("Algorithm") == ENC11 + "ECDH-ES"
    assert [c.tag for c in am] == [q(ENC11, "KeyDerivationMethod"), q(ENC, "OriginatorKeyInfo"), q(ENC, "RecipientKeyInfo")]
    kdm = am.find("xenc11:KeyDerivationMethod", NS)
    assert kdm.get("Algorithm") == ENC11 + "ConcatKDF"
    params = kdm.find("xenc11:ConcatKDFParams", NS)
    assert params.find("ds:DigestMethod", NS).get("Algorithm") == ENC + "sha256"
    assert params.get("AlgorithmID") == "00" + (ENC + kw).encode().hex()
    assert params.get("PartyUInfo") == "00"
    assert params.get("PartyVInfo") == "00" + kid.encode().hex()
    assert params.get("SuppPubInfo") is None and params.get("SuppPrivInfo") is None
    eckv = am.find("xenc:OriginatorKeyInfo/ds:KeyValue/dsig11:ECKeyValue", NS)
    assert eckv.find("dsig11:NamedCurve", NS).get("URI") == OID[ep.key.curve.name]
    eph = ec.EllipticCurvePublicKey.from_encoded_point(ep.key.curve, base64.b64decode(eckv.find("dsig11:PublicKey", NS).text))
    assert eph.public_numbers() != ep.key.public_key().public_numbers()
    assert am.find("xenc:RecipientKeyInfo/ds:KeyName", NS).text == kid


def test_fresh_ephemeral_key_per_envelope_and_recipient(ec_eps):
    ep = ec_eps["P-256"]
    r = CertificateRecipient(ep.cert)
    a, b = etree.fromstring(seal([r])), etree.fromstring(seal([r]))
    pk = "xenc:OriginatorKeyInfo/ds:KeyValue/dsig11:ECKeyValue/dsig11:PublicKey"
    assert agreement_of(a).find(pk, NS).text != agreement_of(b).find(pk, NS).text


def test_xml_b64_and_nested_sign_then_encrypt(ec_eps, ks, pki, source_ep):
    ep = ec_eps["P-384"]
    env = Source().seal(PAYLOAD, serialization="xml-b64", recipients=[CertificateRecipient(ep.cert)],
                        signers=[CertificateSigner(source_ep.key, source_ep.chain)])
    assert env.security_class is SecurityClass.SIGN_ENCRYPT
    out = Target(ks, certificate_verifier=pki.verifier()).open(env, expected_source_id=source_ep.ident)
    assert out.payload == PAYLOAD and out.key_management == "ECDH-ES+A128KW" and out.signatures[0].alg == "ES256"


def test_mixed_multi_recipient(ec_eps, target_rsa_ep, keys, ks):
    recipients = [CertificateRecipient(ec_eps["P-256"].cert), CertificateRecipient(target_rsa_ep.cert),
                  SymmetricRecipient("enc32@mef.example.com", keys["enc32"], "A256KW"),
                  CertificateRecipient(ec_eps["P-384"].cert, alg="ECDH-ES+A256KW")]
    data = seal(recipients, enc="A256GCM")
    root = etree.fromstring(data)
    eks = root.findall("ds:KeyInfo/xenc:EncryptedKey", NS)
    # one EncryptedKey per recipient, in the order given
    assert [ek.find("ds:KeyInfo/xenc:AgreementMethod", NS) is not None for ek in eks] == [True, False, False, True]
    assert eks[1].find("xenc:EncryptionMethod", NS).get("Algorithm") == ENC11 + "rsa-oaep"
    # each credential holder alone opens it
    holders = [
        (lambda s: s.add_certificate_key(ec_eps["P-256"].key, ec_eps["P-256"].cert), "ECDH-ES+A128KW"),
        (lambda s: s.add_certificate_key(target_rsa_ep.key, target_rsa_ep.cert), "RSA-OAEP-256"),
        (lambda s: s.add_symmetric("enc32@mef.example.com", keys["enc32"], suid=14), "A256KW"),
        (lambda s: s.add_certificate_key(ec_eps["P-384"].key, ec_eps["P-384"].cert), "ECDH-ES+A256KW"),
    ]
    for add, alg in holders:
        one = InMemoryKeySource()
        add(one)
        out = Target(one).open(data, 4)
        assert (out.payload, out.key_management) == (PAYLOAD, alg)
    # a holder of none of them
    reject(lambda: Target(InMemoryKeySource()).open(data, 4), Reason.UNKNOWN_KID, ResponseStatusCode.NOT_FOUND)


def test_concat_kdf_matches_sp800_56a_by_hand():
    """ConcatKDF-SHA-256 = SHA-256(counter=1 || Z || FixedInfo) truncated, then counter 2 ..."""
    z = bytes(range(48))
    fixed = b"http://www.w3.org/2001/04/xmlenc#kw-aes256" + b"kid"
    assert _kdf(z, 32, fixed) == hashlib.sha256(b"\x00\x00\x00\x01" + z + fixed).digest()
    assert _kdf(z, 16, fixed) == hashlib.sha256(b"\x00\x00\x00\x01" + z + fixed).digest()[:16]
    assert _kdf(z, 24, b"") == hashlib.sha256(b"\x00\x00\x00\x01" + z).digest()[:24]


# --- independent checks with libxmlsec1 (python-xmlsec) ---------------------------------


def xmlsec_decrypt(data: bytes, ep) -> bytes:
    """python-xmlsec opens one of our envelopes with ``ep``'s private key.  python-xmlsec 1.3
    has <KeyValue> reading disabled, so the ephemeral key read from our dsig11:ECKeyValue (here,
    with cryptography) goes into the keys manager under a KeyName added to OriginatorKeyInfo."""
    root = etree.fromstring(data)
    mgr = xmlsec.KeysManager()
    k = xmlsec.Key.from_memory(pem_private(ep.key), xmlsec.KeyFormat.PEM)
    k.name = certificate_kid(ep.cert)
    mgr.add_key(k)
    for i, ek in enumerate(root.findall("ds:KeyInfo/xenc:EncryptedKey", NS)):
        oki = ek.find("ds:KeyInfo/xenc:AgreementMethod/xenc:OriginatorKeyInfo", NS)
        if oki is None:
            continue
        eckv = oki.find("ds:KeyValue/dsig11:ECKeyValue", NS)
        curve = {v: k for k, v in OID.items()}[eckv.find("dsig11:NamedCurve", NS).get("URI")]
        eph = ec.EllipticCurvePublicKey.from_encoded_point(
            CURVE_OF_NAME[curve](), base64.b64decode(eckv.find("dsig11:PublicKey", NS).text))
        ek_key = xmlsec.Key.from_memory(pem_public(eph), xmlsec.KeyFormat.PEM)
        ek_key.name = f"ephemeral-{i}"
        mgr.add_key(ek_key)
        name = etree.Element(q(DS, "KeyName"))
        name.text = ek_key.name
        oki.insert(0, name)
    return xmlsec.EncryptionContext(mgr).decrypt(root)


@pytest.mark.parametrize("curve,alg", [("P-256", "ECDH-ES+A128KW"), ("P-384", "ECDH-ES+A192KW"), ("P-521", "ECDH-ES+A256KW")])
def test_xmlsec_decrypts_ours(curve, alg, ec_eps):
    ep = ec_eps[curve]
    assert xmlsec_decrypt(seal([CertificateRecipient(ep.cert, alg=alg)]), ep) == PAYLOAD


def test_xmlsec_decrypts_ours_multi_recipient(ec_eps, target_rsa_ep, keys):
    data = seal([CertificateRecipient(target_rsa_ep.cert), SymmetricRecipient("enc32@mef.example.com", keys["enc32"], "A256KW"),
                 CertificateRecipient(ec_eps["P-256"].cert), CertificateRecipient(ec_eps["P-384"].cert)], enc="A192GCM")
    assert xmlsec_decrypt(data, ec_eps["P-384"]) == PAYLOAD
    assert xmlsec_decrypt(data, ec_eps["P-256"]) == PAYLOAD


def xmlsec_encrypt(ep, *, kw: str, enc_uri: str, params: dict[str, str], payload: bytes) -> bytes:
    """python-xmlsec builds an ECDH-ES envelope for ``ep`` (ephemeral private key and recipient
    public key in its keys manager, named in the template); the ephemeral public key is then
    written into the empty ds:KeyValue, as 1.3.x cannot write KeyValue itself."""
    eph = ec.generate_private_key(ep.key.curve)
    root = etree.Element(q(ENC, "EncryptedData"), nsmap={"xenc": ENC, "ds": DS})
    etree.SubElement(root, q(ENC, "EncryptionMethod"), Algorithm=enc_uri)
    ek = etree.SubElement(etree.SubElement(root, q(DS, "KeyInfo")), q(ENC, "EncryptedKey"))
    etree.SubElement(ek, q(ENC, "EncryptionMethod"), Algorithm=ENC + kw)
    am = etree.SubElement(etree.SubElement(ek, q(DS, "KeyInfo")), q(ENC, "AgreementMethod"), Algorithm=ENC11 + "ECDH-ES")
    kdm = etree.SubElement(am, q(ENC11, "KeyDerivationMethod"), nsmap={"xenc11": ENC11}, Algorithm=ENC11 + "ConcatKDF")
    p = etree.SubElement(kdm, q(ENC11, "ConcatKDFParams"), **params)
    etree.SubElement(p, q(DS, "DigestMethod"), Algorithm=ENC + "sha256")
    oki = etree.SubElement(am, q(ENC, "OriginatorKeyInfo"))
    etree.SubElement(oki, q(DS, "KeyName")).text = "ephemeral"
    etree.SubElement(oki, q(DS, "KeyValue"))
    etree.SubElement(etree.SubElement(am, q(ENC, "RecipientKeyInfo")), q(DS, "KeyName")).text = certificate_kid(ep.cert)
    etree.SubElement(etree.SubElement(ek, q(ENC, "CipherData")), q(ENC, "CipherValue"))
    etree.SubElement(etree.SubElement(root, q(ENC, "CipherData")), q(ENC, "CipherValue"))
    mgr = xmlsec.KeysManager()
    rk = xmlsec.Key.from_memory(pem_public(ep.key.public_key()), xmlsec.KeyFormat.PEM)
    rk.name = certificate_kid(ep.cert)
    mgr.add_key(rk)
    ek_key = xmlsec.Key.from_memory(pem_private(eph), xmlsec.KeyFormat.PEM)
    ek_key.name = "ephemeral"
    mgr.add_key(ek_key)
    ctx = xmlsec.EncryptionContext(mgr)
    ctx.key = xmlsec.Key.from_binary_data(xmlsec.KeyData.AES, secrets.token_bytes({"aes128-gcm": 16, "aes256-gcm": 32}[enc_uri.split("#")[1]]))
    out = ctx.encrypt_binary(root, payload)
    kv = out.find(".//xenc:OriginatorKeyInfo/ds:KeyValue", NS)
    assert kv is not None and len(kv) == 0  # xmlsec 1.3 leaves it empty
    eckv = etree.SubElement(kv, q(DS11, "ECKeyValue"), nsmap={"dsig11": DS11})
    etree.SubElement(eckv, q(DS11, "NamedCurve"), URI=OID[ep.key.curve.name])
    etree.SubElement(eckv, q(DS11, "PublicKey")).text = point(eph.public_key())
    return etree.tostring(out)


@pytest.mark.parametrize("curve,kw,enc_uri,params,alg", [
    # (libxmlsec1's OpenSSL ConcatKDF refuses an empty FixedInfo, so every case carries some)
    ("P-256", "kw-aes128", ENC11 + "aes128-gcm", {"AlgorithmID": "0001", "PartyUInfo": "", "PartyVInfo": ""}, "ECDH-ES+A128KW"),
    ("P-384", "kw-aes256", ENC11 + "aes256-gcm",
     {"AlgorithmID": "0078797a", "PartyUInfo": "00AA", "PartyVInfo": "00bb", "SuppPubInfo": "00000100", "SuppPrivInfo": "0001"},
     "ECDH-ES+A256KW"),
    ("P-521", "kw-aes192", ENC11 + "aes128-gcm", {"PartyVInfo": "00cc"}, "ECDH-ES+A192KW"),
])
def test_we_decrypt_xmlsec_output(curve, kw, enc_uri, params, alg, ec_eps, ks):
    ep = ec_eps[curve]
    data = xmlsec_encrypt(ep, kw=kw, enc_uri=enc_uri, params=params, payload=b"made by libxmlsec1")
    out = Target(ks).open(data, 4)
    assert (out.payload, out.key_management, out.decrypted_with) == (b"made by libxmlsec1", alg, certificate_kid(ep.cert))


# --- rejections ---------------------------------------------------------------------------


@pytest.fixture()
def p384_env(ec_eps) -> bytes:
    return seal([CertificateRecipient(ec_eps["P-384"].cert)])


def mutate(data: bytes, fn) -> bytes:
    root = etree.fromstring(data)
    fn(agreement_of(root))
    return etree.tostring(root)


def test_reject_wrong_key(ec_eps, p384_env, pki):
    other_key = ec.generate_private_key(ec.SECP384R1())
    other = pki.issue(other_key, "/id-in/Cother")
    wrong = InMemoryKeySource()
    wrong.add_certificate_key(other_key, other.cert, kid=certificate_kid(ec_eps["P-384"].cert))
    reject(lambda: Target(wrong).open(p384_env, 4), Reason.DECRYPTION_FAILED)


def test_reject_tampered(ec_eps, ks, p384_env):
    t = Target(ks)
    pk = "xenc:OriginatorKeyInfo/ds:KeyValue/dsig11:ECKeyValue/dsig11:PublicKey"
    # another valid P-384 point as the ephemeral key
    other = point(ec.generate_private_key(ec.SECP384R1()).public_key())
    reject(lambda: t.open(mutate(p384_env, lambda am: setattr(am.find(pk, NS), "text", other)), 4), Reason.DECRYPTION_FAILED)
    # KDF input changed (AlgorithmID / PartyVInfo)
    def params(am):
        return am.find("xenc11:KeyDerivationMethod/xenc11:ConcatKDFParams", NS)
    reject(lambda: t.open(mutate(p384_env, lambda am: params(am).set("AlgorithmID", "00")), 4), Reason.DECRYPTION_FAILED)
    reject(lambda: t.open(mutate(p384_env, lambda am: params(am).set("SuppPubInfo", "0000000080")), 4), Reason.DECRYPTION_FAILED)
    # wrapped key changed
    root = etree.fromstring(p384_env)
    cv = root.find("ds:KeyInfo/xenc:EncryptedKey/xenc:CipherData/xenc:CipherValue", NS)
    raw = bytearray(base64.b64decode(cv.text)); raw[3] ^= 0x40; cv.text = base64.b64encode(bytes(raw)).decode()
    reject(lambda: t.open(etree.tostring(root), 4), Reason.DECRYPTION_FAILED)
    cv.text = base64.b64encode(bytes(raw[:-3])).decode()  # not a multiple of 8
    reject(lambda: t.open(etree.tostring(root), 4), Reason.DECRYPTION_FAILED)
    cv.text = "!!"
    reject(lambda: t.open(etree.tostring(root), 4), Reason.MALFORMED)


def test_reject_bad_ephemeral_point(ec_eps, ks, p384_env):
    t = Target(ks)
    pk = "xenc:OriginatorKeyInfo/ds:KeyValue/dsig11:ECKeyValue/dsig11:PublicKey"
    good = ec.generate_private_key(ec.SECP384R1()).public_key()
    raw = bytearray(good.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))
    raw[-1] ^= 1  # y no longer fits x: not on the curve
    off_curve = base64.b64encode(bytes(raw)).decode()
    compressed = base64.b64encode(good.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)).decode()
    infinity = base64.b64encode(b"\x00").decode()
    for value in (off_curve, compressed, infinity, "", "not base64!"):
        reject(lambda: t.open(mutate(p384_env, lambda am: setattr(am.find(pk, NS), "text", value)), 4), Reason.MALFORMED)


def test_reject_curve_mismatch(ec_eps, ks, p384_env):
    """A P-256 ephemeral key (named as P-256) addressed to the P-384 certificate key."""
    eckv = "xenc:OriginatorKeyInfo/ds:KeyValue/dsig11:ECKeyValue/"
    p256 = point(ec.generate_private_key(ec.SECP256R1()).public_key())

    def swap(am):
        am.find(eckv + "dsig11:NamedCurve", NS).set("URI", OID["secp256r1"])
        am.find(eckv + "dsig11:PublicKey", NS).text = p256
    err = reject(lambda: Target(ks).open(mutate(p384_env, swap), 4), Reason.MALFORMED)
    assert "secp256r1" in str(err) and "secp384r1" in str(err)
    # a P-384 point declared as P-256
    reject(lambda: Target(ks).open(mutate(p384_env, lambda am: am.find(eckv + "dsig11:NamedCurve", NS).set(
        "URI", OID["secp256r1"])), 4), Reason.MALFORMED)


def test_reject_curves_and_parameters_outside_the_profile(ks, p384_env):
    eckv = "xenc:OriginatorKeyInfo/ds:KeyValue/dsig11:ECKeyValue"
    t = Target(ks)
    reject(lambda: t.open(mutate(p384_env, lambda am: am.find(eckv + "/dsig11:NamedCurve", NS).set(
        "URI", "urn:oid:1.3.132.0.10")), 4), Reason.ALGORITHM_NOT_ALLOWED)  # secp256k1

    def explicit(am):
        nc = am.find(eckv + "/dsig11:NamedCurve", NS)
        nc.getparent().replace(nc, etree.Element(q(DS11, "ECParameters")))
    reject(lambda: t.open(mutate(p384_env, explicit), 4), Reason.UNSUPPORTED)


def test_reject_unknown_algorithms(ks, p384_env):
    t = Target(ks)
    kdm = "xenc11:KeyDerivationMethod"
    dm = kdm + "/xenc11:ConcatKDFParams/ds:DigestMethod"
    cases = [
        lambda am: am.set("Algorithm", ENC + "dh"),  # DH key agreement
        lambda am: am.set("Algorithm", ENC11 + "ECDH-ES-X"),
        lambda am: am.find(kdm, NS).set("Algorithm", ENC11 + "pbkdf2"),
        lambda am: am.find(dm, NS).set("Algorithm", "http://www.w3.org/2000/09/xmldsig#sha1"),
        lambda am: am.find(dm, NS).set("Algorithm", "http://www.w3.org/2001/04/xmldsig-more#sha384"),
    ]
    for fn in cases:
        reject(lambda: t.open(mutate(p384_env, fn), 4), Reason.ALGORITHM_NOT_ALLOWED)
    # key agreement whose EncryptedKey is not an AES key wrap
    root = etree.fromstring(p384_env)
    root.find("ds:KeyInfo/xenc:EncryptedKey/xenc:EncryptionMethod", NS).set("Algorithm", ENC11 + "rsa-oaep")
    reject(lambda: t.open(etree.tostring(root), 4), Reason.ALGORITHM_NOT_ALLOWED)
    root.find("ds:KeyInfo/xenc:EncryptedKey/xenc:EncryptionMethod", NS).set("Algorithm", ENC + "aes128-cbc")
    reject(lambda: t.open(etree.tostring(root), 4), Reason.ALGORITHM_NOT_ALLOWED)


def test_reject_malformed_agreement(ks, p384_env):
    t = Target(ks)
    params = "xenc11:KeyDerivationMethod/xenc11:ConcatKDFParams"

    def drop(path):
        def fn(am):
            node = am.find(path, NS)
            node.getparent().remove(node)
        return fn

    def ka_nonce(am):
        am.insert(0, etree.Element(q(ENC, "KA-Nonce")))

    def recipient_first(am):
        am.insert(0, am.find("xenc:RecipientKeyInfo", NS))

    def extra_keyname(am):
        etree.SubElement(am.getparent(), q(DS, "KeyName")).text = "x"

    def no_key_value(am):
        oki = am.find("xenc:OriginatorKeyInfo", NS)
        oki.remove(oki.find("ds:KeyValue", NS))
        etree.SubElement(oki, q(DS, "KeyName")).text = "ephemeral"

    def rsa_key_value(am):
        kv = am.find("xenc:OriginatorKeyInfo/ds:KeyValue", NS)
        kv.replace(kv[0], etree.Element(q(DS, "RSAKeyValue")))

    def x509_originator(am):
        etree.SubElement(am.find("xenc:OriginatorKeyInfo", NS), q(DS, "X509Data"))

    cases = [
        drop("xenc:OriginatorKeyInfo"), drop("xenc11:KeyDerivationMethod"), drop(params),
        drop(params + "/ds:DigestMethod"), ka_nonce, recipient_first, extra_keyname, no_key_value, rsa_key_value,
        x509_originator,
        lambda am: am.find(params, NS).set("PartyVInfo", "0g"),
        lambda am: am.find(params, NS).set("AlgorithmID", "abc"),
        lambda am: am.find(params, NS).set("PartyUInfo", "00 aa"),
    ]
    for fn in cases:
        reject(lambda: t.open(mutate(p384_env, fn), 4), Reason.MALFORMED)
    # a bit string that is not byte aligned (first octet = number of padding bits)
    reject(lambda: t.open(mutate(p384_env, lambda am: am.find(params, NS).set("PartyUInfo", "03D8")), 4),
           Reason.UNSUPPORTED)


def test_recipient_identification(ec_eps, ks, p384_env, target_rsa_ep):
    # an unknown RecipientKeyInfo KeyName
    env = mutate(p384_env, lambda am: setattr(am.find("xenc:RecipientKeyInfo/ds:KeyName", NS), "text", "nobody"))
    reject(lambda: Target(ks).open(env, 4), Reason.UNKNOWN_KID, ResponseStatusCode.NOT_FOUND)
    # no RecipientKeyInfo: the Target's default kid is tried
    env = mutate(p384_env, lambda am: am.remove(am.find("xenc:RecipientKeyInfo", NS)))
    assert Target(ks, default_kid=certificate_kid(ec_eps["P-384"].cert)).open(env, 4).payload == PAYLOAD
    reject(lambda: Target(ks).open(env, 4), Reason.MALFORMED)
    # the kid names an RSA key: ECDH-ES is not among its algorithms
    env = mutate(p384_env, lambda am: setattr(am.find("xenc:RecipientKeyInfo/ds:KeyName", NS), "text",
                                               certificate_kid(target_rsa_ep.cert)))
    reject(lambda: Target(ks).open(env, 4), Reason.ALGORITHM_NOT_ALLOWED)


def test_policy(ec_eps, ks, p384_env):
    narrow = Policy(key_management=KEY_MANAGEMENT_ALGS - {"ECDH-ES+A128KW"})
    reject(lambda: Target(ks, policy=narrow).open(p384_env, 4), Reason.ALGORITHM_NOT_ALLOWED)
    reject(lambda: Source(policy=narrow).seal(b"x", serialization="xml", recipients=[CertificateRecipient(ec_eps["P-256"].cert)]),
           Reason.ALGORITHM_NOT_ALLOWED)


def test_source_refuses_curve_outside_profile(pki):
    k1 = pki.issue(ec.generate_private_key(ec.SECP256K1()), "/id-in/Ck1")
    with pytest.raises(SealError) as ei:
        Source().seal(b"x", serialization="xml", recipients=[CertificateRecipient(k1.cert)])
    assert ei.value.reason is Reason.ALGORITHM_NOT_ALLOWED

