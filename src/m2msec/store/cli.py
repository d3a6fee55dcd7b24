"""``m2msec store …``: key-encryption key files, schema creation, audit trail (seal/verify), KEK rotation.

Operator side of the durable store that backs the MEF/MAF/ESPrim services
(TS-0003 clauses 8.3, 8.4, 8.8; see :mod:`m2msec.store`).  No command prints key bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from m2msec.errors import M2MSecError
from m2msec.store.audit_seal import AuditCheckpoint, AuditSealKekMismatch, AuditTampered
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

audit_app = typer.Typer(
    help="Audit trail: show the newest records (no subcommand), seal them, verify the seal.",
    invoke_without_command=True,
)
app.add_typer(audit_app, name="audit")

KekFileOpt = Annotated[
    Path | None,
    typer.Option("--kek-file", help="KEK file (else $M2MSEC_KEK_FILE, else $M2MSEC_KEK)."),
]


def _kek(kek_file: Path | None) -> KeyEncryptionKey:
    return KeyEncryptionKey.from_file(kek_file) if kek_file is not None else KeyEncryptionKey.from_env()


@audit_app.callback(invoke_without_command=True)
def audit(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option("--url", envvar="M2MSEC_STORE_URL", help="sqlite:///path.db or postgresql://…"),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Newest N entries.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Show the newest audit records; `seal` / `verify` make tampering with them evident."""
    if ctx.invoked_subcommand is not None:
        return
    if url is None:
        typer.echo("error: missing --url (or $M2MSEC_STORE_URL)", err=True)
        raise typer.Exit(code=2)
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


def _cp_json(cp: AuditCheckpoint | None) -> dict[str, object] | None:
    if cp is None:
        return None
    return {"seal_no": cp.seal_no, "last_seq": cp.last_seq, "row_count": cp.row_count,
            "sealed_at": cp.sealed_at.isoformat(), "kek_id": cp.kek_id, "anchor": cp.anchor}


@audit_app.command("seal")
def audit_seal(
    url: UrlOpt,
    kek_file: KekFileOpt = None,
    max_rows: Annotated[int | None, typer.Option("--max-rows", min=1, help="Seal at most N rows.")] = None,
    batch_rows: Annotated[int, typer.Option("--batch-rows", min=1, help="Rows per checkpoint/transaction.")] = 10000,
    writer_timeout: Annotated[float, typer.Option(
        "--writer-timeout", min=0.0, help="PostgreSQL: seconds to wait for open audit writers.")] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Seal the audit rows committed since the last seal (HMAC chain + checkpoint under the KEK).

    Exit 0 sealed (or nothing new), 1 refused because the existing seal does not verify, 2 on
    usage, store or KEK errors.  Keep the printed anchor off this host: `verify --anchor` then
    also detects a rollback of the whole trail to an earlier state.
    """
    try:
        kek = _kek(kek_file)
        with open_store(url, kek, create_schema=False) as store:
            res = store.seal_audit(max_rows=max_rows, batch_rows=batch_rows, writer_timeout=writer_timeout)
    except AuditTampered as exc:
        typer.echo(f"tampered: {exc}", err=True)
        raise typer.Exit(code=1) from None
    except M2MSecError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps({"sealed_rows": res.sealed_rows, "checkpoints": res.checkpoints,
                               "retries": res.retries, "head": _cp_json(res.head)}, sort_keys=True))
        return
    from rich.console import Console

    con = Console(width=160, highlight=False)
    con.print(f"sealed [bold]{res.sealed_rows}[/bold] row(s) in {res.checkpoints} new checkpoint(s)")
    if res.head is not None:
        h = res.head
        con.print(f"newest checkpoint {h.seal_no}: rows up to seq {h.last_seq} ({h.row_count} sealed), "
                  f"sealed at {h.sealed_at.strftime('%Y-%m-%d %H:%M:%S')} UTC, kek_id {h.kek_id}")
        con.print(f"anchor: [bold]{h.anchor}[/bold]")


@audit_app.command("reseal")
def audit_reseal(
    url: UrlOpt,
    old_kek_file: Annotated[Path, typer.Option("--old-kek-file", help="KEK the trail is sealed under now.")],
    kek_file: KekFileOpt = None,
) -> None:
    """After `store rekey`: verify the trail under the old KEK and rebuild its seal under the new one.

    Exit 0 resealed, 1 refused because the trail does not verify under the old KEK, 2 on usage,
    store or KEK errors.  Anchors of earlier seals no longer apply: keep the new one.
    """
    try:
        old = KeyEncryptionKey.from_file(old_kek_file)
        new = _kek(kek_file)
        with open_store(url, new, create_schema=False) as store:
            res = store.reseal_audit(old, new)
    except AuditTampered as exc:
        typer.echo(f"tampered: {exc}", err=True)
        raise typer.Exit(code=1) from None
    except M2MSecError as exc:
        _fail(exc)
    from rich.console import Console

    con = Console(width=160, highlight=False)
    con.print(f"resealed [bold]{res.sealed_rows}[/bold] row(s): kek_id {old.kek_id_hex} -> {new.kek_id_hex}")
    if res.head is not None:
        con.print(f"anchor: [bold]{res.head.anchor}[/bold]")


@audit_app.command("verify")
def audit_verify(
    url: UrlOpt,
    kek_file: KekFileOpt = None,
    anchor: Annotated[str | None, typer.Option(
        "--anchor", help="<seal_no>:<hex> printed by an earlier seal (detects a rollback past it).")] = None,
    max_findings: Annotated[int, typer.Option("--max-findings", min=1, help="List at most N findings.")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Verify the sealed audit rows and checkpoints.  Exit 0 intact, 1 tampered, 2 usage/store/KEK errors."""
    try:
        kek = _kek(kek_file)
        with open_store(url, kek, create_schema=False) as store:
            res = store.verify_audit(anchor=anchor, max_findings=max_findings)
    except M2MSecError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps({
            "intact": res.intact, "checkpoints": res.checkpoints, "sealed_rows": res.sealed_rows,
            "unsealed_rows": res.unsealed_rows, "head": _cp_json(res.head), "more_findings": res.more_findings,
            "findings": [{"kind": f.kind, "seq": f.seq, "seal_no": f.seal_no, "message": f.message}
                         for f in res.findings],
        }, sort_keys=True))
        raise typer.Exit(code=0 if res.intact else 1)
    from rich.console import Console
    from rich.table import Table

    con = Console(width=160, highlight=False)
    if res.findings:
        table = Table(title=f"audit seal: {len(res.findings) + res.more_findings} finding(s)")
        for col in ("kind", "seq", "checkpoint", "finding"):
            table.add_column(col, overflow="fold")
        for f in res.findings:
            table.add_row(f.kind, "" if f.seq is None else str(f.seq),
                          "" if f.seal_no is None else str(f.seal_no), f.message)
        con.print(table)
        if res.more_findings:
            con.print(f"... and {res.more_findings} more")
    head = res.head
    where = (f"checkpoint {head.seal_no}, rows up to seq {head.last_seq}, sealed at "
             f"{head.sealed_at.strftime('%Y-%m-%d %H:%M:%S')} UTC" if head is not None else "never sealed")
    con.print(f"{res.sealed_rows} sealed row(s) in {res.checkpoints} checkpoint(s) ({where}); "
              f"{res.unsealed_rows} row(s) not sealed yet")
    if res.intact:
        con.print("[bold green]INTACT[/bold green]")
        return
    first = res.first_modified_seq
    con.print("[bold red]TAMPERED[/bold red]" + (f": first modified row seq {first}" if first is not None else ""))
    raise typer.Exit(code=1)


