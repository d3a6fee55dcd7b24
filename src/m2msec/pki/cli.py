"""``m2msec pki``: development CA, certificate issuance, revocation/CRLs and inspection (TS-0003 8.1.2, 10.1).

This module is an adapter (files, wall clock); the logic lives in
:mod:`m2msec.pki.ca`, :mod:`m2msec.pki.crl`, :mod:`m2msec.pki.profile` and
:mod:`m2msec.pki.identifiers`.
"""

from __future__ import annotations

import sys
from enum import Enum
from datetime import datetime, timedelta, timezone
from pathlib import Path
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any, Optional

import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from m2msec.errors import M2MSecError
from m2msec.pki.ca import DevCA, private_key_pem, write_private_file
from m2msec.pki.crl import CRLStore, load_crl_files
from m2msec.pki.errors import CRLError
from m2msec.pki.identifiers import CertificateFlavour, describe_general_name, identifiers_of, subject_alt_names
from m2msec.pki.keypolicy import KeyType
from m2msec.pki.pkid import public_key_identifier

def reload_crls_and_report(
    store: CRLStore, files: Sequence[Path | str],
    keep: Callable[[], Iterable[x509.CertificateRevocationList]] | None = None,
) -> None:
    """SIGHUP handler body of the long-running services (``m2msec mef serve``, ``m2msec maf
    serve``): re-read ``files`` into ``store`` (all files or nothing).  Success prints
    ``crls reloaded N``; an error goes to stderr and the previous CRLs stay in force.
    ``keep`` returns CRLs from other sources that the reload must not drop, e.g.
    :meth:`m2msec.pki.CRLRefresher.crls` (fetched CRLs): the store becomes files + kept
    (the later issue per issuer and key wins) in one atomic replace."""
    try:
        crls = load_crl_files(files)
    except CRLError as exc:
        typer.echo(f"error: crls not reloaded: {exc}", err=True)
        return
    store.replace([*crls, *(keep() if keep is not None else ())])
    typer.echo(f"crls reloaded {len(store)}")


