"""MEF revocations reach a running MAF process (profile F16): ``m2msec mef serve`` and
``m2msec maf serve`` with ``[mef]`` as separate processes.  An AE enrols (PSK RSPF) with a MAF
preference, opens the MAF Handshake with its KeID and Km (the MAF fetches Km from the MEF) and
registers, and keeps that MAF session open; the MEF revokes the Enrolee (``m2msec mef enrolee
revoke``); SIGHUP makes the MAF re-check at once (``recheck_interval_s = 0``: no periodic pass here)
and print what it found; the open session's next procedure is refused 4106 (F15) and a new
handshake with the KeID fails."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from _mafproc import ADMIN_FQDN, MAF_FQDN, MAFProcess, utc_now

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mef"))
from _mef_process import MEFProcess

from m2msec.maf import MAFClient, MAFClientConfig
from m2msec.maf.client import MAFResponseError
from m2msec.mef import EnrolmentRequest, enrol, mef_tls_config
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.tls.engine import PSKCredentials, TLSHandshakeError

MEF_FQDN = "mef.m2m.example.com"
KPM = "5e" * 32
MAF_PSK = "6f" * 32
AE = "Cmafdev-sighup"


def _line_starting(proc: MAFProcess, prefix: str, timeout: float = 20.0) -> str:
    got: list[str] = []

    def read() -> None:
        assert proc.proc.stdout is not None
        for _ in range(5):
            line = proc.proc.stdout.readline()
            if not line or line.startswith(prefix):
                got.append(line.strip())
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    assert got and got[0].startswith(prefix), f"no {prefix!r} line: {got!r}"
    return got[0]


def test_sighup_rechecks_and_a_revoked_keid_loses_the_maf(tmp_path: Path) -> None:
    mef = MEFProcess(tmp_path / "mef", MEF_FQDN)
    mef.admin("enrolee", "add", "--enrolee-id", AE, "--kpm-id", "kpm-sighup", "--kpm-hex", KPM,
              "--maf", f"{MAF_FQDN},https://{MAF_FQDN}/keyreg,https://{MAF_FQDN}/keyret")
    mef.admin("target", "add", "--target-id", MAF_FQDN, "--psk-id", "maf-psk", "--psk-hex", MAF_PSK)
    with mef:
        maf = MAFProcess(tmp_path / "maf", {}, extra=(
            f'[mef]\nfqdn = "{MEF_FQDN}"\nhost = "127.0.0.1"\nport = {mef.port}\npsk_identity = "maf-psk"\n'
            f'psk_hex = "{MAF_PSK}"\nrecheck_interval_s = 0\n'))
        try:
            def sighup() -> str:
                maf.proc.send_signal(signal.SIGHUP)
                return _line_starting(maf, "mef re-checked")

            async def main() -> None:
                e = await enrol("127.0.0.1", mef.port,
                                mef_tls_config(psk=PSKCredentials(b"kpm-sighup", bytes.fromhex(KPM))),
                                EnrolmentRequest(maf_enrolment=True))
                cfg = MAFClientConfig(MAF_FQDN, ADMIN_FQDN, "127.0.0.1", maf.port,
                                      psk=PSKCredentials(e.ke_id.encode(), e.km(MAF_FQDN)), timeout=5)
                async with MAFClient(cfg) as c:
                    reg = await c.register(utc_now() + timedelta(days=1))
                    assert reg.maf_client_id == AE  # the Enrolee-ID the MEF returned
                    assert await asyncio.to_thread(sighup) == "mef re-checked 1 KeID(s): 0 removed, 0 not answered"
                    await c.update_registration(expiration_time=utc_now() + timedelta(days=2))  # the session goes on
                    await asyncio.to_thread(mef.admin, "enrolee", "revoke", "--enrolee-id", AE)
                    assert await asyncio.to_thread(sighup) == "mef re-checked 1 KeID(s): 1 removed, 0 not answered"
                    with pytest.raises(MAFResponseError) as ei:  # the open session ends at its next procedure
                        await c.update_registration(expiration_time=utc_now() + timedelta(days=3))
                    assert ei.value.rsc is RSC.ORIGINATOR_NOT_AUTHENTICATED
                with pytest.raises(TLSHandshakeError):  # and the KeID opens no new one
                    async with MAFClient(cfg) as c:
                        await c.register(utc_now() + timedelta(days=1))

            asyncio.run(asyncio.wait_for(main(), 60))
            assert maf.proc.poll() is None  # SIGHUP never ends the MAF
        finally:
            maf.stop()


def test_sighup_puts_a_fixed_mef_table_in_force(tmp_path: Path) -> None:
    """``[mef]`` on SIGHUP (profile F18): the MAF process starts with a wrong PSK towards the MEF,
    so a remotely provisioned client's handshake with its KeID fails (the MAF cannot fetch Km);
    the operator fixes ``psk_hex`` and sends SIGHUP: ``mef reloaded: ...``, and the next
    handshake succeeds; a new ``recheck_interval_s`` is reported too."""
    ae = "Cmafdev-reload"
    mef = MEFProcess(tmp_path / "mef", MEF_FQDN)
    mef.admin("enrolee", "add", "--enrolee-id", ae, "--kpm-id", "kpm-reload", "--kpm-hex", KPM,
              "--maf", f"{MAF_FQDN},https://{MAF_FQDN}/keyreg,https://{MAF_FQDN}/keyret")
    mef.admin("target", "add", "--target-id", MAF_FQDN, "--psk-id", "maf-psk", "--psk-hex", MAF_PSK)
    with mef:
        good = (f'[mef]\nfqdn = "{MEF_FQDN}"\nhost = "127.0.0.1"\nport = {mef.port}\npsk_identity = "maf-psk"\n'
                f'psk_hex = "{MAF_PSK}"\nrecheck_interval_s = 0\n')
        maf = MAFProcess(tmp_path / "maf", {}, extra=good.replace(MAF_PSK, "7a" * 32))
        try:
            async def main() -> None:
                e = await enrol("127.0.0.1", mef.port,
                                mef_tls_config(psk=PSKCredentials(b"kpm-reload", bytes.fromhex(KPM))),
                                EnrolmentRequest(maf_enrolment=True))
                cfg = MAFClientConfig(MAF_FQDN, ADMIN_FQDN, "127.0.0.1", maf.port,
                                      psk=PSKCredentials(e.ke_id.encode(), e.km(MAF_FQDN)), timeout=5)
                with pytest.raises(TLSHandshakeError):  # the MAF cannot get Km from the MEF
                    async with MAFClient(cfg) as c:
                        await c.register(utc_now() + timedelta(days=1))
                text = maf.config.read_text()
                maf.config.write_text(text.replace("7a" * 32, MAF_PSK).replace("recheck_interval_s = 0",
                                                                              "recheck_interval_s = 600"))
                maf.proc.send_signal(signal.SIGHUP)
                assert await asyncio.to_thread(_line_starting, maf, "mef reloaded") == \
                    f"mef reloaded: {MEF_FQDN} at 127.0.0.1:{mef.port}"
                assert await asyncio.to_thread(_line_starting, maf, "mef recheck_interval_s") == \
                    "mef recheck_interval_s now 600"
                async with MAFClient(cfg) as c:
                    reg = await c.register(utc_now() + timedelta(days=1))
                    assert reg.maf_client_id == ae

            asyncio.run(asyncio.wait_for(main(), 60))
            assert maf.proc.poll() is None
        finally:
            maf.stop()
