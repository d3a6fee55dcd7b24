"""ESData Source and Target End-Point APIs (TS-0003 clause 8.5.2: Encryption only,
Signature only, Nested Sign-then-Encrypt, several credentials per payload; clause 8.5.3:
JOSE and XML protocols) and the <contentInstance> helpers (TS-0004 Table 6.3.3-1
m2m:contentInfo, 6.3.4.2.28 encodingType, 6.3.4.2.38 contentSecurity).

Both end-points are sans-I/O: bytes in, bytes out; the Target gets keys only through a
:class:`~m2msec.esdata.credentials.KeySource` and trusts signer certificates only through
the injected ``certificate_verifier``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Union

from m2msec.errors import ParseError
from m2msec.esdata import jose
from m2msec.esdata.certverify import CertificateVerifier
from m2msec.esdata.credentials import CertificateSigner, KeySource, Recipient, Signer
from m2msec.esdata.errors import (
    EnvelopeTooLargeError,
    ESDataError,
    MalformedEnvelopeError,
    PolicyError,
    Reason,
    SealError,
)
from m2msec.esdata.policy import Policy
from m2msec.onem2m.contentinfo import ContentInfo
from m2msec.esdata.types import (
    SERIALIZATION_NAMES,
    ContentSecurity,
    Envelope,
    Opened,
    SecurityClass,
    VerifiedSignature,
)


def _cs(value: ContentSecurity | int | str) -> ContentSecurity:
    if value is ContentSecurity.NONE:
        raise PolicyError("contentSecurity 0 means no ESData", reason=Reason.UNSUPPORTED)
    if isinstance(value, ContentSecurity):
        return value
    if isinstance(value, str) and value in SERIALIZATION_NAMES:
        return SERIALIZATION_NAMES[value]
    try:
        cs = ContentSecurity(int(value))
    except (ValueError, TypeError):
        raise PolicyError(f"unknown contentSecurity/serialization {value!r}", reason=Reason.UNSUPPORTED) from None
    if cs is ContentSecurity.NONE:
        raise PolicyError("contentSecurity 0 means no ESData", reason=Reason.UNSUPPORTED)
    return cs


class Source:
    """ESData Source End-Point: applies ESData processing to a Payload."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or Policy()

    def seal(
        self,
        payload: bytes,
        *,
        serialization: ContentSecurity | int | str,
        recipients: Sequence[Recipient] = (),
        signers: Sequence[Signer] = (),
        aad: bytes | None = None,
        enc: str = "A128GCM",
        content_type: str | None = None,
    ) -> Envelope:
        """Encrypt (recipients only), sign (signers only) or sign-then-encrypt (both).

        ``content_type`` is the media type of ``payload`` (goes into ``cty`` of the
        innermost JOSE object and into ``cnf`` by :func:`to_content_instance`)."""
        if not isinstance(payload, (bytes, bytearray)):
            raise SealError("payload must be bytes", reason=Reason.MALFORMED)
        payload = bytes(payload)
        cs = _cs(serialization)
        recipients, signers = list(recipients), list(signers)
        if recipients and signers:
            klass = SecurityClass.SIGN_ENCRYPT
            if not all(isinstance(s, CertificateSigner) for s in signers):
                raise SealError(
                    "Nested Sign-then-Encrypt signs with source certificates only (TS-0003 8.5.3.4)",
                    reason=Reason.WRONG_CLASS,
                )
        elif recipients:
            klass = SecurityClass.ENCRYPT
        elif signers:
            klass = SecurityClass.SIGN
            if aad is not None:
                raise SealError("AAD applies to encryption; a Signature-only payload is all integrity-protected",
                                reason=Reason.UNSUPPORTED)
        else:
            raise SealError("give recipients, signers or both")
        if cs.is_xml:
            from m2msec.esdata import xmlsecdata  # noqa: PLC0415 - optional heavy import

            data = xmlsecdata.seal_xml(
                payload, klass, recipients=recipients, signers=signers, aad=aad, enc=enc,
                content_type=content_type, policy=self.policy,
            )
        else:
            compact = cs is ContentSecurity.JOSE_COMPACT
            if klass is SecurityClass.SIGN:
                data = jose.sign_jws(payload, signers, compact=compact, cty=content_type, policy=self.policy)
            elif klass is SecurityClass.ENCRYPT:
                data = jose.encrypt_jwe(payload, recipients, compact=compact, enc=enc, cty=content_type, aad=aad,
                                        policy=self.policy)
            else:
                inner = jose.sign_jws(payload, signers, compact=compact, cty=content_type, policy=self.policy)
                data = jose.encrypt_jwe(
                    inner, recipients, compact=compact, enc=enc, aad=aad, policy=self.policy,
                    cty=jose.CTY_NESTED_COMPACT if compact else jose.CTY_NESTED_JSON,
                )
        if cs.is_base64:
            data = base64.b64encode(data)
        if len(data) > self.policy.max_envelope_size:
            raise SealError("envelope exceeds the configured size limit", reason=Reason.TOO_LARGE)
        return Envelope(data, cs, klass, content_type)