app = typer.Typer(
    help="Certificates: a development CA, issuing oneM2M certificate flavours, inspecting certificates.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

PassphraseOpt = Annotated[
    str,
    typer.Option(
        "--passphrase",
        envvar="M2MSEC_CA_PASSPHRASE",
        prompt="CA key passphrase",
        hide_input=True,
        help="Passphrase protecting the CA private keys (env M2MSEC_CA_PASSPHRASE).",
    ),
]

_ISSUABLE = [f for f in CertificateFlavour if f is not CertificateFlavour.RAW_PUBLIC_KEY]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


def _now() -> datetime:
    return datetime.now(timezone.utc)


@app.command("init-ca")
def init_ca(
    directory: Annotated[Path, typer.Argument(help="Directory to hold the CA.")],
    name: Annotated[str, typer.Option("--name", help="CA name (organisation).")],
    passphrase: PassphraseOpt,
    permit_dns: Annotated[Optional[list[str]], typer.Option("--permit-dns", help="Permitted dNSName subtree.")] = None,
    permit_uri: Annotated[
        Optional[list[str]], typer.Option("--permit-uri", help="Permitted URI subtree (host, or urn: prefix).")
    ] = None,
    permit_device: Annotated[
        Optional[list[str]], typer.Option("--permit-device", help="Permitted device-ID subtree <indication>/<arcs>.")
    ] = None,
    intermediate: Annotated[bool, typer.Option("--intermediate/--no-intermediate")] = False,
    key_type: Annotated[KeyType, typer.Option("--key-type")] = KeyType.EC_P256,
    days: Annotated[int, typer.Option("--days", min=1)] = 3650,
    crl_url: Annotated[
        Optional[str], typer.Option("--crl-url", help="URL put in leaves' cRLDistributionPoints (issuing CA's CRL).")
    ] = None,
    root_crl_url: Annotated[
        Optional[str], typer.Option("--root-crl-url",
                                    help="URL put in the intermediate's cRLDistributionPoints (the root's CRL).")
    ] = None,
    ocsp_url: Annotated[
        Optional[str], typer.Option("--ocsp-url", help="OCSP responder URL put in leaves' authorityInfoAccess "
                                                       "(see serve-ocsp).")
    ] = None,
) -> None:
    """Create a root CA (and optionally an intermediate) with name constraints."""
    if (directory / "ca.json").exists():
        _fail(f"{directory} already holds a CA")
    try:
        ca = DevCA.create(
            name, now=_now(), permit_dns=permit_dns or [], permit_uri=permit_uri or [],
            permit_device=permit_device or [], intermediate=intermediate, key_type=key_type,
            validity=timedelta(days=days), crl_url=crl_url, root_crl_url=root_crl_url, ocsp_url=ocsp_url,
        )
        ca.save(directory, passphrase.encode())
    except (M2MSecError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"root: {directory / 'root.crt.pem'}")
    if intermediate:
        typer.echo(f"intermediate: {directory / 'intermediate.crt.pem'}")


@app.command("issue")
def issue(
    directory: Annotated[Path, typer.Argument(help="CA directory made by init-ca.")],
    flavour: Annotated[CertificateFlavour, typer.Option("--flavour", help="cse-id|ae-id|device|node-id|fqdn")],
    identifiers: Annotated[list[str], typer.Option("--id", help="Identifier (repeat for several).")],
    out: Annotated[Path, typer.Option("--out", help="Output prefix: PREFIX.crt.pem, PREFIX.chain.pem, PREFIX.key.pem")],
    passphrase: PassphraseOpt,
    csr: Annotated[Optional[Path], typer.Option("--csr", help="PEM or DER CSR; no key is generated.")] = None,
    key_type: Annotated[KeyType, typer.Option("--key-type")] = KeyType.EC_P256,
    days: Annotated[int, typer.Option("--days", min=1)] = 365,
) -> None:
    """Issue a certificate of one oneM2M flavour (from a CSR, or with a fresh key pair)."""
    if flavour not in _ISSUABLE:
        _fail("raw public keys are not issued as certificates")
    try:
        ca = DevCA.load(directory, passphrase.encode())
        if csr is not None:
            data = csr.read_bytes()
            try:
                req = (x509.load_pem_x509_csr(data) if b"-----BEGIN" in data else x509.load_der_x509_csr(data))
            except ValueError:
                _fail(f"{csr} is not a certificate signing request")
            issued = ca.issue_from_csr(req, flavour, identifiers, now=_now(), validity=timedelta(days=days))
        else:
            issued = ca.issue(flavour, identifiers, now=_now(), key_type=key_type, validity=timedelta(days=days))
    except (M2MSecError, ValueError, OSError) as exc:
        _fail(str(exc))
    pem = serialization.Encoding.PEM
    out.parent.mkdir(parents=True, exist_ok=True)
    crt = Path(f"{out}.crt.pem")
    chain = Path(f"{out}.chain.pem")
    crt.write_bytes(issued.certificate.public_bytes(pem))
    chain.write_bytes(b"".join(c.public_bytes(pem) for c in [issued.certificate, *issued.chain]))
    typer.echo(f"certificate: {crt}")
    typer.echo(f"chain: {chain}")
    if issued.private_key is not None:
        key = Path(f"{out}.key.pem")
        write_private_file(key, private_key_pem(issued.private_key))
        typer.echo(f"key: {key}")


_REASONS = {r.value: r for r in x509.ReasonFlags if r is not x509.ReasonFlags.remove_from_crl}


class Signer(str, Enum):
    root = "root"
    intermediate = "intermediate"


@app.command("revoke")
def revoke(
    directory: Annotated[Path, typer.Argument(help="CA directory made by init-ca.")],
    passphrase: PassphraseOpt,
    cert: Annotated[Optional[Path], typer.Option("--cert", help="PEM or DER certificate to revoke.")] = None,
    serial: Annotated[Optional[str], typer.Option("--serial", help="Serial number (hex) to revoke.")] = None,
    reason: Annotated[
        Optional[str], typer.Option("--reason", help="RFC 5280 reason: " + ", ".join(_REASONS))
    ] = None,
    ca_name: Annotated[
        Optional[Signer], typer.Option("--ca", help="Signing CA of --serial (default: the issuing CA).")
    ] = None,
) -> None:
    """Revoke a certificate issued by this CA (takes effect in the next ``crl``)."""
    if (cert is None) == (serial is None):
        _fail("give exactly one of --cert and --serial")
    if reason is not None and reason not in _REASONS:
        _fail(f"unknown reason {reason!r}; one of {', '.join(_REASONS)}")
    try:
        ca = DevCA.load(directory, passphrase.encode())
        target: x509.Certificate | int
        if cert is not None:
            data = cert.read_bytes()
            target = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
        else:
            assert serial is not None
            target = int(serial.replace(":", ""), 16)
        entry = ca.revoke(target, now=_now(), reason=_REASONS[reason] if reason else None,
                          signer=ca_name.value if ca_name else None)  # type: ignore[arg-type]
        ca.save_revocations(directory)
    except (M2MSecError, ValueError, OSError) as exc:
        _fail(str(exc) if isinstance(exc, M2MSecError) else f"{type(exc).__name__}: {exc}")
    typer.echo(f"revoked: {entry.serial_number:x} at {entry.revocation_date.isoformat()}")


@app.command("crl")
def crl(
    directory: Annotated[Path, typer.Argument(help="CA directory made by init-ca.")],
    out: Annotated[Path, typer.Option("--out", help="File to write the CRL to.")],
    passphrase: PassphraseOpt,
    ca_name: Annotated[Optional[Signer], typer.Option("--ca", help="Which CA's CRL (default: the issuing CA).")] = None,
    days: Annotated[Optional[int], typer.Option(
        "--days", min=1, help="nextUpdate = now + days (default 7; 1 with --delta-of).")] = None,
    der: Annotated[bool, typer.Option("--der/--pem", help="Output encoding.")] = False,
    freshest_url: Annotated[Optional[str], typer.Option(
        "--freshest-url", help="Name where the delta CRLs of this complete CRL are published (freshestCRL).")] = None,
    delta_of: Annotated[Optional[int], typer.Option(
        "--delta-of", min=1, help="Issue a delta CRL for the complete CRL with this cRLNumber instead.")] = None,
) -> None:
    """Issue a complete CRL (next cRLNumber) and write it as PEM or DER.

    ``--delta-of N``: a delta CRL (RFC 5280 5.2.4) for complete CRL N instead, listing every
    certificate revoked now; ``--freshest-url URL``: the complete CRL names URL as where its
    deltas are (RFC 5280 5.2.6).  Both share the CA's cRLNumber sequence."""
    try:
        if delta_of is not None and freshest_url is not None:
            raise ValueError("--freshest-url names the deltas of a complete CRL; it cannot go with --delta-of")
        ca = DevCA.load(directory, passphrase.encode())
        signer = ca_name.value if ca_name else None
        if delta_of is not None:
            c = ca.issue_delta_crl(base_number=delta_of, now=_now(), signer=signer,  # type: ignore[arg-type]
                                   validity=timedelta(days=days or 1))
        else:
            c = ca.issue_crl(now=_now(), signer=signer, validity=timedelta(days=days or 7),  # type: ignore[arg-type]
                             freshest_url=freshest_url)
        ca.save_revocations(directory)  # the number is consumed before the CRL is published
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(c.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM))
    except (M2MSecError, ValueError, OSError) as exc:
        _fail(str(exc) if isinstance(exc, M2MSecError) else f"{type(exc).__name__}: {exc}")
    typer.echo(f"crl: {out}")
    typer.echo(f"crl_number: {c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number}")
    if delta_of is not None:
        typer.echo(f"delta_of: {delta_of}")
    typer.echo(f"revoked: {len(c)}")
    typer.echo(f"next_update: {c.next_update_utc.isoformat() if c.next_update_utc else '-'}")


