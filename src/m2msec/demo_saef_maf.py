"""Demo step: the MAF's certificate handshake, then MAF-based SAEF over DTLS 1.2 (TS-0003 8.8.2.2, 8.2.2.3).

Starts an M2M Authentication Function on 127.0.0.1 (its own thread and event loop, SQLite
store under ``workdir``) that accepts both MAF Handshake kinds of 8.8.2.2:

1. an AE with an AE-ID certificate from a name-constrained development CA runs the
   certificate MAF Handshake (the MAF verifies it against its MAF Client Certificate
   Information, 8.1.2.5) and registers; a certificate from a CA the MAF does not trust is
   refused in the handshake;
2. the AE registers a SUID-32 key (MAF-based SAEF) for the IN-CSE with the exporter option:
   Kc is exported from the AE's MAF session with "EXPORTER-oneM2M-Connection" (10.3.1), the
   MAF keeps the same value; the AE itself, not being a Target, is refused its retrieval (4103);
3. the AE opens a DTLS 1.2 PSK association over UDP with the IN-CSE, ``psk_identity`` = the
   Key Identifier, ``psk`` = Kc (8.2.2.3, 10.2.2 suite for DTLS).  The IN-CSE (a PSK MAF
   Client) retrieves Kc from the MAF during the handshake - its listener reads the identity
   from the AE's ClientKeyExchange and holds the datagrams meanwhile, so its PSK callback
   never waits for the MAF - and binds the association to the Source MAF Client ID; a datagram round trip runs over it; a wrong Kc gets no association
   (DTLS drops records that fail authentication, RFC 6347 4.1.2.7, so the attempt times out).

Only identifiers and key fingerprints are shown.
"""

from __future__ import annotations

import asyncio
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

__all__ = ["run_saef_maf"]

Rows = list[tuple[str, str]]

SP = "m2msec.example"
MAF_FQDN = f"maf.{SP}"
ADMIN_FQDN = f"sp.{SP}"
AE_ID = f"//{SP}/id-in/Cdemo-saef-ae"
CSE_ID = "/id-in"


def _now() -> datetime:
    return datetime.now(UTC)


