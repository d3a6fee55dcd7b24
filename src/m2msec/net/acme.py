"""Run a real oneM2M CSE (ACME, PyPI ``acmecse``) as a subprocess on 127.0.0.1.

The CSE stands in for the untrusted transit/hosting CSE of TS-0003 clause 8.4
(ESPrim) and the CSE of TS-0004 clause 7.6.2 that carries ``m2m:securityInfo``
between end points.  Tests and the demo use :class:`AcmeCSE`; an MN-CSE can be
registered to an IN-CSE (``registrar=``) for the multi-hop case.
``esi_as_object=True`` runs ACME with its ``esi`` attribute policy retyped from
string to object, so that ``<AE>``/``<remoteCSE>`` accept the TS-0004 6.3.5.52
``m2m:e2eSecInfo`` JSON object (stock ACME 2026.5.3 refuses it with 4000).

How ACME is started (measured with acmecse 2026.5.3, see DESIGN.md section 3):
headless mode needs a user ``acme.ini`` in the base directory (otherwise it runs
an interactive on-boarding dialog), so :meth:`AcmeCSE.start` writes one, then runs
``python -m acmecse --config acme.ini --base-directory DIR --headless --http-port
PORT --network-interface 127.0.0.1 --db-type memory --log-level off --http-wsgi``
(waitress keeps HTTP connections alive; the Flask development server closes each)
and waits until a RETRIEVE of the ``<CSEBase>`` answers 2000.  SIGTERM stops it
(SIGINT does not, in headless mode); a CSE that ignores SIGTERM is killed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from m2msec.errors import M2MSecError
from m2msec.onem2m.rsc import ResponseStatusCode

__all__ = ["AcmeCSE", "AcmeError", "acme_available", "acme_version", "free_tcp_port"]

CseType = Literal["IN", "MN", "ASN"]


class AcmeError(M2MSecError):
    """The ACME CSE could not be configured, started or stopped."""

    default_rsc = ResponseStatusCode.INTERNAL_SERVER_ERROR


def acme_available() -> bool:
    """True if the ``acmecse`` package is importable by this interpreter."""
    import importlib.util

    try:
        return importlib.util.find_spec("acmecse") is not None
    except (ImportError, ValueError):
        return False


def acme_version() -> str | None:
    """The installed acmecse distribution version, or None."""
    from importlib import metadata

    try:
        return metadata.version("acmecse")
    except metadata.PackageNotFoundError:
        return None


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """An ephemeral TCP port that was free a moment ago (the OS picks it).

    There is an unavoidable window between closing the probe socket and the CSE
    binding the port; :meth:`AcmeCSE.start` retries with a new port if the CSE
    fails to come up on an automatically chosen one.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ini_value(value: object) -> str:
    text = "true" if value is True else "false" if value is False else str(value)
    if "\n" in text or "$" in text:
        raise AcmeError(f"configuration value not allowed in acme.ini: {text!r}")
    return text


