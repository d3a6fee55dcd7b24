"""A small oneM2M PKI for the SAEF tests (DevCA-issued certificates of every flavour used)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from m2msec.pki import CertificateFlavour as F
from m2msec.pki import DevCA, IssuedCertificate, PeerCertInfo, build_name_constraints, generate_private_key
from m2msec.pki.profile import build_ca_cert, build_leaf
from m2msec.saef import CredentialConfiguration

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
SP = "m2m.example.com"
SP_ID = f"//{SP}"
IN_NAME, IN_ID = f"in.{SP}", "/id-in"
MN_NAME, MN_ID = f"mn.{SP}", "/id-mn"
AE_ABS = f"//{SP}/id-in/Cae1"
AE2_ABS = f"//{SP}/id-in/Cae2"


def clock() -> datetime:
    return NOW


@dataclass
class World:
    ca: DevCA
    evil: DevCA
    in_cse: IssuedCertificate
    mn_cse: IssuedCertificate
    ae: IssuedCertificate
    ae_expired: IssuedCertificate
    nc_root: x509.Certificate
    nc_violator: IssuedCertificate  # CSE-ID certificate for in.evil.example.org under a CA constrained to SP

    @property
    def root(self) -> x509.Certificate:
        return self.ca.trust_anchor

    def creds(self, issued: IssuedCertificate, own_id: str | None = None) -> CredentialConfiguration:
        return CredentialConfiguration.from_issued(issued, own_id)

    def write(self, directory: Path, stem: str, issued: IssuedCertificate,
              anchors: list[x509.Certificate] | None = None) -> tuple[Path, Path, Path]:
        """``stem.key.pem``, ``stem.cert.pem`` (leaf + chain), ``stem.ca.pem``; also ``stem.chain.pem``."""
        pem = serialization.Encoding.PEM
        assert issued.private_key is not None
        k, c, a = (directory / f"{stem}.key.pem", directory / f"{stem}.cert.pem", directory / f"{stem}.ca.pem")
        k.write_bytes(issued.private_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
        c.write_bytes(b"".join(x.public_bytes(pem) for x in [issued.certificate, *issued.chain]))
        a.write_bytes(b"".join(x.public_bytes(pem) for x in (anchors or [self.root])))
        (directory / f"{stem}.chain.pem").write_bytes(b"".join(x.public_bytes(pem) for x in issued.chain))
        return k, c, a


def _nc_violation() -> tuple[x509.Certificate, IssuedCertificate]:
    """root (no constraints) -> intermediate permitted only SP -> leaf outside SP (not issuable by DevCA)."""
    nb, na = NOW - timedelta(days=1), NOW + timedelta(days=30)
    rk, ik, lk = generate_private_key(), generate_private_key(), generate_private_key()
    name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # noqa: E731
    root = build_ca_cert(subject=name("NC Root"), public_key=rk.public_key(), issuer_cert=None, issuer_key=rk,
                         path_length=1, name_constraints=None, not_before=nb, not_after=na)
    inter = build_ca_cert(subject=name("NC Issuing CA"), public_key=ik.public_key(), issuer_cert=root, issuer_key=rk,
                          path_length=0, name_constraints=build_name_constraints(permit_dns=[SP]),
                          not_before=nb, not_after=na)
    leaf = build_leaf(flavour=F.CSE_ID, identifiers=["in.evil.example.org"], public_key=lk.public_key(),
                      issuer_cert=inter, issuer_key=ik, not_before=nb, not_after=na)
    return root, IssuedCertificate(leaf, lk, [inter])


def make_world() -> World:
    ca = DevCA.create("Example SP", now=NOW - timedelta(days=500), permit_dns=[SP], permit_uri=[SP],
                      intermediate=True)
    evil = DevCA.create("Evil SP", now=NOW - timedelta(days=1), permit_dns=[SP], permit_uri=[SP], intermediate=True)
    nc_root, nc_violator = _nc_violation()
    return World(
        ca=ca,
        evil=evil,
        in_cse=ca.issue(F.CSE_ID, [IN_NAME], now=NOW),
        mn_cse=ca.issue(F.CSE_ID, [MN_NAME], now=NOW),
        ae=ca.issue(F.AE_ID, [AE_ABS], now=NOW),
        ae_expired=ca.issue(F.AE_ID, [AE_ABS], now=NOW - timedelta(days=400), validity=timedelta(days=365)),
        nc_root=nc_root,
        nc_violator=nc_violator,
    )


def cse(name: str) -> PeerCertInfo:
    return PeerCertInfo(F.CSE_ID, name)


def ae(ae_id: str) -> PeerCertInfo:
    return PeerCertInfo(F.AE_ID, ae_id)


def run(coro_fn: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro_fn(), timeout)

    return asyncio.run(main())