@app.command("rekey")
def rekey(
    url: UrlOpt,
    old_kek_file: Annotated[Path, typer.Option("--old-kek-file", help="KEK the credentials are sealed under.")],
    new_kek_file: Annotated[Path, typer.Option("--new-kek-file", help="KEK to re-encrypt them under.")],
) -> None:
    """Re-encrypt every stored credential from the old KEK to the new one (one transaction).

    A sealed audit trail (`store audit seal`) is then resealed under the new KEK, as `store audit
    reseal` does: exit 1 if the trail does not verify under the old KEK (the credentials are
    re-encrypted all the same; the seal is left as it was for `store audit verify` with the old KEK).
    """
    resealed = None
    try:
        old = KeyEncryptionKey.from_file(old_kek_file)
        new = KeyEncryptionKey.from_file(new_kek_file)
        with open_store(url, old, create_schema=False) as store:
            n = store.rekey(old, new)
            typer.echo(f"re-encrypted {n} credential(s): kek_id {old.kek_id_hex} -> {new.kek_id_hex}")
            try:
                sealed = store.verify_audit(old, max_findings=1).checkpoints > 0
            except AuditSealKekMismatch:  # a re-run: the seal may already be under the new KEK
                under_new = store.verify_audit(new, max_findings=1)  # else this names the KEK it is under (exit 2)
                sealed = False
                if not under_new.intact:
                    typer.echo(f"tampered: the audit seal is under kek_id {new.kek_id_hex} but does not verify "
                               f"({under_new.findings[0].message}); run `m2msec store audit verify`", err=True)
                    raise typer.Exit(code=1) from None
                typer.echo(f"audit seal already under kek_id {new.kek_id_hex}")
            if sealed:
                try:
                    resealed = store.reseal_audit(old, new)
                except AuditTampered as exc:
                    typer.echo(f"tampered: {exc}; the audit seal stays under kek_id {old.kek_id_hex} "
                               f"(verify it with the old KEK file)", err=True)
                    raise typer.Exit(code=1) from None
    except M2MSecError as exc:
        _fail(exc)
    if resealed is not None:
        anchor = f"; new anchor {resealed.head.anchor}" if resealed.head is not None else ""
        typer.echo(f"audit seal carried over to kek_id {new.kek_id_hex}{anchor} (earlier anchors no longer apply)")


__all__ = ["app"]

