"""GBA-Based RSPF: TS 33.220 B.2/B.3 KDF against an independent computation, the BSF simulator's
Ub and Zn over HTTP (with every refusal), and the MEF as GBA NAF end to end (TLS-PSK with
hint "3GPP-bootstrapping", identity "3GPP-bootstrapping.<B-TID>", PSK Ks_NAF), followed by the
ordinary Enrolment Exchange and MEF Key Retrieval."""

from __future__ import annotations

import asyncio
import base64
import struct
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mefhelp import MEF_FQDN, Clock, ThreadedMEF, make_state  # noqa: E402

from m2msec.errors import M2MSecError, ParseError  # noqa: E402
from m2msec.keys import (  # noqa: E402
    derive_gba_ks_naf,
    derive_usage_key,
    gba_kdf,
    gba_naf_id,
    gba_simulated_aka,
    gba_ua_protocol_id_tls12,
)
from m2msec.mef import EnroleeConfig, EnrolmentRequest, MEFKeyFetcher, TargetConfig, TargetGrant, enrol  # noqa: E402
from m2msec.mef import mef_tls_config  # noqa: E402
from m2msec.mef.gba import (  # noqa: E402
    BSFSimulator,
    GBABootstrap,
    GBAError,
    GBANaf,
    ZnClient,
    add_gba_enrolee,
    gba_psk_identity,
    parse_gba_psk_identity,
    ub_bootstrap,
)
from m2msec.tls.aio import open_connection  # noqa: E402
from m2msec.tls.engine import PSKCredentials, TLSHandshakeError  # noqa: E402

IMPI = "001010123456789@ims.mnc001.mcc001.3gppnetwork.org"
K = bytes.fromhex("465b5ce8b199b49faa5f0a2ee238a6bc465b5ce8b199b49faa5f0a2ee238a6bc")
NAF_TOKEN = "naf-token-mef"
ENROLEE = "Cgba-dev1"
TARGET = "/id-in"
TARGET_PSK = bytes(range(32))


# ------------------------------------------------------------------ pure functions


def _independent_ks_naf(ks: bytes, rand: bytes, impi: str, fqdn: str, ua: bytes) -> bytes:
    """TS 33.220 B.2/B.3 written out with struct and cryptography's HMAC."""
    params = [b"gba-me", rand, impi.encode("utf-8"), fqdn.encode("ascii") + ua]
    s = b"\x01" + b"".join(p + struct.pack(">H", len(p)) for p in params)
    h = HMAC(ks, hashes.SHA256())
    h.update(s)
    return h.finalize()


def test_ks_naf_matches_an_independent_computation() -> None:
    ks, rand = bytes(range(32)), bytes(range(100, 116))
    ua = bytes([0x01, 0x00, 0x01, 0x00, 0xAE])
    assert gba_ua_protocol_id_tls12(0x00AE) == ua
    assert gba_naf_id("MEF.m2m.example.com", ua) == b"mef.m2m.example.com" + ua
    got = derive_gba_ks_naf(ks, rand, IMPI, gba_naf_id("mef.m2m.example.com", ua))
    assert got == _independent_ks_naf(ks, rand, IMPI, "mef.m2m.example.com", ua)
    assert len(got) == 32
    # every input matters
    assert got != derive_gba_ks_naf(ks, rand, IMPI, gba_naf_id("maf.m2m.example.com", ua))
    assert got != derive_gba_ks_naf(ks, rand, IMPI, gba_naf_id("mef.m2m.example.com", gba_ua_protocol_id_tls12(0xC0A8)))
    assert got != derive_gba_ks_naf(ks, bytes(16), IMPI, gba_naf_id("mef.m2m.example.com", ua))
    assert got != derive_gba_ks_naf(ks, rand, "other@ims.example", gba_naf_id("mef.m2m.example.com", ua))


def test_kdf_framing_and_rejections() -> None:
    h = HMAC(b"k" * 32, hashes.SHA256())
    h.update(b"\x07" + b"ab\x00\x02" + b"\x00\x00")
    assert gba_kdf(b"k" * 32, 7, b"ab", b"") == h.finalize()
    with pytest.raises(ParseError):
        gba_kdf(b"k", 256, b"x")
    with pytest.raises(ParseError):
        gba_kdf(b"k", 1, b"x" * 65536)
    with pytest.raises(ParseError):
        derive_gba_ks_naf(b"short", bytes(16), IMPI, b"a.example" + bytes(5))
    with pytest.raises(ParseError):
        derive_gba_ks_naf(bytes(32), bytes(15), IMPI, b"a.example" + bytes(5))
    with pytest.raises(ParseError):
        gba_naf_id("mef.example.com", b"\x01\x00")
    with pytest.raises(ParseError):
        gba_ua_protocol_id_tls12(0x10000)


