"""Certificate status of *established* associations on the gateway's SAEF listener (TS-0003 8.1.2.2
for the Certificate-Based SAEF of 8.2.2.2; TS-0004 7.3; profiles P26, G10, G13), in process.

A real gateway.toml (``[[saef_cert]]`` with CRL files or ``crl_urls``, a ``[[saef_psk]]``), the
listener of :meth:`SAEFListener.for_config` in front of a recording stand-in CSE, a real CRL
HTTP server and real TLS 1.2 associations held open by the test:

* a CRL URL refreshed after the CA revoked an AE ends that AE's association at its next request
  (4106 / HTTP 403, ``Connection: close``, X-M2M-RI echoed, nothing reaches the CSE, connection
  closed); the unrevoked AE and the PSK AE go on;
* CRL files rewritten + reload: the binding's store is kept (same files) and refilled, so the
  established association of the revoked AE ends; the others go on;
* a binding removed by a reload ends its established association at its next request (G10: 4106,
  closed, nothing forwarded), while the unchanged bindings' associations go on and a new
  handshake of that AE is refused; a ``[[saef_psk]]`` entry whose Kpsa a reload changes, or that
  it removes, ends the associations made with it the same way."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _saef_support import (
    BASE,
    CSE_ID,
    CSE_NAME,
    SP,
    SP_ID,
    RecordingCSE,
    ae_certificate_client,
    empty_receiver,
    utc_now,
    write_ca_files,
    write_cse_credentials,
)
from _saef_support import run as saef_run
from cryptography import x509

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _h11_session import write_crls
from _saef_keepalive import SAEFKeepAlive

from m2msec.gateway.config import load_config
from m2msec.gateway.saef import SAEFListener
from m2msec.gateway.server import Gateway
from m2msec.net.endpoint import AEEndpoint
from m2msec.onem2m import Operation, RequestPrimitive
from m2msec.pki import CertificateFlavour, DevCA, IssuedCertificate
from m2msec.pki.crl_http import CRLHTTPServer
from m2msec.saef import KpsaEntry, psk_client
from m2msec.saef.framework import SAEFEndpoint

GOOD, BAD, PSK = "Csess-good", "Csess-bad", "Csess-psk"
KID = "sess@sp.m2m.example.com"


@dataclass
class World:
    tmp: Path
    ca: DevCA
    ae: dict[str, IssuedCertificate]
    kpsa: bytes

    def revoke(self, ae: str) -> None:
        self.ca.revoke(self.ae[ae].certificate, now=utc_now(), reason=x509.ReasonFlags.key_compromise)

    def write(self, extra: str | dict[str, str], aes: tuple[str, ...] = (GOOD, BAD), psk: bool = True) -> Path:
        """gateway.toml: [saef], the PSK AE (``psk``: with Kpsa ``self.kpsa``) and one [[saef_cert]]
        per AE of ``aes`` (``extra`` in each, or ``extra[ae]``)."""
        (self.tmp / "ae.psk").write_text(self.kpsa.hex())
        text = (f'[cse]\nid = "{CSE_ID}"\nname = "{CSE_NAME}"\nsp_id = "{SP_ID}"\n'
                f'[saef]\nlisten = "127.0.0.1:0"\ncert = "cse.pem"\nkey = "cse.key"\n')
        if psk:
            text += f'[[saef_psk]]\nkpsa_id = "{KID}"\nkpsa_file = "ae.psk"\nae_id = "{PSK}"\n'
        for ae in aes:
            text += (f'[[saef_cert]]\nflavour = "ae-id"\nidentifier = "{SP_ID}/{CSE_ID}/{ae}"\n'
                     f'root_of_trust = "root.pem"\nae_id = "{ae}"\nrevocation = "if-available"\n'
                     f'{extra if isinstance(extra, str) else extra[ae]}\n')
        path = self.tmp / "gateway.toml"
        path.write_text(text, encoding="utf-8")
        return path

    def write_crls(self) -> None:
        """issuing.crl and root.crl, and their copies bad-issuing.crl and bad-root.crl: the CA's CRLs now."""
        write_crls(self.tmp, self.ca)
        for name in ("issuing.crl", "root.crl"):
            (self.tmp / f"bad-{name}").write_bytes((self.tmp / name).read_bytes())

    def client(self, ae: str) -> SAEFEndpoint:
        if ae == PSK:
            return psk_client(KpsaEntry(KID, self.kpsa), id_b="/" + CSE_ID)
        return ae_certificate_client(self.ae[ae], self.ca, "/" + CSE_ID)


