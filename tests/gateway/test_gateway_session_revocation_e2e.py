"""Certificate status of *established* SAEF associations end to end (TS-0003 8.1.2.2, 8.2.2.2;
TS-0004 7.3; profiles P26, G13): a real ACME CSE, ``m2msec gateway serve`` as a process with
``[[saef_cert]]`` associations under CRL files (``crls``) or OCSP (``ocsp``, ``ocsp_url``; a real
responder served by this test from the development CA, answers valid 2 s) and a ``[[saef_psk]]``.

Four AEs register in ACME through the SAEF listener and keep their associations open:

* the CA revokes one CRL AE, the CRL files are rewritten and the gateway gets SIGHUP: that AE's
  next request on the same connection is answered 4106 / HTTP 403 with ``Connection: close`` and
  its X-M2M-RI, the connection is closed and ACME never sees the request; the other CRL AE and
  the PSK AE go on;
* the CA revokes the OCSP AE; once its held GOOD answer expired, a second handshake of the same
  certificate is refused (certificate_revoked) and the REVOKED answer it fetched ends the older
  association at its next request in the same way."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import sys
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _h11_session import write_crls
from _saef_keepalive import SAEFKeepAlive

from m2msec.net.acme import AcmeCSE
from m2msec.net.client import OneM2MClient
from m2msec.onem2m import Operation, RequestPrimitive, ResourceType
from m2msec.onem2m.primitives import new_request_id
from m2msec.pki import CertificateFlavour, DevCA, OCSPResponder
from m2msec.pki.ocsp_http import OCSPHTTPServer
from m2msec.saef import KpsaEntry, psk_client
from m2msec.tls.engine import TLSFailureReason, TLSHandshakeError

pytestmark = pytest.mark.acme

OCSP_VALIDITY = timedelta(seconds=2)


class ThreadedResponder:
    """The CA's OCSP responder over HTTP on an event loop of its own thread (the gateway process
    asks it while the test's loop waits for a handshake)."""

    def __init__(self, ca: DevCA) -> None:
        self.hits = 0
        real = OCSPResponder(ca, clock=utc_now, validity=OCSP_VALIDITY)

        def respond(der: bytes) -> bytes:
            self.hits += 1
            return real.respond(der)

        self.server = OCSPHTTPServer(respond)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def responder_ca() -> Iterator[tuple[DevCA, ThreadedResponder]]:
    ca = DevCA.create("SAEF session e2e SP", now=utc_now() - timedelta(hours=1), intermediate=True)
    r = ThreadedResponder(ca)
    yield ca, r
    r.close()


def _stdout_lines(proc: Any) -> queue.Queue[str]:
    q: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [q.put(line) for line in proc.stdout], daemon=True).start()
    return q


def _wait_line(lines: queue.Queue[str], prefix: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"no line {prefix!r} from the gateway")