def test_psk_identity_encoding() -> None:
    btid = "AAECAwQFBgcICQoLDA0ODw==@bsf.operator.example"
    assert gba_psk_identity(btid) == b"3GPP-bootstrapping." + btid.encode()
    assert parse_gba_psk_identity(gba_psk_identity(btid)) == btid
    assert parse_gba_psk_identity(b"3GPP-bootstrapping" + btid.encode()) == btid
    for bad in (b"3GPP-bootstrapping-uicc." + btid.encode(), b"3GPP-bootstrapping-digest" + btid.encode(),
                b"kpm-device1", b"3GPP-bootstrapping.", b"3GPP-bootstrapping.noat", b"\xff\xfe"):
        assert parse_gba_psk_identity(bad) is None


def test_bootstrap_repr_hides_keys() -> None:
    b = GBABootstrap(IMPI, "x@bsf", b"\x11" * 32, b"\x22" * 16, Clock()())
    assert "1111" not in repr(b) and "2222" not in repr(b) and "x@bsf" in repr(b)


# ------------------------------------------------------------------ BSF simulator over HTTP


@pytest.fixture()
def bsf() -> BSFSimulator:
    sim = BSFSimulator(clock=Clock())
    sim.add_subscriber(IMPI, K)
    sim.add_naf(MEF_FQDN, NAF_TOKEN)
    sim.add_naf("other-naf.example.com", "other-token")
    sim.start()
    yield sim
    sim.close()


def test_ub_then_zn_gives_the_ue_s_key(bsf: BSFSimulator) -> None:
    boot = ub_bootstrap(bsf.url, IMPI, K)
    assert boot.btid.endswith("@bsf.operator.example")
    assert base64.b64decode(boot.btid.split("@")[0]) == boot.rand
    assert boot.ks == gba_simulated_aka(K, boot.rand)[1]
    zn = ZnClient(bsf.url, MEF_FQDN, NAF_TOKEN)
    ans = zn.lookup(boot.btid)
    assert ans.impi == IMPI and ans.ks_naf == boot.ks_naf(MEF_FQDN)
    assert ans.ks_naf == _independent_ks_naf(boot.ks, boot.rand, IMPI, MEF_FQDN, bytes([1, 0, 1, 0, 0xAE]))
    assert zn.lookup(boot.btid) is ans and bsf.zn_requests == 1  # cached until the lifetime


def test_ub_refusals(bsf: BSFSimulator) -> None:
    with pytest.raises(GBAError):
        ub_bootstrap(bsf.url, IMPI, b"\x00" * 32)  # wrong subscriber key: RES mismatch
    with pytest.raises(GBAError):
        ub_bootstrap(bsf.url, "unknown@ims.example", K)
    with pytest.raises(GBAError):
        bsf.respond(IMPI, bytes(16), bytes(16))  # no outstanding challenge


def test_zn_refusals(bsf: BSFSimulator) -> None:
    boot = bsf.bootstrap(IMPI)
    with pytest.raises(M2MSecError, match="HTTP 401"):
        ZnClient(bsf.url, MEF_FQDN, "wrong-token").lookup(boot.btid)
    with pytest.raises(M2MSecError, match="HTTP 403"):  # authenticated NAF asks for another NAF's key
        ZnClient(bsf.url, MEF_FQDN, "other-token").lookup(boot.btid)
    with pytest.raises(M2MSecError, match="HTTP 404"):
        ZnClient(bsf.url, MEF_FQDN, NAF_TOKEN).lookup("AAAAAAAAAAAAAAAAAAAAAA==@bsf.operator.example")
    assert isinstance(bsf.clock, Clock)
    bsf.clock.advance(3601)
    with pytest.raises(M2MSecError, match="HTTP 404"):
        ZnClient(bsf.url, MEF_FQDN, NAF_TOKEN, clock=bsf.clock).lookup(boot.btid)


# ------------------------------------------------------------------ MEF as NAF, end to end


def _gba_mef(tmp: Path, bsf: BSFSimulator) -> tuple[ThreadedMEF, GBANaf]:
    clock = Clock()
    state = make_state(tmp, clock)
    add_gba_enrolee(state, EnroleeConfig(ENROLEE, targets=(TargetGrant(TARGET, (23,)),), expiry_seconds=3600), IMPI)
    state.add_target(TargetConfig(TARGET, psk_id="cse-in"), psk=TARGET_PSK)
    naf = GBANaf(state, ZnClient(bsf.url, MEF_FQDN, NAF_TOKEN))
    return ThreadedMEF(state, gba=naf), naf


