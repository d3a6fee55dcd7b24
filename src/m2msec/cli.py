"""The ``m2msec`` command line.

Sub-commands are grouped per framework; each framework package contributes its own
typer sub-app (``m2msec.<framework>.cli.app``) which is mounted here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from m2msec import __version__, keys
from m2msec.errors import M2MSecError

app = typer.Typer(
    name="m2msec",
    help="End-to-end security for oneM2M (TS-0003): key derivations, secure stores, "
    "TLS/DTLS profiles, certificates and the security frameworks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

keys_app = typer.Typer(
    help="TS-0003 clause 10.3 key derivations and identifiers (hex in, hex out).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"m2msec {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    """End-to-end security for oneM2M."""


def _hex(value: str, what: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise typer.BadParameter(f"{what} must be hexadecimal") from None


def _fail(exc: M2MSecError) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


@keys_app.command("split")
def keys_split(
    material: Annotated[str, typer.Argument(help="48 exported octets, hex (e.g. openssl -keymatexport output)")],
) -> None:
    """Split exported keying material into key_id (16 MSB) and key (32 LSB) per 10.3.1."""
    try:
        key, key_id = keys.split_exported(_hex(material, "material"))
    except M2MSecError as exc:
        _fail(exc)
    typer.echo(f"key_id: {key_id.hex()}")
    typer.echo(f"key: {key.hex()}")


@keys_app.command("km")
def keys_km(ke: Annotated[str, typer.Argument(help="Ke, 32 octets hex")], maf_id: str) -> None:
    """Km = HMAC-SHA-256(Ke, label || MAF-ID) (10.3.2)."""
    try:
        typer.echo(f"km: {keys.derive_km(_hex(ke, 'Ke'), maf_id).hex()}")
    except M2MSecError as exc:
        _fail(exc)


@keys_app.command("kpsa")
def keys_kpsa(ke: Annotated[str, typer.Argument(help="Ke, 32 octets hex")], enrolee_b_id: str) -> None:
    """Kpsa = HMAC-SHA-256(Ke, label || Enrolee-B-ID) (10.3.3)."""
    try:
        typer.echo(f"kpsa: {keys.derive_kpsa(_hex(ke, 'Ke'), enrolee_b_id).hex()}")
    except M2MSecError as exc:
        _fail(exc)


@keys_app.command("usage")
def keys_usage(
    ke: Annotated[str, typer.Argument(help="Ke, 32 octets hex")], suid: int, target_id: str
) -> None:
    """Usage-constrained key = HMAC-SHA-256(Ke, label || SUID || Enrolment-Target-ID) (10.3.7)."""
    try:
        typer.echo(f"key: {keys.derive_usage_key(_hex(ke, 'Ke'), suid, target_id).hex()}")
    except M2MSecError as exc:
        _fail(exc)


@keys_app.command("keid")
def keys_keid(
    relative: Annotated[str, typer.Argument(help="RelativeKeID / KcID, 16 octets hex")], fqdn: str
) -> None:
    """hexBinary(relative)@FQDN (10.3.4 KeID, 10.3.5 MAF key identifier)."""
    try:
        typer.echo(f"key_id: {keys.ke_id(_hex(relative, 'relative id'), fqdn)}")
    except M2MSecError as exc:
        _fail(exc)


@keys_app.command("parse-id")
def keys_parse_id(identifier: str) -> None:
    """Split and validate a relative@fqdn key identifier."""
    try:
        kid = keys.parse_key_id(identifier)
    except M2MSecError as exc:
        _fail(exc)
    typer.echo(f"relative: {kid.relative}")
    typer.echo(f"fqdn: {kid.fqdn}")


@app.command()
def demo(
    workdir: Annotated[
        Optional[Path], typer.Option(help="Keep the demo's files (store, KEK) in this directory.")
    ] = None,
) -> None:
    """Run the end-to-end demonstration on embedded defaults (loopback only)."""
    from m2msec.demo import run_demo

    sys.exit(run_demo(workdir))


def _mount_frameworks() -> None:
    """Mount each framework's own sub-app (``m2msec <framework> ...``)."""
    from m2msec.esdata.cli import app as esdata_app
    from m2msec.gateway.cli import app as gateway_app
    from m2msec.maf.cli import app as maf_app
    from m2msec.mef.cli import app as mef_app
    from m2msec.pki.cli import app as pki_app
    from m2msec.store.cli import app as store_app
    from m2msec.tls.cli import app as tls_app

    app.add_typer(store_app, name="store")
    app.add_typer(pki_app, name="pki")
    app.add_typer(tls_app, name="tls")
    app.add_typer(esdata_app, name="esdata")
    app.add_typer(gateway_app, name="gateway")
    app.add_typer(maf_app, name="maf")
    app.add_typer(mef_app, name="mef")


_mount_frameworks()


if __name__ == "__main__":  # pragma: no cover
    app()
