"""``m2msec esdata``: seal and open ESData envelopes from the command line (TS-0003 8.5,
TS-0004 6.3.4.2.38).  An adapter (files, wall clock); the logic is in
:mod:`m2msec.esdata.api`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from m2msec.errors import M2MSecError
from m2msec.esdata.api import Source, Target, from_content_instance, to_content_instance
from m2msec.esdata.certverify import x509_verifier
from m2msec.esdata.credentials import (
    CertificateRecipient,
    CertificateSigner,
    InMemoryKeySource,
    Recipient,
    Signer,
    SymmetricRecipient,
    SymmetricSigner,
)
from m2msec.esdata.types import SERIALIZATION_NAMES, SecurityClass
from m2msec.secret_input import SecretInputError, secret_from_options

app = typer.Typer(
    help="ESData (TS-0003 8.5): seal data into JOSE/XML envelopes and open them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class ClassOpt(str, Enum):
    enc = "enc"
    sign = "sign"
    sign_enc = "sign-enc"


class SerOpt(str, Enum):
    compact = "compact"
    json = "json"
    json_b64 = "json-b64"
    xml = "xml"
    xml_b64 = "xml-b64"


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _sym_key(key_hex: Optional[str], key_file: Optional[Path]) -> Optional[bytes]:
    try:
        return secret_from_options(key_hex, key_file, hex_option="--key-hex", file_option="--key-file")
    except SecretInputError as exc:
        _fail(str(exc))
    return None  # not reached: _fail exits


def _certs(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError:
        _fail(f"{path}: no PEM certificate")
        raise


def _private_key(path: Path):  # type: ignore[no-untyped-def]
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        _fail(f"{path}: not an unencrypted PEM private key")


KeyHex = Annotated[Optional[str], typer.Option("--key-hex", help="Provisioned symmetric key, hex (visible in ps: prefer --key-file).")]
KeyFile = Annotated[Optional[Path], typer.Option("--key-file", help="File with the symmetric key: hex text or raw octets (- = stdin).")]
Kid = Annotated[Optional[str], typer.Option("--kid", help="Key identifier of the symmetric key.")]


@app.command("seal")
def seal(
    infile: Annotated[Path, typer.Option("--in", help="Payload file.")],
    outfile: Annotated[Path, typer.Option("--out", help="Envelope output file.")],
    klass: Annotated[ClassOpt, typer.Option("--class", help="Security class.")],
    ser: Annotated[SerOpt, typer.Option("--serialization", help="contentSecurity 1-5.")],
    key_hex: KeyHex = None,
    key_file: KeyFile = None,
    kid: Kid = None,
    alg: Annotated[Optional[str], typer.Option("--alg", help="dir|A128KW|A192KW|A256KW (enc) or HS256|HS384|HS512 (sign).")] = None,
    suid: Annotated[Optional[int], typer.Option("--suid", help="SUID of the symmetric key (default 14 enc / 15 sign).")] = None,
    recipient_cert: Annotated[Optional[list[Path]], typer.Option("--recipient-cert", help="Target certificate PEM (repeatable).")] = None,
    signer_key: Annotated[Optional[Path], typer.Option("--signer-key", help="Source private key PEM.")] = None,
    signer_cert: Annotated[Optional[Path], typer.Option("--signer-cert", help="Source certificate chain PEM, leaf first.")] = None,
    enc: Annotated[str, typer.Option("--enc", help="A128GCM|A192GCM|A256GCM")] = "A128GCM",
    aad_file: Annotated[Optional[Path], typer.Option("--aad-file", help="Associated authenticated data (JSON serializations).")] = None,
    content_type: Annotated[Optional[str], typer.Option("--content-type", help="Media type of the payload.")] = None,
    content_instance: Annotated[bool, typer.Option("--content-instance", help="Write {con, cnf} JSON instead of the bare envelope.")] = False,
) -> None:
    """Apply ESData to a payload."""
    key = _sym_key(key_hex, key_file)
    if key is not None and not kid:
        _fail("--kid is required with a symmetric key")
    recipients: list[Recipient] = []
    signers: list[Signer] = []
    try:
        if klass in (ClassOpt.enc, ClassOpt.sign_enc):
            if key is not None:
                recipients.append(SymmetricRecipient(kid, key, alg or ("dir" if not recipient_cert else "A128KW"), suid=suid or 14))  # type: ignore[arg-type]
            recipients += [CertificateRecipient(_certs(p)[0]) for p in recipient_cert or []]
            if not recipients:
                _fail("encryption needs --key-hex/--key-file with --kid, or --recipient-cert")
        if klass in (ClassOpt.sign, ClassOpt.sign_enc):
            if signer_key and signer_cert:
                signers.append(CertificateSigner(_private_key(signer_key), tuple(_certs(signer_cert))))
            elif signer_key or signer_cert:
                _fail("--signer-key and --signer-cert go together")
            if klass is ClassOpt.sign and key is not None:
                signers.append(SymmetricSigner(kid, key, alg or "HS256", suid=suid or 15))  # type: ignore[arg-type]
            if not signers:
                _fail("signing needs --signer-key/--signer-cert (or a symmetric key for a MIC)")
        env = Source().seal(
            infile.read_bytes(), serialization=SERIALIZATION_NAMES[ser.value], recipients=recipients,
            signers=signers, enc=enc, aad=aad_file.read_bytes() if aad_file else None, content_type=content_type,
        )
        if content_instance:
            outfile.write_text(json.dumps(to_content_instance(env)))
        else:
            outfile.write_bytes(env.data)
    except M2MSecError as exc:
        _fail(str(exc))
    typer.echo(f"sealed {env.security_class.value} envelope, contentSecurity {int(env.content_security)} ({env.media_type}), {len(env.data)} bytes", err=True)


@app.command("open")
def open_(
    infile: Annotated[Path, typer.Option("--in", help="Envelope file (or contentInstance JSON with --content-instance).")],
    outfile: Annotated[Path, typer.Option("--out", help="Payload output file.")],
    ser: Annotated[Optional[SerOpt], typer.Option("--serialization", help="contentSecurity 1-5 (not needed with --content-instance).")] = None,
    key_hex: KeyHex = None,
    key_file: KeyFile = None,
    kid: Kid = None,
    suid: Annotated[Optional[int], typer.Option("--suid", help="SUID of the symmetric key (default 14, or 15 with --mic).")] = None,
    mic: Annotated[bool, typer.Option("--mic", help="The symmetric key is a MIC key (Signature-only).")] = False,
    recipient_key: Annotated[Optional[Path], typer.Option("--recipient-key", help="Target private key PEM.")] = None,
    recipient_cert: Annotated[Optional[Path], typer.Option("--recipient-cert", help="Target certificate PEM.")] = None,
    trust_anchor: Annotated[Optional[list[Path]], typer.Option("--trust-anchor", help="Trust anchor PEM for signer certificates.")] = None,
    expect_id: Annotated[Optional[str], typer.Option("--expect-id", help="Identifier the signer certificate must carry.")] = None,
    require: Annotated[Optional[ClassOpt], typer.Option("--require", help="Refuse any other security class.")] = None,
    content_instance: Annotated[bool, typer.Option("--content-instance", help="Input is {con, cnf} JSON.")] = False,
) -> None:
    """Verify/decrypt an ESData envelope and write the payload."""
    ks = InMemoryKeySource()
    key = _sym_key(key_hex, key_file)
    try:
        if key is not None:
            if not kid:
                _fail("--kid is required with a symmetric key")
            ks.add_symmetric(kid, key, suid=suid or (15 if mic else 14))  # type: ignore[arg-type]
        if recipient_key or recipient_cert:
            if not (recipient_key and recipient_cert):
                _fail("--recipient-key and --recipient-cert go together")
            ks.add_certificate_key(_private_key(recipient_key), _certs(recipient_cert)[0])  # type: ignore[arg-type]
        anchors = [c for p in trust_anchor or [] for c in _certs(p)]
        verifier = x509_verifier(anchors, clock=lambda: datetime.now(timezone.utc)) if anchors else None
        target = Target(ks, certificate_verifier=verifier)
        raw = infile.read_bytes()
        if content_instance:
            envelope = from_content_instance(json.loads(raw))
            opened = target.open(envelope, expected_source_id=expect_id,
                                 require_class=SecurityClass(require.value) if require else None)
        else:
            if ser is None:
                _fail("--serialization is required for a bare envelope")
            opened = target.open(raw, SERIALIZATION_NAMES[ser.value], expected_source_id=expect_id,  # type: ignore[union-attr]
                                 require_class=SecurityClass(require.value) if require else None)
    except M2MSecError as exc:
        _fail(str(exc))
    except (ValueError, OSError) as exc:
        _fail(f"cannot read input: {type(exc).__name__}")
    outfile.write_bytes(opened.payload)
    sigs = ", ".join(f"{s.alg}" + (f" by {s.source_id}" if s.source_id else f" kid {s.kid}") for s in opened.signatures)
    typer.echo(
        f"opened {opened.security_class.value} envelope"
        + (f", decrypted with {opened.decrypted_with}" if opened.decrypted_with else "")
        + (f", signatures: {sigs}" if sigs else "")
        + (f", aad {len(opened.aad)} bytes" if opened.aad is not None else ""),
        err=True,
    )
