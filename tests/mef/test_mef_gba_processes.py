"""GBA-Based RSPF across three processes: `m2msec mef bsf-sim` (operator BSF), `m2msec mef serve`
with [gba] (the MEF as NAF) and `m2msec mef enrol-gba` (the UE: Ub bootstrapping, then the
TLS-PSK MEF Handshake with Ks_NAF and the Enrolment Exchange); an Enrolment Target then fetches
the SUID-23 key for the printed KeID."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mef_process import BSFSimProcess, MEFProcess  # noqa: E402

from m2msec.mef import MEFKeyFetcher, mef_tls_config  # noqa: E402
from m2msec.tls.engine import PSKCredentials  # noqa: E402

MEF_FQDN = "mef.m2m.example.com"
IMPI = "001010000000042@ims.mnc001.mcc001.3gppnetwork.org"
K = "8e" * 32
NAF_TOKEN = "zn-token-of-the-mef"
CSE = "/id-in"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "m2msec.mef.cli", *args], capture_output=True, text=True, timeout=30)


def test_gba_enrolment_three_processes(tmp_path: Path) -> None:
    with BSFSimProcess({IMPI: K}, {MEF_FQDN: NAF_TOKEN}) as bsf:
        bsf_url = bsf.url
        mef = MEFProcess(tmp_path / "mef", MEF_FQDN)
        mef.config.write_text(mef.config.read_text() + f'[gba]\nbsf_url = "{bsf_url}"\nnaf_token = "{NAF_TOKEN}"\n')
        mef.admin("enrolee", "add", "--enrolee-id", "Cgba-proc", "--gba-impi", IMPI, "--target", f"{CSE}=23")
        mef.admin("target", "add", "--target-id", CSE, "--psk-id", "cse-psk", "--psk-hex", "9f" * 32)
        with mef:
            mef_addr = f"127.0.0.1:{mef.port}"
            bad = _cli("enrol-gba", "--mef", mef_addr, "--mef-fqdn", MEF_FQDN, "--bsf", bsf_url, "--impi", IMPI,
                       "--k-hex", "00" * 32)
            assert bad.returncode == 2 and "Ub" in bad.stderr  # wrong subscriber key: the BSF refuses
            wrong_naf = _cli("enrol-gba", "--mef", mef_addr, "--mef-fqdn", "other.m2m.example.com", "--bsf", bsf_url,
                             "--impi", IMPI, "--k-hex", K)
            assert wrong_naf.returncode == 2  # Ks_NAF of another NAF: the MEF handshake fails
            ok = _cli("enrol-gba", "--mef", mef_addr, "--mef-fqdn", MEF_FQDN, "--bsf", bsf_url, "--impi", IMPI,
                      "--k-hex", K)
            assert ok.returncode == 0, ok.stderr
            out = dict(ln.split(" ", 1) for ln in ok.stdout.strip().splitlines())
            assert out["EnroleeID"] == "Cgba-proc" and out["B-TID"].endswith("@bsf.operator.example")
            assert out["KeID"].endswith("@" + MEF_FQDN) and out["direct-key"] == f"{CSE} SUID 23"
            assert K not in ok.stdout
            fetcher = MEFKeyFetcher("127.0.0.1", mef.port,
                                    mef_tls_config(psk=PSKCredentials(b"cse-psk", bytes.fromhex("9f" * 32))),
                                    target_id=CSE, mef_fqdn=MEF_FQDN)
            cred = asyncio.run(asyncio.wait_for(fetcher.fetch(out["KeID"], 23), 20))
            assert cred.enrolee_id == "Cgba-proc" and len(cred.key) == 32