def test_gba_enrolment_end_to_end(tmp_path: Path, bsf: BSFSimulator) -> None:
    boot = ub_bootstrap(bsf.url, IMPI, K)
    mef, _naf = _gba_mef(tmp_path, bsf)
    with mef:
        async def main() -> tuple[bytes | None, object, bytes]:
            reader, writer = await open_connection(mef.host, mef.port, mef_tls_config(psk=boot.psk(MEF_FQDN)))
            hint = writer.engine.psk_identity_hint
            writer.close()
            e = await enrol(mef.host, mef.port, mef_tls_config(psk=boot.psk(MEF_FQDN)), EnrolmentRequest())
            fetcher = MEFKeyFetcher(mef.host, mef.port, mef_tls_config(psk=PSKCredentials(b"cse-in", TARGET_PSK)),
                                    target_id=TARGET, mef_fqdn=MEF_FQDN)
            cred = await fetcher.fetch(e.ke_id, 23)
            return hint, e, cred.key if cred.enrolee_id == ENROLEE else b""

        hint, e, fetched = asyncio.run(asyncio.wait_for(main(), 30))
    assert hint == b"3GPP-bootstrapping"
    assert e.enrolee_id == ENROLEE and e.ke_id.endswith("@" + MEF_FQDN)  # KeID keeps the 10.3.4 form
    assert e.ke != boot.ks_naf(MEF_FQDN)  # Ke comes from the exporter, not Ks_NAF itself
    assert fetched == derive_usage_key(e.ke, 23, TARGET) == e.direct_key(TARGET, 23)
    enrols = [a for a in mef.state.store.list_audit(subject=ENROLEE) if a.action == "enrol"]
    assert len(enrols) == 1 and enrols[0].details["via"] == f"gba:{boot.btid}"


def test_gba_handshake_refusals(tmp_path: Path, bsf: BSFSimulator) -> None:
    boot = ub_bootstrap(bsf.url, IMPI, K)
    bsf.add_subscriber("stranger@ims.example", K)
    stranger = bsf.bootstrap("stranger@ims.example")  # valid bootstrapping, no enrolee configured
    mef, naf = _gba_mef(tmp_path, bsf)

    async def attempt(psk: PSKCredentials) -> None:
        await enrol(mef.host, mef.port, mef_tls_config(psk=psk), EnrolmentRequest())

    with mef:
        cases = [
            boot.psk("maf.m2m.example.com"),  # Ks_NAF of another NAF
            PSKCredentials(gba_psk_identity("AAAAAAAAAAAAAAAAAAAAAA==@bsf.operator.example"), bytes(32)),  # unknown B-TID
            stranger.psk(MEF_FQDN),  # IMPI without Bootstrap Instruction Configuration
            PSKCredentials(b"3GPP-bootstrapping-uicc." + boot.btid.encode(), boot.ks_naf(MEF_FQDN)),  # GBA_U: not offered
        ]
        for psk in cases:
            with pytest.raises((TLSHandshakeError, M2MSecError, ConnectionError)):
                asyncio.run(asyncio.wait_for(attempt(psk), 20))
        assert any("IMPI" in str(e) for e in naf.errors)
        assert any("404" in str(e) for e in naf.errors)
        bsf.clock.advance(3601)  # type: ignore[attr-defined]
        naf.zn._cache.clear()
        naf.zn.clock = bsf.clock
        with pytest.raises((TLSHandshakeError, M2MSecError, ConnectionError)):
            asyncio.run(asyncio.wait_for(attempt(boot.psk(MEF_FQDN)), 20))  # expired bootstrapping session
        assert mef.state.store.find_record("mef.gba_impi", IMPI) is not None


def test_gba_enrolee_configuration_is_checked(tmp_path: Path) -> None:
    state = make_state(tmp_path, Clock())
    with pytest.raises(M2MSecError):
        add_gba_enrolee(state, EnroleeConfig("C1", kpm_id="kpm"), IMPI)
    with pytest.raises(M2MSecError):
        add_gba_enrolee(state, EnroleeConfig("C1"), "")
    with pytest.raises(M2MSecError):
        add_gba_enrolee(state, EnroleeConfig("C1", expiry_seconds=0), IMPI)
    with pytest.raises(ValueError):
        GBANaf(state, ZnClient("http://127.0.0.1:1", "not-the-mef.example.com", "t"))
