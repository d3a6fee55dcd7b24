"""Every program in ``examples/`` runs as a user would run it and does what it says.

Each example runs as a subprocess of this interpreter (``python examples/<name>.py`` from the
repository root) in a session of its own and with ``TMPDIR`` pointing to an empty directory;
the test asserts exit status 0, the key lines of its output, no traceback or
ResourceWarning on stderr, no process of its session left running, and nothing left in its
temporary directory.  An example without an entry in ``EXPECTED`` fails the test, so a new
example comes with its check.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from m2msec.net.acme import acme_available

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
TIMEOUT = 60  # seconds per example; each finishes in a few seconds on a small machine

#: key lines (regular expressions, each must match one line of stdout) and whether ACME is needed
EXPECTED: dict[str, tuple[list[str], bool]] = {
    "esdata_envelopes.py": ([
        r"^sealed: class=sign-enc, contentSecurity=2, media type application/jose\+json",
        r"^  kid=\S+@mef\.sp\.example\.com alg=A128KW$",
        r"^  kid=\S+ alg=ECDH-ES\+A128KW$",
        r"^contentInstance cnf = 'application/json:0:2'",
        r"^target A \(provisioned key\): \{'temperature': 21\.5, 'unit': 'Cel'\} decrypted with A128KW/A128GCM.*"
        r"signed ES256 by //sp\.example\.com/id-in/Csensor-",
        r"^target B \(certificate\): \{'temperature': 21\.5, 'unit': 'Cel'\} decrypted with ECDH-ES\+A128KW/A128GCM",
        r"^tampered envelope refused: DECRYPTION_FAILED",
        r"^wrong expected Source refused: UNTRUSTED_CERTIFICATE$",
        r"^OK: ESData nested sign-then-encrypt for two targets$",
    ], False),
    "maf_keys.py": ([
        r"^MAF maf\.example\.com on 127\.0\.0\.1:\d+, store sqlite$",
        r"^(sensor|app|other) registered: MAF Client ID //sp\.example\.com/id-in/C(sensor|app|other), KmID [0-9a-f]{32}@maf\.example\.com$",
        r"^sensor registered key [0-9a-f]{32}@maf\.example\.com \(SUID 34, .*\) for target //sp\.example\.com/id-in/Capp$",
        r"^app retrieved [0-9a-f]{32}@maf\.example\.com and opened the reading: \{'temperature': 21\.5, 'unit': 'Cel'\}$",
        r"^  key source //sp\.example\.com/id-in/Csensor, SUID 34, .* same key: True",
        r"^other AE refused: RSC 4103 ORIGINATOR_HAS_NO_PRIVILEGE$",
        r"^wrong Km refused: MAF Handshake failed",
        r"^OK: MAF key registration and retrieval$",
    ], False),
    "mef_enrolment.py": ([
        r"^enrolled as //sp\.example\.com/id-in/Cthermometer: KeID [0-9a-f]{32}@mef\.sp\.example\.com, "
        r"Ke sha256:[0-9a-f]{16} \(32 octets\)",
        r"^EST certificate serial [0-9a-f]+, identifiers \['//sp\.example\.com/id-in/Cthermometer'\]",
        r"^  for \['SAEF', 'ESPrim'\], CRL distribution point \['http://127\.0\.0\.1:\d+/crl/intermediate\.crl'\]$",
        r"^dashboard opened b'\{\"temperature\": 21\.5\}' from //sp\.example\.com/id-in/Cthermometer \(key fetched "
        r"from the MEF for KeID [0-9a-f]{32}@mef\.sp\.example\.com\)$",
        r"^relying party, CRL #1: certificate accepted$",
        r"^operator revoked //sp\.example\.com/id-in/Cthermometer: \d+ keys removed; CRL #2 lists serial [0-9a-f]+: True$",
        r"^relying party after re-fetching the CRL: certificate refused \(REVOKED\)$",
        r"^dashboard re-check with the MEF: 1 key\(s\) revoked; the old envelope: key forgotten$",
        r"^revoked device enrols again: refused \(\[4103 ",
        r"^OK: MEF enrolment, EST certificate, an ESData key from the MEF, revocation \(CRL, MEF re-check\)$",
    ], False),
    "escertke_keys.py": ([
        r"^ESCertKE messages: #1 \d+ octets, #2 \d+ octets, #3 \d+ octets, #4 \d+ octets$",
        r"^meter:  pairwiseE2EKeyID ([0-9a-f]{32}), key sha256:[0-9a-f]{16}, peer Cportal$",
        r"^portal: pairwiseE2EKeyID [0-9a-f]{32}, key sha256:[0-9a-f]{16}, peer Cmeter$",
        r"^ESPrim Object to the portal: \d+ characters of JWE compact, readable: False$",
        r"^portal opened RETRIEVE /id-in/Cportal/tariff from Cmeter; meter got 2000 "
        r"\{'m2m:cin': \{'con': '0\.21 EUR/kWh'\}\}$",
        r"^certificate from another CA refused: AUTHENTICATION_FAILED \(rsc 4106\)$",
        r"^OK: ESCertKE key agreed by both AEs and used for ESPrim$",
    ], False),
    "saef_dtls_ocsp.py": ([
        r"^CA CN=Example SP Root CA,O=Example SP, OCSP responder http://127\.0\.0\.1:\d+/$",
        r"^CSE /id-in on 127\.0\.0\.1:\d+ \(DTLS 1\.2, certificates, OCSP\)$",
        r"^meter: associated with /id-in \(ECDHE-ECDSA-AES128-CCM8\), CSE status good, reply 'ok'$",
        r"^valve: refused \(BAD_CERTIFICATE: tls alert certificate revoked\)$",
        r"^meter again: associated with /id-in \(ECDHE-ECDSA-AES128-CCM8\), CSE status good, reply 'ok'$",
        r"^OCSP queries by the CSE: 3 \(",
        r"^OK: DTLS certificate SAEF with OCSP stapling and OCSP checks of the devices$",
    ], False),
    "saef_association.py": ([
        r"^CSE /id-in on 127\.0\.0\.1:\d+: TLS-PSK and certificate associations$",
        r"^sensor associated: TLSv1\.2, PSK-AES128-CBC-SHA256, psk_identity [0-9a-f]{32}@mef\.sp\.example\.com$",
        r"^sensor CREATE as itself: 2001 CREATED$",
        r"^sensor CREATE with From = another AE: 4106 ORIGINATOR_NOT_AUTHENTICATED$",
        r"^app associated: TLSv1\.2, ECDHE-ECDSA-AES128-SHA256, CSE verified as /id-in$",
        r"^app CREATE as itself: 2001 CREATED$",
        r"^wrong Kpsa refused: handshake failed \(PSK_MISMATCH\)$",
        r"^certificate from another CA refused: handshake failed \(BAD_CERTIFICATE\)$",
        r"^the CSE saw: readings by //sp\.example\.com/id-in/Csensor \(psk\); "
        r"commands by //sp\.example\.com/id-in/Capp \(certificate\)$",
        r"^OK: PSK and certificate security associations, requests bound to the authenticated AE$",
    ], False),
    "esprim_two_aes.py": ([
        r"^AE1 got 2000 \{'m2m:cin': \{'con': '21\.5 C'\}\} from AE2 through ACME \+ gateway at http://127\.0\.0\.1:\d+$",
    ], True),
}


def _session_processes(sid: int) -> list[str]:
    """Processes still in session ``sid`` (Linux /proc); [] where /proc is not available."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[-1].split()  # after "pid (comm)": state ppid pgrp session ...
        if len(fields) > 3 and int(fields[3]) == sid and fields[0] != "Z":
            out.append(text.split(")", 1)[0] + ")")
    return out


