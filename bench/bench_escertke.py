"""Complete ESCertKE Procedures per second, in-process, vs. bare pyOpenSSL handshakes.

Run: ``python bench/bench_escertke.py [--iterations N] [--rounds R]``.

Rows (all TLS 1.2, TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256, P-256, two-level chain,
mutual authentication, full handshakes; memory BIOs, no sockets):

* ``ESCertKE`` one complete procedure: Initiator Message 1 -> Terminator -> ... ->
  Message 4, both sides verifying with ``pki_verify_hook`` (TS-0003 8.1.2.5 in Python),
  exporting and caching the pairwiseE2EKey (what the procedure must do);
* ``engine+pki`` the same handshake with the bare :class:`m2msec.tls.TLSEngine` and the same
  hooks (``bench_handshake`` row TLS-cert+pki): the ESCertKE layer's own cost;
* ``pyOpenSSL`` the bare pyOpenSSL memory-BIO loop of ``bench_handshake.py`` (OpenSSL path
  validation only, no export) - the baseline the task names.

The loops alternate ``--rounds`` times; the best rate of each is kept.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_handshake as bh  # noqa: E402

from m2msec.escertke import ESCertKEKeys, InitiatingEndPoint, InitiatorInfo, TerminatingEndPoint, TerminatorInfo  # noqa: E402
from m2msec.pki import CertificateFlavour, DevCA, PeerCertInfo  # noqa: E402
from m2msec.tls import CertCredentials, Role, TLSConfig, TLSContext  # noqa: E402
from m2msec.tls import profiles  # noqa: E402
from m2msec.tls.pkiverify import pki_tls_kwargs  # noqa: E402

SP = bh.SP
NOW = bh.NOW
INI_ID, TER_ID = f"//{SP}/id-in/Cae1", f"in.{SP}"


def setup():  # type: ignore[no-untyped-def]
    ca = DevCA.create("Bench SP", now=NOW, permit_dns=[SP], permit_uri=[SP], intermediate=True)
    srv = ca.issue(CertificateFlavour.CSE_ID, [TER_ID], now=NOW)
    cli = ca.issue(CertificateFlavour.AE_ID, [INI_ID], now=NOW)
    s = CertCredentials(srv.private_key, srv.certificate, tuple(srv.chain))  # type: ignore[arg-type]
    c = CertCredentials(cli.private_key, cli.certificate, tuple(cli.chain))  # type: ignore[arg-type]
    return ca, s, c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    ca, s_creds, c_creds = setup()
    anchors = (ca.trust_anchor,)
    clock = lambda: NOW  # noqa: E731
    ini = InitiatingEndPoint(c_creds, clock=clock, keys=ESCertKEKeys(clock=clock))
    ter = TerminatingEndPoint(s_creds, [InitiatorInfo(PeerCertInfo(CertificateFlavour.AE_ID, INI_ID), anchors, "Cae1")],
                              clock=clock, keys=ESCertKEKeys(clock=clock))
    target = TerminatorInfo(PeerCertInfo(CertificateFlavour.CSE_ID, TER_ID), anchors, identity="/id-in")

    def escertke(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            p = ini.initiate(target)
            p.receive_message_4(ter.handle("Cae1", p.receive_message_2(ter.handle("Cae1", p.message_1()))))
        return n / (time.perf_counter() - t0)

    pc = TLSContext(TLSConfig(role=Role.CLIENT, credentials=c_creds,
                              **pki_tls_kwargs(PeerCertInfo(CertificateFlavour.CSE_ID, TER_ID), anchors, clock)))
    ps = TLSContext(TLSConfig(role=Role.SERVER, credentials=s_creds,
                              **pki_tls_kwargs(PeerCertInfo(CertificateFlavour.AE_ID, INI_ID), anchors, clock)))
    cipher = profiles.cipher_string([profiles.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256])
    bc = bh._bare_context(False, cipher, creds=c_creds, anchors=list(anchors))
    bs = bh._bare_context(False, cipher, creds=s_creds, anchors=list(anchors), server=True)
    loops = {
        "ESCertKE": escertke,
        "engine+pki": lambda n: bh.engine_loop(pc, ps, n),
        "pyOpenSSL": lambda n: bh.bare_loop(bc, bs, n, False),
    }
    best = dict.fromkeys(loops, 0.0)
    for f in loops.values():
        f(3)  # warm-up
    for _ in range(args.rounds):
        for name, f in loops.items():
            best[name] = max(best[name], f(args.iterations))
    base = best["pyOpenSSL"]
    print(f"{'loop':<12}{'procedures|handshakes/s':>26}{'vs pyOpenSSL':>14}{'vs engine+pki':>15}")
    for name, rate in best.items():
        print(f"{name:<12}{rate:>26.1f}{rate / base:>14.2f}{rate / best['engine+pki']:>15.2f}")
    print(f"(iterations={args.iterations}, rounds={args.rounds}, in-process, target ESCertKE >= 0.9x pyOpenSSL)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
