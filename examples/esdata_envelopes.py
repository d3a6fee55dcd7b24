"""One sensor reading protected end to end with ESData (TS-0003 8.5.2.4 Nested
Sign-then-Encrypt, 8.5.3 JOSE; TS-0004 6.3.4.2.38 contentSecurity, Table 6.3.3-1 contentInfo).

    .venv/bin/python examples/esdata_envelopes.py

A sensor AE signs its reading with its AE-ID certificate and encrypts it, in one JWE (JSON
serialization), for two targets holding different credentials: a provisioned symmetric key
(SUID 14, A128KW) and a target certificate (SUID 44, ECDH-ES+A128KW).  The envelope goes into
a <contentInstance> as ``con`` + ``cnf``; any CSE on the way stores it without being able to
read it.  Each target opens it and checks the signer; a tampered envelope is refused.
The application code is between the ``----`` markers; the rest is set-up (a development CA
and the provisioned key).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sys
from datetime import datetime, timezone

from m2msec.esdata import (
    CertificateRecipient,
    CertificateSigner,
    ESDataError,
    InMemoryKeySource,
    Source,
    SymmetricRecipient,
    Target,
    from_content_instance,
    pki_verifier,
    to_content_instance,
)
from m2msec.pki import CertificateFlavour, DevCA


def now() -> datetime:
    return datetime.now(timezone.utc)


def main() -> int:
    sp = "sp.example.com"
    sensor_id = f"//{sp}/id-in/Csensor-{secrets.token_hex(2)}"  # Absolute AE-ID of the Source
    # Set-up: a name-constrained development CA for the SP issues the sensor's signing
    # certificate and target B's certificate; target A was provisioned a symmetric key.
    ca = DevCA.create("example SP", now=now(), permit_uri=[sp], intermediate=True)
    sensor = ca.issue(CertificateFlavour.AE_ID, [sensor_id], now=now())
    target_b = ca.issue(CertificateFlavour.AE_ID, [f"//{sp}/id-in/Ctarget-b"], now=now())
    assert sensor.private_key is not None and target_b.private_key is not None
    kid_a, key_a = f"{secrets.token_hex(16)}@mef.{sp}", secrets.token_bytes(16)

    # ---- Source (the sensor): sign with its certificate, encrypt for both targets
    reading = json.dumps({"temperature": 21.5, "unit": "Cel"}).encode()
    envelope = Source().seal(
        reading,
        serialization="json",  # contentSecurity 2: JOSE JSON serialization
        content_type="application/json",
        signers=[CertificateSigner(sensor.private_key, (sensor.certificate, *sensor.chain))],
        recipients=[
            SymmetricRecipient(kid_a, key_a, alg="A128KW", suid=14),
            CertificateRecipient(target_b.certificate),  # ECDH-ES+A128KW for an EC certificate
        ],
    )
    cin = {"m2m:cin": to_content_instance(envelope)}  # what the sensor CREATEs in its container
    # ----
    print(f"sealed: class={envelope.security_class.value}, contentSecurity={int(envelope.content_security)}, "
          f"media type {envelope.media_type}, {len(envelope.data)} bytes")
    jwe = json.loads(envelope.data)
    print("JOSE JSON serialization (recipients):")
    for r in jwe["recipients"]:
        print(f"  kid={r['header']['kid']} alg={r['header']['alg']}")
    print(f"contentInstance cnf = {cin['m2m:cin']['cnf']!r}, con = {cin['m2m:cin']['con'][:60]!r}...")
    if reading in json.dumps(cin).encode():
        print("FAIL: plaintext visible in the contentInstance")
        return 1

    verifier = pki_verifier(trust_anchors=[ca.trust_anchor], clock=now, flavour="ae-id")
    keys_a = InMemoryKeySource()
    keys_a.add_symmetric(kid_a, key_a, suid=14)
    keys_b = InMemoryKeySource()
    keys_b.add_certificate_key(target_b.private_key, target_b.certificate)  # SUID 44

    # ---- Targets: read the contentInstance, decrypt with their own credential, check the signer
    for name, keys in (("A (provisioned key)", keys_a), ("B (certificate)", keys_b)):
        target = Target(keys, certificate_verifier=verifier)
        opened = target.open(from_content_instance(cin["m2m:cin"]), expected_source_id=sensor_id)
        # ----
        signer = opened.signatures[0]
        print(f"target {name}: {json.loads(opened.payload)} decrypted with {opened.key_management}/"
              f"{opened.content_encryption} (kid {opened.decrypted_with}), signed {signer.alg} by {signer.source_id}")
        if opened.payload != reading or signer.source_id != sensor_id:
            print("FAIL: wrong payload or signer")
            return 1

    # A CSE (or anyone on the path) changes one byte of the ciphertext: refused.
    body = dict(jwe)
    ct = body["ciphertext"]
    body["ciphertext"] = ("A" if ct[0] != "A" else "B") + ct[1:]
    tampered = dict(cin["m2m:cin"], con=json.dumps(body))
    try:
        Target(keys_a, certificate_verifier=verifier).open(from_content_instance(tampered), expected_source_id=sensor_id)
    except ESDataError as exc:
        print(f"tampered envelope refused: {exc.reason.value} (rsc {int(exc.rsc)})")
    else:
        print("FAIL: tampered envelope accepted")
        return 1
    # A reading that claims another sensor as its Source: refused by the signer check.
    try:
        Target(keys_b, certificate_verifier=verifier).open(from_content_instance(cin["m2m:cin"]),
                                                           expected_source_id=f"//{sp}/id-in/Cother")
    except ESDataError as exc:
        print(f"wrong expected Source refused: {exc.reason.value}")
    else:
        print("FAIL: signer identity not checked")
        return 1
    print(f"key A fingerprint sha256:{hashlib.sha256(key_a).hexdigest()[:16]} (the key itself is never printed)")
    print("OK: ESData nested sign-then-encrypt for two targets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