class DevCRLSource:
    """The current CRL of one signer of a :class:`DevCA` directory, for ``serve-crl``.

    Re-read ``revocations.json`` (written by ``m2msec pki revoke``) before every decision; a
    new CRL is issued (and its number persisted) when the revoked set changed or half of
    ``validity`` has passed since the last one, else the last one is served.  Thread-safe."""

    def __init__(self, ca: DevCA, directory: Path, signer: str, validity: timedelta,
                 clock: Callable[[], datetime] = _now, lock: Any = None) -> None:
        import threading

        self.ca, self.directory, self.signer, self.validity, self.clock = ca, directory, signer, validity, clock
        self._lock = lock or threading.Lock()
        self._crl: x509.CertificateRevocationList | None = None
        self._serials: frozenset[int] | None = None

    def __call__(self) -> x509.CertificateRevocationList:
        with self._lock:
            self.ca._load_revocations(self.directory)  # noqa: SLF001 - pick up `pki revoke` from other processes
            serials = frozenset(self.ca.revoked[self.signer])  # type: ignore[index]
            now = self.clock()
            crl = self._crl
            if (crl is None or serials != self._serials or crl.last_update_utc > now
                    or now >= crl.last_update_utc + self.validity / 2):
                if crl is not None:  # a concurrent `pki revoke` may have written back an older number
                    served = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
                    nxt = self.ca.next_crl_number
                    nxt[self.signer] = max(nxt[self.signer], served + 1)  # type: ignore[index]
                crl = self.ca.issue_crl(now=now, signer=self.signer, validity=self.validity)  # type: ignore[arg-type]
                self.ca.save_revocations(self.directory)  # the number is consumed before the CRL is served
                self._crl, self._serials = crl, serials
            return crl


