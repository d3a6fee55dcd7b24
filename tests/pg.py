"""Throwaway PostgreSQL server for tests (reusable helper, no pytest dependency).

``PgServer.start()`` runs ``initdb`` + ``pg_ctl start`` from the Debian binaries
(``/usr/lib/postgresql/<N>/bin``) into a temporary directory, listening on
127.0.0.1 on a free port (trust authentication) and on a private Unix socket
directory.  When the process runs as root, the binaries run as the ``postgres``
OS user (``runuser -u postgres --``).  ``PgServer.external(dsn)`` wraps an
already running server given by ``M2MSEC_TEST_PG_DSN`` instead.

    server = PgServer.from_environment()   # None if no binaries and no DSN
    dsn = server.create_database()         # fresh, empty database per test
    dump = server.pg_dump(dsn)             # bytes of a plain-SQL dump
    server.stop()
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

ENV_DSN = "M2MSEC_TEST_PG_DSN"
ENV_REQUIRE = "M2MSEC_REQUIRE_PG"
ENV_BINDIR = "M2MSEC_PG_BINDIR"


def find_bindir() -> Path | None:
    """Directory holding initdb/pg_ctl/pg_dump: $M2MSEC_PG_BINDIR if set, else Debian layout (15 first), PATH."""
    cands: list[str] = []
    if ENV_BINDIR in os.environ:  # explicit: only that directory (an empty/bogus value disables PG)
        cands.append(os.environ[ENV_BINDIR])
        return next((Path(c) for c in cands if c and (Path(c) / "initdb").is_file()), None)
    cands.append("/usr/lib/postgresql/15/bin")
    cands += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    which = shutil.which("pg_ctl")
    if which:
        cands.append(str(Path(which).parent))
    for c in cands:
        p = Path(c)
        if (p / "initdb").is_file() and (p / "pg_ctl").is_file():
            return p
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_pg() -> bool:
    return os.environ.get(ENV_REQUIRE, "") not in ("", "0", "false", "no")


class PgServer:
    def __init__(self, admin_dsn: str, *, bindir: Path | None, base: Path | None = None,
                 run_as: str | None = None, host: str = "127.0.0.1", port: int | None = None,
                 sockdir: Path | None = None) -> None:
        self.admin_dsn = admin_dsn
        self.bindir = bindir
        self.base = base
        self.run_as = run_as
        self.host = host
        self.port = port
        self.sockdir = sockdir
        self._created: list[str] = []

    # -- lifecycle --------------------------------------------------------------------
    @classmethod
    def from_environment(cls) -> PgServer | None:
        if os.environ.get(ENV_DSN):
            return cls.external(os.environ[ENV_DSN])
        bindir = find_bindir()
        if bindir is None:
            return None
        return cls.start(bindir)

    @classmethod
    def external(cls, dsn: str) -> PgServer:
        return cls(dsn, bindir=find_bindir())

    @classmethod
    def start(cls, bindir: Path, *, timeout: float = 30.0) -> PgServer:
        run_as = "postgres" if os.geteuid() == 0 else None
        base = Path(tempfile.mkdtemp(prefix="m2msec-pg-"))
        data, sock = base / "data", base / "sock"
        sock.mkdir()
        if run_as:
            pw = pwd.getpwnam(run_as)
            for p in (base, sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        port = free_port()
        server = cls(f"postgresql://postgres@127.0.0.1:{port}/postgres", bindir=bindir, base=base,
                     run_as=run_as, port=port, sockdir=sock)
        try:
            server._run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                         "-E", "UTF8", "--locale=C", "--no-sync"], timeout=timeout)
            opts = (f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
            server._run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"),
                         "-w", "-t", str(int(timeout)), "-o", opts, "start"], timeout=timeout + 5)
        except BaseException:
            log = base / "server.log"
            if log.exists():
                print(log.read_text(errors="replace")[-4000:])
            server.stop()
            raise
        return server

    def _run(self, argv: list[str], *, timeout: float = 60.0) -> bytes:
        prog = Path(argv[0]).name
        if self.run_as:
            runuser = shutil.which("runuser") or next(
                (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.path.exists(p)), "runuser")
            argv = [runuser, "-u", self.run_as, "--", *argv]
        res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                             cwd=str(self.base) if self.base else None)
        if res.returncode != 0:
            raise RuntimeError(f"{prog} failed "
                               f"(rc={res.returncode}): {res.stderr.decode(errors='replace')[-2000:]}")
        return res.stdout

    def stop(self) -> None:
        if self.base is not None:
            data = self.base / "data"
            if (data / "postmaster.pid").exists() and self.bindir is not None:
                try:
                    self._run([str(self.bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                              timeout=30)
                except (RuntimeError, subprocess.TimeoutExpired):
                    pass
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
        else:
            self._drop_created()

    # -- databases --------------------------------------------------------------------
    def dsn(self, dbname: str) -> str:
        import psycopg.conninfo

        return psycopg.conninfo.make_conninfo(self.admin_dsn, dbname=dbname)

    def create_database(self, prefix: str = "m2msec_test") -> str:
        """Create a fresh empty database; returns a ``postgresql://`` URL for it."""
        import psycopg

        name = f"{prefix}_{secrets.token_hex(6)}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        self._created.append(name)
        info = psycopg.conninfo.conninfo_to_dict(self.admin_dsn)
        info["dbname"] = name
        user = quote(info.get("user", ""), safe="")
        pw = f":{quote(info['password'], safe='')}" if info.get("password") else ""
        host = quote(info.get("host", "127.0.0.1"), safe="")
        port = info.get("port", "5432")
        return f"postgresql://{user}{pw}@{host}:{port}/{name}"

    def _drop_created(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                for name in self._created:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg.Error:
            pass
        self._created.clear()

    def pg_dump(self, url: str) -> bytes:
        """Plain-SQL dump of a database (runs as the postgres OS user for a throwaway cluster)."""
        exe = str(self.bindir / "pg_dump") if self.bindir else shutil.which("pg_dump")
        if not exe:
            raise RuntimeError("pg_dump not found")
        if self.run_as and self.sockdir is not None:
            dbname = url.rsplit("/", 1)[1]
            return self._run([exe, "-h", str(self.sockdir), "-p", str(self.port), "-U", "postgres",
                              "--no-owner", dbname])
        res = subprocess.run([exe, "--no-owner", f"--dbname={url}"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"pg_dump failed: {res.stderr.decode(errors='replace')[-2000:]}")
        return res.stdout
