"""``m2msec store …``: key-encryption key files, schema creation, audit trail, KEK rotation.

Operator side of the durable store that backs the MEF/MAF/ESPrim services
(TS-0003 clauses 8.3, 8.4, 8.8; see :mod:`m2msec.store`).  No command prints key bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from m2msec.errors import M2MSecError
from m2msec.store.kek import KeyEncryptionKey
from m2msec.store.store import open_store

app = typer.Typer(
    help="Durable store (SQLite/PostgreSQL): KEK files, schema, audit trail, KEK rotation.",
    no_args_is_help=True,
)

UrlOpt = Annotated[
    str,
    typer.Option("--url", envvar="M2MSEC_STORE_URL", help="sqlite:///path.db or postgresql://…"),
]

def _fail(exc: M2MSecError) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)

@app.command("kek-generate")
def kek_generate(
    path: Annotated[Path, typer.Argument(help="New KEK file (hex, mode 0600); must not exist.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Generate a random 256-bit key-encryption key into PATH (mode 0600)."""
    try:
        kek = KeyEncryptionKey.generate()
        kek.write_file(path, overwrite=force)
    except M2MSecError as exc:
        _fail(exc)
    typer.echo(f"wrote {path} (kek_id {kek.kek_id_hex})")

@app.command("init")
def init(url: UrlOpt) -> None:
    """Create the store schema (idempotent)."""
    try:
        with open_store(url) as store:
            version = store.schema_version()
    except M2MSecError as exc:
        _fail(exc)
    typer.echo(f"store schema version {version} ready ({url.split(':', 1)[0]})")

@app.command("audit")
def audit(
    url: UrlOpt,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Newest N entries.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Show the newest audit records."""
    try:
        with open_store(url, create_schema=False) as store:
            entries = store.list_audit(limit=limit)
    except M2MSecError as exc:
        _fail(exc)
    if as_json:
        for e in entries:
            typer.echo(json.dumps({
                "seq": e.seq, "ts": e.ts.isoformat(), "actor": e.actor, "action": e.action,
                "subject": e.subject, "outcome": e.outcome, "details": e.details,
            }, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"audit (newest {len(entries)})")
    for col in ("seq", "time (UTC)", "actor", "action", "subject", "outcome", "details"):
        table.add_column(col, overflow="fold")
    for e in entries:
        table.add_row(
            str(e.seq), e.ts.strftime("%Y-%m-%d %H:%M:%S"), e.actor, e.action, e.subject, e.outcome,
            json.dumps(e.details, sort_keys=True) if e.details else "",
        )
    Console(width=160).print(table)

@app.command("rekey")
def rekey(
    url: UrlOpt,
    old_kek_file: Annotated[Path, typer.Option("--old-kek-file", help="KEK the credentials are sealed under.")],
    new_kek_file: Annotated[Path, typer.Option("--new-kek-file", help="KEK to re-encrypt them under.")],
) -> None:
    """Re-encrypt every stored credential from the old KEK to the new one (one transaction)."""
    try:
        old = KeyEncryptionKey.from_file(old_kek_file)
        new = KeyEncryptionKey.from_file(new_kek_file)
        with open_store(url, old, create_schema=False) as store:
            n = store.rekey(old, new)
    except M2MSecError as exc:
        _fail(exc)
    typer.echo(f"re-encrypted {n} credential(s): kek_id {old.kek_id_hex} -> {new.kek_id_hex}")


__all__ = ["app"]