def test_every_example_has_a_check() -> None:
    assert EXAMPLES, "no examples found"
    assert {p.name for p in EXAMPLES} == set(EXPECTED), "add the new example's key lines to EXPECTED"


@pytest.mark.parametrize(
    "example",
    [pytest.param(p, id=p.stem, marks=[pytest.mark.acme] if EXPECTED.get(p.name, ([], False))[1] else [])
     for p in EXAMPLES],
)
def test_example_runs(example: Path, tmp_path: Path) -> None:
    patterns, needs_acme = EXPECTED[example.name]
    if needs_acme and not acme_available():
        pytest.skip("acmecse is not installed")
    doc = example.read_text()
    assert f"python examples/{example.name}" in doc, "the docstring says how to run the example"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONWARNINGS": "always::ResourceWarning"}
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as o, err.open("w") as e:  # files, not pipes: a leftover child cannot hold us up
        proc = subprocess.Popen([sys.executable, str(example)], cwd=ROOT, env=env, stdout=o, stderr=e,
                                start_new_session=True)
        try:
            proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the example's own session: it and what it started
            proc.wait()
            pytest.fail(f"{example.name} did not finish within {TIMEOUT} s\n{out.read_text()}\n{err.read_text()}")
    left = _session_processes(proc.pid)  # right at exit: whatever it started must be gone by now
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
    stdout, stderr = out.read_text(), err.read_text()
    assert not left, f"{example.name} left processes running: {left}"
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{stdout}\n{stderr}"
    lines = stdout.splitlines()
    for pattern in patterns:
        assert any(re.search(pattern, line) for line in lines), f"no line matches {pattern!r} in:\n{stdout}"
    assert "Traceback" not in stderr and "ResourceWarning" not in stderr, stderr
    assert not [line for line in lines if line.startswith("FAIL")], stdout
    assert not list(tmp.iterdir()), f"{example.name} left temporary files: {list(tmp.iterdir())}"
