"""A MAF as a real process (``m2msec maf serve``) with pre-provisioned Km clients (TS-0003 8.8.3.1)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path

from m2msec.maf import MAFClientConfig
from m2msec.maf.server import load_config, open_config_store
from m2msec.maf.service import MAFService
from m2msec.store import KeyEncryptionKey
from m2msec.tls.engine import PSKCredentials

MAF_FQDN = "maf.example.com"
ADMIN_FQDN = "sp.example.com"


def utc_now() -> datetime:
    return datetime.now(UTC)


class MAFProcess:
    """Writes ``maf.toml`` in ``workdir``, provisions ``clients`` (client ID -> (KmID, Km)) through the
    store API, then runs ``m2msec maf serve`` until :meth:`stop`."""

    def __init__(self, workdir: Path, clients: dict[str, tuple[str, bytes]], *, extra: str = "") -> None:
        """``extra``: more of maf.toml (tables after ``[[admin]]``, e.g. ``[mef]``)."""
        workdir.mkdir(parents=True, exist_ok=True)
        KeyEncryptionKey.generate().write_file(workdir / "kek.hex")
        self.config = workdir / "maf.toml"
        self.config.write_text(f'fqdn = "{MAF_FQDN}"\nstore = "sqlite:///{workdir / "maf.db"}"\n'
                               f'kek_file = "kek.hex"\nhost = "127.0.0.1"\n[[admin]]\nfqdn = "{ADMIN_FQDN}"\n'
                               + extra, encoding="utf-8")
        self.clients = dict(clients)
        cfg = load_config(self.config)
        store = open_config_store(cfg, clock=utc_now)
        try:
            svc = MAFService(store, cfg.fqdn, admins=cfg.admins, clock=utc_now)
            for cid, (kmid, km) in clients.items():
                svc.add_km_client(kmid, km, client_id=cid)
        finally:
            store.close()
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from m2msec.maf.cli import app; app()", "serve", "-c", str(self.config),
             "--port", "0"],
            stdout=subprocess.PIPE, stderr=self._err, stdin=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        line: list[str] = []
        t = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        t.start()
        t.join(20)
        if not line or "listening on" not in line[0]:
            self.stop()
            raise RuntimeError(f"MAF did not start: {line!r}")
        self.port = int(line[0].rsplit(":", 1)[1])

    def client_config(self, client_id: str, *, timeout: float = 5.0) -> MAFClientConfig:
        kmid, km = self.clients[client_id]
        return MAFClientConfig(maf_fqdn=MAF_FQDN, admin_fqdn=ADMIN_FQDN, host="127.0.0.1", port=self.port,
                               psk=PSKCredentials(kmid.encode(), km), timeout=timeout)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._err.close()
        return self.proc.returncode