class _HasData(Protocol):
    data: bytes
    content_security: ContentSecurity


EnvelopeInput = Union[Envelope, "ContentInstanceEnvelope", bytes, str]


class Target:
    """ESData Target End-Point: opens envelopes with the credentials its key source holds."""

    def __init__(
        self,
        key_source: KeySource,
        *,
        certificate_verifier: CertificateVerifier | None = None,
        policy: Policy | None = None,
        default_kid: str | None = None,
    ) -> None:
        self.key_source = key_source
        self.certificate_verifier = certificate_verifier
        self.policy = policy or Policy()
        self.default_kid = default_kid

    def __repr__(self) -> str:
        return f"Target(key_source={self.key_source!r}, policy={self.policy!r})"

    def open(
        self,
        envelope: EnvelopeInput,
        content_security: ContentSecurity | int | str | None = None,
        *,
        expected_source_id: str | None = None,
        require_class: SecurityClass | None = None,
    ) -> Opened:
        """Open ``envelope``; raise an :class:`ESDataError` (with ``reason``) to reject.

        ``expected_source_id`` is the identifier (AE-ID, CSE-ID, ...) a certificate signer
        must carry; ``require_class`` refuses envelopes of any other security class."""
        if isinstance(envelope, (bytes, bytearray, str)):
            if content_security is None:
                raise PolicyError("contentSecurity is needed to open raw envelope bytes", reason=Reason.MALFORMED)
            raw = envelope.encode("utf-8") if isinstance(envelope, str) else bytes(envelope)
            cs = _cs(content_security)
        else:
            raw = envelope.data
            cs = _cs(content_security if content_security is not None else envelope.content_security)
        if len(raw) > self.policy.max_envelope_size:
            raise EnvelopeTooLargeError(
                f"envelope of {len(raw)} bytes exceeds the limit of {self.policy.max_envelope_size}"
            )
        data = raw
        if cs.is_base64:
            try:
                data = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise MalformedEnvelopeError("envelope is not valid base64") from None
        ctx = jose.TargetContext(
            key_source=self.key_source,
            policy=self.policy,
            certificate_verifier=self.certificate_verifier,
            expected_source_id=expected_source_id,
            default_kid=self.default_kid,
        )
        if cs.is_xml:
            from m2msec.esdata import xmlsecdata  # noqa: PLC0415

            opened = xmlsecdata.open_xml(data, cs, ctx)
        else:
            opened = self._open_jose(data, cs, ctx)
        if require_class is not None and opened.security_class is not require_class:
            raise PolicyError(
                f"expected a {require_class.value} envelope, got {opened.security_class.value}",
                reason=Reason.WRONG_CLASS,
            )
        return opened

    @staticmethod
    def _sigs(results: list[jose.SigResult]) -> tuple[VerifiedSignature, ...]:
        return tuple(VerifiedSignature(r.alg, r.kid, r.suid, r.chain, r.source_id) for r in results)

    def _open_jose(self, data: bytes, cs: ContentSecurity, ctx: jose.TargetContext) -> Opened:
        compact = cs is ContentSecurity.JOSE_COMPACT
        kind, env = jose.parse_jose(data, compact=compact)
        if kind == "jws":
            payload, cty, sigs = jose.open_jws(env, ctx)
            return Opened(payload, SecurityClass.SIGN, cs, content_type=cty, signatures=self._sigs(sigs))
        res = jose.open_jwe(env, ctx)
        inner_compact = jose.nested_kind(res.cty)
        if inner_compact is None:
            return Opened(
                res.plaintext, SecurityClass.ENCRYPT, cs, aad=res.aad, content_type=res.cty,
                decrypted_with=res.kid, key_management=res.alg, content_encryption=res.enc,
            )
        inner_kind, inner = jose.parse_jose(res.plaintext, compact=inner_compact)
        if inner_kind != "jws":
            raise PolicyError("the inner envelope of Nested Sign-then-Encrypt must be a JWS", reason=Reason.WRONG_CLASS)
        payload, cty, sigs = jose.open_jws(inner, ctx, certificate_only=True)
        return Opened(
            payload, SecurityClass.SIGN_ENCRYPT, cs, aad=res.aad, content_type=cty,
            decrypted_with=res.kid, key_management=res.alg, content_encryption=res.enc,
            signatures=self._sigs(sigs),
        )