@pytest.fixture
def world(tmp_path: Path) -> World:
    t0 = utc_now() - timedelta(hours=1)
    ca = DevCA.create("SAEF session SP", now=t0, intermediate=True)
    write_cse_credentials(tmp_path, ca.issue(CertificateFlavour.CSE_ID, [f"in.{SP}"], now=t0), "cse.pem", "cse.key")
    write_ca_files(tmp_path, ca)
    aes = {ae: ca.issue(CertificateFlavour.AE_ID, [f"{SP_ID}/{CSE_ID}/{ae}"], now=t0) for ae in (GOOD, BAD)}
    w = World(tmp_path, ca, aes, os.urandom(32))
    w.write_crls()
    return w


@dataclass
class Rig:
    cse: RecordingCSE
    saef: SAEFListener
    config: Path

    async def reload(self, config: Path | None = None) -> None:
        cfg = load_config(config or self.config, cse_url="http://127.0.0.1:9")
        assert cfg.saef is not None
        await self.saef.reload_async(cfg.saef, clock=utc_now)

    async def open(self, w: World, *aes: str) -> dict[str, SAEFKeepAlive]:
        """One association per AE, each used once (2000)."""
        out = {ae: await SAEFKeepAlive.connect(w.client(ae), self.saef.host, self.saef.port) for ae in aes}
        for ae, s in out.items():
            assert (await s.send(retrieve(ae, f"{ae}-1"))).rsc == 2000
        return out


@asynccontextmanager
async def rig(config: Path) -> AsyncIterator[Rig]:
    cse = RecordingCSE()
    async with AEEndpoint(cse) as ep:
        cfg = load_config(config, cse_url=ep.url)
        assert cfg.saef is not None
        gw = Gateway(cse_url=ep.url, cse_id=CSE_ID, cse_name=CSE_NAME, receiver=empty_receiver(), sp_id=SP_ID)
        async with gw, SAEFListener.for_config(gw, cfg.saef, clock=utc_now, sp_id=SP_ID) as lst:
            yield Rig(cse, lst, config)


def retrieve(ae: str, rqi: str) -> RequestPrimitive:
    return RequestPrimitive(op=Operation.RETRIEVE, to=BASE, fr=ae, rqi=rqi, rvi="3")


async def assert_ended(r: Rig, s: SAEFKeepAlive, ae: str, rqi: str, why: bytes = b"revoked") -> None:
    """The next request of ``ae`` on ``s``: 4106 in the TS-0009 form, closed, not forwarded."""
    a = await s.send(retrieve(ae, rqi))
    assert (a.status, a.rsc) == (403, 4106)
    assert a.headers["connection"].lower() == "close" and a.headers["x-m2m-ri"] == rqi
    assert why in a.body
    assert await s.closed_by_server()
    assert rqi not in [q.rqi for q in r.cse.seen]
    assert r.saef.session_refusals[-1] == (ae, ae, 4106)


def run(fn: Any) -> Any:
    return saef_run(fn, 25)


def test_a_refreshed_crl_url_ends_the_revoked_association(world: World) -> None:
    w = world

    async def go() -> None:
        now = utc_now
        srv = CRLHTTPServer({"issuing": lambda: w.ca.issue_crl(now=now()),
                             "root": lambda: w.ca.issue_crl(now=now(), signer="root")})
        async with srv as crl:
            keys = (f'crl_urls = ["{crl.url("issuing")}", "{crl.url("root")}"]\n'
                    'crl_issuers = "sub.pem"\ncrl_refresh_s = 1\n')
            async with rig(w.write(keys)) as r:
                s = await r.open(w, GOOD, BAD, PSK)
                try:
                    assert r.saef.session_check.watched == 2  # the PSK association is not watched
                    w.revoke(BAD)
                    t = utc_now()
                    [refresher] = r.saef.status.refreshers  # type: ignore[union-attr]
                    deadline = time.monotonic() + 8
                    while not (refresher.last[crl.url("issuing")].at > t and refresher.last[crl.url("issuing")].ok):
                        assert time.monotonic() < deadline, "the CRL was not refreshed"
                        await asyncio.sleep(0.05)
                    await assert_ended(r, s[BAD], BAD, "bad-2")
                    for ae in (GOOD, PSK):
                        assert (await s[ae].send(retrieve(ae, f"{ae}-2"))).rsc == 2000
                    assert [q.rqi for q in r.cse.seen] == [f"{GOOD}-1", f"{BAD}-1", f"{PSK}-1",
                                                           f"{GOOD}-2", f"{PSK}-2"]
                finally:
                    for x in s.values():
                        x.close()

    run(go)


