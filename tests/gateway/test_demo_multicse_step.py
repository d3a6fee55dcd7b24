"""The ``m2msec demo`` step "ESPrim across two CSEs" (m2msec.demo_multicse), run for real:
two ACME CSEs, two in-process gateways, AE2's endpoint.  Checks the rows a user reads, the
gateways' traces independently of the step's own checks, and that no ACME process is left
behind, after success and after a failure half-way through."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from m2msec.demo_multicse import run_esprim_across_cses
from m2msec.errors import StoreError
from m2msec.net.acme import acme_available

pytestmark = [pytest.mark.acme, pytest.mark.timeout(120)]


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (the step's unique work directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if text in cmd and int(entry) != os.getpid():
            found.append(int(entry))
    return found


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    if not acme_available():
        pytest.skip("acmecse is not installed")
    workdir = tmp_path_factory.mktemp("demo-multicse")
    rows = run_esprim_across_cses(workdir)
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), "row names are unique"
    return workdir, dict(rows)


def test_topology_rows(run: tuple[Path, dict[str, str]]) -> None:
    _, rows = run
    assert rows["IN-CSE"].startswith("ACME /id-in/cse-in at http://127.0.0.1:")
    assert "registered to /id-in" in rows["MN-CSE"] and "/id-mn/cse-mn" in rows["MN-CSE"]
    in_gw = re.search(r"http://127\.0\.0\.1:\d+", rows["IN gateway"])
    assert in_gw is not None
    assert f"[[routes]] /id-in -> {in_gw.group(0)}" in rows["MN gateway"]
    assert rows["AE1 (on the MN-CSE)"].startswith("/id-mn/C")
    assert rows["AE2 (on the IN-CSE)"].startswith("/id-in/cse-in/")
    assert "type-3 requests sent: 0" in rows["AE2's esi read through"]


def test_notify_path_and_decryption_rows(run: tuple[Path, dict[str, str]]) -> None:
    _, rows = run
    assert "AE1 -> MN gateway -> IN gateway -> AE2's poa" in rows["AE1 -> AE2  NOTIFY (inner)"]
    assert "identical on both hops" in rows["  ESPrim Object on the wire"]
    assert re.search(r"JWE compact, \d+ characters, enc A256GCM, kid [0-9a-f]{8}…@", rows["  ESPrim Object on the wire"])
    ae1 = rows["AE1 (on the MN-CSE)"].split(",")[0]
    assert rows["  decrypted at AE2"].startswith(f"NOTIFY from {ae1}, alarm SECRET-ALARM-")
    assert rows["  outer response"].startswith("2000 with a sealed m2m:seci response")
    assert rows["  inner response at AE1"].startswith("2000 OK")
    assert rows["AE1 -> AE2  RETRIEVE (inner)"].startswith("2000 OK, reading SECRET-READING-")
    assert "m2m:seci in none, AE1 <-> AE2 values in none" in rows["what the two CSEs received"]


def test_refusal_rows(run: tuple[Path, dict[str, str]]) -> None:
    _, rows = run
    assert rows["refused: tampered ESPrim Object"].startswith("4115 ESPRIM_BAD_MAC")
    refused = rows["refused: AE without NOTIFY privilege"]
    assert refused.startswith("4103 ORIGINATOR_HAS_NO_PRIVILEGE from the IN gateway")
    assert "no accessControlRule grants NOTIFY" in refused


def test_traces_show_only_ciphertext(run: tuple[Path, dict[str, str]]) -> None:
    """Read the gateways' traces here, not through the step: the values AE1 and AE2 exchanged
    appear in neither, and no m2m:seci message went to a CSE."""
    workdir, rows = run
    alarm = re.search(r"SECRET-ALARM-[0-9a-f]+", rows["  decrypted at AE2"])
    reading = re.search(r"SECRET-READING-[0-9a-f]+", rows["AE1 -> AE2  RETRIEVE (inner)"])
    assert alarm is not None and reading is not None
    cse_urls = [re.search(r"http://\S+", rows[name]).group(0).rstrip(",") for name in ("IN-CSE", "MN-CSE")]  # type: ignore[union-attr]
    seci_hops = 0
    for name in ("gateway-in-trace.jsonl", "gateway-mn-trace.jsonl"):
        text = (workdir / name).read_text(encoding="utf-8")
        assert alarm.group(0) not in text and reading.group(0) not in text
        for line in text.splitlines():
            entry = json.loads(line)
            if entry["dir"] == "out" and '"m2m:seci"' in entry["body"]:
                seci_hops += 1
                assert not any(url in entry["where"] for url in cse_urls), entry["where"]
    assert seci_hops >= 6  # 3 Notifies on each of the two hops


def test_no_process_left_after_success(run: tuple[Path, dict[str, str]]) -> None:
    workdir, _ = run
    assert _processes_mentioning(str(workdir)) == []


def test_failure_half_way_cleans_up_and_raises(tmp_path: Path) -> None:
    """Both CSEs are up when the IN gateway's store cannot be opened (its path is a directory):
    the step fails and leaves no ACME process behind."""
    if not acme_available():
        pytest.skip("acmecse is not installed")
    (tmp_path / "gateway-in.db").mkdir()
    with pytest.raises(StoreError) as info:
        run_esprim_across_cses(tmp_path)
    assert "SECRET" not in str(info.value)
    assert (tmp_path / "acme-mn" / "acme.ini").exists()  # it got as far as starting the MN-CSE
    assert _processes_mentioning(str(tmp_path)) == []
