"""A remotely provisioned ESPrim key used through ACME + `m2msec gateway` with the CSE as ESPrim
Target: the AE enrols through the MEF process (PSK RSPF, grant (CSE-ID, SUID 23)); its
pairwiseESPrimKey is derive_usage_key(Ke, 23, CSE-ID) with kid = KeID; the gateway process
([mef] in gateway.toml) fetches the key from the MEF on first sight of the KeID and binds it to
the Enrolee-ID the MEF returns.  When the MEF revokes the Enrolee (`m2msec mef enrolee revoke`),
the gateway's next re-check pass (`[mef] recheck_interval_s`, here the shortest allowed, 10 s)
deletes the key: the AE's next request on the same ESPrim session is refused 4112 (profile M27)."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from m2msec.esprim import Originator, PairwiseKey
from m2msec.esprim.transport import OuterResponseError, SecureOriginator
from m2msec.keys import derive_usage_key
from m2msec.mef import EnrolmentRequest, enrol, mef_tls_config
from m2msec.net.acme import AcmeCSE
from m2msec.net.client import AsyncOneM2MClient, OneM2MClient
from m2msec.onem2m import Operation, RequestPrimitive, ResourceType, ResponseStatusCode
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.primitives import new_request_id
from m2msec.saef import psk_client
from m2msec.saef.http import SAEFHTTPClient
from m2msec.store import KeyEncryptionKey, open_store
from m2msec.tls.engine import PSKCredentials, TLSHandshakeError

from _gateway_support import GatewayProcess, write_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mef"))
from _mef_process import MEFProcess  # noqa: E402

pytestmark = pytest.mark.acme
RSC = ResponseStatusCode
MEF_FQDN = "mef.m2m.example.com"
KPM = "3c" * 32
CSE_PSK = "4d" * 32


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _mef_granting(tmp_path: Path, ae: str, kpm_id: str, cse_target: str, suid: int) -> MEFProcess:
    """A MEF process (not started) with ``ae`` enrollable with ``kpm_id`` and granted (CSE, ``suid``),
    and the CSE as Enrolment Target (PSK ``cse-psk``)."""
    mef = MEFProcess(tmp_path / "mef", MEF_FQDN)
    mef.admin("enrolee", "add", "--enrolee-id", ae, "--kpm-id", kpm_id, "--kpm-hex", KPM,
              "--target", f"{cse_target}={suid}")
    mef.admin("target", "add", "--target-id", cse_target, "--psk-id", "cse-psk", "--psk-hex", CSE_PSK)
    return mef


def _gateway_config(tmp_path: Path, acme: AcmeCSE, mef_port: int, recheck_interval_s: int, extra: str = "") -> Path:
    """gateway.toml (and its KEK) in ``tmp_path/gw`` with ``[mef]`` pointing at the MEF process."""
    gwdir = tmp_path / "gw"
    gwdir.mkdir()
    KeyEncryptionKey.generate().write_file(gwdir / "gateway.kek")
    return write_config(gwdir / "gateway.toml", cse_id=acme.cse_id, cse_name=acme.cse_name, keys=[],
                        extra=f'\n[mef]\nfqdn = "{MEF_FQDN}"\nhost = "127.0.0.1"\nport = {mef_port}\n'
                              f'psk_identity = "cse-psk"\npsk_hex = "{CSE_PSK}"\n'
                              f'recheck_interval_s = {recheck_interval_s}\n' + extra)


def test_rspf_esprim_key_through_gateway_and_acme(acme: AcmeCSE, tmp_path: Path, tag: str) -> None:
    cse_target = "/" + acme.cse_id
    ae, other = f"Cmef-ae-{tag}", f"Cmef-other-{tag}"
    mef = _mef_granting(tmp_path, ae, "kpm-gw", cse_target, 23)
    gwdir = tmp_path / "gw"
    with mef:
        config = _gateway_config(tmp_path, acme, mef.port, 10)
        gw = GatewayProcess(config, acme.url)
        try:
            with OneM2MClient(gw.url, ae) as c:
                c.create(acme.cse_base, ResourceType.AE, {"m2m:ae": {"rn": f"mef-ae-{tag}", "api": "Nm2msec",
                                                                     "rr": False, "srv": ["3"]}})
            ae_path = f"{acme.cse_base}/mef-ae-{tag}"
            cb = acme.cse_base

            def inner(op: Operation, to: str, fr: str = ae, **kw: object) -> RequestPrimitive:
                return RequestPrimitive(op=op, to=to, fr=fr, rqi=new_request_id(), rvi="3", **kw)  # type: ignore[arg-type]

            async def go() -> tuple[object, ...]:
                e = await enrol("127.0.0.1", mef.port, mef_tls_config(psk=PSKCredentials(b"kpm-gw", bytes.fromhex(KPM))),
                                EnrolmentRequest())
                key = e.direct_key(cse_target, 23)
                assert key == derive_usage_key(e.ke, 23, cse_target)
                pk = PairwiseKey(kid=e.ke_id, key=key, peer_id=cse_target, suid=SUID.RSPF_ESPRIM)
                async with AsyncOneM2MClient(gw.url, ae) as client:
                    so = SecureOriginator(client, Originator(clock=_now), pk)
                    created = await so.send(inner(Operation.CREATE, ae_path, ty=ResourceType.CONTAINER,
                                                  pc={"m2m:cnt": {"rn": "mefcnt", "mni": 3}}), cb, cb)
                    got = await so.send(inner(Operation.RETRIEVE, f"{ae_path}/mefcnt"), cb, cb)
                    with pytest.raises(OuterResponseError) as imp:  # the key is bound to the Enrolee-ID
                        await so.send(inner(Operation.RETRIEVE, ae_path, fr=other), cb, cb)
                    wrong = PairwiseKey(kid=e.ke_id, key=os.urandom(32), peer_id=cse_target, suid=SUID.RSPF_ESPRIM)
                    with pytest.raises(OuterResponseError) as bad_key:
                        await SecureOriginator(client, Originator(clock=_now), wrong).send(
                            inner(Operation.RETRIEVE, ae_path), cb, cb)
                    unknown = PairwiseKey(kid=f"{secrets.token_hex(16)}@{MEF_FQDN}", key=os.urandom(32),
                                          peer_id=cse_target, suid=SUID.RSPF_ESPRIM)
                    with pytest.raises(OuterResponseError) as unk:  # the MEF refuses: 4112
                        await SecureOriginator(client, Originator(clock=_now), unknown).send(
                            inner(Operation.RETRIEVE, ae_path), cb, cb)
                    # the MEF revokes the Enrolee: within one re-check interval the gateway drops the
                    # key, and the same ESPrim session (already set up) is refused from then on
                    await asyncio.to_thread(mef.admin, "enrolee", "revoke", "--enrolee-id", ae)
                    revoked_at = time.monotonic()
                    refused = None
                    while refused is None and time.monotonic() - revoked_at < 25:
                        try:
                            await so.send(inner(Operation.RETRIEVE, f"{ae_path}/mefcnt"), cb, cb)
                        except OuterResponseError as exc:
                            refused = exc.rsc
                        else:
                            await asyncio.sleep(0.5)
                return e.ke_id, created, got, imp.value.rsc, bad_key.value.rsc, unk.value.rsc, refused

            kid, created, got, imp_rsc, bad_rsc, unk_rsc, revoked_rsc = asyncio.run(asyncio.wait_for(go(), 90))
            assert created.rsc == RSC.CREATED and got.rsc == RSC.OK  # type: ignore[attr-defined]
            assert got.pc["m2m:cnt"]["mni"] == 3  # type: ignore[attr-defined]
            assert imp_rsc == RSC.ESPRIM_IMPERSONATION_ERROR
            assert bad_rsc == RSC.ESPRIM_BAD_MAC  # a key other than the provisioned one
            assert unk_rsc == RSC.ESPRIM_UNKNOWN_KEY_ID
            assert revoked_rsc == RSC.ESPRIM_UNKNOWN_KEY_ID  # the revoked Enrolee's key is gone
            with OneM2MClient(acme.url, ae) as direct:  # the container really exists in ACME
                assert direct.retrieve(f"{ae_path}/mefcnt").rsc == RSC.OK
        finally:
            gw.stop()
    # the gateway deleted the fetched key (it was bound to the Enrolee-ID with SUID 23) and
    # audited why
    kek = KeyEncryptionKey.from_file(gwdir / "gateway.kek")
    with open_store(f"sqlite://{gwdir}/gateway.db", kek) as store:
        assert store.find_credential("esprim.pairwise", kid) is None  # type: ignore[arg-type]
        (rec,) = [a for a in store.list_audit(actor="gateway") if a.action == "mef-revoked"]
        assert rec.subject == ae and rec.details == {"kid": kid, "reason": "the MEF refused the KeID"}


def test_rspf_kpsa_saef_through_gateway_and_acme(acme: AcmeCSE, tmp_path: Path, tag: str) -> None:
    """RSPF-provisioned Kpsa (SUID 22) on the gateway's SAEF listener (profile M28): the AE enrols
    through the MEF process with a grant (CSE-ID, 22), derives Kpsa for the CSE and opens a TLS-PSK
    association with psk_identity = KeID; the gateway process ([saef] with [mef] only) fetches Kpsa
    from the MEF, binds the association to the Enrolee-ID, and the AE's requests reach ACME.  Then
    the MEF revokes the Enrolee and the gateway gets SIGHUP (no periodic re-check here,
    ``recheck_interval_s = 0``): it re-checks at once, and the open association's next request
    is refused 4106; a new handshake fails."""
    cse_target = "/" + acme.cse_id
    ae = f"Cmef-saef-{tag}"
    mef = _mef_granting(tmp_path, ae, "kpm-saef", cse_target, 22)
    with mef:
        config = _gateway_config(tmp_path, acme, mef.port, 0, '\n[saef]\nlisten = "127.0.0.1:0"\n')
        gw = GatewayProcess(config, acme.url, saef_listen="127.0.0.1:0")
        assert gw.saef_address is not None
        host, port = gw.saef_address
        cb = acme.cse_base
        try:
            def sighup_recheck() -> str:
                gw.proc.send_signal(signal.SIGHUP)
                assert gw.proc.stdout is not None
                for _ in range(3):  # "saef reloaded ..." and "mef re-checked ...", in either order
                    line = gw.proc.stdout.readline()
                    if line.startswith("mef re-checked"):
                        return line.strip()
                raise AssertionError("no 'mef re-checked' line after SIGHUP")

            async def go() -> tuple[list[int], int | None, str]:
                e = await enrol("127.0.0.1", mef.port, mef_tls_config(psk=PSKCredentials(b"kpm-saef", bytes.fromhex(KPM))),
                                EnrolmentRequest())
                entry = e.kpsa_entry(cse_target)
                rscs = []
                async with await SAEFHTTPClient.connect(psk_client(entry), host, port, timeout=8) as c:
                    assert c.context.peer_id == cse_target and c.context.psk_identity == e.ke_id
                    rsp = await c.send(RequestPrimitive(op=Operation.CREATE, to=cb, fr=ae, rqi=new_request_id(),
                                                        rvi="3", ty=ResourceType.AE,
                                                        pc={"m2m:ae": {"rn": f"saef-ae-{tag}", "api": "Nm2msec",
                                                                       "rr": False, "srv": ["3"]}}))
                    rscs.append(int(rsp.rsc))
                    rsp = await c.send(RequestPrimitive(op=Operation.CREATE, to=f"{cb}/saef-ae-{tag}", fr=ae,
                                                        rqi=new_request_id(), rvi="3", ty=ResourceType.CONTAINER,
                                                        pc={"m2m:cnt": {"rn": "saefcnt"}}))
                    rscs.append(int(rsp.rsc))
                    rsp = await c.send(RequestPrimitive(op=Operation.RETRIEVE, to=cb, fr=f"Cnot-{tag}",
                                                        rqi=new_request_id(), rvi="3"))
                    rscs.append(int(rsp.rsc))  # another AE's From on this association: 4106
                    rsp = await c.send(RequestPrimitive(op=Operation.RETRIEVE, to=f"{cb}/saef-ae-{tag}/saefcnt",
                                                        fr=ae, rqi=new_request_id(), rvi="3"))
                    assert rsp.rsc == RSC.OK
                    await asyncio.to_thread(mef.admin, "enrolee", "revoke", "--enrolee-id", ae)
                    line = await asyncio.wait_for(asyncio.to_thread(sighup_recheck), 20)
                    assert line == "mef re-checked 1 key(s): 1 removed, 0 not answered", line
                    rsp = await c.send(RequestPrimitive(op=Operation.RETRIEVE, to=f"{cb}/saef-ae-{tag}/saefcnt",
                                                        fr=ae, rqi=new_request_id(), rvi="3"))
                    refused = int(rsp.rsc)
                with pytest.raises(TLSHandshakeError):
                    await SAEFHTTPClient.connect(psk_client(entry), host, port, timeout=8)
                return rscs, refused, e.ke_id

            rscs, refused, _kid = asyncio.run(asyncio.wait_for(go(), 90))
            assert rscs == [RSC.CREATED, RSC.CREATED, RSC.ORIGINATOR_NOT_AUTHENTICATED]
            assert refused == RSC.ORIGINATOR_NOT_AUTHENTICATED  # the revoked Enrolee's association ended
            with OneM2MClient(acme.url, ae) as direct:  # what the AE created over the association is in ACME
                assert direct.retrieve(f"{cb}/saef-ae-{tag}/saefcnt").rsc == RSC.OK
        finally:
            gw.stop()


def test_sighup_puts_a_fixed_mef_table_in_force(acme: AcmeCSE, tmp_path: Path, tag: str) -> None:
    """``[mef]`` on SIGHUP (profile M30): the gateway process starts with a wrong PSK towards the
    MEF, so an AE's TLS-PSK association with its KeID fails (the MEF does not let the gateway
    in); the operator fixes ``psk_hex`` and sends SIGHUP: the gateway prints ``mef reloaded: ...``,
    and the AE's next handshake gets its Kpsa from the MEF and its request reaches ACME."""
    cse_target = "/" + acme.cse_id
    ae = f"Cmef-reload-{tag}"
    mef = _mef_granting(tmp_path, ae, "kpm-reload", cse_target, 22)
    with mef:
        config = _gateway_config(tmp_path, acme, mef.port, 0, '\n[saef]\nlisten = "127.0.0.1:0"\n')
        good = config.read_text()
        config.write_text(good.replace(f'psk_hex = "{CSE_PSK}"', f'psk_hex = "{"5e" * 32}"'))
        gw = GatewayProcess(config, acme.url, saef_listen="127.0.0.1:0")
        assert gw.saef_address is not None
        host, port = gw.saef_address
        try:
            def sighup() -> list[str]:
                gw.proc.send_signal(signal.SIGHUP)
                assert gw.proc.stdout is not None
                lines: list[str] = []
                for _ in range(4):  # "saef reloaded ...", "mef reloaded ...", "mef re-checked ..."
                    lines.append(gw.proc.stdout.readline().strip())
                    if lines[-1].startswith("mef re-checked"):
                        return lines
                raise AssertionError(f"no 'mef re-checked' line after SIGHUP: {lines}")

            async def go() -> tuple[list[str], int]:
                e = await enrol("127.0.0.1", mef.port, mef_tls_config(psk=PSKCredentials(b"kpm-reload", bytes.fromhex(KPM))),
                                EnrolmentRequest())
                entry = e.kpsa_entry(cse_target)
                with pytest.raises(TLSHandshakeError):  # the gateway cannot get Kpsa: wrong PSK to the MEF
                    await SAEFHTTPClient.connect(psk_client(entry), host, port, timeout=8)
                config.write_text(good)  # the operator fixes gateway.toml
                lines = await asyncio.wait_for(asyncio.to_thread(sighup), 20)
                async with await SAEFHTTPClient.connect(psk_client(entry), host, port, timeout=8) as c:
                    rsp = await c.send(RequestPrimitive(op=Operation.CREATE, to=acme.cse_base, fr=ae,
                                                        rqi=new_request_id(), rvi="3", ty=ResourceType.AE,
                                                        pc={"m2m:ae": {"rn": f"reload-ae-{tag}", "api": "Nm2msec",
                                                                       "rr": False, "srv": ["3"]}}))
                return lines, int(rsp.rsc)

            lines, rsc = asyncio.run(asyncio.wait_for(go(), 90))
            assert f"mef reloaded: {MEF_FQDN} at 127.0.0.1:{mef.port} as {cse_target}" in lines, lines
            assert rsc == RSC.CREATED
        finally:
            gw.stop()
