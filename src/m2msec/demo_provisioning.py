"""Demo step: remote security provisioning used end to end (TS-0003 8.3.2.1, 8.8, 8.4.2 C.6a, 10.3).

Starts an M2M Enrolment Function (its own thread and event loop) and an M2M
Authentication Function on 127.0.0.1, both on SQLite stores under ``workdir``; then

1. AE1 enrols with the MEF through the Pre-Provisioned Symmetric Key RSPF (TLS-PSK with
   Kpm; Ke/KeID exported from the handshake) and is instructed to enrol with the MAF;
2. AE1 opens the MAF Handshake with ``psk_identity`` = KeID and Km (10.3.2): the MAF does
   not know the KeID, fetches Km from the MEF (``/fetchCredentials/<KeID>/21``) and
   registers AE1 under the Enrolee-ID the MEF reported, assigning a KmID;
3. AE1 registers a SUID-33 key (MAF-based ESPrim) for AE2 (a MAF Client with a
   pre-provisioned Km);
4. one ESPrim exchange AE1 -> AE2: AE2's Receiver sees an unknown kid, retrieves Kc from
   the MAF (C.6a), opens the request, and AE1 opens the sealed response.

Only identifiers and key fingerprints (first 4 octets of SHA-256 of the key) are shown.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

__all__ = ["run_provisioning"]

Rows = list[tuple[str, str]]

MEF_FQDN = "mef.m2msec.example"
MAF_FQDN = "maf.m2msec.example"
ADMIN_FQDN = "sp.m2msec.example"
AE1 = "Cdemo-prov-ae1"
AE2 = "Cdemo-prov-ae2"


def _now() -> datetime:
    return datetime.now(UTC)


def fingerprint(key: bytes) -> str:
    """First 4 octets of SHA-256(key), hex - identifies a key without revealing it."""
    return hashlib.sha256(key).digest()[:4].hex()


class _MEFThread:
    """The MEF on its own event loop: the MAF's PSK callback fetches from it synchronously."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="demo-mef", daemon=True)

    def __enter__(self) -> tuple[str, int]:
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(self.server.start("127.0.0.1", 0), self.loop)
        return fut.result(10)  # type: ignore[no-any-return]

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def run_provisioning(workdir: Path) -> Rows:
    """Run the provisioning demo; returns ``(name, value)`` rows; raises on any failure."""
    workdir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(asyncio.wait_for(_run(workdir), 60))


