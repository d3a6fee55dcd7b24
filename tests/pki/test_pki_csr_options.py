"""DevCA/CSR options used by the EST RA (TS-0003 10.1.4; seed 004 8.3.3.3 step 11): EKUs chosen by
the RA, identifiers added by the RA, challengePassword and EKU in a CSR."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.x509.oid import AttributeOID, ExtendedKeyUsageOID

from m2msec.pki import CertificateFlavour as F
from m2msec.pki import CSRError, DevCA, build_csr, generate_private_key, identifiers_of

SP = "m2m.example.com"
A, B = f"//{SP}/id-in/Ca", f"//{SP}/id-in/Cb"
OTHER = x509.ObjectIdentifier("2.25.1.2")


def test_csr_options_and_issuance() -> None:
    now = datetime.now(UTC)
    ca = DevCA.create("T", now=now, permit_uri=[SP])
    key = generate_private_key()
    csr = build_csr(key, F.AE_ID, [A], extended_key_usage=[OTHER], challenge_password="s3cret")
    assert csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value == b"s3cret"
    assert list(csr.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [OTHER]
    # exact match required by default ...
    with pytest.raises(CSRError):
        ca.issue_from_csr(csr, F.AE_ID, [A, B], now=now)
    # ... a superset when the RA adds identifiers; EKUs as the RA decides
    got = ca.issue_from_csr(csr, F.AE_ID, [A, B], now=now, allow_added_identifiers=True,
                            extended_key_usage=[ExtendedKeyUsageOID.CLIENT_AUTH, OTHER])
    assert sorted(identifiers_of(got.certificate, F.AE_ID)) == [A, B]
    assert list(got.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.CLIENT_AUTH, OTHER]
    # never fewer than the CSR asks for
    with pytest.raises(CSRError):
        ca.issue_from_csr(build_csr(key, F.AE_ID, [A, B]), F.AE_ID, [A], now=now, allow_added_identifiers=True)
    # default EKUs unchanged
    plain = ca.issue(F.AE_ID, [A], now=now).certificate
    assert list(plain.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