@app.command("serve-crl")
def serve_crl(
    directory: Annotated[Path, typer.Argument(help="CA directory made by init-ca.")],
    passphrase: PassphraseOpt,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8080,
    days: Annotated[int, typer.Option("--days", min=1, help="nextUpdate = thisUpdate + days.")] = 1,
) -> None:
    """Serve the CA's CRLs over http at /crl/root.crl (and /crl/intermediate.crl) until SIGTERM/SIGINT.

    A revocation by ``m2msec pki revoke`` is on the next CRL served; with ``init-ca --crl-url
    http://HOST:PORT/crl/<issuing CA>.crl`` the leaves point at it.  Do not run ``pki crl`` on the
    same directory meanwhile (both consume cRLNumbers)."""
    import threading

    from m2msec.pki.crl_http import CRLHTTPServer

    try:
        ca = DevCA.load(directory, passphrase.encode())
    except (M2MSecError, ValueError, OSError) as exc:
        _fail(str(exc) if isinstance(exc, M2MSecError) else f"{type(exc).__name__}: {exc}")
    lock = threading.Lock()  # one DevCA object: its revocation lists and numbers are shared by the signers
    signers = ["root"] + (["intermediate"] if ca.intermediate_cert is not None else [])
    sources = {w: DevCRLSource(ca, directory, w, timedelta(days=days), lock=lock) for w in signers}

    server = CRLHTTPServer(sources, host=host, port=port)
    _serve_until_signal(server, "crl", lambda: [server.url(w) for w in signers])