class _ServerThread:
    """An asyncio server object with ``start()``/``close()`` on its own event loop and thread,
    as a separate service runs (the demo's own loop drives the AE and the IN-CSE)."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="demo-maf", daemon=True)

    def __enter__(self) -> Any:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def run_saef_maf(workdir: Path) -> Rows:
    """Run the step; returns ``(name, value)`` rows; raises on any unexpected outcome."""
    from m2msec.maf import AdminConfig, MAFClientConfig, MAFService
    from m2msec.maf.server import MAFServer
    from m2msec.pki import CertificateFlavour, DevCA, PeerCertInfo
    from m2msec.store import KeyEncryptionKey, open_store
    from m2msec.tls.engine import CertCredentials, PSKCredentials

    workdir.mkdir(parents=True, exist_ok=True)
    rows: Rows = []
    now = _now()
    ca = DevCA.create("m2msec demo MAF CA", now=now - timedelta(minutes=5), permit_dns=[SP], permit_uri=[SP])
    rogue = DevCA.create("rogue CA", now=now - timedelta(minutes=5), permit_dns=[SP], permit_uri=[SP])
    maf_cert = ca.issue(CertificateFlavour.FQDN, [MAF_FQDN], now=now)
    ae_cert = ca.issue(CertificateFlavour.AE_ID, [AE_ID], now=now)
    rogue_cert = rogue.issue(CertificateFlavour.AE_ID, [AE_ID], now=now)
    cse_kmid, cse_km = f"{os.urandom(16).hex()}@{MAF_FQDN}", os.urandom(32)

    store = open_store(f"sqlite:///{workdir / f'maf-{os.urandom(3).hex()}.db'}", KeyEncryptionKey.generate(),
                       clock=_now)
    svc = MAFService(store, MAF_FQDN, admins=[AdminConfig(ADMIN_FQDN)], clock=_now,
                     client_trust_anchors=(ca.trust_anchor,))
    svc.add_cert_client(AE_ID, PeerCertInfo(CertificateFlavour.AE_ID, AE_ID))
    svc.add_km_client(cse_kmid, cse_km, client_id=CSE_ID)
    server = MAFServer(svc, credentials=CertCredentials(maf_cert.private_key, maf_cert.certificate,  # type: ignore[arg-type]
                                                        tuple(maf_cert.chain)))
    try:
        with _ServerThread(server) as srv:
            rows.append(("MAF", f"{MAF_FQDN} on 127.0.0.1:{srv.port}: TLS-PSK and certificate MAF Handshake"))

            def cert_client(issued: Any) -> MAFClientConfig:
                return MAFClientConfig(maf_fqdn=MAF_FQDN, admin_fqdn=ADMIN_FQDN, host="127.0.0.1", port=srv.port,
                                       credentials=CertCredentials(issued.private_key, issued.certificate,
                                                                   tuple(issued.chain)),
                                       maf_trust_anchors=(ca.trust_anchor,), clock=_now)

            cse_cfg = MAFClientConfig(maf_fqdn=MAF_FQDN, admin_fqdn=ADMIN_FQDN, host="127.0.0.1", port=srv.port,
                                      psk=PSKCredentials(cse_kmid.encode(), cse_km))
            rows += asyncio.run(asyncio.wait_for(_flow(cert_client(ae_cert), cert_client(rogue_cert), cse_cfg), 60))
    finally:
        store.close()
    return rows


async def _flow(ae_cfg: Any, rogue_cfg: Any, cse_cfg: Any) -> Rows:
    from m2msec.demo_provisioning import fingerprint
    from m2msec.maf import MAFClient
    from m2msec.maf.client import MAFResponseError
    from m2msec.maf.keysources import MAFKpsaDirectory, saef_kpsa_entry
    from m2msec.onem2m import ResponseStatusCode as RSC
    from m2msec.onem2m.enums import SUID
    from m2msec.saef import KpsaEntry, connect_dtls, psk_client, psk_server, serve_dtls
    from m2msec.tls.engine import TLSHandshakeError
    from m2msec.tls.profiles import Transport

    rows: Rows = []
    # 1. certificate MAF Handshake + Client Registration; the CSE registers with its Km
    async with MAFClient(ae_cfg) as ae:
        reg = await ae.register(_now() + timedelta(days=1))
        if reg.maf_client_id != AE_ID:
            raise RuntimeError(f"the MAF registered {reg.maf_client_id!r}, not the certificate's AE-ID")
        rows.append(("AE: certificate MAF Handshake + Client Registration",
                     f"MAF Client ID {reg.maf_client_id} (from the verified AE-ID certificate)"))
        async with MAFClient(cse_cfg) as cse:
            await cse.register(_now() + timedelta(days=1))
        # 2. SUID 32 key for the IN-CSE, Kc exported from this MAF session
        key = await ae.register_key(SUID.MAF_SAEF, [CSE_ID], _now() + timedelta(hours=1))
        rows.append(("AE: Key Registration (SUID 32, exporter option)",
                     f"{key.key_id}, target {CSE_ID}, Kc {fingerprint(key.key)}"))
        try:
            await ae.retrieve_key(key.key_id)
            raise RuntimeError("the Source MAF Client retrieved its own SAEF key")
        except MAFResponseError as exc:
            if exc.rsc != RSC.ORIGINATOR_HAS_NO_PRIVILEGE:
                raise
            rows.append(("AE (not a Target) retrieves the key", f"refused: {int(exc.rsc)} {exc.rsc.name}"))
    try:
        async with MAFClient(rogue_cfg) as _rogue:
            raise RuntimeError("a certificate from an untrusted CA passed the MAF Handshake")
    except TLSHandshakeError as exc:
        rows.append(("AE-ID certificate from a CA the MAF does not trust", f"MAF Handshake refused: {exc.reason.value}"))

    # 3. DTLS 1.2 PSK association AE -> IN-CSE with Kc; the CSE retrieves Kc during the handshake
    directory = MAFKpsaDirectory(cse_cfg, clock=_now, negative_ttl=0.0)
    seen: list[tuple[str, bytes]] = []

    async def cse_handler(session: Any, ctx: Any) -> None:
        data = await session.recv(10)
        seen.append((ctx.peer_id, data))
        session.send(b"ack " + data)

    try:
        dtls_server = await serve_dtls(psk_server(directory, id_b=CSE_ID, transport=Transport.DTLS,
                                                  prefetch=directory.prefetch), cse_handler)
        host, port = dtls_server.sockname
        try:
            session, ctx = await connect_dtls(psk_client(saef_kpsa_entry(key, CSE_ID), transport=Transport.DTLS),
                                              host, port, timeout=10)
            try:
                session.send(b"hello over DTLS")
                reply = await session.recv(10)
            finally:
                session.close()
            if seen != [(AE_ID, b"hello over DTLS")] or reply != b"ack hello over DTLS":
                raise RuntimeError(f"unexpected DTLS exchange: {seen!r}, {reply!r}")
            if directory.blocking_retrievals:
                raise RuntimeError("the PSK callback waited for the MAF (the prefetch did not run)")
            rows += [("AE -> IN-CSE: DTLS 1.2 over UDP", f"{ctx.protocol}, {ctx.cipher}, psk_identity = the Key Identifier"),
                     ("IN-CSE: Kc retrieved from the MAF during the handshake",
                      f"{directory.retrievals} retrieval, while the AE's datagrams were held (the PSK callback "
                      f"did not wait); association bound to {seen[0][0]}"),
                     ("datagram round trip", "AE sent 15 octets, IN-CSE echoed them")]
            try:
                bad, _ = await connect_dtls(psk_client(KpsaEntry(key.key_id, bytes(32), peer_id=CSE_ID),
                                                       transport=Transport.DTLS), host, port, timeout=1.5)
                bad.close()
                raise RuntimeError("a wrong Kc established a DTLS association")
            except TLSHandshakeError as exc:
                rows.append(("wrong Kc under the same Key Identifier", f"no association ({exc.reason.value})"))
        finally:
            dtls_server.close()
    finally:
        directory.close()
    return rows