def test_revocation_after_the_handshake_ends_gateway_saef_associations(
        acme: AcmeCSE, gwdir: Path, tag: str, responder_ca: tuple[DevCA, ThreadedResponder]) -> None:
    ca, responder = responder_ca
    t0 = utc_now() - timedelta(minutes=30)
    good, bad, oc, psk = (f"Cses-{n}-{tag}" for n in ("good", "bad", "ocsp", "psk"))
    issued = {ae: ca.issue(CertificateFlavour.AE_ID, [f"//{SP}/{acme.cse_id}/{ae}"], now=t0) for ae in (good, bad, oc)}
    write_cse_credentials(gwdir, ca.issue(CertificateFlavour.CSE_ID, [f"in.{SP}"], now=t0), "ss-cse.pem", "ss-cse.key")
    write_ca_files(gwdir, ca, "ss-root.pem", "ss-sub.pem")
    write_crls(gwdir, ca)  # issuing.crl, root.crl
    kid, kpsa = f"ses-{tag}@sp.{SP}", os.urandom(32)
    (gwdir / "ss-ae.psk").write_text(kpsa.hex())
    text = gateway_toml_head(acme, gwdir, "gateway-session.db") + f"""[saef]
listen = "127.0.0.1:0"
cert = "ss-cse.pem"
key = "ss-cse.key"
[[saef_psk]]
kpsa_id = "{kid}"
kpsa_file = "ss-ae.psk"
ae_id = "{psk}"
"""
    crl_keys = 'crls = ["issuing.crl", "root.crl"]\n'
    ocsp_keys = f'ocsp = true\nocsp_url = "{responder.server.url}"\nocsp_timeout_s = 3\n'
    for ae, keys in ((good, crl_keys), (bad, crl_keys), (oc, ocsp_keys)):
        text += (f'[[saef_cert]]\nflavour = "ae-id"\nidentifier = "//{SP}/{acme.cse_id}/{ae}"\n'
                 f'root_of_trust = "ss-root.pem"\nae_id = "{ae}"\nrevocation = "if-available"\n{keys}')
    config = gwdir / "gateway-session.toml"
    config.write_text(text, encoding="utf-8")
    base = acme.cse_base

    def client(ae: str) -> Any:
        if ae == psk:
            return psk_client(KpsaEntry(kid, kpsa), id_b=acme.csi)
        return ae_certificate_client(issued[ae], ca, acme.csi)

    def register(ae: str) -> RequestPrimitive:
        return RequestPrimitive(op=Operation.CREATE, to=base, fr=ae, rqi=new_request_id(), rvi="3",
                                ty=ResourceType.AE, pc={"m2m:ae": {"rn": ae, "api": "Nm2msec", "rr": False,
                                                                   "srv": ["3"]}})

    def container(ae: str, rn: str) -> RequestPrimitive:
        return RequestPrimitive(op=Operation.CREATE, to=f"{base}/{ae}", fr=ae, rqi=f"{ae}-{rn}", rvi="3",
                                ty=ResourceType.CONTAINER, pc={"m2m:cnt": {"rn": rn}})

    gw = GatewayProcess(config, acme.url, saef_listen="127.0.0.1:0")
    try:
        assert gw.saef_address is not None
        host, port = gw.saef_address
        lines = _stdout_lines(gw.proc)

        async def ended(s: SAEFKeepAlive, ae: str, rn: str) -> None:
            a = await s.send(container(ae, rn))
            assert (a.status, a.rsc) == (403, 4106), a
            assert a.headers["connection"].lower() == "close" and a.headers["x-m2m-ri"] == f"{ae}-{rn}"
            assert b"revoked" in a.body
            assert await s.closed_by_server()

        async def main() -> None:
            s = {ae: await SAEFKeepAlive.connect(client(ae), host, port) for ae in (good, bad, oc, psk)}
            try:
                for ae, sess in s.items():
                    assert (await sess.send(register(ae))).rsc == 2001, ae  # registered in ACME
                assert s[psk].ctx.framework == "psk"
                first_ocsp = time.monotonic()
                assert responder.hits == 2  # the OCSP AE's leaf and intermediate, at its handshake

                # CRL files rewritten + SIGHUP
                ca.revoke(issued[bad].certificate, now=utc_now(), reason=x509.ReasonFlags.key_compromise)
                write_crls(gwdir, ca)
                gw.proc.send_signal(signal.SIGHUP)
                assert await asyncio.to_thread(_wait_line, lines, "saef reloaded") == "saef reloaded 4 binding(s)"
                await ended(s[bad], bad, "after")
                for ae in (good, psk, oc):
                    assert (await s[ae].send(container(ae, "c1"))).rsc == 2001, ae

                # OCSP: a second handshake of the same certificate learns REVOKED
                ca.revoke(issued[oc].certificate, now=utc_now(), reason=x509.ReasonFlags.key_compromise)
                await asyncio.sleep(max(0.0, OCSP_VALIDITY.total_seconds() + 0.3 - (time.monotonic() - first_ocsp)))
                with pytest.raises(TLSHandshakeError) as ei:
                    await SAEFKeepAlive.connect(client(oc), host, port)
                assert ei.value.reason is TLSFailureReason.BAD_CERTIFICATE and "certificate revoked" in ei.value.detail
                await ended(s[oc], oc, "after")
                for ae in (good, psk):
                    assert (await s[ae].send(container(ae, "c2"))).rsc == 2001, ae
            finally:
                for sess in s.values():
                    sess.close()

        asyncio.run(asyncio.wait_for(main(), 40))

        with OneM2MClient(gw.url, ADMIN) as c:
            for ae in (bad, oc):  # nothing of the refused requests reached ACME
                assert int(c.retrieve(f"{base}/{ae}/after", check=False).rsc) == 4004
                assert int(c.retrieve(f"{base}/{ae}", check=False).rsc) == 2000
            assert int(c.retrieve(f"{base}/{good}/c2", check=False).rsc) == 2000
        assert gw.proc.poll() is None
        gw._err.seek(0)  # the gateway's stderr: one log line per ended association, no key material
        err = gw._err.read().decode("utf-8", "replace")
        ended_lines = [ln for ln in err.splitlines() if "no longer authenticates" in ln]
        assert len(ended_lines) == 2 and f"'{bad}'" in ended_lines[0] and f"'{oc}'" in ended_lines[1], err[-3000:]
        assert all("revoked" in ln for ln in ended_lines)
        assert kpsa.hex() not in err and "PRIVATE KEY" not in err
    finally:
        assert gw.stop() == 0