async def _run(workdir: Path) -> Rows:  # noqa: C901 - a linear script
    from m2msec.esprim import MemoryReceiverState, Originator, Receiver, ReceiverPolicy, SessionReady
    from m2msec.keys import derive_km, parse_key_id
    from m2msec.maf import AdminConfig, MAFClient, MAFClientConfig, MAFService
    from m2msec.esdata import Source, Target
    from m2msec.maf.keysources import MAFESDataKeySource, MAFESPrimKeySource, esdata_recipient, esprim_originator_key
    from m2msec.maf.mef import FetcherMEFClient
    from m2msec.maf.server import MAFServer
    from m2msec.mef import (
        EnroleeConfig,
        EnrolmentRequest,
        MAFPreference,
        MEFKeyFetcher,
        MEFServer,
        MEFState,
        TargetConfig,
        enrol,
        mef_tls_config,
    )
    from m2msec.onem2m import Operation, RequestPrimitive, ResponsePrimitive
    from m2msec.onem2m import ResponseStatusCode as RSC
    from m2msec.onem2m.enums import SUID
    from m2msec.store import KeyEncryptionKey, open_store
    from m2msec.tls.engine import PSKCredentials

    rows: Rows = []
    tag = os.urandom(3).hex()
    mef_store = open_store(f"sqlite:///{workdir / f'mef-{tag}.db'}", KeyEncryptionKey.generate(), clock=_now)
    maf_store = open_store(f"sqlite:///{workdir / f'maf-{tag}.db'}", KeyEncryptionKey.generate(), clock=_now)
    try:
        # Bootstrap Credential/Instruction Configuration (operator side).
        kpm_id, kpm = f"kpm-ae1-{tag}", os.urandom(32)
        maf_psk_id, maf_psk = f"maf-{tag}", os.urandom(32)
        state = MEFState(mef_store, MEF_FQDN, _now)
        state.add_enrolee(EnroleeConfig(AE1, kpm_id=kpm_id, expiry_seconds=3600, mafs=(MAFPreference(
            MAF_FQDN, f"https://{MAF_FQDN}/keyReg", f"https://{MAF_FQDN}/keyRetr", f"https://{MAF_FQDN}/clientReg"),)),
            kpm=kpm)
        state.add_target(TargetConfig(MAF_FQDN, psk_id=maf_psk_id), psk=maf_psk)
        ae2_kmid, ae2_km = f"{os.urandom(16).hex()}@{MAF_FQDN}", os.urandom(32)

        with _MEFThread(MEFServer(state)) as (mef_host, mef_port):
            rows.append(("MEF", f"{MEF_FQDN} on {mef_host}:{mef_port} (PSK RSPF)"))
            fetcher = MEFKeyFetcher(mef_host, mef_port, mef_tls_config(psk=PSKCredentials(maf_psk_id.encode(), maf_psk)),
                                    target_id=MAF_FQDN, mef_fqdn=MEF_FQDN)
            svc = MAFService(maf_store, MAF_FQDN, admins=[AdminConfig(ADMIN_FQDN)], clock=_now,
                             mef=FetcherMEFClient(fetcher))
            svc.add_km_client(ae2_kmid, ae2_km, client_id=AE2)

            # 1. AE1 enrols through the MEF (Kpm -> Ke/KeID).
            e = await enrol(mef_host, mef_port, mef_tls_config(psk=PSKCredentials(kpm_id.encode(), kpm)),
                            EnrolmentRequest(maf_enrolment=True))
            if e.enrolee_id != AE1 or parse_key_id(e.ke_id, hex_length=16).fqdn != MEF_FQDN:
                raise RuntimeError("enrolment returned an unexpected Enrolee-ID or KeID")
            km = e.km(MAF_FQDN)
            rows += [("AE1 enrolled (PSK RSPF)", f"{AE1} KeID {e.ke_id}"),
                     ("AE1 Ke fingerprint", fingerprint(e.ke)),
                     ("AE1 Km for the MAF (10.3.2)", fingerprint(km))]

            async with MAFServer(svc) as srv:
                rows.append(("MAF", f"{MAF_FQDN} on 127.0.0.1:{srv.port}"))
                # 2. MAF Handshake with KeID/Km: the MAF fetches Km from the MEF.
                c1 = MAFClient(MAFClientConfig(MAF_FQDN, ADMIN_FQDN, "127.0.0.1", srv.port,
                                               psk=PSKCredentials(e.ke_id.encode(), km)))
                async with c1:
                    reg = await c1.register(_now() + timedelta(days=1))
                if reg.maf_client_id != AE1 or not reg.assigned_symm_key_id or fetcher.fetches != 1:
                    raise RuntimeError("the MAF did not register AE1 from the MEF's Km")
                fetched = fetcher.cached(e.ke_id, 21)
                if fetched is None or fetched.key != derive_km(e.ke, MAF_FQDN):
                    raise RuntimeError("the Km the MAF fetched differs from the enrolee's")
                rows += [("MAF fetched Km from the MEF", f"SUID 21, fingerprint {fingerprint(fetched.key)}"),
                         ("AE1 registered with the MAF", f"MAF Client ID {reg.maf_client_id}, KmID {reg.assigned_symm_key_id}")]

                # 3. AE1 (now with its assigned KmID) registers a SUID-33 key for AE2.
                c1 = MAFClient(MAFClientConfig(MAF_FQDN, ADMIN_FQDN, "127.0.0.1", srv.port,
                                               psk=PSKCredentials(reg.assigned_symm_key_id.encode(), km)))
                c2 = MAFClient(MAFClientConfig(MAF_FQDN, ADMIN_FQDN, "127.0.0.1", srv.port,
                                               psk=PSKCredentials(ae2_kmid.encode(), ae2_km)))
                async with c1, c2:
                    await c2.register(_now() + timedelta(days=1))
                    kreg = await c1.register_key(SUID.MAF_ESPRIM, [AE2], _now() + timedelta(hours=1))
                    orig_key = esprim_originator_key(kreg, AE2)
                    rows += [("AE2 registered with the MAF", f"{AE2} (pre-provisioned KmID {ae2_kmid})"),
                             ("SUID-33 key registered by AE1 for AE2", f"Key ID {kreg.key_id}"),
                             ("pairwiseESPrimKey (C.6a.4)", fingerprint(orig_key.key))]

                    # 4. ESPrim AE1 -> AE2; AE2 retrieves Kc from the MAF on first sight.
                    keys = MAFESPrimKeySource(c2, clock=_now)
                    receiver = Receiver(keys=keys, state=MemoryReceiverState(clock=_now), clock=_now,
                                        policy=ReceiverPolicy(supported_suids=(SUID.MAF_ESPRIM,)))
                    originator = Originator(clock=_now)
                    step = originator.start(orig_key, receiver.e2e_sec_info())
                    if not isinstance(step, SessionReady):
                        raise RuntimeError("ESPrim session not ready with the shared rand object")
                    req = RequestPrimitive(op=Operation.RETRIEVE, to=f"/id-in/{AE2}/cnt", fr=AE1, rqi="demo-1",
                                           rvi="3")
                    obj, pending = originator.protect_request(req, step.session)
                    await keys.prefetch(Receiver.peek(obj).kid)
                    inner, ctx = receiver.open_request(obj, outer_from=AE1)
                    # identical but for the deadline the Originator sealed into it (rqet, R11)
                    if inner.rqet is None or replace(inner, rqet=None) != req or ctx.peer_id != AE1:
                        raise RuntimeError("the Receiver did not recover AE1's request")
                    sealed = receiver.protect_response(
                        ctx, ResponsePrimitive(rsc=RSC.OK, rqi=inner.rqi, pc={"m2m:cin": {"con": "22.5"}}, rvi="3"))
                    rsp = originator.open_response(sealed, pending)
                    if rsp.rsc != RSC.OK or rsp.pc != {"m2m:cin": {"con": "22.5"}}:
                        raise RuntimeError("the Originator could not open the sealed response")
                    rows += [("AE2 pairwiseESPrimKey from the retrieved Kc", fingerprint(keys.resolve(kreg.key_id).key)),
                             ("ESPrim AE1 -> AE2", f"RETRIEVE {req.to}: {int(rsp.rsc)} OK, response sealed and opened")]

                    # 5. ESData via the MAF (8.5, SUID 34): AE1 seals a reading for AE2 with a key from a
                    # fresh MAF Handshake (one exporter key per session); AE2 opens it, retrieving on demand.
                    await c1.connect()
                    ereg = await c1.register_key(SUID.MAF_ESDATA_ENCRYPT, [AE2], _now() + timedelta(hours=1))
                    reading = b'{"temperature": 22.5}'
                    envelope = Source().seal(reading, serialization="json", content_type="application/json",
                                             recipients=[esdata_recipient(ereg)])
                    ek = MAFESDataKeySource(c2)
                    opened = await ek.open(Target(ek), envelope)
                    if opened.payload != reading or opened.decrypted_with != ereg.key_id:
                        raise RuntimeError("AE2 could not open the ESData envelope with the MAF key")
                    rows += [("ESData AE1 -> AE2 (SUID 34)",
                              f"reading sealed with key {ereg.key_id} ({opened.key_management}/{opened.content_encryption})"),
                             ("AE2 opened it", "key retrieved from the MAF on first sight of its kid: "
                                               f"{opened.payload.decode()}")]
    finally:
        mef_store.close()
        maf_store.close()
    return rows
