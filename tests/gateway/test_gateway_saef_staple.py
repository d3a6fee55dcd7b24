"""OCSP stapling on the gateway's SAEF listener (``[saef] ocsp_staple_url``; TS-0003 8.1.2.2,
RFC 6066 8; profile G14): the listener queries a real OCSP responder over HTTP for the CSE's
certificate before it accepts, staples the answer to AEs that ask, re-queries on SIGHUP (reload)
and gets a new stapler when a reload changes the certificate; AEs with
``certificate_client(ocsp_staple=...)`` check the staple.  The configuration's refusals."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from _saef_support import (
    CSE_ID,
    CSE_NAME,
    PEM,
    SP,
    SP_ID,
    RecordingCSE,
    ae_certificate_client,
    utc_now,
    write_cse_credentials,
)
from _saef_support import run as saef_run
from cryptography import x509

from m2msec.gateway.app import build
from m2msec.gateway.config import ConfigError, load_config
from m2msec.net.endpoint import AEEndpoint
from m2msec.pki import CertificateFlavour, DevCA
from m2msec.pki.ocsp import OCSPResponder, OCSPStatus
from m2msec.pki.ocsp_http import OCSPHTTPServer
from m2msec.saef import connect
from m2msec.store import KeyEncryptionKey
from m2msec.tls import TLSFailureReason, TLSHandshakeError

AE_ID = f"{SP_ID}/{CSE_ID}/Cstaple-ae"


def _toml(tmp_path: Path, url: str, extra: str = "") -> Path:
    p = tmp_path / "gateway.toml"
    p.write_text(f'''[cse]
id = "{CSE_ID}"
name = "{CSE_NAME}"
[store]
kek_file = "gw.kek"
url = "sqlite:///{tmp_path / 'gw.db'}"
[saef]
listen = "127.0.0.1:0"
cert = "cse-cert.pem"
key = "cse-key.pem"
ocsp_staple_url = "{url}"
{extra}
[[saef_cert]]
flavour = "ae-id"
identifier = "{AE_ID}"
root_of_trust = "aes-ca.pem"
revocation = "off"
''')
    return p


def _files(tmp_path: Path, ca: DevCA) -> Any:
    cse = ca.issue(CertificateFlavour.CSE_ID, [f"in.{SP}"], now=utc_now())
    write_cse_credentials(tmp_path, cse)
    (tmp_path / "aes-ca.pem").write_bytes(ca.trust_anchor.public_bytes(PEM))
    if not (tmp_path / "gw.kek").exists():
        KeyEncryptionKey.generate().write_file(tmp_path / "gw.kek")
    return cse


def test_listener_staples_and_follows_the_responder(tmp_path: Path) -> None:
    ca = DevCA.create("Staple SP", now=utc_now(), intermediate=True)
    cse = _files(tmp_path, ca)
    ae = ca.issue(CertificateFlavour.AE_ID, [AE_ID], now=utc_now())
    responder = OCSPResponder(ca, clock=utc_now)
    asked: list[int] = []

    def respond(der: bytes) -> bytes:
        asked.append(1)
        return responder.respond(der)

    async def handshake(policy: str) -> Any:
        lst = gw.saef_listener
        try:
            _r, w, ctx = await connect(ae_certificate_client(ae, ca, "/" + CSE_ID, ocsp_staple=policy),
                                       lst.host, lst.port, timeout=5)
            w.close()
            return ctx
        except TLSHandshakeError as exc:
            return exc

    async def wait_for(status: OCSPStatus) -> None:
        for _ in range(500):  # at most 10 s
            held = gw.saef_listener.stapling.stapler.held
            if held is not None and held.status is status:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"the stapler never held {status}")

    async def go() -> None:
        nonlocal gw, cse
        ocsp = OCSPHTTPServer(respond)
        await ocsp.start()
        cfg_path = _toml(tmp_path, ocsp.url)
        async with AEEndpoint(RecordingCSE()) as cse_ep:
            gw, store = build(load_config(cfg_path, cse_url=cse_ep.url))
            try:
                async with gw, gw.saef_listener:
                    assert len(asked) == 1  # queried before the listener accepted
                    ctx = await handshake("require")
                    assert not isinstance(ctx, Exception), ctx
                    assert ctx.engine.ocsp_staple_result.status is OCSPStatus.GOOD
                    # the CSE certificate is revoked; SIGHUP (a reload) queries at once
                    ca.revoke(cse.certificate, now=utc_now(), reason=x509.ReasonFlags.key_compromise)
                    first = gw.saef_listener.stapling.stapler
                    await gw.saef_listener.reload_async(load_config(cfg_path, cse_url=cse_ep.url).saef,
                                                        clock=utc_now)
                    assert gw.saef_listener.stapling.stapler is first  # nothing it depends on changed
                    await wait_for(OCSPStatus.REVOKED)
                    out = await handshake("if-present")  # it staples its revocation: the AE refuses
                    assert isinstance(out, TLSHandshakeError), out
                    assert out.reason is TLSFailureReason.BAD_CERTIFICATE_STATUS
                    # a new certificate in the files + reload: a new stapler, queried before the switch
                    cse = _files(tmp_path, ca)
                    n = len(asked)
                    await gw.saef_listener.reload_async(load_config(cfg_path, cse_url=cse_ep.url).saef,
                                                        clock=utc_now)
                    assert gw.saef_listener.stapling.stapler is not first and len(asked) == n + 1
                    ctx = await handshake("require")
                    assert not isinstance(ctx, Exception), ctx
                    assert ctx.engine.ocsp_staple_result.status is OCSPStatus.GOOD
            finally:
                store.close()
        await ocsp.close()
        # the responder is gone: a new listener starts without a staple (logged), a "require"
        # AE refuses it, an "if-present" one accepts
        async with AEEndpoint(RecordingCSE()) as cse_ep:
            gw, store = build(load_config(cfg_path, cse_url=cse_ep.url))
            try:
                async with gw, gw.saef_listener:
                    out = await handshake("require")
                    assert isinstance(out, TLSHandshakeError)
                    assert out.reason is TLSFailureReason.BAD_CERTIFICATE_STATUS
                    assert not isinstance(await handshake("if-present"), Exception)
            finally:
                store.close()

    gw: Any = None
    saef_run(go, 60)


@pytest.mark.parametrize(("change", "needle"), [
    (lambda t: t.replace('cert = "cse-cert.pem"\nkey = "cse-key.pem"\n', "").split("[[saef_cert]]")[0]
     + '[[saef_psk]]\nkpsa_id = "ae@sp.m2m.example.com"\nkpsa_hex = "' + "ab" * 32 + '"\nae_id = "Cae"\n',
     "needs cert and key"),
    (lambda t: t.replace('ocsp_staple_url = "http://127.0.0.1:9/"\n', 'ocsp_staple_https_ca = "aes-ca.pem"\n'),
     "ocsp_staple_https_ca without ocsp_staple_url"),
    (lambda t: t.replace("http://127.0.0.1:9/", "ftp://x/"), "ocsp_staple_url"),
    (lambda t: t.replace('ocsp_staple_url = "http://127.0.0.1:9/"\n', 'ocsp_staple_url = 5\n'), "http(s) URL"),
    (lambda t: t.replace('cert = "cse-cert.pem"', 'cert = "leaf-only.pem"'), "issuing CA certificate"),
    (lambda t: t + '[saef_x]\n', "unknown key"),
])
def test_config_refusals(tmp_path: Path, change: Any, needle: str) -> None:
    ca = DevCA.create("Staple SP", now=utc_now(), intermediate=True)
    cse = _files(tmp_path, ca)
    (tmp_path / "leaf-only.pem").write_bytes(cse.certificate.public_bytes(PEM))
    p = _toml(tmp_path, "http://127.0.0.1:9/")
    assert load_config(p).saef.ocsp_staple_url == "http://127.0.0.1:9/"  # type: ignore[union-attr]
    p.write_text(change(p.read_text()))
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert needle in str(ei.value), str(ei.value)