class AcmeCSE:
    """One ACME CSE process bound to 127.0.0.1.

    ``registrar`` (another, already started :class:`AcmeCSE`) makes this CSE
    register to it at start-up (MN-CSE -> IN-CSE); the registrar must list this
    CSE's ID in ``allowed_csr_originators``.  ``extra_config`` adds or overrides
    acme.ini options: ``{"section": {"option": value}}``.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        http_port: int | None = None,
        cse_id: str = "id-in",
        cse_name: str = "cse-in",
        cse_type: CseType = "IN",
        *,
        admin_originator: str = "CAdmin",
        host: str = "127.0.0.1",
        registrar: AcmeCSE | None = None,
        allowed_csr_originators: tuple[str, ...] = (),
        init_directory: str | os.PathLike[str] | None = None,
        extra_config: Mapping[str, Mapping[str, object]] | None = None,
        startup_timeout: float = 30.0,
        log_level: Literal["off", "error", "warn", "info", "debug"] = "off",
        esi_as_object: bool = False,
        python: str = sys.executable,
    ) -> None:
        if cse_type not in ("IN", "MN", "ASN"):
            raise ValueError(f"cse_type must be IN, MN or ASN, not {cse_type!r}")
        for name, v in (("cse_id", cse_id), ("cse_name", cse_name)):
            if not v or "/" in v or any(c.isspace() for c in v):
                raise ValueError(f"{name} must be a non-empty name without '/' or white space")
        if esi_as_object and init_directory is not None:
            raise ValueError("esi_as_object prepares its own init directory; do not pass init_directory too")
        if cse_type != "IN" and registrar is None:
            raise ValueError(f"an {cse_type}-CSE needs a registrar")
        self.base_dir = Path(base_dir)
        self.cse_id = cse_id
        self.cse_name = cse_name
        self.cse_type: CseType = cse_type
        self.admin_originator = admin_originator
        self.host = host
        self.registrar = registrar
        self.allowed_csr_originators = tuple(allowed_csr_originators)
        self.init_directory = Path(init_directory) if init_directory is not None else None
        self.extra_config = {k: dict(v) for k, v in (extra_config or {}).items()}
        self.startup_timeout = startup_timeout
        self.log_level = log_level
        self.esi_as_object = esi_as_object
        self.python = python
        self._fixed_port = http_port
        self.http_port: int | None = http_port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # ------------------------------------------------------------------ info
    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (the CSE's pointOfAccess)."""
        if self.http_port is None:
            raise AcmeError("the CSE has no port yet (not started)")
        return f"http://{self.host}:{self.http_port}"

    @property
    def csi(self) -> str:
        """The SP-relative CSE-ID, e.g. ``/id-in``."""
        return "/" + self.cse_id

    @property
    def cse_base(self) -> str:
        """The SP-relative structured ID of the ``<CSEBase>``, e.g. ``/id-in/cse-in``."""
        return f"/{self.cse_id}/{self.cse_name}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        return self.base_dir / "acme-console.log"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"AcmeCSE({self.cse_type} {self.cse_base} port={self.http_port} {state})"

    # ------------------------------------------------------------------ configuration
    def config_sections(self) -> dict[str, dict[str, str]]:
        """The acme.ini content as sections of options (what :meth:`write_config` writes)."""
        assert self.http_port is not None
        basic: dict[str, object] = {
            "cseType": self.cse_type,
            "cseID": self.cse_id,
            "cseName": self.cse_name,
            "adminID": self.admin_originator,
            "networkInterface": self.host,
            "cseHost": self.host,
            "httpPort": self.http_port,
            "databaseType": "memory",
            "logLevel": self.log_level,
        }
        sections: dict[str, dict[str, object]] = {
            "basic.config": basic,
            "textui": {"enable": False, "startWithTUI": False},
            "mqtt": {"enable": False},
            "coap": {"enable": False},
            "websocket": {"enable": False},
            "logging": {"enableScreenLogging": False, "enableFileLogging": self.log_level != "off"},
        }
        if self.registrar is not None:
            reg = self.registrar
            if reg.http_port is None:
                raise AcmeError("the registrar CSE must be started first")
            basic.update(
                registrarCseHost=reg.host,
                registrarCsePort=reg.http_port,
                registrarCseID=reg.cse_id,
                registrarCseName=reg.cse_name,
            )
            top = reg
            while top.registrar is not None:
                top = top.registrar
            sections["cse.registrar"] = {"INCSEcseID": top.csi}
        if self.allowed_csr_originators:
            sections["cse.registration"] = {
                "allowedCSROriginators": ",".join(
                    o if o.startswith("/") else "/" + o for o in self.allowed_csr_originators
                )
            }
        if self.init_directory is not None:
            basic["initDirectory"] = str(self.init_directory)
        for sec, opts in self.extra_config.items():
            sections.setdefault(sec, {}).update(opts)
        return {s: {k: _ini_value(v) for k, v in o.items()} for s, o in sections.items()}

    def write_config(self) -> Path:
        """Write ``acme.ini`` into the base directory and return its path."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        lines = ["; written by m2msec.net.acme", ""]
        for sec, opts in self.config_sections().items():
            lines.append(f"[{sec}]")
            lines.extend(f"{k}={v}" for k, v in opts.items())
            lines.append("")
        path = self.base_dir / "acme.ini"
        path.write_text("\n".join(lines), encoding="utf-8")
        return path

    # ------------------------------------------------------------------ lifecycle
    def command(self) -> list[str]:
        assert self.http_port is not None
        cmd = [
            self.python, "-m", "acmecse",
            "--config", "acme.ini",
            "--base-directory", str(self.base_dir),
            "--headless",
            "--http-port", str(self.http_port),
            "--network-interface", self.host,
            "--db-type", "memory",
            "--log-level", self.log_level,
            "--http-wsgi",
        ]  # fmt: skip
        if self.init_directory is not None:
            cmd += ["--init-directory", str(self.init_directory)]
        return cmd

    def start(self) -> AcmeCSE:
        """Write acme.ini, start the CSE and wait until its ``<CSEBase>`` answers."""
        if self.running:
            raise AcmeError(f"{self!r} is already running")
        if not acme_available():
            raise AcmeError("acmecse is not installed (pip install acmecse)")
        attempts = 1 if self._fixed_port is not None else 3
        last: AcmeError | None = None
        for _ in range(attempts):
            self.http_port = self._fixed_port if self._fixed_port is not None else free_tcp_port(self.host)
            try:
                self._spawn()
                self._wait_ready()
                return self
            except AcmeError as exc:
                last = exc
                self.stop()
        assert last is not None
        raise last

    def _prepare_init_directory(self) -> None:
        """Copy ACME's init directory and retype ``esi`` from string to object (``dict``).

        ACME 2026.5.3 declares ``esi`` (e2eSecInfo) as a string in
        ``attributePolicies.ap``; TS-0004 6.3.5.52 makes it the complex type
        m2m:e2eSecInfo.  The patched policy makes ACME accept (and return) the
        standard JSON object form.
        """
        import importlib.util
        import shutil

        spec = importlib.util.find_spec("acmecse")
        if spec is None or not spec.submodule_search_locations:
            raise AcmeError("cannot locate the acmecse package")
        source = Path(list(spec.submodule_search_locations)[0]) / "init"
        # not "<base>/init": ACME imports that directory in addition to the init directory
        target = self.base_dir / "acme-init-esi-object"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
        policies = target / "attributePolicies.ap"
        text = policies.read_text(encoding="utf-8")
        start = text.find('"esi": [')
        pos = text.find('"type": "string"', start) if start >= 0 else -1
        if start < 0 or pos < 0 or pos - start > 400:
            raise AcmeError("attributePolicies.ap has no string-typed esi policy to patch (ACME version changed?)")
        policies.write_text(text[:pos] + '"type": "dict"' + text[pos + len('"type": "string"') :], encoding="utf-8")
        self.init_directory = target

    def _spawn(self) -> None:
        if self.esi_as_object:
            self.base_dir.mkdir(parents=True, exist_ok=True)
            self._prepare_init_directory()
        self.write_config()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._proc = subprocess.Popen(
            self.command(),
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def _log_tail(self, n: int = 2000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-n:].decode("utf-8", "replace")

    def _probe(self) -> bool:
        """One RETRIEVE of the <CSEBase> as the admin originator; True on 2000."""
        import httpx

        try:
            r = httpx.get(
                f"{self.url}/~{self.cse_base}",
                headers={
                    "X-M2M-Origin": self.admin_originator,
                    "X-M2M-RI": "m2msec-acme-probe",
                    "X-M2M-RVI": "3",
                    "Accept": "application/json",
                },
                timeout=2.0,
            )
        except httpx.HTTPError:
            return False
        return r.headers.get("x-m2m-rsc") == "2000"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise AcmeError(
                    f"ACME exited with status {self._proc.returncode} during start-up; console:\n{self._log_tail()}"
                )
            if self._probe():
                if self.registrar is None or self._registered():
                    return
            time.sleep(0.1)
        raise AcmeError(f"ACME did not answer within {self.startup_timeout} s; console:\n{self._log_tail()}")

    def _registered(self) -> bool:
        """For an MN/ASN: the registrar holds a <remoteCSE> for this CSE."""
        import httpx

        reg = self.registrar
        assert reg is not None
        try:
            r = httpx.get(
                f"{reg.url}/~{reg.cse_base}/{self.cse_id}",
                headers={
                    "X-M2M-Origin": reg.admin_originator,
                    "X-M2M-RI": "m2msec-acme-probe-csr",
                    "X-M2M-RVI": "3",
                    "Accept": "application/json",
                },
                timeout=2.0,
            )
        except httpx.HTTPError:
            return False
        return r.headers.get("x-m2m-rsc") == "2000"

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the CSE, then SIGKILL after ``timeout`` seconds; returns the exit status."""
        proc, self._proc = self._proc, None
        rc: int | None = None
        if proc is not None:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                    rc = proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    rc = proc.wait(timeout=timeout)
            else:
                rc = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return rc

    def __enter__(self) -> AcmeCSE:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
