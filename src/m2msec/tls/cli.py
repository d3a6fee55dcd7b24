"""``m2msec tls`` — oneM2M (D)TLS 1.2 server and client (TS-0003 10.2, 10.3.1).

Like ``openssl s_server`` / ``s_client`` restricted to the oneM2M profiles:
TLS-PSK (``--psk-identity`` with ``--psk-hex`` or ``--psk-text``) or mutual
ECDHE-ECDSA certificates (``--key --cert --ca``; ``--peer-id ID --peer-flavour
cse-id|ae-id|fqdn|node-id|device`` verifies the peer as TS-0003 8.1.2.5 says via
:mod:`m2msec.tls.pkiverify` - identifier match, path validation to ``--ca``,
name constraints - and a rejection prints ``reason: <VerificationReason>``;
without ``--peer-id`` OpenSSL's path validation to ``--ca`` is all that is
checked), ``--dtls`` for DTLS 1.2 over
UDP, ``--sni``, and ``--export-label LABEL`` which prints the 48 exported
bytes split as TS-0003 10.3.1 says: ``key_id`` (16 most significant bytes)
and ``key`` (32 least significant bytes).  Output is plain ``name: value``.

Both commands require the RFC 7627 extended master secret (a peer without it fails with
``NO_EXTENDED_MASTER_SECRET``); ``--allow-no-ems`` accepts such a legacy peer.

OCSP stapling (TS-0003 8.1.2.2, RFC 6066 8; TLS and DTLS, certificate mode), like ``openssl
s_server -status_file`` / ``-status_url`` and ``s_client -status``: ``server --ocsp-staple FILE``
staples that DER OCSP response as it is; ``server --ocsp-staple URL`` queries that responder
for the ``--cert`` leaf (issuer: the next certificate of ``--cert``) before listening, prints
``ocsp_staple: good|revoked|unknown|none`` and keeps the response fresh
(:class:`m2msec.pki.ocsp_staple.OCSPStapler`; SIGHUP queries again).  ``client --status``
asks for the staple and verifies it (:class:`m2msec.tls.pkiverify.OCSPStapleCheck`: signature,
CertID, validity; REVOKED or an invalid staple fails the handshake with
``BAD_CERTIFICATE_STATUS``) and prints ``ocsp_status: good|revoked|unknown|none`` with
``ocsp_this_update``/``ocsp_next_update``; ``--require-status`` also fails without a staple or
with UNKNOWN.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from m2msec.pki import CertificateFlavour, PeerCertInfo
from m2msec.tls.aio import TLSStreamWriter, open_connection, start_server
from m2msec.tls.dtls import DTLSSession, open_dtls_connection, start_dtls_server
from m2msec.tls.engine import (
    CertCredentials,
    PSKCredentials,
    Role,
    TLSConfig,
    TLSEngine,
    TLSHandshakeError,
)
from m2msec.pki import CRLError, CRLStore, RevocationPolicy, load_crl_files
from m2msec.pki.ocsp import OCSPResult
from m2msec.pki.ocsp_staple import OCSPStapler, stapler_for_chain
from m2msec.secret_input import SecretInputError, secret_from_options
from m2msec.tls.pkiverify import OCSPStapleCheck, pki_tls_kwargs
from m2msec.tls.profiles import Transport

app = typer.Typer(help="oneM2M TLS/DTLS 1.2 test server and client (TS-0003 10.2).", no_args_is_help=True)


def _out(name: str, value: object) -> None:
    print(f"{name}: {value}", flush=True)


def _psk_key(psk_hex: str | None, psk_text: str | None, psk_file: str | None = None) -> bytes | None:
    if sum(v is not None for v in (psk_hex, psk_text, psk_file)) > 1:
        raise typer.BadParameter("give one of --psk-hex, --psk-text and --psk-file")
    if psk_text is not None:
        return psk_text.encode("utf-8")
    try:
        return secret_from_options(psk_hex, psk_file, hex_option="--psk-hex", file_option="--psk-file")
    except SecretInputError as exc:
        raise typer.BadParameter(str(exc)) from None


def _load_certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _config(role: Role, *, dtls: bool, psk_identity: str | None, psk_hex: str | None, psk_text: str | None,
            psk_file: str | None = None, key: Path | None, cert: Path | None, ca: Path | None, peer_id: str | None, sni: str | None,
            mtu: int, peer_flavour: str | None = None, crl: list[Path] | None = None,
            revocation: str = "if-available", extra: dict[str, Any] | None = None,
            allow_no_ems: bool = False) -> TLSConfig:
    transport = Transport.DTLS if dtls else Transport.TLS
    psk = _psk_key(psk_hex, psk_text, psk_file)
    kwargs: dict[str, Any] = {"role": role, "transport": transport, "mtu": mtu, "require_ems": not allow_no_ems}
    if psk is not None:
        if not psk_identity:
            raise typer.BadParameter("--psk-identity is required with a PSK")
        ident = psk_identity.encode("utf-8")
        if role is Role.CLIENT:
            kwargs["psk"] = PSKCredentials(ident, psk)
        else:
            kwargs["psk_lookup"] = lambda i, _sni: psk if i == ident else None
    if key is not None or cert is not None or ca is not None:
        if key is None or cert is None or ca is None:
            raise typer.BadParameter("certificate mode needs --key, --cert and --ca")
        certs = _load_certs(cert)
        private_key = load_pem_private_key(key.read_bytes(), password=None)
        kwargs["credentials"] = CertCredentials(private_key, certs[0], tuple(certs[1:]))  # type: ignore[arg-type]
        kwargs["trust_anchors"] = _load_certs(ca)
        if peer_id or peer_flavour:
            if not (peer_id and peer_flavour):
                raise typer.BadParameter("--peer-id and --peer-flavour go together")
            try:
                flavour = CertificateFlavour(peer_flavour)
            except ValueError:
                raise typer.BadParameter(f"--peer-flavour must be one of {_FLAVOURS}") from None
            try:
                policy = RevocationPolicy(revocation)
                crls = CRLStore(load_crl_files(crl or []))
            except (ValueError, CRLError) as exc:
                raise typer.BadParameter(f"--crl/--revocation: {exc}") from None
            kwargs.update(pki_tls_kwargs(PeerCertInfo(flavour, peer_id), kwargs["trust_anchors"], _utc_now,
                                         crls=crls, revocation=policy))
        elif crl or revocation == "require":
            raise typer.BadParameter("--crl/--revocation need --peer-id and --peer-flavour")
    elif peer_id or peer_flavour:
        raise typer.BadParameter("--peer-id/--peer-flavour need certificate mode (--key, --cert, --ca)")
    if psk is None and "credentials" not in kwargs:
        raise typer.BadParameter("give a PSK (--psk-identity + --psk-hex/--psk-text) or --key/--cert/--ca")
    if role is Role.CLIENT:
        kwargs["server_name"] = sni
    if extra:
        if "credentials" not in kwargs:
            raise typer.BadParameter("OCSP stapling (--ocsp-staple, --status) needs certificate mode (--key, --cert, --ca)")
        kwargs.update(extra)
    return TLSConfig(**kwargs)


_FLAVOURS = ", ".join(f.value for f in CertificateFlavour if f is not CertificateFlavour.RAW_PUBLIC_KEY)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _error(exc: TLSHandshakeError) -> None:
    _out("error", exc.reason.value)
    _out("detail", exc.detail)
    code = getattr(exc.__cause__, "reason_code", None)
    if code is not None:
        _out("reason", getattr(code, "value", code))


def _report_status(result: OCSPResult | None) -> None:
    """What the client's --status check found in the server's staple."""
    if result is None:
        _out("ocsp_status", "none")
        return
    _out("ocsp_status", result.status.value)
    _out("ocsp_this_update", result.this_update.isoformat())
    _out("ocsp_next_update", result.next_update.isoformat() if result.next_update else "")
    if result.revocation_time is not None:
        _out("ocsp_revocation_time", result.revocation_time.isoformat())


def _staple_source(spec: str, cert: Path | None) -> tuple[Any, OCSPStapler | None]:
    """``--ocsp-staple FILE|URL``: (the ocsp_staple source, the stapler to run for a URL)."""
    if spec.lower().startswith(("http://", "https://")):
        if cert is None:
            raise typer.BadParameter("--ocsp-staple needs certificate mode (--key, --cert, --ca)")
        try:
            stapler = stapler_for_chain(spec, _load_certs(cert), clock=_utc_now)
        except ValueError as exc:
            raise typer.BadParameter(f"--ocsp-staple: {exc}") from None
        return stapler.staple, stapler
    try:
        der = Path(spec).read_bytes()
    except OSError as exc:
        raise typer.BadParameter(f"--ocsp-staple: cannot read {spec!r}: {type(exc).__name__}") from None
    if not der:
        raise typer.BadParameter(f"--ocsp-staple: {spec!r} is empty")
    return (lambda _cert: der), None


def _report(engine: TLSEngine, labels: list[str]) -> None:
    _out("protocol", engine.protocol_version)
    _out("cipher", engine.cipher_name)
    if engine.psk_identity is not None:
        _out("psk_identity", engine.psk_identity.decode("utf-8", "replace"))
    _out("sni", engine.sni or "")
    chain = engine.peer_certificate_chain()
    if chain:
        _out("peer_subject", chain[0].subject.rfc4514_string())
    verified = engine.peer_verification
    if verified is not None and hasattr(verified, "identifier"):
        _out("peer_id", verified.identifier)
        _out("peer_flavour", verified.flavour.value)
    for label in labels:
        key, key_id = engine.export_onem2m_key(label)
        _out("export_label", label)
        _out("key_id", key_id.hex())
        _out("key", key.hex())


_PSK_IDENTITY = typer.Option(None, "--psk-identity", help="PSK identity (e.g. KpsaID, KpmID, KmID)")
_PSK_HEX = typer.Option(None, "--psk-hex", help="PSK as hexadecimal octets (visible in ps: prefer --psk-file)")
_PSK_TEXT = typer.Option(None, "--psk-text", help="PSK as UTF-8 text (visible in ps: prefer --psk-file)")
_PSK_FILE = typer.Option(None, "--psk-file", help="file holding the PSK: hex text or raw octets (- = stdin)")
_KEY = typer.Option(None, "--key", help="own private key (PEM)")
_CERT = typer.Option(None, "--cert", help="own certificate, then its chain (PEM)")
_CA = typer.Option(None, "--ca", help="trust anchors (PEM)")
_PEER_ID = typer.Option(None, "--peer-id", help="expected peer identifier (TS-0003 8.1.2.4), with --peer-flavour")
_PEER_FLAVOUR = typer.Option(None, "--peer-flavour", help="peer certificate flavour: cse-id, ae-id, fqdn, node-id, device")
_CRL = typer.Option(None, "--crl", help="CRL file (PEM/DER) of the peer's PKI, TS-0003 8.1.2.2 (repeatable)")
_REVOCATION = typer.Option("if-available", "--revocation", help="certificate status policy: off, if-available, require")
_LABEL = typer.Option([], "--export-label", help="RFC 5705 label to export 48 bytes for (repeatable)")
_ALLOW_NO_EMS = typer.Option(False, "--allow-no-ems",
                             help="accept a peer without the RFC 7627 extended master secret (legacy interop only)")


@app.command()
def server(
    port: int = typer.Option(0, "--port", "-p", help="port (0: ephemeral, printed as 'listening')"),
    host: str = typer.Option("127.0.0.1", "--host"),
    dtls: bool = typer.Option(False, "--dtls", help="DTLS 1.2 over UDP"),
    psk_identity: Optional[str] = _PSK_IDENTITY,
    psk_hex: Optional[str] = _PSK_HEX,
    psk_text: Optional[str] = _PSK_TEXT,
    psk_file: Optional[str] = _PSK_FILE,
    key: Optional[Path] = _KEY,
    cert: Optional[Path] = _CERT,
    ca: Optional[Path] = _CA,
    peer_id: Optional[str] = _PEER_ID,
    peer_flavour: Optional[str] = _PEER_FLAVOUR,
    crl: Optional[list[Path]] = _CRL,
    revocation: str = _REVOCATION,
    export_label: list[str] = _LABEL,
    once: bool = typer.Option(False, "--once", help="exit after one session"),
    mtu: int = typer.Option(1200, "--mtu", help="DTLS datagram size limit"),
    timeout: float = typer.Option(30.0, "--timeout", help="seconds to wait for a session (with --once)"),
    ocsp_staple: Optional[str] = typer.Option(
        None, "--ocsp-staple", help="OCSP response to staple: a DER file, or an http(s) responder URL queried "
                                    "for --cert (kept fresh; SIGHUP queries again)"),
    allow_no_ems: bool = _ALLOW_NO_EMS,
) -> None:
    """Accept sessions, print their parameters and exported keys, echo application data."""
    extra: dict[str, Any] = {}
    stapler = None
    if ocsp_staple is not None:
        extra["ocsp_staple"], stapler = _staple_source(ocsp_staple, cert)
    cfg = _config(Role.SERVER, dtls=dtls, psk_identity=psk_identity, psk_hex=psk_hex, psk_text=psk_text,
                  psk_file=psk_file, key=key, cert=cert, ca=ca, peer_id=peer_id, sni=None, mtu=mtu,
                  peer_flavour=peer_flavour, crl=crl, revocation=revocation, extra=extra,
                  allow_no_ems=allow_no_ems)
    code = asyncio.run(_serve(cfg, host, port, export_label, once, timeout, stapler))
    raise typer.Exit(code)


async def _serve(cfg: TLSConfig, host: str, port: int, labels: list[str], once: bool, timeout: float,
                 stapler: OCSPStapler | None = None) -> int:
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    if stapler is not None:  # queried before listening; a failure is reported, not fatal
        fetched = await stapler.refresh()
        _out("ocsp_staple", fetched.result.status.value if fetched.result is not None else "none")
        if fetched.error:
            _out("ocsp_staple_error", fetched.error)
        stapler.start()
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, stapler.trigger)

    def failed(exc: TLSHandshakeError, peer: Any) -> None:
        _error(exc)
        if once and not done.done():
            done.set_result(1)

    async def tls_handler(reader: asyncio.StreamReader, writer: TLSStreamWriter) -> None:
        _report(writer.engine, labels)
        while data := await reader.read(65536):
            _out("received", data.decode("utf-8", "replace").rstrip("\n"))
            writer.write(data)
        _out("closed", "yes")
        if once and not done.done():
            done.set_result(0)

    async def dtls_handler(session: DTLSSession) -> None:
        _report(session.engine, labels)
        while data := await session.recv():
            _out("received", data.decode("utf-8", "replace").rstrip("\n"))
            session.send(data)
        _out("closed", "yes")
        if once and not done.done():
            done.set_result(0)

    if cfg.transport is Transport.DTLS:
        dserver = await start_dtls_server(dtls_handler, host, port, cfg, on_handshake_error=failed)
        _out("listening", f"{dserver.sockname[0]}:{dserver.sockname[1]}")
        closer: Any = dserver.close
    else:
        server = await start_server(tls_handler, host, port, cfg, on_handshake_error=failed)
        sock = server.sockets[0].getsockname()
        _out("listening", f"{sock[0]}:{sock[1]}")
        closer = server.close
    try:
        if once:
            return await asyncio.wait_for(done, timeout)
        await asyncio.Event().wait()
        return 0
    except asyncio.TimeoutError:
        _out("error", "TIMEOUT")
        return 1
    finally:
        closer()
        if stapler is not None:
            await stapler.stop()


@app.command()
def client(
    port: int = typer.Option(..., "--port", "-p"),
    host: str = typer.Option("127.0.0.1", "--host"),
    dtls: bool = typer.Option(False, "--dtls", help="DTLS 1.2 over UDP"),
    psk_identity: Optional[str] = _PSK_IDENTITY,
    psk_hex: Optional[str] = _PSK_HEX,
    psk_text: Optional[str] = _PSK_TEXT,
    psk_file: Optional[str] = _PSK_FILE,
    key: Optional[Path] = _KEY,
    cert: Optional[Path] = _CERT,
    ca: Optional[Path] = _CA,
    peer_id: Optional[str] = _PEER_ID,
    peer_flavour: Optional[str] = _PEER_FLAVOUR,
    crl: Optional[list[Path]] = _CRL,
    revocation: str = _REVOCATION,
    sni: Optional[str] = typer.Option(None, "--sni", help="server name to send (SNI)"),
    export_label: list[str] = _LABEL,
    send: Optional[str] = typer.Option(None, "--send", help="text to send after the handshake"),
    wait: float = typer.Option(1.0, "--wait", help="seconds to wait for a reply to --send"),
    mtu: int = typer.Option(1200, "--mtu", help="DTLS datagram size limit"),
    timeout: float = typer.Option(10.0, "--timeout", help="handshake timeout in seconds"),
    status: bool = typer.Option(False, "--status", help="ask for the server's stapled OCSP response and verify it"),
    require_status: bool = typer.Option(False, "--require-status",
                                        help="with --status: fail without a staple or with UNKNOWN (implies --status)"),
    allow_no_ems: bool = _ALLOW_NO_EMS,
) -> None:
    """Connect once, print the session parameters and exported keys."""
    extra: dict[str, Any] = {}
    if status or require_status:
        extra["check_ocsp_staple"] = OCSPStapleCheck(_utc_now, require=require_status)
    cfg = _config(Role.CLIENT, dtls=dtls, psk_identity=psk_identity, psk_hex=psk_hex, psk_text=psk_text,
                  psk_file=psk_file, key=key, cert=cert, ca=ca, peer_id=peer_id, sni=sni, mtu=mtu,
                  peer_flavour=peer_flavour, crl=crl, revocation=revocation, extra=extra,
                  allow_no_ems=allow_no_ems)
    raise typer.Exit(asyncio.run(_connect(cfg, host, port, export_label, send, wait, timeout)))


async def _connect(cfg: TLSConfig, host: str, port: int, labels: list[str], send: str | None, wait: float,
                   timeout: float) -> int:
    try:
        if cfg.transport is Transport.DTLS:
            session = await open_dtls_connection(host, port, cfg, timeout=timeout)
            _report(session.engine, labels)
            if cfg.check_ocsp_staple is not None:
                _report_status(session.engine.ocsp_staple_result)
            if send is not None:
                session.send(send.encode("utf-8"))
                try:
                    _out("received", (await session.recv(wait)).decode("utf-8", "replace").rstrip("\n"))
                except asyncio.TimeoutError:
                    pass
            session.close()
            return 0
        reader, writer = await open_connection(host, port, cfg, timeout=timeout)
    except TLSHandshakeError as exc:
        _error(exc)
        return 1
    except (OSError, asyncio.TimeoutError) as exc:
        _out("error", "CONNECT_FAILED")
        _out("detail", type(exc).__name__)
        return 1
    _report(writer.engine, labels)
    if cfg.check_ocsp_staple is not None:
        _report_status(writer.engine.ocsp_staple_result)
    if send is not None:
        writer.write(send.encode("utf-8"))
        try:
            data = await asyncio.wait_for(reader.read(65536), wait)
            _out("received", data.decode("utf-8", "replace").rstrip("\n"))
        except asyncio.TimeoutError:
            pass
    writer.close()
    return 0


def main() -> None:  # pragma: no cover - convenience entry point
    app(sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    main()
