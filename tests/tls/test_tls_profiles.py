"""Profiles of TS-0003 10.2.2/10.2.3: pure functions."""

from __future__ import annotations

import pytest
from OpenSSL import SSL

from m2msec.tls import profiles
from m2msec.tls.profiles import AuthMode, Transport


def test_profile_table_is_the_clause() -> None:
    assert profiles.suites_for(Transport.TLS, [AuthMode.PSK]) == [profiles.TLS_PSK_WITH_AES_128_CBC_SHA256]
    assert profiles.suites_for(Transport.DTLS, [AuthMode.PSK]) == [profiles.TLS_PSK_WITH_AES_128_CCM_8]
    assert profiles.suites_for(Transport.TLS, [AuthMode.CERTIFICATE]) == [
        profiles.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256
    ]
    assert profiles.suites_for(Transport.DTLS, [AuthMode.CERTIFICATE]) == [
        profiles.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
    ]
    # IANA code points (RFC 5487, 6655, 5289, 7251)
    assert [s.code for s in profiles.ALL_SUITES] == [0x00AE, 0xC0A8, 0xC023, 0xC0AE]


def test_seclevel_lowered_only_for_ccm8() -> None:
    assert profiles.cipher_string([profiles.TLS_PSK_WITH_AES_128_CBC_SHA256]) == "PSK-AES128-CBC-SHA256"
    assert profiles.cipher_string([profiles.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256]) == "ECDHE-ECDSA-AES128-SHA256"
    assert profiles.cipher_string([profiles.TLS_PSK_WITH_AES_128_CCM_8]).endswith(":@SECLEVEL=0")
    with pytest.raises(ValueError):
        profiles.cipher_string([])


@pytest.mark.parametrize("suite", profiles.ALL_SUITES, ids=lambda s: s.iana_name)
def test_openssl_knows_each_suite_by_its_iana_name(suite: profiles.CipherSuite) -> None:
    method = SSL.DTLS_METHOD if suite.ccm8 else SSL.TLS_METHOD
    ctx = SSL.Context(method)
    ctx.set_cipher_list(profiles.cipher_string([suite]).encode())
    conn = SSL.Connection(ctx, None)
    tls12 = [n for n in conn.get_cipher_list() if not n.startswith("TLS_")]  # drop TLS 1.3 names
    assert tls12 == [suite.openssl_name]


def test_ccm8_without_seclevel0_fails_the_handshake(monkeypatch: pytest.MonkeyPatch) -> None:
    """The measured fact behind the SECLEVEL decision: without @SECLEVEL=0 no CCM_8 suite is usable."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _tlshelp import pump

    from m2msec.tls import PSKCredentials, Role, TLSConfig, TLSEngine, TLSFailureReason, TLSHandshakeError

    monkeypatch.setattr(profiles, "cipher_string", lambda suites: ":".join(x.openssl_name for x in suites))
    c = TLSEngine(TLSConfig(Role.CLIENT, Transport.DTLS, psk=PSKCredentials(b"id", b"k")))
    s = TLSEngine(TLSConfig(Role.SERVER, Transport.DTLS, psk_lookup=lambda i, n: b"k"))
    with pytest.raises(TLSHandshakeError) as ei:
        pump(c, s)
    assert ei.value.reason is TLSFailureReason.NO_SHARED_CIPHER


def test_exporter_labels_match_clause_10_3_1() -> None:
    assert profiles.EXPORTER_BOOTSTRAP == "EXPORTER-oneM2M-Bootstrap"
    assert profiles.EXPORTER_CONNECTION == "EXPORTER-oneM2M-Connection"
    assert profiles.EXPORTER_ESCERTKE == "EXPORTER-oneM2M-ESCertKE"
    assert profiles.EXPORTER_LENGTH == 48
    assert (profiles.TLS1_2_VERSION, profiles.DTLS1_2_VERSION) == (0x0303, 0xFEFD)
