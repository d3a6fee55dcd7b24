"""JOSE ESData envelopes: JWE (RFC 7516) and JWS (RFC 7515) in Compact and JSON
serializations (TS-0003 clauses 8.5.3.2-8.5.3.4, tables 8.5.3.2-3/-4 and 8.5.3.3-2;
TS-0004 6.3.4.2.38 contentSecurity 1, 2, 3).

jwcrypto does the cryptography.  This module does everything around it that the
ESData profile decides: header layout, strict parsing, policy checks before any key is
touched, per-recipient / per-signature selection by ``kid``, and precise rejections.
(jwcrypto rather than joserfc because joserfc recomputes the JWE AAD from a re-encoded
protected header and so cannot open valid JSON envelopes whose protected header is not
compact JSON; joserfc is used as the independent library in the tests.)

Profile (see docs/profile.md, section ESData):
- JWE JSON: ``protected`` = {"enc", ["cty"]}; every recipient has an unprotected
  ``header`` {"alg", "kid"[, "epk"]}; general serialization always (flattened accepted).
- JWE compact: protected = {"alg", "enc", "kid", ["cty"], ["epk"]}; one recipient; no AAD
  (compact has no place for it - refused); ``zip`` refused everywhere.
- JWS: each signature's protected header = {"alg", "kid"[, "x5c"][, "cty"]}; ``alg`` must
  be protected; ``x5c`` (leaf first, standard base64 DER) carries the signer chain.
- Nested: the inner JWS is compact for contentSecurity 1 and general JSON otherwise; the
  outer JWE has ``cty`` "JOSE" / "JOSE+JSON" (RFC 7515 4.1.10 short form); the payload's
  own media type, if given, is the inner JWS ``cty``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwcrypto import jwe as jw_jwe
from jwcrypto import jwk as jw_jwk
from jwcrypto import jws as jw_jws

from m2msec.esdata.certverify import CertificateVerifier
from m2msec.esdata.credentials import (
    ECDH_KW,
    ENC_KEY_LEN,
    ES_CURVE,
    HS_MIN_KEY_LEN,
    KW_KEY_LEN,
    MIN_RSA_BITS,
    RS_ALGS,
    RSA_KM,
    CertificateRecipient,
    CertificateSigner,
    KeySource,
    Recipient,
    ResolvedKey,
    Signer,
    SymmetricRecipient,
    SymmetricSigner,
    Usage,
    resolve_key,
    b64url,
    check_rsa_public_key,
    jose_key,
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

CTY_NESTED_COMPACT = "JOSE"
CTY_NESTED_JSON = "JOSE+JSON"
_NESTED_CTYS = {"jose": True, "application/jose": True, "jose+json": False, "application/jose+json": False}
_ES_SIG_LEN = {"ES256": 64, "ES384": 96, "ES512": 132}  # RFC 7518 3.4
_URLSAFE_TO_STD = bytes.maketrans(b"-_", b"+/")
_B64URL_INDEX = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}
# Unused low bits of the last character of an unpadded base64url string, by length % 4.
_B64URL_SPARE_BITS = {0: 0, 2: 0x0F, 3: 0x03}


# --- small strict helpers ------------------------------------------------------------------


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)  # stateless: safe to share


def _dumps(obj: Any) -> str:
    return _ENCODER.encode(obj)


def b64url_decode(value: object, what: str) -> bytes:
    """Strict unpadded base64url (RFC 7515 2): alphabet only, no padding, canonical."""
    if not isinstance(value, str) or len(value) % 4 == 1:
        raise MalformedEnvelopeError(f"{what} is not base64url")
    try:
        raw = value.encode("ascii")
        # a2b_base64 strict mode refuses anything outside the standard alphabet; "+", "/" and
        # "=" are refused here first, so exactly [A-Za-z0-9_-]* gets through.
        if b"+" in raw or b"/" in raw or b"=" in raw:
            raise ValueError
        decoded = binascii.a2b_base64(raw.translate(_URLSAFE_TO_STD) + b"=" * (-len(raw) % 4), strict_mode=True)
    except (binascii.Error, ValueError):
        raise MalformedEnvelopeError(f"{what} is not base64url") from None
    spare = _B64URL_SPARE_BITS[len(value) % 4]
    if spare and _B64URL_INDEX[value[-1]] & spare:  # non-zero trailing bits: not canonical
        raise MalformedEnvelopeError(f"{what} is not canonical base64url")
    return decoded


def _no_dup_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise MalformedEnvelopeError(f"duplicate JSON member {k!r}")
            seen.add(k)
    return out


_JSON_DECODER = json.JSONDecoder(object_pairs_hook=_no_dup_hook)  # built once (json.loads builds one per call)


def json_object(raw: bytes | str, what: str) -> dict[str, Any]:
    try:
        if isinstance(raw, (bytes, bytearray)):  # as json.loads does: UTF-8/16/32 by detection
            raw = bytes(raw).decode(json.detect_encoding(raw), "surrogatepass")
        obj = _JSON_DECODER.decode(raw)
    except MalformedEnvelopeError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MalformedEnvelopeError(f"{what} is not JSON") from None
    if not isinstance(obj, dict):
        raise MalformedEnvelopeError(f"{what} is not a JSON object")
    return obj


def _header(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedEnvelopeError(f"{what} is not a JSON object")
    return value


def _merge(*parts: tuple[dict[str, Any], str]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for header, _what in parts:
        if not header:
            continue
        if merged:
            dup = merged.keys() & header.keys()
            if dup:
                raise MalformedEnvelopeError(f"header parameter(s) {sorted(dup)} appear in more than one header")
        merged.update(header)
    return merged


def _check_common(merged: dict[str, Any]) -> None:
    if "zip" in merged:
        raise PolicyError("compressed (zip) JOSE objects are refused", reason=Reason.UNSUPPORTED)
    if "crit" in merged:
        raise PolicyError("no critical header extension is supported", reason=Reason.UNSUPPORTED)
    if "b64" in merged:
        raise PolicyError("unencoded payload (RFC 7797 b64) is refused", reason=Reason.UNSUPPORTED)
    kid = merged.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid):
        raise MalformedEnvelopeError("kid must be a non-empty string")


def _protected_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedEnvelopeError("protected header is not UTF-8") from None


# --- Source side ---------------------------------------------------------------------------


def _recipient_key(r: Recipient) -> tuple[str, str, jw_jwk.JWK]:
    # Credentials cache their JWK (and certificate kid/alg): built once per credential object.
    if isinstance(r, SymmetricRecipient):
        return r.alg, r.kid, r.jwk
    if isinstance(r, CertificateRecipient):
        return r.effective_alg, r.effective_kid, r.jwk
    raise SealError(f"unsupported recipient type {type(r).__name__}")


def encrypt_jwe(
    plaintext: bytes,
    recipients: Sequence[Recipient],
    *,
    compact: bool,
    enc: str,
    cty: str | None,
    aad: bytes | None,
    policy: Policy,
) -> bytes:
    if not recipients:
        raise SealError("encryption needs at least one recipient")
    if not plaintext:
        # jwcrypto 1.5/1.6 cannot decrypt a JWE with an empty plaintext; refuse to emit one.
        raise SealError("an empty payload cannot be encrypted (profile limit)", reason=Reason.UNSUPPORTED)
    if enc not in policy.content_encryption:
        raise SealError(f"content encryption {enc!r} not allowed", reason=Reason.ALGORITHM_NOT_ALLOWED)
    prepared = [_recipient_key(r) for r in recipients]
    kids = [kid for _, kid, _ in prepared]
    if len(set(kids)) != len(kids):
        raise SealError("two recipients share one kid")
    for alg, _kid, _ in prepared:
        if alg not in policy.key_management:
            raise SealError(f"key management {alg!r} not allowed", reason=Reason.ALGORITHM_NOT_ALLOWED)
        if alg == "dir":
            if len(prepared) != 1:
                raise SealError("dir (Direct Encryption Mode) only with a single key (TS-0003 8.5.2.2.1)", reason=Reason.ALGORITHM_NOT_ALLOWED)
            sym = recipients[0]
            assert isinstance(sym, SymmetricRecipient)
            if len(sym.key) != ENC_KEY_LEN[enc]:
                raise SealError(f"dir key length does not fit {enc}", reason=Reason.ALGORITHM_NOT_ALLOWED)
    if compact:
        if len(prepared) != 1:
            raise SealError("compact serialization carries exactly one recipient", reason=Reason.UNSUPPORTED)
        if aad is not None:
            raise SealError("compact serialization cannot carry AAD; use a JSON serialization", reason=Reason.UNSUPPORTED)
        alg, kid, key = prepared[0]
        protected: dict[str, Any] = {"alg": alg, "enc": enc, "kid": kid}
        if cty:
            protected["cty"] = cty
        try:
            obj = jw_jwe.JWE(plaintext, protected=_dumps(protected))
            obj.add_recipient(key)
            return obj.serialize(compact=True).encode("ascii")
        except ESDataError:
            raise
        except Exception as exc:  # noqa: BLE001 - library failures become a precise SealError
            raise SealError(f"JWE encryption failed: {type(exc).__name__}") from None
    protected = {"enc": enc}
    if cty:
        protected["cty"] = cty
    try:
        # flattened=False: jwcrypto emits the general serialization (a "recipients" array) itself.
        obj = jw_jwe.JWE(plaintext, protected=_dumps(protected), aad=aad if aad is not None else None,
                         flattened=False)
        if aad is not None and not aad:
            obj.objects["aad"] = b""  # keep an explicit empty AAD
        for alg, kid, key in prepared:
            obj.add_recipient(key, header={"alg": alg, "kid": kid})
        return obj.serialize().encode("ascii")
    except ESDataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise SealError(f"JWE encryption failed: {type(exc).__name__}") from None


def _general_jwe(d: dict[str, Any]) -> dict[str, Any]:
    if "recipients" in d:
        return d
    rec: dict[str, Any] = {}
    if "header" in d:
        rec["header"] = d.pop("header")
    if "encrypted_key" in d:
        rec["encrypted_key"] = d.pop("encrypted_key")
    d["recipients"] = [rec]
    return d


def sign_jws(
    payload: bytes,
    signers: Sequence[Signer],
    *,
    compact: bool,
    cty: str | None,
    policy: Policy,
) -> bytes:
    if not signers:
        raise SealError("signing needs at least one signer")
    if compact and len(signers) != 1:
        raise SealError("compact serialization carries exactly one signature", reason=Reason.UNSUPPORTED)
    obj = jw_jws.JWS(payload)
    try:
        for s in signers:
            if isinstance(s, SymmetricSigner):
                alg, key, prot = s.alg, s.jwk, {"alg": s.alg, "kid": s.kid}
            elif isinstance(s, CertificateSigner):
                alg, key = s.effective_alg, s.jwk
                prot = {"alg": alg}
                if s.include_kid:
                    prot["kid"] = s.kid
                prot["x5c"] = list(s.x5c)
            else:
                raise SealError(f"unsupported signer type {type(s).__name__}")
            if alg not in policy.signature:
                raise SealError(f"signature algorithm {alg!r} not allowed", reason=Reason.ALGORITHM_NOT_ALLOWED)
            if cty:
                prot["cty"] = cty
            obj.add_signature(key, alg=None, protected=_dumps(prot))
        # jwcrypto keeps one signature flat in .objects and several in .objects["signatures"];
        # each has the protected header text and the raw signature.
        sigs = obj.objects["signatures"] if "signatures" in obj.objects else [obj.objects]
        payload_b64 = b64url(payload)
        if compact:
            (one,) = sigs
            return f"{b64url(one['protected'].encode('utf-8'))}.{payload_b64}.{b64url(one['signature'])}".encode("ascii")
        out = {
            "payload": payload_b64,
            "signatures": [
                {"protected": b64url(o["protected"].encode("utf-8")), "signature": b64url(o["signature"])}
                for o in sigs
            ],
        }
    except ESDataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise SealError(f"JWS signing failed: {type(exc).__name__}") from None
    return _dumps(out).encode("ascii")



# --- Target side ---------------------------------------------------------------------------


class TargetContext(NamedTuple):  # immutable like a frozen dataclass, cheaper to build per open()
    key_source: KeySource
    policy: Policy
    certificate_verifier: CertificateVerifier | None
    expected_source_id: str | None
    default_kid: str | None


class JweResult(NamedTuple):
    plaintext: bytes
    aad: bytes | None
    cty: str | None
    kid: str
    alg: str
    enc: str


@dataclass(frozen=True)
class SigResult:
    alg: str
    kid: str | None
    suid: int | None
    chain: tuple[x509.Certificate, ...]
    source_id: str | None


def parse_jose(data: bytes, *, compact: bool) -> tuple[str, dict[str, Any]]:
    """-> ("jwe"|"jws", general-form JSON dict)."""
    if compact:
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedEnvelopeError("compact serialization must be ASCII") from None
        parts = text.strip().split(".")
        if len(parts) == 5:
            p, ek, iv, ct, tag = parts
            if not p:
                raise MalformedEnvelopeError("compact JWE without protected header")
            rec: dict[str, Any] = {"encrypted_key": ek} if ek else {}
            return "jwe", {"protected": p, "iv": iv, "ciphertext": ct, "tag": tag, "recipients": [rec], "_compact": True}
        if len(parts) == 3:
            p, pl, sig = parts
            if not p:
                raise MalformedEnvelopeError("compact JWS without protected header")
            return "jws", {"payload": pl, "signatures": [{"protected": p, "signature": sig}]}
        raise MalformedEnvelopeError("compact serialization must have 3 (JWS) or 5 (JWE) parts")
    obj = json_object(data, "JOSE JSON envelope")
    if "ciphertext" in obj:
        obj = _general_jwe(dict(obj))
        if not isinstance(obj.get("recipients"), list) or not obj["recipients"]:
            raise MalformedEnvelopeError("JWE JSON needs a non-empty recipients array")
        return "jwe", obj
    if "payload" in obj:
        if "signatures" not in obj:
            sig = {k: obj.pop(k) for k in ("protected", "header", "signature") if k in obj}
            obj["signatures"] = [sig]
        if not isinstance(obj["signatures"], list) or not obj["signatures"]:
            raise MalformedEnvelopeError("JWS JSON needs a non-empty signatures array")
        return "jws", obj
    raise MalformedEnvelopeError("JSON envelope is neither a JWE nor a JWS")


def _check_enc_key(resolved: ResolvedKey, alg: str, enc: str) -> None:
    if resolved.usage is not Usage.ENCRYPT:
        raise PolicyError(f"key {resolved.kid!r} (SUID {resolved.suid}) is not an encryption key", reason=Reason.KEY_USAGE)
    if alg not in resolved.algorithms:
        raise PolicyError(f"{alg!r} is not allowed for key {resolved.kid!r}", reason=Reason.ALGORITHM_NOT_ALLOWED)
    key = resolved.key
    if alg == "dir":
        if not isinstance(key, bytes):
            raise PolicyError("dir is refused with a certificate key", reason=Reason.ALGORITHM_NOT_ALLOWED)
        if len(key) != ENC_KEY_LEN[enc]:
            raise PolicyError(f"dir key length does not fit {enc}", reason=Reason.ALGORITHM_NOT_ALLOWED)
    elif alg in KW_KEY_LEN:
        if not isinstance(key, bytes) or len(key) != KW_KEY_LEN[alg]:
            raise PolicyError(f"{alg} needs a {KW_KEY_LEN[alg]}-byte symmetric key", reason=Reason.ALGORITHM_NOT_ALLOWED)
    elif alg in RSA_KM:
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < MIN_RSA_BITS:
            raise PolicyError(f"{alg} needs an RSA private key of at least 2048 bits", reason=Reason.ALGORITHM_NOT_ALLOWED)
    elif alg in ECDH_KW:
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PolicyError(f"{alg} needs an EC private key", reason=Reason.ALGORITHM_NOT_ALLOWED)
    else:  # pragma: no cover - policy already filtered
        raise PolicyError(f"{alg!r} not allowed", reason=Reason.ALGORITHM_NOT_ALLOWED)


def open_jwe(env: dict[str, Any], ctx: TargetContext) -> JweResult:
    policy = ctx.policy
    compact = bool(env.pop("_compact", False))
    prot_b64 = env.get("protected")
    # Decoded once here; jwcrypto gets these very octets (no second JSON/base64 pass).
    parts: dict[str, Any] = {}
    protected: dict[str, Any] = {}
    if prot_b64:
        parts["protected"] = _protected_text(b64url_decode(prot_b64, "protected header"))
        protected = json_object(parts["protected"], "protected header")
    unprotected = _header(env.get("unprotected"), "unprotected header")
    if "unprotected" in env:
        parts["unprotected"] = _dumps(unprotected)
    for name in ("iv", "ciphertext", "tag"):
        parts[name] = b64url_decode(env.get(name), name)
    aad = b64url_decode(env["aad"], "aad") if "aad" in env else None
    if aad is not None:
        parts["aad"] = aad
    recipients = env["recipients"]
    headers: list[dict[str, Any]] = []
    encrypted_keys: dict[int, bytes] = {}
    for i, rec in enumerate(recipients):
        if not isinstance(rec, dict):
            raise MalformedEnvelopeError(f"recipient {i} is not a JSON object")
        merged = _merge((protected, "protected"), (unprotected, "unprotected"), (_header(rec.get("header"), "header"), "header"))
        _check_common(merged)
        alg, enc = merged.get("alg"), merged.get("enc")
        if not isinstance(alg, str) or not isinstance(enc, str):
            raise MalformedEnvelopeError("JWE without alg or enc")
        if enc not in policy.content_encryption:
            raise PolicyError(f"content encryption {enc!r} not allowed", reason=Reason.ALGORITHM_NOT_ALLOWED)
        if alg not in policy.key_management:
            raise PolicyError(f"key management {alg!r} not allowed", reason=Reason.ALGORITHM_NOT_ALLOWED)
        if alg == "dir" and len(recipients) != 1:
            raise PolicyError("dir with more than one recipient", reason=Reason.ALGORITHM_NOT_ALLOWED)
        if "encrypted_key" in rec:
            encrypted_keys[id(rec)] = b64url_decode(rec["encrypted_key"], "encrypted_key")
        headers.append(merged)
    if len({h["enc"] for h in headers}) != 1:
        raise MalformedEnvelopeError("recipients disagree on enc")
    if compact and aad is not None:  # pragma: no cover - compact has no aad member
        raise MalformedEnvelopeError("compact JWE with aad")

    unknown: list[str] = []
    failures = 0
    for rec, merged in zip(recipients, headers):
        kid = merged.get("kid") or ctx.default_kid
        if kid is None:
            continue
        try:
            resolved = resolve_key(ctx.key_source, kid, Usage.ENCRYPT)
        except UnknownKidError:
            unknown.append(kid)
            continue
        alg, enc = merged["alg"], merged["enc"]
        _check_enc_key(resolved, alg, enc)
        # What jwcrypto's deserialize() would build for this one recipient (flattened form).
        objects = dict(parts)
        if "header" in rec:
            objects["header"] = rec["header"]  # a dict: jwcrypto merges it as is
        if "encrypted_key" in rec:
            objects["encrypted_key"] = encrypted_keys[id(rec)]
        try:
            obj = jw_jwe.JWE(algs=[alg, enc])
            obj.objects = objects
            obj.decrypt(resolved.jwk)
            plaintext = obj.plaintext
        except Exception:  # noqa: BLE001 - any failure here is "does not decrypt"
            failures += 1
            continue
        cty = merged.get("cty")
        return JweResult(plaintext, aad, cty if isinstance(cty, str) else None, kid, alg, enc)
    if failures:
        raise DecryptionError("the envelope does not decrypt with the credential(s) held (wrong key or tampered)")
    if unknown:
        raise UnknownKidError(f"no credential for key identifier(s) {unknown}", kids=tuple(unknown))
    raise MalformedEnvelopeError("no recipient names a key identifier (kid)")


def _parse_x5c(value: object) -> tuple[x509.Certificate, ...]:
    if not isinstance(value, list) or not value or len(value) > 8:
        raise MalformedEnvelopeError("x5c must be a non-empty array of at most 8 certificates")
    chain = []
    for item in value:
        if not isinstance(item, str):
            raise MalformedEnvelopeError("x5c entries must be strings")
        try:
            der = base64.b64decode(item, validate=True)
            chain.append(x509.load_der_x509_certificate(der))
        except (binascii.Error, ValueError):
            raise MalformedEnvelopeError("x5c entry is not a base64 DER certificate") from None
    return tuple(chain)


def _leaf_public_key(chain: tuple[x509.Certificate, ...]) -> Any:
    """The signer certificate's public key; a key ``cryptography`` cannot load (a point off
    the curve, an unknown algorithm OID, a malformed SubjectPublicKeyInfo) is a malformed
    envelope, refused before any chain verification (robustness, see tests/robustness)."""
    try:
        return chain[0].public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise MalformedEnvelopeError("x5c: the signer certificate's public key cannot be loaded") from None


def _check_public_key(alg: str, key: object) -> None:
    if alg in RS_ALGS:
        if not isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)) or key.key_size < MIN_RSA_BITS:
            raise PolicyError(f"{alg} needs an RSA key of at least 2048 bits", reason=Reason.ALGORITHM_NOT_ALLOWED)
        check_rsa_public_key(key)
    elif alg in ES_CURVE:
        if not isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)) or key.curve.name != ES_CURVE[alg]:
            raise PolicyError(f"{alg} needs an EC key on {ES_CURVE[alg]}", reason=Reason.ALGORITHM_NOT_ALLOWED)


def open_jws(
    env: dict[str, Any],
    ctx: TargetContext,
    *,
    certificate_only: bool = False,
) -> tuple[bytes, str | None, list[SigResult]]:
    policy = ctx.policy
    payload = b64url_decode(env.get("payload"), "payload")
    verified: list[SigResult] = []
    unknown: list[str] = []
    untrusted: list[ESDataError] = []
    cty: str | None = None
    for i, sig in enumerate(env["signatures"]):
        if not isinstance(sig, dict):
            raise MalformedEnvelopeError(f"signature {i} is not a JSON object")
        if "protected" not in sig:
            raise MalformedEnvelopeError("every signature needs a protected header")
        protected_text = _protected_text(b64url_decode(sig["protected"], "protected header"))
        protected = json_object(protected_text, "protected header")
        header = _header(sig.get("header"), "header")
        merged = _merge((protected, "protected"), (header, "header"))
        _check_common(merged)
        signature = b64url_decode(sig.get("signature"), "signature")
        alg = protected.get("alg")
        if not isinstance(alg, str):
            raise MalformedEnvelopeError("alg must be in the protected header")
        if alg not in policy.signature:
            raise PolicyError(f"signature algorithm {alg!r} not allowed", reason=Reason.ALGORITHM_NOT_ALLOWED)
        if certificate_only and alg in HS_MIN_KEY_LEN:
            raise PolicyError(
                "the inner envelope of Nested Sign-then-Encrypt must carry certificate signatures (TS-0003 8.5.3.4)",
                reason=Reason.WRONG_CLASS,
            )
        sig_cty = protected.get("cty")
        if isinstance(sig_cty, str):
            cty = cty or sig_cty
        kid = merged.get("kid") or ctx.default_kid
        chain: tuple[x509.Certificate, ...] = ()
        resolved: ResolvedKey | None = None
        if alg in HS_MIN_KEY_LEN:
            if kid is None:
                raise MalformedEnvelopeError("a MIC needs a kid")
            try:
                resolved = resolve_key(ctx.key_source, kid, Usage.SIGN)
            except UnknownKidError:
                unknown.append(kid)
                continue
            if resolved.usage is not Usage.SIGN:
                raise PolicyError(f"key {kid!r} (SUID {resolved.suid}) is not a signature key", reason=Reason.KEY_USAGE)
            if not isinstance(resolved.key, bytes):
                raise PolicyError(f"{alg} needs a symmetric key, {kid!r} is not one", reason=Reason.ALGORITHM_NOT_ALLOWED)
            if alg not in resolved.algorithms:
                raise PolicyError(f"{alg!r} is not allowed for key {kid!r}", reason=Reason.ALGORITHM_NOT_ALLOWED)
            if len(resolved.key) < HS_MIN_KEY_LEN[alg]:
                raise PolicyError(f"{alg} key shorter than {HS_MIN_KEY_LEN[alg]} bytes", reason=Reason.ALGORITHM_NOT_ALLOWED)
            verify_jwk = resolved.jwk
        elif "x5c" in merged:
            if "x5c" not in protected:
                raise MalformedEnvelopeError("x5c must be in the protected header")
            chain = _parse_x5c(protected["x5c"])
            verify_key = _leaf_public_key(chain)
            _check_public_key(alg, verify_key)
            verify_jwk = jose_key(verify_key)
        else:
            if certificate_only:
                raise PolicyError("nested inner signature without x5c", reason=Reason.WRONG_CLASS)
            if kid is None:
                raise MalformedEnvelopeError("a signature needs x5c or a kid")
            try:
                resolved = resolve_key(ctx.key_source, kid, Usage.SIGN)
            except UnknownKidError:
                unknown.append(kid)
                continue
            if resolved.usage is not Usage.SIGN:
                raise PolicyError(f"key {kid!r} (SUID {resolved.suid}) is not a signature key", reason=Reason.KEY_USAGE)
            if isinstance(resolved.key, bytes):
                raise PolicyError(f"{alg} needs a public key, {kid!r} is symmetric", reason=Reason.ALGORITHM_NOT_ALLOWED)
            if alg not in resolved.algorithms:
                raise PolicyError(f"{alg!r} is not allowed for key {kid!r}", reason=Reason.ALGORITHM_NOT_ALLOWED)
            _check_public_key(alg, resolved.key)
            verify_jwk = resolved.jwk  # jwcrypto verifies with the public half of a private JWK
        if alg in ES_CURVE and len(signature) != _ES_SIG_LEN[alg]:
            raise SignatureError(f"{alg} signature must be {_ES_SIG_LEN[alg]} octets (R || S)")
        # What jwcrypto's deserialize() would build for this one signature (flattened form).
        objects: dict[str, Any] = {"payload": payload, "protected": protected_text, "signature": signature}
        if "header" in sig:
            objects["header"] = header
        try:
            obj = jw_jws.JWS()
            obj.allowed_algs = [alg]
            obj.objects = objects
            obj.verify(verify_jwk, alg=alg)
        except Exception:  # noqa: BLE001
            raise SignatureError(f"{alg} signature does not verify (wrong key or tampered)") from None
        source_id = None
        if chain:
            if ctx.certificate_verifier is None:
                untrusted.append(UntrustedCertificateError("no certificate verifier configured"))
                continue
            if ctx.expected_source_id is None:
                untrusted.append(UntrustedCertificateError("no expected Source End-Point identifier given"))
                continue
            try:
                ctx.certificate_verifier(list(chain), ctx.expected_source_id)
            except UntrustedCertificateError as exc:
                untrusted.append(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - a pluggable verifier may raise anything
                untrusted.append(UntrustedCertificateError(f"signer certificate refused: {exc}"))
                continue
            source_id = ctx.expected_source_id
        verified.append(
            SigResult(alg, kid if isinstance(kid, str) else None, resolved.suid if resolved else None, chain, source_id)
        )
    if not verified:
        if untrusted:
            raise untrusted[0]
        if unknown:
            raise UnknownKidError(f"no credential for key identifier(s) {unknown}", kids=tuple(unknown))
        raise NoUsableCredentialError("no signature could be verified")
    return payload, cty, verified


def nested_kind(cty: str | None) -> bool | None:
    """True: inner compact JWS; False: inner JSON JWS; None: not nested."""
    if cty is None:
        return None
    return _NESTED_CTYS.get(cty.lower())

