"""``m2msec maf …``: run a MAF and administer its clients and keys (TS-0003 8.8).

``serve`` runs the MAF of ``maf.toml`` (:func:`m2msec.maf.server.load_config`); ``clients`` and
``keys`` list what the store holds (no key bytes); ``revoke`` deletes a Key Registration;
``remove-client`` de-provisions a MAF Client (credentials, registrations, the keys it registered;
its open sessions end at their next procedure); ``add-client`` provisions a MAF Client: a pre-provisioned Km/KmID (8.8.3.1) or the MAF Client
Certificate Information (flavour + identifier, 8.8.3.2).  Several ``serve`` processes may share
one store (PostgreSQL, or one SQLite file on one host).  ``serve`` re-reads the ``[tls]
client_crls`` files on SIGHUP (all or nothing; ``crls reloaded N`` on success, the previous
CRLs stay on an error).  With ``[tls] client_crl_urls`` (or ``client_crl_from_cdp``) ``serve``
fetches those CRLs before it listens and keeps them fresh (:class:`m2msec.pki.CRLRefresher`
as a task of the serve loop); SIGHUP also fetches them again at once, and a file reload keeps
the fetched CRLs.  With ``[tls] ocsp_staple_url`` ``serve`` queries that OCSP responder for the
MAF's own certificate before it listens (a failure is a warning: the MAF starts and staples
nothing until a query succeeds), staples the current response in certificate handshakes and
keeps it fresh (:class:`m2msec.pki.ocsp_staple.OCSPStapler`); SIGHUP queries again at once.
With ``[mef]``, SIGHUP also puts a changed ``[mef]`` in force (profile F18) and re-checks every
Km from the MEF at once (as every ``recheck_interval_s``, profile F16) and prints ``mef
re-checked N KeID(s): R removed, U not answered``.
``serve --workers N`` (Linux) runs N MAF processes on one port
(SO_REUSEPORT): this process binds first, then starts N-1 ``serve --worker`` processes, each
with its own store connection; signals are handled as :func:`_run_parent` says.
With ``audit_seal_interval_s`` (default 300, 0 = off) ``serve`` seals the store's audit trail at
start, every interval and once more on SIGTERM/SIGINT, in a thread of its own
(:class:`m2msec.store.autoseal.AuditSealer`; ``audit sealed N row(s); anchor ...`` at INFO
whatever ``--verbose``, a refusal at ERROR); with ``--workers N`` only this (parent) process
seals, and its last seal follows the workers' exit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography import x509

from m2msec.errors import M2MSecError
from m2msec.maf.protocol import MAFError
from m2msec.maf.server import MAFServer, MAFServerConfig, build_server, load_config, open_config_store
from m2msec.maf.service import MAFService
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.onem2m.timestamps import format_timestamp
from m2msec.pki import CertificateFlavour, CRLRefresher, PeerCertInfo
from m2msec.pki.cli import reload_crls_and_report
from m2msec.pki.ocsp_staple import OCSPStapler
from m2msec.secret_input import secret_from_options
from m2msec.store import Store
from m2msec.store.autoseal import AuditSealer, show_seal_log
from m2msec.store.store import utc_now

app = typer.Typer(help="M2M Authentication Function (TS-0003 8.8): serve, clients, keys, revoke, add-client.",
                  no_args_is_help=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="maf.toml", exists=True, dir_okay=False)]


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


def _open(config: Path) -> tuple[MAFServerConfig, Store, MAFService]:
    cfg = load_config(config)
    store = open_config_store(cfg, clock=utc_now)
    svc = MAFService(store, cfg.fqdn, admins=cfg.admins, clock=utc_now,
                     client_trust_anchors=cfg.client_trust_anchors, max_keys_per_client=cfg.max_keys_per_client,
                     max_keys_total=cfg.max_keys_total, audit_sync_interval=cfg.audit_sync_interval)
    return cfg, store, svc


def _ts(v: Any) -> str:
    return format_timestamp(v) if v is not None else "-"


def _hangup(cfg: MAFServerConfig, refresher: CRLRefresher | None, stapler: OCSPStapler | None = None,
            recheck: Callable[[], None] | None = None, reload_mef: Callable[[], None] | None = None) -> None:
    """SIGHUP: with ``reload_mef`` ([mef]) put a changed ``[mef]`` in force, re-read the client
    CRL files (keeping fetched CRLs), fetch the CRL URLs, query the OCSP staple responder and,
    with ``recheck`` ([mef]), re-check the Km from the MEF now (nothing to do: a note on stderr;
    SIGHUP never ends the MAF)."""
    if reload_mef is not None:
        reload_mef()
    if recheck is not None:
        recheck()
    if not _wants_hangup(cfg):
        if recheck is None and reload_mef is None:
            typer.echo("sighup: nothing to reload (no [tls] client_crls, client_crl_urls, ocsp_staple_url or [mef])",
                       err=True)
        return
    if stapler is not None:
        stapler.trigger()
    if cfg.client_crls is not None and cfg.client_crl_files:
        reload_crls_and_report(cfg.client_crls, cfg.client_crl_files,
                               keep=refresher.crls if refresher is not None else None)
    if refresher is not None:
        refresher.trigger()


async def _start_refresher(cfg: MAFServerConfig, stapler: OCSPStapler | None = None) -> CRLRefresher | None:
    """Fetch the configured CRL URLs and query the OCSP staple responder once (failures are
    logged, not fatal) and start refreshing both."""
    refresher = cfg.crl_refresher(clock=utc_now)
    if refresher is not None:
        await refresher.refresh()
        refresher.start()
    if stapler is not None:
        await stapler.refresh()
        stapler.start()
    return refresher


def _recheck_now(service: MAFService) -> Callable[[], None] | None:
    """With a MEF: a function that starts one MEF re-check pass (profile F16) on the running loop
    and prints ``mef re-checked N KeID(s): R removed, U not answered`` when it is done."""
    if service.mef is None:
        return None
    running: set[asyncio.Task[None]] = set()

    async def one_pass() -> None:
        try:
            counts = await service.recheck_mef_credentials()
        except Exception as exc:  # noqa: BLE001 - the periodic passes go on
            typer.echo(f"error: mef re-check failed: {type(exc).__name__}: {exc}", err=True)
            return
        typer.echo(f"mef re-checked {counts['checked']} KeID(s): {counts['revoked']} removed, "
                   f"{counts['unreachable']} not answered")

    def start() -> None:
        task = asyncio.get_running_loop().create_task(one_pass())
        running.add(task)
        task.add_done_callback(running.discard)

    return start


def _mef_reloader(config: Path, cfg: MAFServerConfig, server: MAFServer, *,
                  rechecks: bool) -> Callable[[], None] | None:
    """With ``[mef]``: a function for SIGHUP that re-reads maf.toml and puts a changed ``[mef]``
    in force in this process (profile F18): a new MEF client for the Km of new KeIDs and for the
    re-checks (``mef reloaded: <fqdn> at <host>:<port>``), and (``rechecks``: the process that
    re-checks) a new ``recheck_interval_s`` for the next pass.  Adding or removing ``[mef]``
    needs a restart (a ``warning:`` line); an invalid file changes nothing (an ``error:`` line)."""
    if not cfg.mef:
        return None
    current = {"mef": dict(cfg.mef)}

    def reload() -> None:
        try:
            new = load_config(config)
        except (M2MSecError, ValueError, TypeError, KeyError, OSError) as exc:
            typer.echo(f"error: mef not reloaded: {exc}", err=True)
            return
        if not new.mef:
            typer.echo("warning: [mef] removed from the file: a restart is needed to stop using the MEF; "
                       "the previous [mef] stays in force", err=True)
            return
        old, now = current["mef"], dict(new.mef)
        if {k: v for k, v in old.items() if k != "recheck_interval_s"} != \
                {k: v for k, v in now.items() if k != "recheck_interval_s"}:
            server.service.mef = new.mef_client()
            typer.echo(f"mef reloaded: {now['fqdn']} at {now.get('host', '127.0.0.1')}:{now['port']}")
        if rechecks and now.get("recheck_interval_s") != old.get("recheck_interval_s"):
            server.set_mef_recheck_interval(new.mef_recheck_interval)
            typer.echo(f"mef recheck_interval_s now {new.mef_recheck_interval:g}")
        current["mef"] = now

    return reload


def _wants_hangup(cfg: MAFServerConfig) -> bool:
    return (cfg.client_crls is not None and bool(cfg.client_crl_files or cfg.client_crl_urls)) \
        or cfg.stapling_configured


WORKER_READY = "worker {pid} listening on {host}:{port}"
_WORKER_START_TIMEOUT = 60.0
_WORKER_STOP_TIMEOUT = 10.0


@app.command("serve")
def serve(config: ConfigOpt,
          port: Annotated[int | None, typer.Option("--port", help="Override the configured port.")] = None,
          verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
          workers: Annotated[int, typer.Option(
              "--workers", help="MAF processes sharing the port (SO_REUSEPORT, Linux); each opens its own store.")] = 1,
          worker: Annotated[bool, typer.Option("--worker", hidden=True,
                                               help="Internal: run as a worker of a --workers parent.")] = False,
          ) -> None:
    """Run the MAF (TLS-PSK and, with a \\[tls] table, certificate MAF Handshake) until interrupted."""
    log_format = {"format": "%(levelname)s:%(name)s:%(process)d:%(message)s"} if workers > 1 or worker else {}
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, **log_format)  # type: ignore[arg-type]
    if workers < 1:
        _fail(ValueError(f"--workers must be at least 1 (got {workers})"))
    if (workers > 1 or worker) and not sys.platform.startswith("linux"):
        _fail(ValueError(f"--workers needs Linux SO_REUSEPORT load balancing; not available on {sys.platform}"))
    if worker and (workers != 1 or port is None or port == 0):
        _fail(ValueError("--worker is internal to --workers: it takes the parent's --port and no --workers"))
    try:
        cfg = load_config(config)
        store = open_config_store(cfg, clock=utc_now)
    except M2MSecError as exc:
        _fail(exc)
    if port is not None:
        from dataclasses import replace

        cfg = replace(cfg, port=port)
    if cfg.audit_seal_interval and not worker:
        show_seal_log()
    reuse = workers > 1 or worker
    try:
        stapler = cfg.stapler(clock=utc_now)
        server = build_server(cfg, store, clock=utc_now, reuse_port=reuse, stapler=stapler)
    except ValueError as exc:
        store.close()
        _fail(exc)
    if worker:
        server.mef_recheck_interval = 0.0  # the parent asks the MEF for all processes (profile F16)
        _run_worker(cfg, store, server, stapler, config)
        return
    if workers > 1:
        code = _run_parent(cfg, store, server, config, workers, verbose, stapler)
        if code:
            raise typer.Exit(code=code)
        return

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)  # a clean stop: connections, tasks, then the store
        refresher = await _start_refresher(cfg, stapler)
        sealer = _start_sealer(cfg, store)
        try:
            await server.start()
            loop.add_signal_handler(signal.SIGHUP, _hangup, cfg, refresher, stapler, _recheck_now(server.service),
                                    _mef_reloader(config, cfg, server, rechecks=True))
            typer.echo(f"MAF {cfg.fqdn} listening on {cfg.host}:{server.port}", err=False)
            await stop.wait()
            await server.close()
        finally:
            if refresher is not None:
                await refresher.stop()
            if stapler is not None:
                await stapler.stop()
            if sealer is not None:  # after the listener closed: the last rows are sealed too
                await sealer.close()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        store.close()


def _start_sealer(cfg: MAFServerConfig, store: Store) -> AuditSealer | None:
    """The audit sealer of ``audit_seal_interval_s`` (None when 0), started on the running loop."""
    if not cfg.audit_seal_interval:
        return None
    sealer = AuditSealer(store, cfg.audit_seal_interval)
    sealer.start()
    return sealer


def _run_worker(cfg: MAFServerConfig, store: Store, server: MAFServer, stapler: OCSPStapler | None = None,
                config: Path | None = None) -> None:
    """A ``--worker`` process: bind the parent's port (SO_REUSEPORT), print the ready line to the
    parent (stdout is a pipe to it) and serve until SIGTERM or until the parent goes away (EOF
    on stdin, a pipe from the parent).  SIGINT is the parent's to handle (a terminal's Ctrl-C
    reaches the whole process group); SIGHUP re-reads the client CRLs like the parent does.  The
    worker fetches CRLs and its OCSP staple itself; it does not seal the audit trail (the
    parent does, for all of them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        refresher = await _start_refresher(cfg, stapler)
        reload_mef = _mef_reloader(config, cfg, server, rechecks=False) if config is not None else None
        loop.add_signal_handler(signal.SIGHUP, _hangup, cfg, refresher, stapler, None, reload_mef)
        stdin = sys.stdin.fileno()

        def parent_gone() -> None:
            try:
                data = os.read(stdin, 4096)
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(stdin)
                stop.set()

        loop.add_reader(stdin, parent_gone)
        await server.start()
        typer.echo(WORKER_READY.format(pid=os.getpid(), host=cfg.host, port=server.port))
        await stop.wait()
        await server.close()
        if refresher is not None:
            await refresher.stop()
        if stapler is not None:
            await stapler.stop()

    try:
        asyncio.run(main())
    finally:
        store.close()


def _run_parent(cfg: MAFServerConfig, store: Store, server: MAFServer, config: Path, n: int, verbose: bool,
                stapler: OCSPStapler | None = None) -> int:
    """``serve --workers N``: this process binds first (``port = 0`` resolves here), then starts
    N-1 ``serve --worker`` processes (fresh interpreters: no fork of a process holding store
    connections or threads) on the same host/port.  The listening line is printed once all
    listen.  SIGTERM/SIGINT stop every worker; SIGHUP is forwarded (with [tls] client_crls or
    client_crl_urls or ocsp_staple_url; every process fetches the CRL URLs and its OCSP staple itself); a
    worker that exits on its own is reported on stderr and stops the MAF with exit code 1.
    Only this process seals the audit trail (``audit_seal_interval_s``): one sealer per MAF,
    not N competing ones; its last seal runs after every worker has exited."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        refresher = await _start_refresher(cfg, stapler)
        await server.start()
        stop = asyncio.Event()
        failed: list[str] = []
        procs: list[asyncio.subprocess.Process] = []
        argv = [sys.executable, "-c", "from m2msec.maf.cli import app; app()", "serve", "-c", str(config.resolve()),
                "--port", str(server.port), "--worker", *(["--verbose"] if verbose else [])]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}

        async def ready(proc: asyncio.subprocess.Process) -> None:
            assert proc.stdout is not None
            try:
                line = (await asyncio.wait_for(proc.stdout.readline(), _WORKER_START_TIMEOUT)).decode()
            except asyncio.TimeoutError:
                line = ""
            if WORKER_READY.format(pid=proc.pid, host=cfg.host, port=server.port) != line.strip():
                raise RuntimeError(f"MAF worker {proc.pid} did not start"
                                   + (f" (exit code {proc.returncode})" if proc.returncode is not None else ""))

        async def relay(proc: asyncio.subprocess.Process) -> None:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                typer.echo(f"worker {proc.pid}: {raw.decode('utf-8', 'replace').rstrip()}")

        async def watch(proc: asyncio.subprocess.Process) -> None:
            rc = await proc.wait()
            if not stop.is_set():
                failed.append(f"MAF worker {proc.pid} exited with code {rc}")
                typer.echo(f"error: MAF worker {proc.pid} exited with code {rc}; stopping the MAF", err=True)
                stop.set()

        recheck = _recheck_now(server.service)  # the parent asks the MEF for all processes
        reload_mef = _mef_reloader(config, cfg, server, rechecks=True)

        def hangup() -> None:
            _hangup(cfg, refresher, stapler, recheck, reload_mef)
            if not _wants_hangup(cfg) and reload_mef is None:
                return
            for p in procs:
                if p.returncode is None:
                    p.send_signal(signal.SIGHUP)

        tasks: list[asyncio.Task[Any]] = []
        sealer: AuditSealer | None = None
        try:
            for _ in range(n - 1):
                procs.append(await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env))
            try:
                await asyncio.gather(*(ready(p) for p in procs))
            except RuntimeError as exc:
                typer.echo(f"error: {exc}", err=True)
                return 1
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            loop.add_signal_handler(signal.SIGHUP, hangup)
            sealer = _start_sealer(cfg, store)
            tasks = [*(loop.create_task(watch(p)) for p in procs), *(loop.create_task(relay(p)) for p in procs)]
            typer.echo(f"MAF {cfg.fqdn} listening on {cfg.host}:{server.port}")
            await stop.wait()
            return 1 if failed else 0
        finally:
            stop.set()
            if refresher is not None:
                await refresher.stop()
            if stapler is not None:
                await stapler.stop()
            await server.close()
            for p in procs:
                if p.returncode is None:
                    p.terminate()
            for p in procs:
                try:
                    await asyncio.wait_for(p.wait(), _WORKER_STOP_TIMEOUT)
                except asyncio.TimeoutError:
                    typer.echo(f"error: MAF worker {p.pid} did not stop; killing it", err=True)
                    p.kill()
                    await p.wait()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if sealer is not None:  # the workers are gone: their last rows are sealed too
                await sealer.close()

    try:
        return asyncio.run(main())
    finally:
        store.close()


@app.command("clients")
def clients(config: ConfigOpt, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List provisioned MAF Clients, their registrations and live Key Registrations / max_keys_per_client."""
    try:
        _, store, svc = _open(config)
        with store:
            rows = svc.list_clients()
            total = svc.key_total()
    except M2MSecError as exc:
        _fail(exc)
    if as_json:
        for r in rows:
            typer.echo(json.dumps({**r, "expires_at": _ts(r["expires_at"])}, sort_keys=True, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"MAF clients ({len(rows)}), live Key Registrations {total}/{svc.max_keys_total}")
    for col in ("client ID", "auth", "credential", "origin", "credential expires", "registrations", "keys"):
        table.add_column(col, overflow="fold")
    for r in rows:
        regs = ", ".join(f"{g['adminFQDN']} until {g['expirationTime']}" for g in r["registrations"]) or "-"
        table.add_row(r["client_id"], r["auth"], r["credential"], str(r["origin"] or "-"), _ts(r["expires_at"]), regs,
                      f"{r['live_keys']}/{svc.max_keys_per_client}")
    Console(width=160).print(table)


@app.command("keys")
def keys(config: ConfigOpt, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List live Key Registrations (metadata only, never key values)."""
    try:
        _, store, svc = _open(config)
        with store:
            rows = svc.list_keys()
    except M2MSecError as exc:
        _fail(exc)
    if as_json:
        for r in rows:
            typer.echo(json.dumps({**r, "expires_at": _ts(r["expires_at"])}, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"MAF key registrations ({len(rows)})")
    for col in ("key identifier", "SUID", "source", "targets", "admin", "origin", "expires"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["keyID"], str(r["suid"]), r["sourceMAFClientID"], ", ".join(r["targetIDs"]),
                      r["adminFQDN"], r["origin"], _ts(r["expires_at"]))
    Console(width=160).print(table)


@app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="Key Identifier (hex@MAF-FQDN) or RelativeKeyID")],
           config: ConfigOpt) -> None:
    """Delete a Key Registration: no Target can retrieve the key any more."""
    try:
        _, store, svc = _open(config)
        with store:
            live = svc.revoke_key(key_id)
    except M2MSecError as exc:
        _fail(exc)
    if not live:
        typer.echo(f"no live key registration {key_id}", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"revoked {key_id}")


@app.command("remove-client")
def remove_client(client_id: Annotated[str, typer.Argument(help="The MAF Client ID (AE-ID/CSE-ID, or as `clients` lists it)")],
                  config: ConfigOpt) -> None:
    """De-provision a MAF Client: its Km/KmIDs or certificate information, its registrations and the
    keys it registered go in one transaction; its open sessions end at their next procedure."""
    try:
        _, store, svc = _open(config)
        with store:
            counts = svc.remove_client(client_id)
    except MAFError as exc:
        if exc.rsc is RSC.NOT_FOUND:
            typer.echo(f"error: {exc.args[0]}", err=True)
            raise typer.Exit(code=1) from None
        _fail(exc)
    except M2MSecError as exc:
        _fail(exc)
    typer.echo(f"removed {client_id}: {counts['km_credentials']} Km credential(s), "
               f"{counts['certificate_client']} certificate configuration(s), {counts['registrations']} "
               f"registration(s), {counts['keys']} key registration(s)"
               + (f", {counts['keids']} KeID(s) refused until their Km expires" if counts.get("keids") else ""))


@app.command("add-client")
def add_client(
    config: ConfigOpt,
    client_id: Annotated[str | None, typer.Option("--client-id", help="AE-ID/CSE-ID of the MAF Client.")] = None,
    kmid: Annotated[str | None, typer.Option("--kmid", help="KmID (relative@MAF-FQDN, 10.6).")] = None,
    km_hex: Annotated[str | None, typer.Option("--km-hex", help="Km in hexadecimal (visible in ps: prefer --km-file).")] = None,
    km_file: Annotated[str | None, typer.Option("--km-file", help="File holding Km (hex text or raw octets; - = stdin).")] = None,
    cert: Annotated[Path | None, typer.Option("--cert", exists=True, dir_okay=False,
                                               help="The client's certificate (PEM), for certificate clients.")] = None,
    flavour: Annotated[str, typer.Option("--flavour", help="ae-id, cse-id, device, node-id, fqdn")] = "ae-id",
    identifier: Annotated[str | None, typer.Option("--identifier",
                                                    help="Identifier in the certificate (default: client ID).")] = None,
) -> None:
    """Provision a MAF Client: --kmid with --km-hex/--km-file (pre-provisioned Km) or --cert (certificate)."""
    if (kmid is None) == (cert is None):
        _fail(ValueError("give either --kmid with --km-hex or --km-file, or --cert"))
    if cert is not None and (km_hex is not None or km_file is not None):
        _fail(ValueError("--km-hex/--km-file go with --kmid, not with --cert"))
    try:
        km = (secret_from_options(km_hex, km_file, hex_option="--km-hex", file_option="--km-file", required=True)
              if kmid is not None else None)
        _, store, svc = _open(config)
        with store:
            if kmid is not None:
                assert km is not None
                cid = svc.add_km_client(kmid, km, client_id=client_id)
                typer.echo(f"provisioned Km for {cid} under KmID {kmid}")
            else:
                assert cert is not None
                if not client_id:
                    _fail(ValueError("--client-id is required with --cert"))
                assert client_id is not None
                certificate = x509.load_pem_x509_certificates(cert.read_bytes())[0]
                info = PeerCertInfo(CertificateFlavour(flavour), identifier or client_id)
                svc.add_cert_client(client_id, info)
                typer.echo(f"configured certificate client {client_id} ({info.flavour.value} {info.identifier}; "
                           f"subject {certificate.subject.rfc4514_string()})")
    except (M2MSecError, ValueError) as exc:
        _fail(exc)


__all__ = ["app"]