def test_crl_files_rewritten_and_reloaded_end_the_revoked_association(world: World) -> None:
    w = world

    async def go() -> None:
        async with rig(w.write('crls = ["issuing.crl", "root.crl"]')) as r:
            status = r.saef.status
            assert status is not None and len(status.file_stores) == 1  # GOOD and BAD: one store of the same files
            [store] = status.file_stores.values()
            s = await r.open(w, GOOD, BAD, PSK)
            try:
                w.revoke(BAD)
                w.write_crls()
                # before the reload the gateway does not know: the association goes on
                assert (await s[BAD].send(retrieve(BAD, "bad-2"))).rsc == 2000
                await r.reload()
                assert list(status.file_stores.values()) == [store]  # same files: the same store, refilled
                await assert_ended(r, s[BAD], BAD, "bad-3")
                for ae in (GOOD, PSK):
                    assert (await s[ae].send(retrieve(ae, f"{ae}-2"))).rsc == 2000
            finally:
                for x in s.values():
                    x.close()

    run(go)


def test_a_binding_removed_by_reload_ends_its_association(world: World) -> None:
    """G10: taking an AE's [[saef_cert]] binding out of the file and reloading ends that AE's open
    association at its next request; the associations of unchanged bindings go on."""
    w = world

    async def go() -> None:
        files = {GOOD: 'crls = ["issuing.crl", "root.crl"]', BAD: 'crls = ["bad-issuing.crl", "bad-root.crl"]'}
        async with rig(w.write(files)) as r:
            assert r.saef.status is not None and len(r.saef.status.file_stores) == 2
            s = await r.open(w, GOOD, BAD, PSK)
            try:
                await r.reload()  # nothing changed: every association goes on
                for ae in (GOOD, BAD, PSK):
                    assert (await s[ae].send(retrieve(ae, f"{ae}-2"))).rsc == 2000
                w.write(files, aes=(GOOD,))  # BAD's binding removed
                await r.reload()
                assert len(r.saef.status.file_stores) == 1
                await assert_ended(r, s[BAD], BAD, "bad-3", b"[[saef_cert]] binding was removed or changed")
                with pytest.raises(Exception, match="(?i)handshake|certificate"):  # a new association is not
                    await SAEFKeepAlive.connect(w.client(BAD), r.saef.host, r.saef.port)
                for ae in (GOOD, PSK):
                    assert (await s[ae].send(retrieve(ae, f"{ae}-3"))).rsc == 2000
                assert [q.rqi for q in r.cse.seen][-2:] == [f"{GOOD}-3", f"{PSK}-3"]
            finally:
                for x in s.values():
                    x.close()

    run(go)


def test_a_psk_binding_rekeyed_or_removed_by_reload_ends_its_associations(world: World) -> None:
    """G10: a new Kpsa for the KpsaID (a key rotation after a compromise, say) ends the associations
    made with the old one; a removed [[saef_psk]] entry ends those made with it."""
    w = world

    async def go() -> None:
        async with rig(w.write("")) as r:
            s = await r.open(w, PSK, GOOD)
            newer: dict[str, SAEFKeepAlive] = {}
            try:
                w.kpsa = os.urandom(32)
                await r.reload(w.write(""))
                await assert_ended(r, s[PSK], PSK, "psk-2", b"[[saef_psk]] binding of KpsaID")
                newer = await r.open(w, PSK)  # the new Kpsa is accepted
                await r.reload(w.write(""))  # unchanged: the new association goes on
                assert (await newer[PSK].send(retrieve(PSK, "psk-3"))).rsc == 2000
                await r.reload(w.write("", psk=False))
                await assert_ended(r, newer[PSK], PSK, "psk-4", b"removed or changed by a configuration reload")
                assert (await s[GOOD].send(retrieve(GOOD, "good-2"))).rsc == 2000
            finally:
                for x in (*s.values(), *newer.values()):
                    x.close()

    run(go)
