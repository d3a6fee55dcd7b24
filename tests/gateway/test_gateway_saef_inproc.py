"""The gateway's SAEF listener in process (TS-0003 8.2.2.1, 8.2.2.2, 7.2.1): real TLS 1.2
handshakes against :class:`m2msec.gateway.saef.SAEFListener` in front of a recording stand-in
CSE (a plain oneM2M HTTP endpoint that answers every request and remembers what reached
it); the plain listener's ``require_saef_for`` rule; the pure originator matching; the
``[saef]`` configuration and its refusals."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from _saef_support import (
    BASE,
    CSE_ID,
    CSE_NAME,
    PEM,
    SP,
    SP_ID,
    RecordingCSE,
    ae_certificate_client,
    empty_receiver,
    utc_now,
    write_cse_credentials,
)
from _saef_support import run as saef_run

from m2msec.gateway.app import build
from m2msec.gateway.config import ConfigError, SAEFCertEntry, SAEFConfig, load_config
from m2msec.gateway.saef import (
    SAEFListener,
    build_endpoint,
    normalise_originator,
    protected_pattern,
)
from m2msec.gateway.server import Gateway
from m2msec.net.endpoint import AEEndpoint
from m2msec.onem2m import (
    Operation,
    RequestPrimitive,
    ResourceType,
    ResponsePrimitive,
    ResponseStatusCode,
)
from m2msec.pki import (
    CertificateFlavour,
    CertificateVerificationError,
    DevCA,
    IssuedCertificate,
    PeerCertInfo,
    VerificationReason,
)
from m2msec.saef import (
    AssociationConfiguration,
    CredentialConfiguration,
    KpsaEntry,
    psk_client,
)
from m2msec.saef.framework import SAEFEndpoint
from m2msec.saef.http import SAEFHTTPClient
from m2msec.store import KeyEncryptionKey
from m2msec.tls.engine import TLSFailureReason, TLSHandshakeError

RSC = ResponseStatusCode
KID1 = "ae1@sp.m2m.example.com"
KID2 = "ae2@sp.m2m.example.com"
AE1, AE2, AE_CERT = "Csaef-ae1", "Csaef-ae2", "Csaef-cert"
KPSA1, KPSA2 = os.urandom(32), os.urandom(32)


@dataclass
class PKI:
    ca: DevCA
    evil: DevCA
    cse: IssuedCertificate
    ae: IssuedCertificate
    ae_evil: IssuedCertificate


@pytest.fixture(scope="module")
def pki() -> PKI:
    now = utc_now()
    ca = DevCA.create("SAEF SP", now=now, intermediate=True)
    evil = DevCA.create("Evil SP", now=now, intermediate=True)
    ae_abs = f"{SP_ID}/{CSE_ID}/{AE_CERT}"
    return PKI(ca, evil, ca.issue(CertificateFlavour.CSE_ID, [f"in.{SP}"], now=now),
               ca.issue(CertificateFlavour.AE_ID, [ae_abs], now=now),
               evil.issue(CertificateFlavour.AE_ID, [ae_abs], now=now))


def saef_config(pki: PKI, require: tuple[str, ...] = (f"{AE1}", "Csaef-prot-*")) -> SAEFConfig:
    assoc = AssociationConfiguration.entity_b(
        cert_name_a=PeerCertInfo(CertificateFlavour.AE_ID, f"{SP_ID}/{CSE_ID}/{AE_CERT}"),
        root_of_trust_a=[pki.ca.trust_anchor])
    return SAEFConfig(
        host="127.0.0.1", port=0,
        psk=(KpsaEntry(KID1, KPSA1, peer_id=AE1), KpsaEntry(KID2, KPSA2, peer_id=AE2)),
        credentials=CredentialConfiguration.from_issued(pki.cse),
        certs=(SAEFCertEntry(assoc),), require_saef_for=require)


@dataclass
class Rig:
    cse: RecordingCSE
    gw: Gateway
    saef: SAEFListener
    plain: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@asynccontextmanager
async def rig(pki: PKI, **kw: Any) -> AsyncIterator[Rig]:
    cse = RecordingCSE()
    async with AEEndpoint(cse) as ep:
        cfg = saef_config(pki, **kw)
        gw = Gateway(cse_url=ep.url, cse_id=CSE_ID, cse_name=CSE_NAME, receiver=empty_receiver(), sp_id=SP_ID,
                     require_saef_for=cfg.require_saef_for)
        async with gw, SAEFListener(gw, build_endpoint(cfg, clock=utc_now), sp_id=SP_ID) as lst:
            yield Rig(cse, gw, lst, gw.url)


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return saef_run(fn, 20)


def psk_ae(kid: str = KID1, key: bytes = KPSA1) -> SAEFEndpoint:
    return psk_client(KpsaEntry(kid, key), id_b="/" + CSE_ID)


def cert_ae(pki: PKI, issued: IssuedCertificate | None = None) -> SAEFEndpoint:
    return ae_certificate_client(issued or pki.ae, pki.ca, "/" + CSE_ID)


def create(fr: str | None, rqi: str, rn: str = "cnt") -> RequestPrimitive:
    return RequestPrimitive(op=Operation.CREATE, to=BASE, fr=fr, rqi=rqi, rvi="3", ty=ResourceType.CONTAINER,
                            pc={"m2m:cnt": {"rn": rn}})


def retrieve(fr: str | None, rqi: str) -> RequestPrimitive:
    return RequestPrimitive(op=Operation.RETRIEVE, to=f"{BASE}/cnt", fr=fr, rqi=rqi, rvi="3")


# ---------------------------------------------------------------- pure: originator matching


@pytest.mark.parametrize(("originator", "sp_id", "want"), [
    ("Cae1", SP_ID, "Cae1"),
    ("/id-in/Cae1", SP_ID, "Cae1"),
    (f"{SP_ID}/id-in/Cae1", SP_ID, "Cae1"),
    (f"{SP_ID}/id-in/Cae1", None, "Cae1"),
    ("//other.example.org/id-in/Cae1", None, "Cae1"),  # unknown SP-ID: read as ours (refuse too much)
    ("//other.example.org/id-in/Cae1", SP_ID, None),  # another SP's originator
    ("Sae1", SP_ID, "/Sae1"),
    ("/Sae1", SP_ID, "/Sae1"),
    ("/id-mn/Cae1", SP_ID, "/id-mn/Cae1"),
    ("/id-in", SP_ID, "/id-in"),
    ("/Cae1", SP_ID, "/Cae1"),  # as given (require_saef_for also tries the stem: test_protected_pattern)
    ("  Cae1 ", None, "Cae1"),
])
def test_normalise_originator(originator: str, sp_id: str | None, want: str | None) -> None:
    assert normalise_originator(originator, cse_id="id-in", sp_id=sp_id) == want


@pytest.mark.parametrize(("originator", "want"), [
    ("Cae1", "Cae1"),
    ("/id-in/Cae1", "Cae1"),
    (f"{SP_ID}/id-in/Cae1", "Cae1"),
    ("Cae10", None),  # exact entries are not prefixes
    ("Cmeter-7", "/id-in/Cmeter-*"),
    ("/id-in/Cmeter-", "/id-in/Cmeter-*"),
    ("Cmeter", None),
    ("/id-mn/Cae1", None),  # another CSE's AE (routed traffic stays on the plain listener)
    ("/id-in", None),  # the CSE itself
    ("CAdmin", None),
    ("/Cae1", "Cae1"),  # read as the stem by a CSE that takes the last segment
    ("//other.example.org/id-in/Cae1", "Cae1"),  # another SP-ID does not unprotect an AE of this CSE
    ("//other.example.org/id-mn/Cae1", None),
])
def test_protected_pattern(originator: str, want: str | None) -> None:
    pats = ("Cae1", "/id-in/Cmeter-*")
    assert protected_pattern(originator, pats, cse_id="id-in", sp_id=SP_ID) == want


# ---------------------------------------------------------------- the SAEF listener, in process


def test_psk_ae_creates_and_retrieves_through_the_saef_listener(pki: PKI) -> None:
    async def go() -> tuple[list[ResponsePrimitive], Rig]:
        async with rig(pki) as r:
            async with await SAEFHTTPClient.connect(psk_ae(), r.saef.host, r.saef.port) as c:
                assert c.context.framework == "psk" and c.context.protocol == "TLSv1.2"
                out = [await c.send(create(AE1, "r1")), await c.send(retrieve(f"/{CSE_ID}/{AE1}", "r2")),
                       await c.send(retrieve(None, "r3"))]
            return out, r

    rsps, r = run(go)
    assert [int(x.rsc) for x in rsps] == [2001, 2000, 2000]
    assert [x.rqi for x in rsps] == ["r1", "r2", "r3"]
    assert [q.fr for q in r.cse.seen] == [AE1, f"/{CSE_ID}/{AE1}", AE1]  # From absent: the bound AE-ID
    assert r.cse.seen[0].ty is ResourceType.CONTAINER and r.cse.seen[0].pc == {"m2m:cnt": {"rn": "cnt"}}
    assert rsps[2].pc == {"m2m:dbg": f"from {AE1}"}
    assert r.saef.rejections == []


def test_from_of_another_ae_is_4106_and_reaches_nothing(pki: PKI) -> None:
    async def go() -> tuple[list[ResponsePrimitive], Rig]:
        async with rig(pki) as r:
            async with await SAEFHTTPClient.connect(psk_ae(), r.saef.host, r.saef.port) as c:
                out = [await c.send(create(AE2, "x1")), await c.send(create(f"{SP_ID}/{CSE_ID}/{AE2}", "x2")),
                       await c.send(create("/id-mn", "x3")), await c.send(create(AE1, "ok"))]
            return out, r

    rsps, r = run(go)
    assert [int(x.rsc) for x in rsps] == [4106, 4106, 4106, 2001]
    assert [q.rqi for q in r.cse.seen] == ["ok"]
    assert r.saef.rejections == [(AE1, AE2, 4106), (AE1, f"{SP_ID}/{CSE_ID}/{AE2}", 4106), (AE1, "/id-mn", 4106)]


def test_certificate_ae_is_bound_to_its_ae_id(pki: PKI) -> None:
    async def go() -> tuple[list[ResponsePrimitive], Rig, str]:
        async with rig(pki) as r:
            async with await SAEFHTTPClient.connect(cert_ae(pki), r.saef.host, r.saef.port) as c:
                fw = c.context.framework
                out = [await c.send(create(AE_CERT, "c1")), await c.send(create(AE1, "c2")),
                       await c.send(retrieve(None, "c3"))]
            return out, r, fw

    rsps, r, fw = run(go)
    assert fw == "certificate"
    assert [int(x.rsc) for x in rsps] == [2001, 4106, 2000]
    assert [q.fr for q in r.cse.seen] == [AE_CERT, AE_CERT]  # absent From: the AE-ID of the certificate
    assert r.saef.rejections == [(f"{SP_ID}/{CSE_ID}/{AE_CERT}", AE1, 4106)]


async def _handshake_fails(r: Rig, ep: SAEFEndpoint) -> TLSHandshakeError:
    with pytest.raises(TLSHandshakeError) as ei:
        await SAEFHTTPClient.connect(ep, r.saef.host, r.saef.port, timeout=5)
    for _ in range(100):  # the server records its side once its task ran
        if r.saef.handshake_errors:
            break
        await asyncio.sleep(0.01)
    return ei.value


@pytest.mark.parametrize(("case", "reason"), [
    ("wrong-kpsa", TLSFailureReason.PSK_MISMATCH),
    ("unknown-kpsa-id", TLSFailureReason.UNKNOWN_PSK_IDENTITY),
])
def test_psk_handshake_failures(pki: PKI, case: str, reason: TLSFailureReason) -> None:
    ep = psk_ae(KID1, os.urandom(32)) if case == "wrong-kpsa" else psk_ae("nobody@sp.m2m.example.com", KPSA1)

    async def go() -> tuple[TLSHandshakeError, Rig]:
        async with rig(pki) as r:
            return await _handshake_fails(r, ep), r

    err, r = run(go)
    assert err.reason is reason
    assert [getattr(e, "reason", None) for e in r.saef.handshake_errors] == [reason]
    assert r.cse.seen == []


def test_untrusted_certificate_fails_the_handshake(pki: PKI) -> None:
    async def go() -> tuple[TLSHandshakeError, Rig]:
        async with rig(pki) as r:
            return await _handshake_fails(r, cert_ae(pki, pki.ae_evil)), r

    err, r = run(go)
    assert err.reason is TLSFailureReason.BAD_CERTIFICATE  # the client hears "unknown ca"
    [server_err] = r.saef.handshake_errors
    assert isinstance(server_err, TLSHandshakeError) and server_err.reason is TLSFailureReason.PEER_REJECTED
    assert isinstance(server_err.__cause__, CertificateVerificationError)
    assert server_err.__cause__.reason_code is VerificationReason.UNTRUSTED_ROOT
    assert r.cse.seen == []


def test_garbled_tls_bytes_are_dropped_and_the_listener_keeps_serving(pki: PKI) -> None:
    async def go() -> tuple[bytes, ResponsePrimitive, Rig]:
        async with rig(pki) as r:
            reader, writer = await asyncio.open_connection(r.saef.host, r.saef.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-M2M-Origin: " + AE1.encode() + b"\r\n\r\n" + os.urandom(64))
            await writer.drain()
            got = await asyncio.wait_for(reader.read(), 10)  # the server closes (maybe after an alert)
            writer.close()
            async with await SAEFHTTPClient.connect(psk_ae(), r.saef.host, r.saef.port) as c:
                ok = await c.send(create(AE1, "after"))
            return got, ok, r

    got, ok, r = run(go)
    assert b"HTTP/1.1" not in got  # nothing of the plain-HTTP world answered
    assert int(ok.rsc) == 2001 and [q.rqi for q in r.cse.seen] == ["after"]
    assert len(r.saef.handshake_errors) == 1


def test_a_second_x_m2m_origin_on_the_saef_listener_is_4000_and_reaches_nothing(pki: PKI) -> None:
    """The gateway relays the received headers: a From the 7.2.1 check did not read must not
    reach the CSE.  The strict binding refuses a repeated X-M2M-Origin."""
    from m2msec.tls.aio import open_connection

    async def go() -> tuple[bytes, Rig]:
        async with rig(pki) as r:
            reader, writer = await open_connection(r.saef.host, r.saef.port, psk_ae().tls_context)
            body = b'{"m2m:cnt":{"rn":"dup"}}'
            writer.write(b"POST " + BASE.encode() + b" HTTP/1.1\r\nHost: gw\r\nX-M2M-RI: d1\r\nX-M2M-RVI: 3\r\n"
                         b"X-M2M-Origin: " + AE1.encode() + b"\r\nX-M2M-Origin: " + AE2.encode() + b"\r\n"
                         b"Content-Type: application/json;ty=3\r\nContent-Length: " + str(len(body)).encode()
                         + b"\r\nConnection: close\r\n\r\n" + body)
            got = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return got, r

    got, r = run(go)
    assert got.startswith(b"HTTP/1.1 400") and b"x-m2m-rsc: 4000" in got.lower()
    assert r.cse.seen == []


# ---------------------------------------------------------------- the plain listener: require_saef_for


def _plain_headers(fr: str | list[str], rqi: str) -> list[tuple[str, str]]:
    frs = [fr] if isinstance(fr, str) else fr
    return [("X-M2M-RI", rqi), ("X-M2M-RVI", "3"), *[("X-M2M-Origin", f) for f in frs],
            ("Content-Type", "application/json;ty=3"), ("Accept", "application/json")]


@pytest.mark.parametrize(("fr", "refused"), [
    (AE1, True),
    (f"/{CSE_ID}/{AE1}", True),
    (f"{SP_ID}/{CSE_ID}/{AE1}", True),
    ("Csaef-prot-42", True),  # prefix entry
    (["Csaef-free", AE1], True),  # a second X-M2M-Origin is read too
    (AE2, False),  # bound to a Kpsa but not listed: the plain listener still serves it
    ("Csaef-free", False),
    (f"/id-mn/{AE1}", False),  # another CSE's AE (routed traffic)
    ("/id-in", False),
    (f"/{AE1}", True),  # "/Cae1": a CSE may read it as the stem
    (f"//other.example.org/{CSE_ID}/{AE1}", True),  # another SP-ID does not unprotect it
])
def test_plain_listener_refuses_protected_originators(pki: PKI, fr: str | list[str], refused: bool) -> None:
    async def go() -> tuple[httpx.Response, Rig]:
        async with rig(pki) as r:
            async with httpx.AsyncClient() as h:
                resp = await h.post(f"{r.plain}{BASE}", headers=_plain_headers(fr, "p1"),
                                    content=b'{"m2m:cnt":{"rn":"p"}}')
            return resp, r

    resp, r = run(go)
    if refused:
        assert resp.status_code == 403 and resp.headers["X-M2M-RSC"] == "4106" and resp.headers["X-M2M-RI"] == "p1"
        assert r.cse.seen == []
    else:
        assert resp.status_code == 201 and len(r.cse.seen) == 1


def test_an_authenticated_request_for_a_protected_originator_passes(pki: PKI) -> None:
    """The same AE-ID the plain listener refuses is served on the SAEF listener."""
    async def go() -> tuple[ResponsePrimitive, Rig]:
        async with rig(pki, require=(AE1, AE2)) as r, \
                await SAEFHTTPClient.connect(psk_ae(KID2, KPSA2), r.saef.host, r.saef.port) as c:
            return await c.send(create(AE2, "a1")), r

    rsp, r = run(go)
    assert int(rsp.rsc) == 2001 and [q.fr for q in r.cse.seen] == [AE2]


# ---------------------------------------------------------------- configuration


def _write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "gateway.toml"
    p.write_text(f'[cse]\nid = "{CSE_ID}"\nname = "{CSE_NAME}"\n[store]\nkek_file = "gw.kek"\n' + body)
    return p


def _pem_files(tmp_path: Path, pki: PKI) -> None:
    write_cse_credentials(tmp_path, pki.cse)
    (tmp_path / "aes-ca.pem").write_bytes(pki.ca.trust_anchor.public_bytes(PEM))
    (tmp_path / "ae2.psk").write_text(KPSA2.hex() + "\n")


GOOD = f'''
[saef]
listen = "127.0.0.1:0"
cert = "cse-cert.pem"
key = "cse-key.pem"
require_saef_for = ["{AE1}", "Csaef-prot-*"]
[[saef_psk]]
kpsa_id = "{KID1}"
kpsa_hex = "{KPSA1.hex()}"
ae_id = "{AE1}"
[[saef_psk]]
kpsa_id = "{KID2}"
kpsa_file = "ae2.psk"
[[saef_cert]]
flavour = "ae-id"
identifier = "{SP_ID}/{CSE_ID}/{AE_CERT}"
root_of_trust = "aes-ca.pem"
revocation = "off"
'''


def test_config_loads_and_builds_a_listener(tmp_path: Path, pki: PKI) -> None:
    _pem_files(tmp_path, pki)
    KeyEncryptionKey.generate().write_file(tmp_path / "gw.kek")
    cfg = load_config(_write(tmp_path, GOOD), cse_url="http://127.0.0.1:9")
    s = cfg.saef
    assert s is not None and (s.host, s.port) == ("127.0.0.1", 0)
    assert [(e.kpsa_id, e.kpsa, e.peer_id) for e in s.psk] == [(KID1, KPSA1, AE1), (KID2, KPSA2, None)]
    assert s.require_saef_for == (AE1, "Csaef-prot-*")
    assert s.associations[0].peer_cert == PeerCertInfo(CertificateFlavour.AE_ID, f"{SP_ID}/{CSE_ID}/{AE_CERT}")
    assert KPSA1.hex() not in repr(cfg) and KPSA2.hex() not in repr(cfg)
    assert load_config(_write(tmp_path, GOOD), saef_listen="127.0.0.1:8999").saef.port == 8999  # type: ignore[union-attr]
    gw, store = build(cfg)
    try:
        assert gw.saef_listener is not None and gw.saef_listener.endpoint.framework == "psk+certificate"
        assert gw.require_saef_for == (AE1, "Csaef-prot-*")
    finally:
        store.close()


@pytest.mark.parametrize(("old", "new", "needle"), [
    ('listen = "127.0.0.1:0"', 'listn = "127.0.0.1:0"', "unknown key 'listn' in [saef] (did you mean 'listen'?)"),
    ('listen = "127.0.0.1:0"', "", "[saef] needs listen"),
    ('listen = "127.0.0.1:0"', 'listen = "8443"', "HOST:PORT"),
    ('kpsa_file = "ae2.psk"', 'kpsa_file = "ae2.psk"\nkpsa_hex = "00"', "exactly one of kpsa_hex or kpsa_file"),
    ('kpsa_id = "' + KID2 + '"', 'kpsa_id = "no-at-sign"', "saef_psk[1]"),
    (f'"{AE1}", "Csaef-prot-*"', '"*"', "bare '*'"),
    (f'"{AE1}", "Csaef-prot-*"', '"C*x"', "require_saef_for"),
    ('flavour = "ae-id"', 'flavour = "cse-id"', "flavour must be one of"),
    ('key = "cse-key.pem"', "", "both cert and key"),
    ('ae_id = "' + AE1 + '"', 'ae_id = "' + AE1 + '"\nkpsa = "00"', "unknown key 'kpsa' in [[saef_psk]]"),
    ('revocation = "off"', 'revocation = "sometimes"', "saef_cert[0]"),
    ("[saef]\n", "[saefs]\n", "unknown key 'saefs'"),
])
def test_config_refusals(tmp_path: Path, pki: PKI, old: str, new: str, needle: str) -> None:
    _pem_files(tmp_path, pki)
    assert GOOD.count(old) == 1, old
    with pytest.raises(ConfigError) as ei:
        load_config(_write(tmp_path, GOOD.replace(old, new)), cse_url="http://127.0.0.1:9")
    assert needle in str(ei.value)
    assert KPSA1.hex() not in str(ei.value)


def test_config_without_saef_table_refuses_its_entries(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"need the \[saef\] table"):
        load_config(_write(tmp_path, f'[[saef_psk]]\nkpsa_id = "{KID1}"\nkpsa_hex = "00"\n'))
    with pytest.raises(ConfigError, match="--saef-listen needs"):
        load_config(_write(tmp_path, ""), saef_listen="127.0.0.1:0")
    with pytest.raises(ConfigError, match=r"at least one \[\[saef_psk\]\]"):
        load_config(_write(tmp_path, '[saef]\nlisten = "127.0.0.1:0"\n'))
    assert load_config(_write(tmp_path, "")).saef is None


# ---------------------------------------------------------------- serve


def _serve(args: list[str]) -> Any:
    from typer.testing import CliRunner

    from m2msec.gateway.cli import app

    return CliRunner().invoke(app, ["serve", *args])


def test_serve_refuses_a_bad_saef_listen_address(tmp_path: Path) -> None:
    r = _serve(["--config", str(_write(tmp_path, "")), "--saef-listen", "8443"])
    assert r.exit_code == 2 and "HOST:PORT" in r.output
    r = _serve(["--config", str(_write(tmp_path, "")), "--cse", "http://127.0.0.1:9", "--saef-listen", "127.0.0.1:0"])
    assert r.exit_code == 2 and "--saef-listen needs the [saef] table" in r.output


def test_serve_stops_with_exit_2_when_the_saef_port_is_taken(tmp_path: Path, pki: PKI) -> None:
    import socket

    _pem_files(tmp_path, pki)
    KeyEncryptionKey.generate().write_file(tmp_path / "gw.kek")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _serve(["--config", str(_write(tmp_path, GOOD)), "--cse", "http://127.0.0.1:9",
                    "--listen", "127.0.0.1:0", "--saef-listen", f"127.0.0.1:{port}"])
    assert r.exit_code == 2 and f"SAEF listener on 127.0.0.1:{port}" in r.output


@pytest.mark.parametrize("name", ["X_M2M_Origin", "x_m2m_origin", "X-M2M_Origin"])
def test_an_underscore_spelling_of_x_m2m_origin_is_refused_not_relayed(pki: PKI, name: str) -> None:
    """Some HTTP stacks read X_M2M_Origin as X-M2M-Origin: the gateway refuses it (4000) on the
    plain listener instead of relaying a From that no check has read."""
    async def go() -> tuple[httpx.Response, Rig]:
        async with rig(pki) as r:
            async with httpx.AsyncClient() as h:
                hdrs = [(k, v) for k, v in _plain_headers("Csaef-free", "u1") if k != "X-M2M-Origin"]
                resp = await h.post(f"{r.plain}{BASE}", headers=[*hdrs, (name, AE1)],
                                    content=b'{"m2m:cnt":{"rn":"u"}}')
            return resp, r

    resp, r = run(go)
    assert resp.status_code == 400 and resp.headers["X-M2M-RSC"] == "4000" and r.cse.seen == []


def test_a_pattern_of_another_sp_is_refused(tmp_path: Path, pki: PKI) -> None:
    """With [cse] sp_id, a require_saef_for entry naming another SP-ID would protect nothing."""
    _pem_files(tmp_path, pki)
    body = GOOD.replace(f'"{AE1}", "Csaef-prot-*"', f'"//other.example.org/{CSE_ID}/{AE1}"')
    p = _write(tmp_path, body)
    p.write_text(p.read_text().replace("[cse]\n", f'[cse]\nsp_id = "{SP_ID}"\n', 1))
    with pytest.raises(ConfigError, match="names another SP"):
        load_config(p, cse_url="http://127.0.0.1:9")


@pytest.mark.parametrize("name", [b"X_M2M_Origin", b"X-M2M-Origin"])
def test_saef_listener_header_limits(pki: PKI, name: bytes) -> None:
    """On the SAEF listener an underscore spelling of X-M2M-Origin is refused (4000) rather than
    relayed, and request headers are bounded to 64 KiB whatever the body limit (4 MiB)."""
    from m2msec.tls.aio import open_connection

    async def go() -> tuple[bytes, bytes, Rig]:
        async with rig(pki) as r:
            body = b'{"m2m:cnt":{"rn":"u"}}'
            head = (b"POST " + BASE.encode() + b" HTTP/1.1\r\nHost: gw\r\nX-M2M-RI: u1\r\nX-M2M-RVI: 3\r\n"
                    b"X-M2M-Origin: " + AE1.encode() + b"\r\nContent-Type: application/json;ty=3\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n")
            reader, writer = await open_connection(r.saef.host, r.saef.port, psk_ae().tls_context)
            writer.write(head + name + b": " + AE1.encode() + b"\r\n\r\n" + body)
            dup = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            reader, writer = await open_connection(r.saef.host, r.saef.port, psk_ae().tls_context)
            writer.write(head + b"X-Filler: " + b"a" * (70 * 1024) + b"\r\n\r\n" + body)
            big = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return dup, big, r

    dup, big, r = run(go)
    assert dup.startswith(b"HTTP/1.1 400") and b"x-m2m-rsc: 4000" in dup.lower()
    assert big.startswith(b"HTTP/1.1 400") and b"x-m2m-rsc: 4000" in big.lower()
    assert r.cse.seen == []
