"""ESData seal+open cost per security class vs. the bare JOSE library call (jwcrypto).

    python bench/bench_esdata.py [--iterations N]

For each case both sides do the same cryptographic work on a 1 KB payload: the bare
baseline builds and opens the JWE/JWS with jwcrypto directly; m2msec goes through
`Source.seal` / `Target.open` (policy checks, key-source lookup, SUID rules). The ratio
is m2msec time / bare time for one seal+open (target <= 1.2).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone

from jwcrypto import jwe, jwk, jws
from jwcrypto.common import json_encode

from m2msec.esdata import InMemoryKeySource, Source, SymmetricRecipient, SymmetricSigner, Target

PAYLOAD = os.urandom(1024)


def best_rate(fn: Callable[[], object], iterations: int, repeats: int = 3) -> float:
    """Operations per second, best of ``repeats`` runs of ``iterations`` calls."""
    fn()  # warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            fn()
        best = min(best, time.perf_counter() - start)
    return iterations / best


def oct_jwk(kid: str, key: bytes) -> jwk.JWK:
    import base64

    return jwk.JWK(kty="oct", kid=kid, k=base64.urlsafe_b64encode(key).rstrip(b"=").decode())


def case_encrypt_dir() -> tuple[Callable[[], object], Callable[[], object]]:
    key = os.urandom(16)
    kid = "00112233445566778899aabbccddeeff@maf.example"
    src, ks = Source(), InMemoryKeySource()
    ks.add_symmetric(kid, key, suid=14)
    tgt = Target(ks)
    rcpt = [SymmetricRecipient(kid, key, alg="dir")]
    k = oct_jwk(kid, key)

    def ours() -> object:
        env = src.seal(PAYLOAD, serialization="compact", recipients=rcpt, enc="A128GCM")
        return tgt.open(env).payload

    def bare() -> object:
        t = jwe.JWE(PAYLOAD, json_encode({"alg": "dir", "enc": "A128GCM", "kid": kid}))
        t.add_recipient(k)
        token = t.serialize(compact=True)
        o = jwe.JWE()
        o.deserialize(token, key=k)
        return o.payload

    return ours, bare


def case_encrypt_kw(n: int) -> tuple[Callable[[], object], Callable[[], object]]:
    keys = [(f"{i:032x}@maf.example", os.urandom(16)) for i in range(n)]
    src, ks = Source(), InMemoryKeySource()
    kid0, key0 = keys[-1]
    ks.add_symmetric(kid0, key0, suid=14)
    tgt = Target(ks)
    rcpts = [SymmetricRecipient(kid, key, alg="A128KW") for kid, key in keys]
    jwks = [oct_jwk(kid, key) for kid, key in keys]

    def ours() -> object:
        env = src.seal(PAYLOAD, serialization="json", recipients=rcpts, enc="A128GCM")
        return tgt.open(env).payload

    def bare() -> object:
        t = jwe.JWE(PAYLOAD, json_encode({"enc": "A128GCM"}))
        for kid, k in zip((kid for kid, _ in keys), jwks):
            t.add_recipient(k, header=json_encode({"alg": "A128KW", "kid": kid}))
        token = t.serialize()
        o = jwe.JWE()
        o.deserialize(token, key=jwks[-1])
        return o.payload

    return ours, bare


def case_sign_hs256() -> tuple[Callable[[], object], Callable[[], object]]:
    key = os.urandom(32)
    kid = "ffeeddccbbaa99887766554433221100@maf.example"
    src, ks = Source(), InMemoryKeySource()
    ks.add_symmetric(kid, key, suid=15)
    tgt = Target(ks)
    signer = [SymmetricSigner(kid, key, alg="HS256")]
    k = oct_jwk(kid, key)

    def ours() -> object:
        env = src.seal(PAYLOAD, serialization="compact", signers=signer)
        return tgt.open(env).payload

    def bare() -> object:
        s = jws.JWS(PAYLOAD)
        s.add_signature(k, None, json_encode({"alg": "HS256", "kid": kid}))
        token = s.serialize(compact=True)
        v = jws.JWS()
        v.deserialize(token)
        v.verify(k)
        return v.payload

    return ours, bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args()
    cases = [
        ("encryption-only, dir, compact, 1 recipient", case_encrypt_dir()),
        ("encryption-only, A128KW, JSON, 1 recipient", case_encrypt_kw(1)),
        ("encryption-only, A128KW, JSON, 10 recipients", case_encrypt_kw(10)),
        ("signature-only, HS256 MIC, compact", case_sign_hs256()),
    ]
    print(f"ESData seal+open, 1 KB payload, {args.iterations} iterations, best of 3 "
          f"({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)")
    header = f"{'case':48} {'m2msec ops/s':>13} {'jwcrypto ops/s':>15} {'time ratio':>11}"
    print(header)
    print("-" * len(header))
    worst = 0.0
    for name, (ours, bare) in cases:
        ours_rate = best_rate(ours, args.iterations)
        bare_rate = best_rate(bare, args.iterations)
        ratio = bare_rate / ours_rate
        worst = max(worst, ratio)
        print(f"{name:48} {ours_rate:13.0f} {bare_rate:15.0f} {ratio:10.2f}x")
    print(f"worst m2msec/bare time ratio: {worst:.2f}x (target <= 1.2x)")
    print(json.dumps({"worst_ratio": round(worst, 3)}))


if __name__ == "__main__":
    main()
