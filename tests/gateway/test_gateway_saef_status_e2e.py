"""Certificate status of AE certificates end to end (TS-0003 8.1.2.2, 8.2.2.2): a real ACME CSE,
``m2msec gateway serve`` as a process with ``[[saef_cert]]`` associations that fetch their CRLs
from a real CRL HTTP server (``crl_urls``, ``crl_issuers``) or ask a real OCSP responder
(``ocsp``, ``ocsp_url``), both served by this test on 127.0.0.1 from the development CA.

The gateway fetches the CRLs before it listens; an AE with a good certificate registers in ACME;
after the CA revokes two AEs, the one under OCSP is refused at its next handshake (alert
certificate_revoked), the one under CRL URLs only after SIGHUP made the gateway fetch at once
(crl_refresh_s = 3600); what the refused AEs tried to create does not exist in ACME."""

from __future__ import annotations

import asyncio
import queue
import signal
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _gateway_support import GatewayProcess
from _saef_support import (
    ADMIN,
    SP,
    ae_certificate_client,
    gateway_toml_head,
    utc_now,
    write_ca_files,
    write_cse_credentials,
)
from cryptography import x509

from m2msec.net.acme import AcmeCSE
from m2msec.net.client import OneM2MClient
from m2msec.onem2m import Operation, RequestPrimitive, ResourceType
from m2msec.onem2m.primitives import new_request_id
from m2msec.pki import (
    CertificateFlavour,
    DevCA,
    IssuedCertificate,
    OCSPResponder,
)
from m2msec.pki.crl_http import CRLHTTPServer
from m2msec.pki.ocsp_http import OCSPHTTPServer
from m2msec.saef.http import SAEFHTTPClient
from m2msec.tls.engine import TLSFailureReason, TLSHandshakeError

pytestmark = pytest.mark.acme


