"""``m2msec gateway``: run the ESPrim gateway in front of a CSE (see :mod:`m2msec.gateway`
for the configuration file; TS-0003 8.4, TS-0004 7.6.2)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from m2msec.errors import M2MSecError

app = typer.Typer(
    help="ESPrim gateway (sidecar) in front of an unmodified CSE.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise typer.BadParameter("expected HOST:PORT, e.g. 127.0.0.1:8081")
    return host, int(port)


@app.callback()
def _group() -> None:
    """ESPrim gateway (sidecar) in front of an unmodified CSE."""


@app.command()
def serve(
    config: Annotated[Path, typer.Option("--config", help="gateway.toml")],
    cse: Annotated[Optional[str], typer.Option("--cse", help="the CSE's HTTP base URL")] = None,
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT to listen on (port 0: ephemeral)")] = "127.0.0.1:8081",
    store: Annotated[Optional[str], typer.Option("--store", help="store URL (sqlite:///… or postgresql://…)")] = None,
    trace: Annotated[Optional[Path], typer.Option("--trace", help="append every forwarded HTTP message here")] = None,
    saef_listen: Annotated[Optional[str], typer.Option(
        "--saef-listen", help="HOST:PORT of the SAEF (TLS) listener, overrides \\[saef] listen (port 0: ephemeral)")] = None,
) -> None:
    """Serve until SIGTERM/SIGINT.  Prints ``listening on URL`` once ready, then
    ``saef listening on HOST:PORT`` when ``\\[saef]`` is configured (after the first fetch of
    the \\[\\[saef_cert]] crl_urls).  SIGHUP re-reads the SAEF settings (\\[\\[saef_psk]],
    \\[\\[saef_cert]] and their CRL files, \\[saef_maf], require_saef_for) all or nothing,
    fetches their CRL URLs at once and prints ``saef reloaded N binding(s)``; with \\[mef] it
    puts a changed \\[mef] in force (``mef reloaded: ...``: a new MEF address, PSK or target_id;
    ``mef recheck_interval_s now N``), then asks the MEF at once about every key fetched from it
    (as every recheck_interval_s) and prints ``mef re-checked N key(s): R removed, U not answered``.  With
    \\[gateway] audit_seal_interval_s (default 300, 0 = off) the store's audit trail is sealed
    at start, every interval and once more on SIGTERM/SIGINT."""
    from m2msec.gateway.app import build
    from m2msec.gateway.config import ConfigError, load_config

    host, port = _listen(listen)
    if saef_listen is not None:
        _listen(saef_listen)
    try:
        cfg = load_config(config, cse_url=cse, store_url=store, saef_listen=saef_listen)
        if trace is not None:
            import dataclasses

            cfg = dataclasses.replace(cfg, trace_file=trace)
        gw, st = build(cfg)
        if cfg.trace_file is not None:
            from m2msec.gateway.server import TRACE_WARNING

            print(TRACE_WARNING.format(path=cfg.trace_file), file=sys.stderr, flush=True)
    except (M2MSecError, ValueError, TypeError) as exc:  # a bad value in gateway.toml: no traceback
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyError as exc:
        typer.echo(f"error: {config}: missing key {exc}", err=True)
        raise typer.Exit(2) from None

    reloads: set[asyncio.Task[None]] = set()
    listening_on = cfg.saef.listen if cfg.saef is not None else None  # [saef] listen: a restart changes it

    async def reload_saef() -> None:
        """SIGHUP: re-read the whole file; if it is valid, put its [[saef_psk]], [[saef_cert]] (and
        their CRL files), [saef] cert/key, [saef_maf] and require_saef_for in force at once, else
        keep all of the previous ones (one error line).  CRL URLs are fetched before the new
        settings take over (m2msec.gateway.saefstatus); a changed [saef_maf] gets a new MAF Client
        (m2msec.gateway.saefmaf).  A changed [saef] listen is a warning: it needs a restart."""
        from m2msec.gateway.app import utc_now

        listener = gw.saef_listener
        new = reread("saef")
        if new is None:
            return
        try:
            if new.saef is None:
                raise ConfigError("the file has no [saef] table any more (removing the listener needs a restart)")
            old_maf = listener.maf
            count = await listener.reload_async(new.saef, clock=utc_now)
        except (M2MSecError, ValueError, TypeError, OSError) as exc:
            print(f"error: saef not reloaded: {exc}", file=sys.stderr, flush=True)
            return
        if new.mef is not None and gw.mef_binding is None:
            print("warning: [mef] added to the file: a restart is needed to use the MEF", file=sys.stderr, flush=True)
        if new.saef.listen != listening_on:
            print(f"warning: [saef] listen changed to {new.saef.listen}: a restart is needed to listen there; "
                  f"the SAEF listener stays on {listener.host}:{listener.port} (the rest is reloaded)",
                  file=sys.stderr, flush=True)
        maf = ""
        if listener.maf is not old_maf:
            maf = "; [saef_maf] off" if listener.maf is None else "; [saef_maf] new MAF Client"
        print(f"saef reloaded {count} binding(s){maf}", flush=True)
        # the MAF is asked again about every Kc held (a revoked one ends its associations)
        await recheck("maf", "Kc(s)", listener.recheck_maf)

    def reread(what: str) -> Any:
        """The configuration file read again, or None after one ``error: <what> not reloaded:
        ...`` line on stderr (the problem, never a key)."""
        try:
            return load_config(config, cse_url=cse, store_url=store, saef_listen=saef_listen)
        except (M2MSecError, ValueError, TypeError, OSError) as exc:
            print(f"error: {what} not reloaded: {exc}", file=sys.stderr, flush=True)
        except KeyError as exc:
            print(f"error: {what} not reloaded: {config}: missing key {exc}", file=sys.stderr, flush=True)
        return None

    async def recheck(what: str, noun: str, run: Any) -> None:
        """One re-check pass now (``run()``: counts, or None for nothing to check), reported as
        ``<what> re-checked N <noun>: R removed, U not answered``; a failed pass is one error line."""
        try:
            counts = await run()
        except Exception as exc:  # noqa: BLE001 - the periodic passes go on
            print(f"error: {what} re-check failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return
        if counts is not None:
            print(f"{what} re-checked {counts['checked']} {noun}: {counts['revoked']} removed, "
                  f"{counts['unreachable']} not answered", flush=True)

    async def reload_mef() -> None:
        """SIGHUP with [mef]: put a changed [mef] in force (m2msec.gateway.mefreload: a new MEF
        connection for the ESPrim keys and the SAEF Kpsa, or a new re-check interval), then one
        re-check pass now with it."""
        new = reread("mef")
        if new is not None:
            changed, warnings = gw.mef_binding.apply(new.mef, gw)
            for line in warnings:
                print(f"warning: {line}", file=sys.stderr, flush=True)
            for line in changed:
                print(line, flush=True)
        assert gw.key_recheck is not None
        await recheck("mef", "key(s)", gw.key_recheck)

    async def recheck_esprim_maf() -> None:
        """SIGHUP with [esprim_maf]: put a changed [esprim_maf] in force (a new MAF Client or
        re-check interval), then one MAF re-check of the SUID-33 keys now (G15)."""
        from m2msec.gateway.app import utc_now

        new = reread("esprim_maf")
        if new is not None:
            if new.esprim_maf is None:
                print("warning: [esprim_maf] removed from the file: a restart is needed to stop using the MAF; "
                      "the previous [esprim_maf] stays in force", file=sys.stderr, flush=True)
            else:
                for line in gw.esprim_maf.apply(new.esprim_maf, utc_now):
                    print(line, flush=True)
        await recheck("esprim_maf", "key(s)", gw.esprim_maf.recheck)

    def reload() -> None:
        jobs = ([reload_saef()] if gw.saef_listener is not None else []) + \
               ([reload_mef()] if gw.mef_binding is not None else []) + \
               ([recheck_esprim_maf()] if gw.esprim_maf is not None else [])
        if not jobs:
            print("sighup: nothing to reload (adding [saef], [mef] or [esprim_maf] needs a restart)", file=sys.stderr, flush=True)
            return
        for job in jobs:
            task = asyncio.get_running_loop().create_task(job)
            reloads.add(task)
            task.add_done_callback(reloads.discard)

    async def run() -> None:
        from m2msec.store.autoseal import AuditSealer, show_seal_log

        await gw.start(host, port)
        saef = gw.saef_listener
        if saef is not None:
            assert cfg.saef is not None
            try:
                await saef.start(cfg.saef.host, cfg.saef.port)
            except OSError as exc:
                await gw.close()
                typer.echo(f"error: SAEF listener on {cfg.saef.listen}: {exc.strerror or exc}", err=True)
                raise typer.Exit(2) from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload)  # never ends the gateway
        sealer = None
        if cfg.audit_seal_interval:  # seals now, every interval, and once more after the listeners closed
            show_seal_log()
            sealer = AuditSealer(st, cfg.audit_seal_interval)
            sealer.start()
        print(f"listening on {gw.url}", flush=True)
        if saef is not None:
            print(f"saef listening on {saef.host}:{saef.port}", flush=True)
        try:
            await stop.wait()
        finally:
            for t in list(reloads):
                t.cancel()
            if saef is not None:
                await saef.close()
            await gw.close()
            if sealer is not None:  # the last rows written through the listeners are sealed too
                await sealer.close()

    try:
        asyncio.run(run())
    finally:
        st.close()  # type: ignore[attr-defined]
    sys.exit(0)