def _serve_until_signal(server: Any, what: str, urls: Callable[[], list[str]]) -> None:
    """Start ``server`` (a :class:`m2msec.net.plainhttp.PlainHTTPServer`), print ``<what> listening
    HOST:PORT`` and its URLs, serve until SIGTERM/SIGINT."""
    import asyncio
    import signal

    async def main() -> None:
        await server.start()
        typer.echo(f"{what} listening {server.host}:{server.port}")
        for url in urls():
            typer.echo(f"  {url}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.close()

    try:
        asyncio.run(main())
    except OSError as exc:
        _fail(f"cannot listen on {server.host}:{server.port}: {exc.strerror or exc}")


class DevOCSPResponder:
    """``respond(der) -> der`` for ``serve-ocsp``: an :class:`m2msec.pki.ocsp.OCSPResponder` over a
    :class:`DevCA` directory that re-reads ``revocations.json`` (written by ``m2msec pki revoke``)
    before every answer.  Thread-safe."""

    def __init__(self, ca: DevCA, directory: Path, validity: timedelta, clock: Callable[[], datetime] = _now,
                 lock: Any = None) -> None:
        import threading

        from m2msec.pki.ocsp import OCSPResponder

        self.ca, self.directory = ca, directory
        self._lock = lock or threading.Lock()
        self.responder = OCSPResponder(ca, clock=clock, validity=validity)

    def __call__(self, request_der: bytes) -> bytes:
        with self._lock:
            self.ca._load_revocations(self.directory)  # noqa: SLF001 - pick up `pki revoke` from other processes
            return self.responder.respond(request_der)


@app.command("serve-ocsp")
def serve_ocsp(
    directory: Annotated[Path, typer.Argument(help="CA directory made by init-ca.")],
    passphrase: PassphraseOpt,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8081,
    minutes: Annotated[int, typer.Option("--minutes", min=1, help="nextUpdate = thisUpdate + minutes.")] = 60,
    path: Annotated[str, typer.Option("--path", help="Base path of the responder.")] = "/",
) -> None:
    """Serve OCSP (RFC 6960 Appendix A: POST and GET) for the CA's root and intermediate until SIGTERM/SIGINT.

    Answers good unless revoked by ``m2msec pki revoke`` (re-read per request), revoked with time
    and reason, unauthorized for other CAs; responses are signed by the CA that issued the
    certificate and echo the request's nonce.  With ``init-ca --ocsp-url http://HOST:PORT/`` the
    leaves name the responder."""

    from m2msec.pki.ocsp_http import OCSPHTTPServer

    try:
        ca = DevCA.load(directory, passphrase.encode())
    except (M2MSecError, ValueError, OSError) as exc:
        _fail(str(exc) if isinstance(exc, M2MSecError) else f"{type(exc).__name__}: {exc}")
    if not path.startswith("/"):
        _fail("--path must start with '/'")
    respond = DevOCSPResponder(ca, directory, timedelta(minutes=minutes))

    server = OCSPHTTPServer(respond, host=host, port=port, base_path=path)
    _serve_until_signal(server, "ocsp", lambda: [server.url])


def show_lines(cert: x509.Certificate) -> list[str]:
    """``name: value`` lines describing ``cert`` (used by ``show``)."""
    lines = [
        f"subject: {cert.subject.rfc4514_string()}",
        f"issuer: {cert.issuer.rfc4514_string()}",
        f"serial: {cert.serial_number:x}",
        f"not_before: {cert.not_valid_before_utc.isoformat()}",
        f"not_after: {cert.not_valid_after_utc.isoformat()}",
    ]
    for n in subject_alt_names(cert):
        lines.append(f"san: {describe_general_name(n)}")
    for fl in _ISSUABLE:
        for ident in identifiers_of(cert, fl):
            lines.append(f"{fl.value}: {ident}")
    lines.append(f"public_key_identifier: {public_key_identifier(cert.public_key())}")
    lines.append(f"sha256_fingerprint: {cert.fingerprint(hashes.SHA256()).hex(':').upper()}")
    return lines


@app.command("show")
def show(cert: Annotated[Path, typer.Argument(help="PEM or DER certificate (first one of a PEM chain).")]) -> None:
    """Print a certificate as plain ``name: value`` lines."""
    try:
        data = cert.read_bytes()
        c = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
        lines = show_lines(c)
    except (OSError, ValueError) as exc:
        _fail(f"cannot read certificate {cert}: {type(exc).__name__}")
    sys.stdout.write("\n".join(lines) + "\n")