# --- <contentInstance> helpers ------------------------------------------------------------

def format_content_info(media_type: str, encoding_type: int, content_security: int | None) -> str:
    """m2m:contentInfo ``type/subtype:encodingType[:contentSecurity]`` (TS-0004 Table 6.3.3-1)."""
    try:
        info = ContentInfo(media_type, encoding_type, content_security or 0)  # type: ignore[arg-type]
    except ValueError as exc:
        raise MalformedEnvelopeError(f"not a valid contentInfo: {exc}") from None
    return info.format()


def parse_content_info(cnf: str) -> tuple[str, int, ContentSecurity]:
    """-> (media type, encodingType, contentSecurity); absent contentSecurity means 0."""
    try:
        info = ContentInfo.parse(cnf)
    except ParseError as exc:
        raise MalformedEnvelopeError(str(exc.args[0])) from None
    return info.media_type, int(info.encoding), ContentSecurity(int(info.security))


@dataclass(frozen=True)
class ContentInstanceEnvelope:
    """An envelope read back from a <contentInstance> (``con`` + ``cnf``)."""

    data: bytes
    content_security: ContentSecurity
    content_type: str  # media type of the data before ESData was applied
    encoding_type: int  # transfer encoding of that data (applied after ESData is removed)


def to_content_instance(
    envelope: Envelope, *, content_type: str | None = None, encoding_type: int = 0
) -> dict[str, Any]:
    """``{"con": <envelope text>, "cnf": "<payload media type>:<encodingType>:<contentSecurity>"}``.

    The media type and encodingType describe the payload BEFORE ESData (TS-0004 Table
    6.3.3-1 NOTE); the envelope's own media type follows from contentSecurity."""
    media = content_type or envelope.content_type
    if not media:
        raise SealError("the payload media type is needed for contentInfo", reason=Reason.MALFORMED)
    return {
        "con": envelope.data.decode("utf-8"),
        "cnf": format_content_info(media, encoding_type, int(envelope.content_security)),
    }


def from_content_instance(resource: dict[str, Any]) -> ContentInstanceEnvelope:
    """Read ``con``/``cnf`` back; refuses a resource without ESData (contentSecurity 0)."""
    con, cnf = resource.get("con"), resource.get("cnf")
    if not isinstance(con, str) or not isinstance(cnf, str):
        raise MalformedEnvelopeError("contentInstance needs string con and cnf")
    media, encoding, cs = parse_content_info(cnf)
    if cs is ContentSecurity.NONE:
        raise PolicyError("contentInstance carries no ESData (contentSecurity 0)", reason=Reason.WRONG_CLASS)
    return ContentInstanceEnvelope(con.encode("utf-8"), cs, media, encoding)


__all__ = [
    "ContentInstanceEnvelope",
    "ESDataError",
    "Source",
    "Target",
    "format_content_info",
    "from_content_instance",
    "parse_content_info",
    "to_content_instance",
]
