"""The certificate- and GBA-based RSPF demo step (m2msec.demo_rspf) against a real MEF and BSF
simulator on 127.0.0.1: the rows it shows, that it shows no key, and that it leaves nothing behind."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import pytest

from m2msec.demo_rspf import CERT_ENROLEE, DEVICE_ID, GBA_ENROLEE, MEF_FQDN, MEF_THREAD, run_other_rspfs
from m2msec.mef.gba import GBAError
from m2msec.onem2m.rsc import ResponseStatusCode as RSC

KEID = re.compile(r"[0-9a-f]{32}@" + re.escape(MEF_FQDN))


def _leftover_threads(before: set[threading.Thread]) -> list[str]:
    """Threads started during the step still alive (a just-stopped one gets a moment to finish)."""
    for t in set(threading.enumerate()) - before:
        t.join(5)
    return [t.name for t in set(threading.enumerate()) - before if t.is_alive()]


def _refuses_connections(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _same_fingerprints(value: str) -> bool:
    m = re.match(r"([0-9a-f]{8}) / ([0-9a-f]{8}) \(same key", value)
    return m is not None and m.group(1) == m.group(2)


def test_run_other_rspfs(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    start = time.monotonic()
    rows = run_other_rspfs(tmp_path / "rspf")  # a directory the step creates, and removes again
    elapsed = time.monotonic() - start
    table = dict(rows)
    assert len(table) == len(rows)  # unique names

    # Certificate-Based RSPF
    assert table["Enrolee-ID the MEF bound from the certificate"] == f"{CERT_ENROLEE} (matched cert:device|{DEVICE_ID})"
    assert "verified the MEF as fqdn " + MEF_FQDN in table["MEF Handshake (mutual certificates)"]
    cert_keid = table["KeID of the certificate enrolee (10.3.4)"]
    assert KEID.fullmatch(cert_keid)
    assert _same_fingerprints(table["Ke fingerprint: certificate enrolee / MEF"])
    untrusted = table["same Device ID, certificate from an untrusted CA"]
    assert "MEF says UNTRUSTED_ROOT" in untrusted and "alert 'unknown ca'" in untrusted
    assert f"RSC {int(RSC.ORIGINATOR_NOT_AUTHENTICATED)} ORIGINATOR_NOT_AUTHENTICATED" in untrusted

    # GBA-Based RSPF
    assert "stand-in for the operator's BSF" in table["BSF"]
    btid = re.search(r"B-TID (\S+@bsf\.operator\.example)$", table["enrolee's GBA bootstrap over Ub"])
    assert btid is not None
    naf = table["MEF Handshake (TLS-PSK, MEF as NAF)"]
    assert "PSK-AES128-CBC-SHA256" in naf and "hint '3GPP-bootstrapping'" in naf
    assert f"psk_identity '3GPP-bootstrapping.{btid.group(1)}'" in naf
    assert table["Ks_NAF for the MEF (TS 33.220 B.3)"].endswith(f"NAF_Id = {MEF_FQDN} || 01 00 01 00 ae")
    assert table["MEF fetched Ks_NAF over Zn"].startswith("1 Zn request")
    assert table["MEF fetched Ks_NAF over Zn"].endswith(f"IMPI -> Enrolee-ID {GBA_ENROLEE}")
    gba_keid = table["KeID of the GBA enrolee (10.3.4)"]
    assert KEID.fullmatch(gba_keid) and gba_keid != cert_keid
    ke_row = table["Ke fingerprint: GBA enrolee / MEF"]
    assert _same_fingerprints(ke_row)
    assert ke_row[:8] not in table["Ks_NAF for the MEF (TS 33.220 B.3)"]  # Ke is not Ks_NAF
    assert "MEF says 'Zn: BSF refused B-TID (HTTP 404: unknown B-TID)'" in table["B-TID the BSF never issued"]
    expired = table["same B-TID after its lifetime (3600 s)"]
    assert "HTTP 404: bootstrapping session expired" in expired and "alert 'unknown psk identity'" in expired
    assert table["Enrolment Keys the MEF stored"].startswith("2 ")

    for _name, value in rows:  # identifiers (16-octet hex) and 4-octet fingerprints only, never key octets
        assert not re.search(r"[0-9a-fA-F]{40,}", value)

    # nothing left behind: threads, listening sockets, store files
    assert _leftover_threads(before) == []
    mef_port = int(re.search(r"127\.0\.0\.1:(\d+)", table["MEF"]).group(1))  # type: ignore[union-attr]
    bsf_port = int(re.search(r"127\.0\.0\.1:(\d+)", table["BSF"]).group(1))  # type: ignore[union-attr]
    assert _refuses_connections(mef_port) and _refuses_connections(bsf_port)
    assert list(tmp_path.iterdir()) == []
    assert elapsed < 20, f"the step took {elapsed:.1f} s"  # target < 8 s on an idle machine


def test_cleanup_when_the_step_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's BSF refuses Ub bootstrapping half-way (after the certificate part ran):
    the step raises, and the MEF, the BSF simulator and the store are gone."""
    import m2msec.mef.gba as gba

    def refusing_ub(*_a: object, **_kw: object) -> object:
        raise GBAError("Ub: bootstrapping refused (injected)", rsc=RSC.ORIGINATOR_NOT_AUTHENTICATED)

    monkeypatch.setattr(gba, "ub_bootstrap", refusing_ub)
    before = set(threading.enumerate())
    with pytest.raises(GBAError, match="injected"):
        run_other_rspfs(tmp_path)
    leftovers = _leftover_threads(before)
    assert MEF_THREAD not in leftovers and "bsf-sim" not in leftovers and leftovers == []
    assert list(tmp_path.iterdir()) == []
