"""XML ESData envelopes: XML-Encryption 1.1 and XML-Signature via python-xmlsec
(TS-0003 clause 8.5.3, tables 8.5.3.2-1, 8.5.3.2-2 and 8.5.3.3-1; TS-0004 6.3.4.2.38
contentSecurity 4 and 5).

Profile (see docs/profile.md, section ESData/XML):
- Encryption only: ``xenc:EncryptedData`` (octets, no ``Type``; ``MimeType`` = payload media
  type if given) with EncryptionMethod aes128-gcm / aes192-gcm / aes256-gcm (the W3C
  xmlenc11 URIs ``...#aes128-gcm``; the TS table's "aes128gcm" spelling is read as these).
  Key management: ``dir`` = ``ds:KeyInfo/ds:KeyName`` only; key wrap = one
  ``xenc:EncryptedKey`` per recipient inside ``ds:KeyInfo``, in the order the recipients are
  given, each with its own ``ds:KeyInfo/ds:KeyName`` (= kid): kw-aes128/192/256, or
  xmlenc11#rsa-oaep with ``ds:DigestMethod`` sha256 and ``xenc11:MGF`` mgf1sha256.
  XML-Enc has no AAD: refused.
- ECDH-ES (EC certificate on P-256/P-384/P-521; ECDH-ES+A128KW/A192KW/A256KW as in JOSE; the
  TS table's "xmlenc11#ECDH‐ES" with a U+2010 hyphen is read as the W3C ASCII URI):
  ``xenc:EncryptedKey`` with EncryptionMethod ``xmlenc#kw-aes128``/``192``/``256`` whose
  ``ds:KeyInfo`` holds only ``xenc:AgreementMethod Algorithm="xmlenc11#ECDH-ES"`` with, in order:
  ``xenc11:KeyDerivationMethod Algorithm="xmlenc11#ConcatKDF"`` /
  ``xenc11:ConcatKDFParams`` (``ds:DigestMethod`` = ``xmlenc#sha256``; AlgorithmID = 00 ||
  UTF-8 of the EncryptedKey's EncryptionMethod URI, PartyUInfo = 00 (empty), PartyVInfo = 00 ||
  UTF-8 of the recipient kid, no SuppPubInfo/SuppPrivInfo; hexBinary, the leading 00 octet
  being the padding-bit count of the bit string); ``xenc:OriginatorKeyInfo`` /
  ``ds:KeyValue`` / ``dsig11:ECKeyValue`` (``dsig11:NamedCurve URI="urn:oid:..."`` and
  ``dsig11:PublicKey`` = base64 of the uncompressed point 04||X||Y) carrying a fresh ephemeral
  key per recipient; ``xenc:RecipientKeyInfo/ds:KeyName`` = kid (the kid of RSA recipients:
  base64url SHA-256 of the certificate DER).  KEK = ConcatKDF-SHA-256(Z, key-wrap key length,
  AlgorithmID || PartyUInfo || PartyVInfo || SuppPubInfo || SuppPrivInfo).
  A Target takes the ConcatKDF attributes as given (any byte-aligned values), accepts a
  ``ds:KeyName`` beside the originator's KeyValue (libxmlsec1 writes one) and, without
  RecipientKeyInfo, tries its default kid.  Refused: other agreement/KDF/digest algorithms,
  KA-Nonce, explicit ECParameters, curves outside P-256/384/521, compressed or off-curve points,
  an ephemeral curve different from the recipient key's, non-byte-aligned bit strings.
- Signature only: root ``esd:Signed`` (namespace ``urn:m2msec:esdata:1``) holding
  ``esd:Payload Id="esd-payload"`` (base64 of the payload, attribute ``ContentType``) and one
  ``ds:Signature`` per signer, enveloped in the root, each with exactly one Reference to
  ``#esd-payload`` (exclusive c14n), digest = the signature's hash.  Key: ``ds:KeyName``
  (MIC key or configured public key) or ``ds:X509Data`` (chain, leaf first).
- Nested: the ``esd:Signed`` document (certificate signatures only) is the plaintext of an
  ``EncryptedData`` with ``Type="urn:m2msec:esdata:1#Signed"`` and MimeType application/xml.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Sequence
from typing import NamedTuple

import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from lxml import etree

from m2msec.esdata import jose
from m2msec.esdata.credentials import (
    ECDH_KW,
    ENC_KEY_LEN,
    ES_CURVE,
    HS_MIN_KEY_LEN,
    KW_KEY_LEN,
    CertificateRecipient,
    CertificateSigner,
    Recipient,
    ResolvedKey,
    Signer,
    SymmetricRecipient,
    SymmetricSigner,
    Usage,
    resolve_key,
)
from m2msec.esdata.errors import (
    DecryptionError,
    ESDataError,
    MalformedEnvelopeError,
    NoUsableCredentialError,
    PolicyError,
    Reason,
    SealError,
    SignatureError,
    UnknownKidError,
    UntrustedCertificateError,
)
from m2msec.esdata.policy import Policy
from m2msec.esdata.types import ContentSecurity, Opened, SecurityClass, VerifiedSignature

ENC = "http://www.w3.org/2001/04/xmlenc#"
ENC11 = "http://www.w3.org/2009/xmlenc11#"
DS = "http://www.w3.org/2000/09/xmldsig#"
DSMORE = "http://www.w3.org/2001/04/xmldsig-more#"
ESD = "urn:m2msec:esdata:1"
NESTED_TYPE = ESD + "#Signed"
PAYLOAD_ID = "esd-payload"

CONTENT_URI = {"A128GCM": ENC11 + "aes128-gcm", "A192GCM": ENC11 + "aes192-gcm", "A256GCM": ENC11 + "aes256-gcm"}
KW_URI = {"A128KW": ENC + "kw-aes128", "A192KW": ENC + "kw-aes192", "A256KW": ENC + "kw-aes256",
          "RSA-OAEP-256": ENC11 + "rsa-oaep"}
SIG_URI = {
    "HS256": DSMORE + "hmac-sha256", "HS384": DSMORE + "hmac-sha384", "HS512": DSMORE + "hmac-sha512",
    "RS256": DSMORE + "rsa-sha256", "RS384": DSMORE + "rsa-sha384", "RS512": DSMORE + "rsa-sha512",
    "ES256": DSMORE + "ecdsa-sha256", "ES384": DSMORE + "ecdsa-sha384", "ES512": DSMORE + "ecdsa-sha512",
}
SIG_TRANSFORM = {
    "HS256": xmlsec.Transform.HMAC_SHA256, "HS384": xmlsec.Transform.HMAC_SHA384, "HS512": xmlsec.Transform.HMAC_SHA512,
    "RS256": xmlsec.Transform.RSA_SHA256, "RS384": xmlsec.Transform.RSA_SHA384, "RS512": xmlsec.Transform.RSA_SHA512,
    "ES256": xmlsec.Transform.ECDSA_SHA256, "ES384": xmlsec.Transform.ECDSA_SHA384, "ES512": xmlsec.Transform.ECDSA_SHA512,
}
DIGEST = {"256": xmlsec.Transform.SHA256, "384": xmlsec.Transform.SHA384, "512": xmlsec.Transform.SHA512}
SHA256_URI = ENC + "sha256"
MGF1SHA256 = ENC11 + "mgf1sha256"
_REV = {v: k for k, v in {**CONTENT_URI, **KW_URI, **SIG_URI}.items()}


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def _pem(key: object) -> bytes:
    if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]


def _xkey(key: object, *, hmac: bool = False, name: str | None = None) -> xmlsec.Key:
    if isinstance(key, bytes):
        k = xmlsec.Key.from_binary_data(xmlsec.KeyData.HMAC if hmac else xmlsec.KeyData.AES, key)
    else:
        k = xmlsec.Key.from_memory(_pem(key), xmlsec.KeyFormat.PEM)
    if name is not None:
        k.name = name
    return k


# --- ECDH-ES key agreement (TS-0003 table 8.5.3.2-1 "ECDH Key Agreement"; XML Encryption 1.1
# "Key Agreement" (AgreementMethod, Elliptic Curve Diffie-Hellman (Ephemeral-Static Mode)) and
# "ConcatKDF"; XML Signature 1.1 "The ECKeyValue Element") ------------------------------------
# Computed here with cryptography (ECDH, ConcatKDFHash, AES key wrap) rather than by xmlsec:
# libxmlsec1 1.3 finds originator keys only by KeyName in a keys manager and cannot write a
# KeyValue.  The result is checked against libxmlsec1 both ways in tests/esdata/test_xml_ecdh.py.

DS11 = "http://www.w3.org/2009/xmldsig11#"
ECDH_ES_URI = ENC11 + "ECDH-ES"
CONCAT_KDF_URI = ENC11 + "ConcatKDF"
#: NamedCurve URIs (RFC 4051 / XML-DSig 1.1 "urn:oid:" form) of the ESData curves.
CURVE_URI = {"secp256r1": "urn:oid:1.2.840.10045.3.1.7", "secp384r1": "urn:oid:1.3.132.0.34",
             "secp521r1": "urn:oid:1.3.132.0.35"}
_CURVE_OF_URI: dict[str, ec.EllipticCurve] = {
    CURVE_URI["secp256r1"]: ec.SECP256R1(), CURVE_URI["secp384r1"]: ec.SECP384R1(), CURVE_URI["secp521r1"]: ec.SECP521R1()}
#: ConcatKDF bit-string attributes, in FixedInfo order (SP 800-56A 5.8.2.1.1).
_KDF_ATTRS = ("AlgorithmID", "PartyUInfo", "PartyVInfo", "SuppPubInfo", "SuppPrivInfo")


class _Agreement(NamedTuple):
    """A parsed ``xenc:AgreementMethod`` (ECDH-ES + ConcatKDF-SHA-256)."""

    ephemeral: ec.EllipticCurvePublicKey
    fixed_info: bytes  # AlgorithmID || PartyUInfo || PartyVInfo || SuppPubInfo || SuppPrivInfo
    kid: str | None  # RecipientKeyInfo/KeyName


def _elements(node: etree._Element) -> list[etree._Element]:
    """Element children only (comments and processing instructions skipped)."""
    return [c for c in node if isinstance(c.tag, str)]


def _bits_attr(octets: bytes) -> str:
    """A byte-aligned ConcatKDF bit string as hexBinary: a 00 octet (no padding bits), then the octets."""
    return "00" + octets.hex()


def _read_bits_attr(node: etree._Element, name: str) -> bytes:
    value = node.get(name)
    if value is None:
        return b""
    try:
        raw = binascii.unhexlify(value.strip())
    except (binascii.Error, ValueError):
        raise MalformedEnvelopeError(f"ConcatKDFParams {name} is not hexBinary") from None
    if not raw:
        return b""
    if raw[0] != 0:
        raise PolicyError(f"ConcatKDFParams {name}: only byte-aligned bit strings are supported", reason=Reason.UNSUPPORTED)
    return raw[1:]


def _kdf(z: bytes, length: int, fixed_info: bytes) -> bytes:
    return ConcatKDFHash(hashes.SHA256(), length, fixed_info).derive(z)


def _ec_key_value(parent: etree._Element, key: ec.EllipticCurvePublicKey) -> None:
    kv = etree.SubElement(parent, _q(DS, "KeyValue"))
    eckv = etree.SubElement(kv, _q(DS11, "ECKeyValue"), nsmap={"dsig11": DS11})
    etree.SubElement(eckv, _q(DS11, "NamedCurve"), URI=CURVE_URI[key.curve.name])
    point = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    etree.SubElement(eckv, _q(DS11, "PublicKey")).text = base64.b64encode(point).decode("ascii")


def _ecdh_encrypted_key(alg: str, kid: str, recipient: ec.EllipticCurvePublicKey, cek: bytes) -> etree._Element:
    """One ``xenc:EncryptedKey`` wrapping ``cek`` for an EC recipient (ECDH-ES, fresh ephemeral key)."""
    if recipient.curve.name not in CURVE_URI:
        raise SealError(f"EC recipient curve {recipient.curve.name} is not P-256, P-384 or P-521",
                        reason=Reason.ALGORITHM_NOT_ALLOWED)
    kw = alg.removeprefix("ECDH-ES+")
    kw_uri = KW_URI[kw]
    ephemeral = ec.generate_private_key(recipient.curve)
    fixed_info = kw_uri.encode("ascii") + kid.encode("utf-8")  # AlgorithmID || PartyUInfo (empty) || PartyVInfo
    kek = _kdf(ephemeral.exchange(ec.ECDH(), recipient), KW_KEY_LEN[kw], fixed_info)
    wrapped = aes_key_wrap(kek, cek)
    ek = etree.Element(_q(ENC, "EncryptedKey"))
    etree.SubElement(ek, _q(ENC, "EncryptionMethod"), Algorithm=kw_uri)
    ki = etree.SubElement(ek, _q(DS, "KeyInfo"))
    am = etree.SubElement(ki, _q(ENC, "AgreementMethod"), Algorithm=ECDH_ES_URI)
    kdm = etree.SubElement(am, _q(ENC11, "KeyDerivationMethod"), nsmap={"xenc11": ENC11}, Algorithm=CONCAT_KDF_URI)
    params = etree.SubElement(kdm, _q(ENC11, "ConcatKDFParams"), AlgorithmID=_bits_attr(kw_uri.encode("ascii")),
                              PartyUInfo=_bits_attr(b""), PartyVInfo=_bits_attr(kid.encode("utf-8")))
    etree.SubElement(params, _q(DS, "DigestMethod"), Algorithm=SHA256_URI)
    _ec_key_value(etree.SubElement(am, _q(ENC, "OriginatorKeyInfo")), ephemeral.public_key())
    rki = etree.SubElement(am, _q(ENC, "RecipientKeyInfo"))
    etree.SubElement(rki, _q(DS, "KeyName")).text = kid
    cd = etree.SubElement(ek, _q(ENC, "CipherData"))
    etree.SubElement(cd, _q(ENC, "CipherValue")).text = base64.b64encode(wrapped).decode("ascii")
    return ek


def _parse_ec_key_value(oki: etree._Element) -> ec.EllipticCurvePublicKey:
    children = _elements(oki)
    values = [c for c in children if c.tag == _q(DS, "KeyValue")]
    if len(values) != 1 or any(c.tag not in (_q(DS, "KeyValue"), _q(DS, "KeyName")) for c in children):
        raise MalformedEnvelopeError("OriginatorKeyInfo must hold one ds:KeyValue (and at most a ds:KeyName)")
    inner = _elements(values[0])
    if len(inner) != 1 or inner[0].tag != _q(DS11, "ECKeyValue"):
        raise MalformedEnvelopeError("the originator's KeyValue must be one dsig11:ECKeyValue")
    parts = _elements(inner[0])
    if parts and parts[0].tag == _q(DS11, "ECParameters"):
        raise PolicyError("explicit EC domain parameters are refused (NamedCurve only)", reason=Reason.UNSUPPORTED)
    if [p.tag for p in parts] != [_q(DS11, "NamedCurve"), _q(DS11, "PublicKey")]:
        raise MalformedEnvelopeError("ECKeyValue must hold NamedCurve then PublicKey")
    curve = _CURVE_OF_URI.get(parts[0].get("URI") or "")
    if curve is None:
        raise PolicyError(f"NamedCurve {parts[0].get('URI')!r} is not P-256, P-384 or P-521",
                          reason=Reason.ALGORITHM_NOT_ALLOWED)
    try:
        point = base64.b64decode(re.sub(r"\s+", "", parts[1].text or ""), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedEnvelopeError("ECKeyValue PublicKey is not base64") from None
    if len(point) != 1 + 2 * ((curve.key_size + 7) // 8) or point[0] != 4:
        raise MalformedEnvelopeError("ECKeyValue PublicKey is not an uncompressed point of its curve")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    except ValueError:
        raise MalformedEnvelopeError("the ephemeral public key is not a point on its curve") from None


def _parse_agreement(am: etree._Element) -> _Agreement:
    if am.get("Algorithm") != ECDH_ES_URI:
        raise PolicyError(f"key agreement {am.get('Algorithm')!r} is not in the ESData XML profile",
                          reason=Reason.ALGORITHM_NOT_ALLOWED)
    children = _elements(am)
    tags = [c.tag for c in children]
    if _q(ENC, "OriginatorKeyInfo") not in tags:
        raise MalformedEnvelopeError("AgreementMethod without OriginatorKeyInfo (the ephemeral public key)")
    if tags not in ([_q(ENC11, "KeyDerivationMethod"), _q(ENC, "OriginatorKeyInfo")],
                    [_q(ENC11, "KeyDerivationMethod"), _q(ENC, "OriginatorKeyInfo"), _q(ENC, "RecipientKeyInfo")]):
        raise MalformedEnvelopeError("AgreementMethod must hold KeyDerivationMethod, OriginatorKeyInfo "
                                     "and optionally RecipientKeyInfo, in this order (no KA-Nonce)")
    kdm = children[0]
    if kdm.get("Algorithm") != CONCAT_KDF_URI:
        raise PolicyError(f"key derivation {kdm.get('Algorithm')!r} is not in the ESData XML profile (ConcatKDF only)",
                          reason=Reason.ALGORITHM_NOT_ALLOWED)
    params = _elements(kdm)
    if len(params) != 1 or params[0].tag != _q(ENC11, "ConcatKDFParams"):
        raise MalformedEnvelopeError("KeyDerivationMethod must hold one ConcatKDFParams")
    digest = _elements(params[0])
    if len(digest) != 1 or digest[0].tag != _q(DS, "DigestMethod"):
        raise MalformedEnvelopeError("ConcatKDFParams must hold one ds:DigestMethod")
    if digest[0].get("Algorithm") != SHA256_URI:
        raise PolicyError(f"ConcatKDF digest {digest[0].get('Algorithm')!r} is not SHA-256",
                          reason=Reason.ALGORITHM_NOT_ALLOWED)
    fixed_info = b"".join(_read_bits_attr(params[0], name) for name in _KDF_ATTRS)
    ephemeral = _parse_ec_key_value(children[1])
    kid: str | None = None
    if len(children) == 3:
        kn = _one(children[2], _q(DS, "KeyName"), "RecipientKeyInfo KeyName", required=False)
        kid = (kn.text or "").strip() if kn is not None else None
    return _Agreement(ephemeral, fixed_info, kid or None)


def _ecdh_unwrap(ek: etree._Element, agreement: _Agreement, key: ec.EllipticCurvePrivateKey, alg: str) -> bytes | None:
    """The CEK from an ECDH-ES EncryptedKey, or None when it does not unwrap (wrong key or
    tampered); a malformed EncryptedKey or a curve mismatch raises."""
    if key.curve.name != agreement.ephemeral.curve.name:
        raise MalformedEnvelopeError(f"the ephemeral key is on {agreement.ephemeral.curve.name}, "
                                     f"the recipient key on {key.curve.name}")
    cvs = ek.findall(f"{_q(ENC, 'CipherData')}/{_q(ENC, 'CipherValue')}")
    if len(cvs) != 1:
        raise MalformedEnvelopeError("EncryptedKey needs one CipherData/CipherValue")
    try:
        wrapped = base64.b64decode(re.sub(r"\s+", "", cvs[0].text or ""), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedEnvelopeError("EncryptedKey CipherValue is not base64") from None
    kw = alg.removeprefix("ECDH-ES+")
    kek = _kdf(key.exchange(ec.ECDH(), agreement.ephemeral), KW_KEY_LEN[kw], agreement.fixed_info)
    try:
        return aes_key_unwrap(kek, wrapped)
    except (InvalidUnwrap, ValueError):  # ValueError: wrapped key length not a multiple of 8 / too short
        return None


# --- Source ---------------------------------------------------------------------------------


def _encrypted_key_template(alg: str, kid: str) -> etree._Element:
    ek = etree.Element(_q(ENC, "EncryptedKey"))
    em = etree.SubElement(ek, _q(ENC, "EncryptionMethod"), Algorithm=KW_URI[alg])
    if alg == "RSA-OAEP-256":
        etree.SubElement(em, _q(DS, "DigestMethod"), Algorithm=SHA256_URI)
        etree.SubElement(em, _q(ENC11, "MGF"), nsmap={"xenc11": ENC11}, Algorithm=MGF1SHA256)
    ki = etree.SubElement(ek, _q(DS, "KeyInfo"))
    etree.SubElement(ki, _q(DS, "KeyName")).text = kid
    cd = etree.SubElement(ek, _q(ENC, "CipherData"))
    etree.SubElement(cd, _q(ENC, "CipherValue"))
    return ek


def _encrypt(plaintext: bytes, recipients: Sequence[Recipient], *, enc: str, mime: str | None, type_uri: str | None,
             policy: Policy) -> bytes:
    if not recipients:
        raise SealError("encryption needs at least one recipient")
    if not plaintext:
        raise SealError("an empty payload cannot be encrypted (profile limit)", reason=Reason.UNSUPPORTED)
    if enc not in policy.content_encryption:
        raise SealError(f"content encryption {enc!r} not allowed", reason=Reason.ALGORITHM_NOT_ALLOWED)
    root = etree.Element(_q(ENC, "EncryptedData"), nsmap={"xenc": ENC, "ds": DS})
    if type_uri:
        root.set("Type", type_uri)
    if mime:
        root.set("MimeType", mime)
    etree.SubElement(root, _q(ENC, "EncryptionMethod"), Algorithm=CONTENT_URI[enc])
    ki = etree.SubElement(root, _q(DS, "KeyInfo"))
    cd = etree.SubElement(root, _q(ENC, "CipherData"))
    etree.SubElement(cd, _q(ENC, "CipherValue"))
    manager = xmlsec.KeysManager()
    kids: set[str] = set()
    direct = [r for r in recipients if isinstance(r, SymmetricRecipient) and r.alg == "dir"]
    cek = direct[0].key if direct else secrets.token_bytes(ENC_KEY_LEN[enc])
    agreed: list[tuple[int, etree._Element]] = []  # ECDH-ES EncryptedKeys, by position among the recipients
    for r in recipients:
        if isinstance(r, SymmetricRecipient):
            alg, kid = r.alg, r.kid
        elif isinstance(r, CertificateRecipient):
            alg, kid = r.effective_alg, r.effective_kid
        else:
            raise SealError(f"unsupported recipient type {type(r).__name__}")
        if alg not in policy.key_management:
            raise SealError(f"key management {alg!r} not allowed", reason=Reason.ALGORITHM_NOT_ALLOWED)
        if kid in kids:
            raise SealError("two recipients share one kid")
        kids.add(kid)
        if alg == "dir":
            assert isinstance(r, SymmetricRecipient)
            if len(recipients) != 1:
                raise SealError("dir (Direct Encryption Mode) only with a single key", reason=Reason.ALGORITHM_NOT_ALLOWED)
            if len(r.key) != ENC_KEY_LEN[enc]:
                raise SealError(f"dir key length does not fit {enc}", reason=Reason.ALGORITHM_NOT_ALLOWED)
            etree.SubElement(ki, _q(DS, "KeyName")).text = kid
            continue
        if alg in ECDH_KW:
            assert isinstance(r, CertificateRecipient)
            pub = r.certificate.public_key()
            assert isinstance(pub, ec.EllipticCurvePublicKey)
            # built complete here and put in place after xmlsec ran: xmlsec would treat it as a template
            agreed.append((len(ki) + len(agreed), _ecdh_encrypted_key(alg, kid, pub, cek)))
            continue
        if alg not in KW_URI:  # pragma: no cover - credentials only produce the algorithms above
            raise SealError(f"{alg} is not available in the XML serialization", reason=Reason.UNSUPPORTED)
        ki.append(_encrypted_key_template(alg, kid))
        key = r.key if isinstance(r, SymmetricRecipient) else r.certificate.public_key()  # type: ignore[union-attr]
        manager.add_key(_xkey(key, name=kid))
    ctx = xmlsec.EncryptionContext(manager)
    ctx.key = _xkey(cek)
    try:
        out = ctx.encrypt_binary(root, plaintext)
    except xmlsec.Error as exc:
        raise SealError(f"XML encryption failed: {exc}") from None
    if agreed:
        out_ki = out.find(_q(DS, "KeyInfo"))
        assert out_ki is not None
        for position, ek in agreed:
            out_ki.insert(position, ek)
    return etree.tostring(out, xml_declaration=False, encoding="UTF-8")


def _sign(payload: bytes, signers: Sequence[Signer], *, content_type: str | None, policy: Policy) -> bytes:
    if not signers:
        raise SealError("signing needs at least one signer")
    root = etree.Element(_q(ESD, "Signed"), nsmap={"esd": ESD, "ds": DS})
    node = etree.SubElement(root, _q(ESD, "Payload"), Id=PAYLOAD_ID)
    if content_type:
        node.set("ContentType", content_type)
    node.text = base64.b64encode(payload).decode("ascii")
    for s in signers:
        if isinstance(s, SymmetricSigner):
            alg, key, name = s.alg, _xkey(s.key, hmac=True), s.kid
        elif isinstance(s, CertificateSigner):
            alg, key, name = s.effective_alg, _xkey(s.private_key), None
        else:
            raise SealError(f"unsupported signer type {type(s).__name__}")
        if alg not in policy.signature:
            raise SealError(f"signature algorithm {alg!r} not allowed", reason=Reason.ALGORITHM_NOT_ALLOWED)
        sig = xmlsec.template.create(root, xmlsec.Transform.EXCL_C14N, SIG_TRANSFORM[alg], ns="ds")
        root.append(sig)
        ref = xmlsec.template.add_reference(sig, DIGEST[alg[2:]], uri="#" + PAYLOAD_ID)
        xmlsec.template.add_transform(ref, xmlsec.Transform.EXCL_C14N)
        ctx = xmlsec.SignatureContext()
        ctx.register_id(node, "Id")
        ctx.key = key
        try:
            ctx.sign(sig)
        except xmlsec.Error as exc:
            raise SealError(f"XML signing failed: {exc}") from None
        ki = etree.SubElement(sig, _q(DS, "KeyInfo"))
        if name is not None:
            etree.SubElement(ki, _q(DS, "KeyName")).text = name
        else:
            assert isinstance(s, CertificateSigner)
            xd = etree.SubElement(ki, _q(DS, "X509Data"))
            for c in s.chain:
                etree.SubElement(xd, _q(DS, "X509Certificate")).text = base64.b64encode(
                    c.public_bytes(serialization.Encoding.DER)).decode("ascii")
    return etree.tostring(root, xml_declaration=False, encoding="UTF-8")


def seal_xml(payload: bytes, klass: SecurityClass, *, recipients: Sequence[Recipient], signers: Sequence[Signer],
             aad: bytes | None, enc: str, content_type: str | None, policy: Policy) -> bytes:
    if aad is not None:
        raise SealError("XML-Encryption has no associated authenticated data; use a JOSE JSON serialization",
                        reason=Reason.UNSUPPORTED)
    if klass is SecurityClass.SIGN:
        return _sign(payload, signers, content_type=content_type, policy=policy)
    if klass is SecurityClass.ENCRYPT:
        return _encrypt(payload, recipients, enc=enc, mime=content_type, type_uri=None, policy=policy)
    inner = _sign(payload, signers, content_type=content_type, policy=policy)
    return _encrypt(inner, recipients, enc=enc, mime="application/xml", type_uri=NESTED_TYPE, policy=policy)


# --- Target ---------------------------------------------------------------------------------

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                          huge_tree=False, remove_blank_text=False)


def _parse(data: bytes) -> etree._Element:
    try:
        root = etree.fromstring(data, parser=_PARSER)
    except etree.XMLSyntaxError:
        raise MalformedEnvelopeError("envelope is not well-formed XML") from None
    if root.getroottree().docinfo.doctype:
        raise MalformedEnvelopeError("DOCTYPE declarations are refused")
    return root


def _one(parent: etree._Element, tag: str, what: str, *, required: bool = True) -> etree._Element | None:
    found = parent.findall(tag)
    if len(found) > 1 or (required and not found):
        raise MalformedEnvelopeError(f"expected exactly one {what}")
    return found[0] if found else None


def _alg_of(node: etree._Element | None, what: str) -> str:
    uri = node.get("Algorithm") if node is not None else None
    alg = _REV.get(uri or "")
    if alg is None:
        raise PolicyError(f"{what} algorithm {uri!r} is not in the ESData XML profile", reason=Reason.ALGORITHM_NOT_ALLOWED)
    return alg


def _open_encrypted(root: etree._Element, ctx: jose.TargetContext) -> tuple[bytes, str, str, str, str | None]:
    if root.tag != _q(ENC, "EncryptedData"):
        raise MalformedEnvelopeError("expected xenc:EncryptedData")
    enc = _alg_of(_one(root, _q(ENC, "EncryptionMethod"), "EncryptionMethod"), "content encryption")
    if enc not in ctx.policy.content_encryption:
        raise PolicyError(f"content encryption {enc!r} not allowed", reason=Reason.ALGORITHM_NOT_ALLOWED)
    ki = _one(root, _q(DS, "KeyInfo"), "KeyInfo", required=False)
    eks = ki.findall(_q(ENC, "EncryptedKey")) if ki is not None else []
    names = ki.findall(_q(DS, "KeyName")) if ki is not None else []
    candidates: list[tuple[str, str, etree._Element | None, _Agreement | None]] = []
    if eks and names:
        raise MalformedEnvelopeError("KeyInfo mixes a direct KeyName and EncryptedKeys")
    for ek in eks:
        em = _one(ek, _q(ENC, "EncryptionMethod"), "EncryptionMethod")
        alg = _alg_of(em, "key management")
        eki = _one(ek, _q(DS, "KeyInfo"), "EncryptedKey KeyInfo", required=False)
        if eki is not None and eki.find(_q(ENC, "AgreementMethod")) is not None:
            if len(_elements(eki)) != 1:
                raise MalformedEnvelopeError("an EncryptedKey KeyInfo with an AgreementMethod holds nothing else")
            if alg not in KW_KEY_LEN:
                raise PolicyError(f"key agreement with {alg!r}: ECDH-ES only with AES key wrap",
                                  reason=Reason.ALGORITHM_NOT_ALLOWED)
            alg = "ECDH-ES+" + alg
            if alg not in ctx.policy.key_management:
                raise PolicyError(f"key management {alg!r} not allowed", reason=Reason.ALGORITHM_NOT_ALLOWED)
            agreement = _parse_agreement(_elements(eki)[0])
            kid = agreement.kid or ctx.default_kid
            if kid:
                candidates.append((kid, alg, ek, agreement))
            continue
        if alg == "RSA-OAEP-256":
            dm = _one(em, _q(DS, "DigestMethod"), "DigestMethod")  # type: ignore[arg-type]
            mgf = _one(em, _q(ENC11, "MGF"), "MGF")  # type: ignore[arg-type]
            if dm.get("Algorithm") != SHA256_URI or mgf.get("Algorithm") != MGF1SHA256:  # type: ignore[union-attr]
                raise PolicyError("RSA-OAEP must use SHA-256 and MGF1-SHA-256", reason=Reason.ALGORITHM_NOT_ALLOWED)
        if alg not in ctx.policy.key_management:
            raise PolicyError(f"key management {alg!r} not allowed", reason=Reason.ALGORITHM_NOT_ALLOWED)
        kn = _one(eki, _q(DS, "KeyName"), "KeyName", required=False) if eki is not None else None
        kid = (kn.text or "").strip() if kn is not None else ctx.default_kid
        if kid:
            candidates.append((kid, alg, ek, None))
    if names:
        if len(names) != 1 or not ctx.policy.key_management & {"dir"}:
            raise PolicyError("dir: exactly one KeyName", reason=Reason.ALGORITHM_NOT_ALLOWED)
        candidates.append(((names[0].text or "").strip(), "dir", None, None))
    elif not eks and ctx.default_kid:
        candidates.append((ctx.default_kid, "dir", None, None))
    unknown: list[str] = []
    failures = 0
    for kid, alg, ek, agreement in candidates:
        try:
            resolved: ResolvedKey = resolve_key(ctx.key_source, kid, Usage.ENCRYPT)
        except UnknownKidError:
            unknown.append(kid)
            continue
        jose._check_enc_key(resolved, alg, enc)
        agreed_cek: bytes | None = None
        if agreement is not None:
            assert ek is not None and isinstance(resolved.key, ec.EllipticCurvePrivateKey)  # _check_enc_key
            agreed_cek = _ecdh_unwrap(ek, agreement, resolved.key, alg)
            if agreed_cek is None:
                failures += 1
                continue
        try:
            if ek is None:
                cek = resolved.key
            elif agreed_cek is not None:
                cek = agreed_cek
            else:
                uctx = xmlsec.EncryptionContext(xmlsec.KeysManager())
                uctx.key = _xkey(resolved.key)
                cek = uctx.decrypt(etree.fromstring(etree.tostring(ek), parser=_PARSER))
            if not isinstance(cek, bytes) or len(cek) != ENC_KEY_LEN[enc]:
                raise ValueError("CEK length")
            dctx = xmlsec.EncryptionContext(xmlsec.KeysManager())
            dctx.key = _xkey(cek)
            plaintext = dctx.decrypt(etree.fromstring(etree.tostring(root), parser=_PARSER))
        except (xmlsec.Error, ValueError):
            failures += 1
            continue
        if not isinstance(plaintext, bytes):  # pragma: no cover - Type=Element/Content not produced
            raise MalformedEnvelopeError("EncryptedData of XML element type is not supported")
        return plaintext, kid, alg, enc, root.get("Type")
    if failures:
        raise DecryptionError("the envelope does not decrypt with the credential(s) held (wrong key or tampered)")
    if unknown:
        raise UnknownKidError(f"no credential for key identifier(s) {unknown}", kids=tuple(unknown))
    raise MalformedEnvelopeError("no KeyName identifies a key")


def _open_signed(root: etree._Element, ctx: jose.TargetContext, *, certificate_only: bool
                 ) -> tuple[bytes, str | None, list[VerifiedSignature]]:
    if root.tag != _q(ESD, "Signed"):
        raise MalformedEnvelopeError("expected esd:Signed")
    payload_node = _one(root, _q(ESD, "Payload"), "esd:Payload")
    assert payload_node is not None
    if payload_node.get("Id") != PAYLOAD_ID or len(root.xpath("//*[@Id]")) != 1:
        raise MalformedEnvelopeError("exactly one element may carry an Id, the esd:Payload")
    try:
        payload = base64.b64decode(re.sub(r"\s+", "", payload_node.text or ""), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedEnvelopeError("esd:Payload is not base64") from None
    sigs = root.findall(_q(DS, "Signature"))
    if not sigs or len(root) != 1 + len(sigs):
        raise MalformedEnvelopeError("esd:Signed holds the payload and one or more ds:Signature only")
    verified: list[VerifiedSignature] = []
    unknown: list[str] = []
    untrusted: list[ESDataError] = []
    for sig in sigs:
        si = _one(sig, _q(DS, "SignedInfo"), "SignedInfo")
        sm = _one(si, _q(DS, "SignatureMethod"), "SignatureMethod")  # type: ignore[arg-type]
        alg = _alg_of(sm, "signature")
        if len(sm):  # type: ignore[arg-type]
            raise PolicyError("SignatureMethod parameters (e.g. HMACOutputLength) are refused", reason=Reason.UNSUPPORTED)
        if alg not in ctx.policy.signature:
            raise PolicyError(f"signature algorithm {alg!r} not allowed", reason=Reason.ALGORITHM_NOT_ALLOWED)
        refs = si.findall(_q(DS, "Reference"))  # type: ignore[union-attr]
        if len(refs) != 1 or refs[0].get("URI") != "#" + PAYLOAD_ID:
            raise MalformedEnvelopeError("a signature must reference exactly #esd-payload")
        if certificate_only and alg in HS_MIN_KEY_LEN:
            raise PolicyError("the inner envelope of Nested Sign-then-Encrypt must carry certificate signatures",
                              reason=Reason.WRONG_CLASS)
        ki = _one(sig, _q(DS, "KeyInfo"), "KeyInfo", required=False)
        xd = ki.find(_q(DS, "X509Data")) if ki is not None else None
        kn = ki.find(_q(DS, "KeyName")) if ki is not None else None
        kid = (kn.text or "").strip() if kn is not None else ctx.default_kid
        chain: tuple[x509.Certificate, ...] = ()
        resolved: ResolvedKey | None = None
        if alg in HS_MIN_KEY_LEN or xd is None:
            if certificate_only:
                raise PolicyError("nested inner signature without X509Data", reason=Reason.WRONG_CLASS)
            if not kid:
                raise MalformedEnvelopeError("a signature needs a KeyName or X509Data")
            try:
                resolved = resolve_key(ctx.key_source, kid, Usage.SIGN)
            except UnknownKidError:
                unknown.append(kid)
                continue
            if resolved.usage is not Usage.SIGN:
                raise PolicyError(f"key {kid!r} (SUID {resolved.suid}) is not a signature key", reason=Reason.KEY_USAGE)
            if alg not in resolved.algorithms:
                raise PolicyError(f"{alg!r} is not allowed for key {kid!r}", reason=Reason.ALGORITHM_NOT_ALLOWED)
            if alg in HS_MIN_KEY_LEN:
                if not isinstance(resolved.key, bytes) or len(resolved.key) < HS_MIN_KEY_LEN[alg]:
                    raise PolicyError(f"{alg} needs a symmetric key of {HS_MIN_KEY_LEN[alg]}+ bytes",
                                      reason=Reason.ALGORITHM_NOT_ALLOWED)
                vkey = _xkey(resolved.key, hmac=True)
            else:
                if isinstance(resolved.key, bytes):
                    raise PolicyError(f"{alg} needs a public key", reason=Reason.ALGORITHM_NOT_ALLOWED)
                pub = resolved.key.public_key() if hasattr(resolved.key, "private_bytes") else resolved.key  # type: ignore[union-attr]
                jose._check_public_key(alg, pub)
                vkey = _xkey(pub)
        else:
            certs = xd.findall(_q(DS, "X509Certificate"))
            chain = jose._parse_x5c([re.sub(r"\s+", "", c.text or "") for c in certs])
            pub = jose._leaf_public_key(chain)
            jose._check_public_key(alg, pub)
            if alg in ES_CURVE and not isinstance(pub, ec.EllipticCurvePublicKey):  # pragma: no cover
                raise PolicyError("ECDSA needs an EC key", reason=Reason.ALGORITHM_NOT_ALLOWED)
            vkey = _xkey(pub)
        vctx = xmlsec.SignatureContext()
        vctx.register_id(payload_node, "Id")
        vctx.key = vkey
        try:
            vctx.verify(sig)
        except xmlsec.Error:
            raise SignatureError(f"{alg} XML signature does not verify (wrong key or tampered)") from None
        source_id = None
        if chain:
            if ctx.certificate_verifier is None or ctx.expected_source_id is None:
                untrusted.append(UntrustedCertificateError("no certificate verifier or expected identifier configured"))
                continue
            try:
                ctx.certificate_verifier(list(chain), ctx.expected_source_id)
            except UntrustedCertificateError as exc:
                untrusted.append(exc)
                continue
            except Exception as exc:  # noqa: BLE001
                untrusted.append(UntrustedCertificateError(f"signer certificate refused: {exc}"))
                continue
            source_id = ctx.expected_source_id
        verified.append(VerifiedSignature(alg, kid if not chain else None, resolved.suid if resolved else None, chain, source_id))
    if not verified:
        if untrusted:
            raise untrusted[0]
        if unknown:
            raise UnknownKidError(f"no credential for key identifier(s) {unknown}", kids=tuple(unknown))
        raise NoUsableCredentialError("no signature could be verified")
    return payload, payload_node.get("ContentType"), verified


def open_xml(data: bytes, cs: ContentSecurity, ctx: jose.TargetContext) -> Opened:
    root = _parse(data)
    if root.tag == _q(ESD, "Signed"):
        payload, cty, sigs = _open_signed(root, ctx, certificate_only=False)
        return Opened(payload, SecurityClass.SIGN, cs, content_type=cty, signatures=tuple(sigs))
    plaintext, kid, alg, enc, type_uri = _open_encrypted(root, ctx)
    if type_uri == NESTED_TYPE:
        inner = _parse(plaintext)
        payload, cty, sigs = _open_signed(inner, ctx, certificate_only=True)
        return Opened(payload, SecurityClass.SIGN_ENCRYPT, cs, content_type=cty, decrypted_with=kid,
                      key_management=alg, content_encryption=enc, signatures=tuple(sigs))
    if type_uri is not None:
        raise PolicyError(f"EncryptedData Type {type_uri!r} is not supported", reason=Reason.UNSUPPORTED)
    return Opened(plaintext, SecurityClass.ENCRYPT, cs, content_type=root.get("MimeType"), decrypted_with=kid,
                  key_management=alg, content_encryption=enc)