class StatusServers:
    """The CA's CRLs (CRLHTTPServer) and OCSP responder (OCSPHTTPServer) on an event loop of
    their own thread, counting what they are asked."""

    def __init__(self, ca: DevCA) -> None:
        self.crl_hits = 0
        self.ocsp_hits = 0
        responder = OCSPResponder(ca, clock=utc_now)

        def crl(signer: str | None) -> x509.CertificateRevocationList:
            self.crl_hits += 1
            return ca.issue_crl(now=utc_now(), signer=signer)  # type: ignore[arg-type]

        def ocsp(der: bytes) -> bytes:
            self.ocsp_hits += 1
            return responder.respond(der)

        self.crl = CRLHTTPServer({"issuing": lambda: crl(None), "root": lambda: crl("root")})
        self.ocsp = OCSPHTTPServer(ocsp)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._call(self.crl.start())
        self._call(self.ocsp.start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        self._call(self.crl.close())
        self._call(self.ocsp.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def ca() -> DevCA:
    return DevCA.create("SAEF status e2e SP", now=utc_now() - timedelta(hours=1), intermediate=True)


@pytest.fixture(scope="module")
def servers(ca: DevCA) -> Iterator[StatusServers]:
    s = StatusServers(ca)
    yield s
    s.close()


def _stdout_lines(proc: Any) -> queue.Queue[str]:
    q: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [q.put(line) for line in proc.stdout], daemon=True).start()
    return q


def test_crl_urls_and_ocsp_for_ae_certificates_through_the_gateway_process(
        acme: AcmeCSE, gwdir: Path, tag: str, ca: DevCA, servers: StatusServers) -> None:
    t0 = utc_now() - timedelta(minutes=30)
    good, by_crl, by_ocsp = f"Cst-good-{tag}", f"Cst-crl-{tag}", f"Cst-ocsp-{tag}"
    issued: dict[str, IssuedCertificate] = {
        ae: ca.issue(CertificateFlavour.AE_ID, [f"//{SP}/{acme.cse_id}/{ae}"], now=t0) for ae in (good, by_crl, by_ocsp)}
    write_cse_credentials(gwdir, ca.issue(CertificateFlavour.CSE_ID, [f"in.{SP}"], now=t0), "st-cse.pem", "st-cse.key")
    write_ca_files(gwdir, ca, "st-root.pem", "st-sub.pem")
    crl_keys = (f'crl_urls = ["{servers.crl.url("issuing")}", "{servers.crl.url("root")}"]\n'
                'crl_issuers = "st-sub.pem"\ncrl_refresh_s = 3600\n')
    ocsp_keys = f'ocsp = true\nocsp_url = "{servers.ocsp.url}"\nocsp_timeout_s = 3\n'
    text = gateway_toml_head(acme, gwdir, "gateway-saef-status.db") + """[saef]
listen = "127.0.0.1:0"
cert = "st-cse.pem"
key = "st-cse.key"
"""
    for ae, keys in ((good, crl_keys), (by_crl, crl_keys), (by_ocsp, ocsp_keys)):
        text += (f'[[saef_cert]]\nflavour = "ae-id"\nidentifier = "//{SP}/{acme.cse_id}/{ae}"\n'
                 f'root_of_trust = "st-root.pem"\nae_id = "{ae}"\nrevocation = "if-available"\n{keys}')
    config = gwdir / "gateway-saef-status.toml"
    config.write_text(text, encoding="utf-8")

    gw = GatewayProcess(config, acme.url, saef_listen="127.0.0.1:0")
    try:
        assert gw.saef_address is not None
        assert servers.crl_hits == 2  # both CRLs fetched before the listener said it listens
        lines = _stdout_lines(gw.proc)
        base = acme.cse_base

        def attempt(ae: str, rn: str) -> TLSHandshakeError | int:
            """``ae`` registers (or, if registered, creates container ``rn``): the RSC, or the handshake error."""
            ep = ae_certificate_client(issued[ae], ca, "/" + acme.cse_id)
            if rn == "":
                r = RequestPrimitive(op=Operation.CREATE, to=base, fr=ae, rqi=new_request_id(), rvi="3",
                                     ty=ResourceType.AE,
                                     pc={"m2m:ae": {"rn": ae, "api": "Nm2msec", "rr": False, "srv": ["3"]}})
            else:
                r = RequestPrimitive(op=Operation.CREATE, to=f"{base}/{ae}", fr=ae, rqi=new_request_id(), rvi="3",
                                     ty=ResourceType.CONTAINER, pc={"m2m:cnt": {"rn": rn}})

            async def go() -> int:
                async with await SAEFHTTPClient.connect(ep, *gw.saef_address, timeout=8) as c:  # type: ignore[misc]
                    return int((await c.send(r)).rsc)

            try:
                return asyncio.run(asyncio.wait_for(go(), 20))
            except TLSHandshakeError as exc:
                return exc

        def admin_rsc(path: str) -> int:
            with OneM2MClient(gw.url, ADMIN) as c:
                return int(c.retrieve(path, check=False).rsc)

        def revoked(res: TLSHandshakeError | int) -> bool:
            return isinstance(res, TLSHandshakeError) and res.reason is TLSFailureReason.BAD_CERTIFICATE \
                and "certificate revoked" in res.detail

        for ae in (good, by_crl):
            assert attempt(ae, "") == 2001  # registered in ACME through the SAEF listener
        assert servers.ocsp_hits == 0  # CRL associations: the fetched CRLs gave the status
        ca.revoke(issued[by_crl].certificate, now=utc_now(), reason=x509.ReasonFlags.key_compromise)
        ca.revoke(issued[by_ocsp].certificate, now=utc_now(), reason=x509.ReasonFlags.key_compromise)

        # OCSP: refused at its first handshake after the revocation, before any request
        assert revoked(attempt(by_ocsp, ""))
        assert servers.ocsp_hits == 2  # leaf and intermediate
        assert admin_rsc(f"{base}/{by_ocsp}") == 4004

        # CRL URLs: the CRL in force predates the revocation (next refresh in an hour) ...
        assert attempt(by_crl, "before") == 2001
        # ... SIGHUP fetches at once
        hits = servers.crl_hits
        gw.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        line = ""
        while time.monotonic() < deadline and not line.startswith("saef reloaded"):
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                pass
        assert line.strip() == "saef reloaded 3 binding(s)"
        assert servers.crl_hits == hits + 2  # fetched before the gateway answered
        assert revoked(attempt(by_crl, "after"))
        assert admin_rsc(f"{base}/{by_crl}/before") == 2000
        assert admin_rsc(f"{base}/{by_crl}/after") == 4004  # nothing of the refused association reached ACME
        assert attempt(good, "still") == 2001
        assert gw.proc.poll() is None
    finally:
        assert gw.stop() == 0
