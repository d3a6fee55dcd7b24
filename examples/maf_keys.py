"""Keys distributed by a MAF (TS-0003 8.8: 8.8.2.2 MAF Handshake, 8.8.2.3 Client Registration,
8.8.2.7 Key Registration, 8.8.2.8 Key Retrieval; 10.3.5 key identifiers) used for ESData
(TS-0003 8.5, SUID 34).

    .venv/bin/python examples/maf_keys.py

A MAF runs in-process on 127.0.0.1 over a temporary SQLite store.  Three MAF Clients were
provisioned with a Km/KmID each (TLS-PSK MAF Handshake): a sensor (Source), an application
(Target) and a third AE.  The sensor registers a key for the application; it seals a reading
with it and hands on only the key identifier.  The application retrieves the key from the MAF
and opens the reading; the third AE, not a target of the key, is refused.  Key bytes are never
printed (a fingerprint at most).  The application code is between the ``----`` markers; the
rest starts the MAF.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from m2msec.esdata import Source, Target, from_content_instance, to_content_instance
from m2msec.maf import AdminConfig, MAFClient, MAFClientConfig, MAFResponseError, MAFServer, MAFService
from m2msec.maf.keysources import MAFESDataKeySource, esdata_recipient
from m2msec.onem2m import SUID
from m2msec.store import KeyEncryptionKey, open_store
from m2msec.tls.engine import PSKCredentials, TLSHandshakeError

MAF_FQDN, ADMIN_FQDN = "maf.example.com", "sp.example.com"
SENSOR, APP, OTHER = "//sp.example.com/id-in/Csensor", "//sp.example.com/id-in/Capp", "//sp.example.com/id-in/Cother"


def now() -> datetime:
    return datetime.now(timezone.utc)


def fingerprint(key: bytes) -> str:
    return f"sha256:{hashlib.sha256(key).hexdigest()[:16]} ({len(key)} octets)"


async def main(workdir: Path) -> int:
    # Set-up: the MAF's store, and the Km/KmID each MAF Client was provisioned with (8.8.3).
    store = open_store(f"sqlite:///{workdir / 'maf.db'}", KeyEncryptionKey.generate(), clock=now)
    service = MAFService(store, MAF_FQDN, admins=[AdminConfig(ADMIN_FQDN)], clock=now)
    km = {ae: (f"{os.urandom(16).hex()}@{MAF_FQDN}", os.urandom(32)) for ae in (SENSOR, APP, OTHER)}
    for ae, (kmid, key) in km.items():
        service.add_km_client(kmid, key, client_id=ae)
    server = await MAFServer(service, host="127.0.0.1", port=0).start()
    print(f"MAF {MAF_FQDN} on 127.0.0.1:{server.port}, store {store.backend_name}")

    def config(ae: str) -> MAFClientConfig:  # each client's MAF Client Configuration (8.8.3)
        kmid, key = km[ae]
        return MAFClientConfig(MAF_FQDN, ADMIN_FQDN, "127.0.0.1", server.port,
                               psk=PSKCredentials(kmid.encode(), key), timeout=5.0)

    try:
        async with MAFClient(config(SENSOR)) as sensor, MAFClient(config(APP)) as app, \
                MAFClient(config(OTHER)) as other:
            for name, client in (("sensor", sensor), ("app", app), ("other", other)):
                reg = await client.register(now() + timedelta(days=1))  # 8.8.2.3
                print(f"{name} registered: MAF Client ID {reg.maf_client_id}, KmID {client.psk_identity}")

            # ---- Source: register a key for the Target, seal a reading with it
            key = await sensor.register_key(SUID.MAF_ESDATA_ENCRYPT, [APP], now() + timedelta(hours=1))
            reading = json.dumps({"temperature": 21.5, "unit": "Cel"}).encode()
            envelope = Source().seal(reading, serialization="json", content_type="application/json",
                                     recipients=[esdata_recipient(key)])
            cin = to_content_instance(envelope)  # stored in a CSE; carries only the key identifier
            # ----
            print(f"sensor registered key {key.key_id} (SUID {int(key.suid)}, Kc from the session "
                  f"exporter, {fingerprint(key.key)}) for target {APP}")

            # ---- Target: open; the key named in the envelope is retrieved from the MAF on demand (8.8.2.8)
            keys = MAFESDataKeySource(app)
            opened = await keys.open(Target(keys), from_content_instance(cin))
            kid = opened.decrypted_with
            # ----
            print(f"app retrieved {kid} and opened the reading: {json.loads(opened.payload)}")
            if opened.payload != reading or opened.decrypted_with != key.key_id:
                print("FAIL: the target did not recover the reading")
                return 1
            got = await app.retrieve_key(kid)
            print(f"  key source {got.source_id}, SUID {int(got.suid)}, expires {got.expires_at:%Y-%m-%dT%H:%M:%SZ}, "
                  f"same key: {got.key == key.key} ({fingerprint(got.key)})")

            # A MAF Client that is not a target of the key is refused (8.8.2.8).
            try:
                await other.retrieve_key(kid)
            except MAFResponseError as exc:
                print(f"other AE refused: RSC {int(exc.rsc)} {exc.rsc.name}")
            else:
                print("FAIL: a non-target retrieved the key")
                return 1
            # A MAF Client with a Km the MAF does not know fails the MAF Handshake.
            bad = MAFClientConfig(MAF_FQDN, ADMIN_FQDN, "127.0.0.1", server.port,
                                  psk=PSKCredentials(km[OTHER][0].encode(), os.urandom(32)), timeout=5.0)
            try:
                async with MAFClient(bad) as c:
                    await c.register(now() + timedelta(days=1))
            except TLSHandshakeError as exc:
                print(f"wrong Km refused: MAF Handshake failed ({exc.reason.value})")
            else:
                print("FAIL: a wrong Km was accepted")
                return 1
    finally:
        await server.close()
        service.close()
        store.close()
    print("OK: MAF key registration and retrieval")
    return 0


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        rc = asyncio.run(asyncio.wait_for(main(Path(d)), 30))
    sys.exit(rc)
