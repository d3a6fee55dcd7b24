"""Key files instead of key bytes on the command line (docs/threat-model.md 5.4): ``mef enrolee add
--kpm-file``, ``mef target add --psk-file``, ``mef enrol --kpm-file``, ``mef est-enrol --kpm-file``
and ``mef enrol-gba --k-file`` (``-`` = stdin), exactly one of the pair where a key is required."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mef_process import BSFSimProcess, MEFProcess

from m2msec.mef.cli import app
from m2msec.mef.state import NS_KPM, NS_TARGET_PSK
from m2msec.store import KeyEncryptionKey, open_store

MEF_FQDN = "mef.m2m.example.com"
runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.split())


def _stored(workdir: Path, ns: str, cred_id: str) -> bytes:
    kek = KeyEncryptionKey.from_file(workdir / "mef.kek")
    with open_store(f"sqlite:///{workdir / 'mef.db'}", kek) as store:
        return store.get_credential(ns, cred_id).secret


def test_enrolee_add_and_target_add_read_key_files(tmp_path: Path) -> None:
    mef = MEFProcess(tmp_path / "mef", MEF_FQDN)
    cfg = str(mef.config)
    kpm1, kpm2, psk = os.urandom(32), os.urandom(32), os.urandom(32)
    hex_file = tmp_path / "kpm1.hex"
    hex_file.write_text(kpm1.hex()[:30] + "\n  " + kpm1.hex()[30:] + "\n")  # whitespace is stripped
    raw_file = tmp_path / "psk.bin"
    raw_file.write_bytes(psk)

    r = runner.invoke(app, ["enrolee", "add", "--config", cfg, "--enrolee-id", "C1", "--kpm-id", "kpm1",
                            "--kpm-file", str(hex_file)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["enrolee", "add", "--config", cfg, "--enrolee-id", "C2", "--kpm-id", "kpm2",
                            "--kpm-file", "-"], input=kpm2)  # raw octets on stdin
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["target", "add", "--config", cfg, "--target-id", "/id-in", "--psk-id", "t-psk",
                            "--psk-file", str(raw_file)])
    assert r.exit_code == 0, r.output
    assert _stored(mef.config.parent, NS_KPM, "kpm1") == kpm1
    assert _stored(mef.config.parent, NS_KPM, "kpm2") == kpm2
    assert _stored(mef.config.parent, NS_TARGET_PSK, "t-psk") == psk

    # refusals: both options, an unreadable file, an empty file, bad hex (never echoed)
    r = runner.invoke(app, ["enrolee", "add", "--config", cfg, "--enrolee-id", "C3", "--kpm-id", "kpm3",
                            "--kpm-hex", "11" * 32, "--kpm-file", str(hex_file)])
    assert r.exit_code == 2 and "give --kpm-hex or --kpm-file, not both" in _flat(r.output)
    r = runner.invoke(app, ["target", "add", "--config", cfg, "--target-id", "/id-x", "--psk-id", "x-psk",
                            "--psk-file", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "--psk-file: cannot read file" in _flat(r.output)
    (tmp_path / "empty").write_bytes(b"")
    r = runner.invoke(app, ["target", "add", "--config", cfg, "--target-id", "/id-x", "--psk-id", "x-psk",
                            "--psk-file", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "is empty" in r.output
    r = runner.invoke(app, ["target", "add", "--config", cfg, "--target-id", "/id-x", "--psk-id", "x-psk",
                            "--psk-hex", "zz" + "ab" * 31])
    assert r.exit_code == 2 and "--psk-hex is not hexadecimal" in r.output and "ab" * 31 not in r.output
    r = runner.invoke(app, ["enrolee", "list", "--config", cfg])
    assert "C3" not in r.output and "/id-x" not in r.output


def test_enrol_est_enrol_and_enrol_gba_read_key_files(tmp_path: Path) -> None:
    kpm, k, target_psk = os.urandom(32), "8e" * 32, "9f" * 32
    impi = "001010000000042@ims.mnc001.mcc001.3gppnetwork.org"
    with BSFSimProcess({impi: k}, {MEF_FQDN: "zn-token"}) as bsf:
        mef = MEFProcess(tmp_path / "mef", MEF_FQDN)
        mef.config.write_text(mef.config.read_text() + f'[gba]\nbsf_url = "{bsf.url}"\nnaf_token = "zn-token"\n')
        kpm_file = tmp_path / "kpm"
        kpm_file.write_bytes(kpm)
        mef.admin("enrolee", "add", "--enrolee-id", "Cfile", "--kpm-id", "kpm-file", "--kpm-file", str(kpm_file),
                  "--target", "/id-in=23")
        mef.admin("enrolee", "add", "--enrolee-id", "Cgba", "--gba-impi", impi, "--target", "/id-in=23")
        mef.admin("target", "add", "--target-id", "/id-in", "--psk-id", "cse-psk", "--psk-hex", target_psk)
        with mef:
            addr = f"127.0.0.1:{mef.port}"
            r = runner.invoke(app, ["enrol", "--mef", addr, "--kpm-id", "kpm-file", "--kpm-file", "-"],
                              input=kpm.hex() + "\n")
            assert r.exit_code == 0, r.output
            assert "EnroleeID Cfile" in r.output and kpm.hex() not in r.output
            r = runner.invoke(app, ["enrol", "--mef", addr, "--kpm-id", "kpm-file"])
            assert r.exit_code == 2 and "give --kpm-hex or --kpm-file" in _flat(r.output)
            r = runner.invoke(app, ["enrol", "--mef", addr, "--kpm-id", "kpm-file", "--kpm-hex", kpm.hex(),
                                    "--kpm-file", str(kpm_file)])
            assert r.exit_code == 2 and "not both" in r.output
            # a wrong Kpm from a file reaches the MEF and fails the handshake (the file was used)
            wrong = tmp_path / "wrong"
            wrong.write_text("00" * 32)
            r = runner.invoke(app, ["enrol", "--mef", addr, "--kpm-id", "kpm-file", "--kpm-file", str(wrong)])
            assert r.exit_code == 2 and "EnroleeID" not in r.output, r.output

            # est-enrol: the option pair is checked before any connection
            r = runner.invoke(app, ["est-enrol", "--mef", addr, "--kpm-id", "kpm-file", "--out", str(tmp_path / "o")])
            assert r.exit_code == 2 and "give --kpm-hex or --kpm-file" in _flat(r.output)
            r = runner.invoke(app, ["est-enrol", "--mef", addr, "--kpm-id", "kpm-file", "--kpm-hex", kpm.hex(),
                                    "--kpm-file", str(kpm_file), "--out", str(tmp_path / "o")])
            assert r.exit_code == 2 and "not both" in r.output
            r = runner.invoke(app, ["est-enrol", "--mef", addr, "--kpm-id", "kpm-file", "--kpm-file", str(kpm_file),
                                    "--out", str(tmp_path / "o")])
            # the Kpm from the file authenticated: the MEF answered the Enrolment Exchange (no EST for Cfile)
            assert r.exit_code == 2 and "did not instruct Certificate Enrolment" in r.output
            assert not (tmp_path / "o" / "key.pem").exists()

            k_file = tmp_path / "k.hex"
            k_file.write_text(k + "\n")
            r = runner.invoke(app, ["enrol-gba", "--mef", addr, "--mef-fqdn", MEF_FQDN, "--bsf", bsf.url,
                                    "--impi", impi, "--k-file", str(k_file)])
            assert r.exit_code == 0, r.output
            assert "EnroleeID Cgba" in r.output and k not in r.output
            r = runner.invoke(app, ["enrol-gba", "--mef", addr, "--mef-fqdn", MEF_FQDN, "--bsf", bsf.url,
                                    "--impi", impi])
            assert r.exit_code == 2 and "give --k-hex or --k-file" in _flat(r.output)
