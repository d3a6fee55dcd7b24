"""``m2msec gateway``: run the ESPrim gateway in front of a CSE (see :mod:`m2msec.gateway`
for the configuration file; TS-0003 8.4, TS-0004 7.6.2)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

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
    the \\[\\[saef_cert]] crl_urls).  SIGHUP re-reads the SAEF bindings (\\[\\[saef_psk]],
    \\[\\[saef_cert]] and their CRL files), fetches their CRL URLs at once and prints
    ``saef reloaded N binding(s)``."""
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

    async def reload_saef() -> None:
        """SIGHUP: re-read [[saef_psk]], [[saef_cert]] (and their CRL files) from the file, all or
        nothing; CRL URLs new to the file are fetched before the new bindings take over, the
        others at once after (m2msec.gateway.saefstatus)."""
        from m2msec.gateway.app import utc_now

        try:
            new = load_config(config, cse_url=cse, store_url=store, saef_listen=saef_listen)
            if new.saef is None:
                raise ConfigError("the file has no [saef] table any more (removing the listener needs a restart)")
            count = await gw.saef_listener.reload_async(new.saef, clock=utc_now)
        except (M2MSecError, ValueError, TypeError, OSError) as exc:
            print(f"error: saef not reloaded: {exc}", file=sys.stderr, flush=True)
            return
        except KeyError as exc:
            print(f"error: saef not reloaded: {config}: missing key {exc}", file=sys.stderr, flush=True)
            return
        print(f"saef reloaded {count} binding(s)", flush=True)

    def reload() -> None:
        if gw.saef_listener is None:
            print("sighup: nothing to reload", file=sys.stderr, flush=True)
            return
        task = asyncio.get_running_loop().create_task(reload_saef())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    async def run() -> None:
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

    try:
        asyncio.run(run())
    finally:
        st.close()  # type: ignore[attr-defined]
    sys.exit(0)
