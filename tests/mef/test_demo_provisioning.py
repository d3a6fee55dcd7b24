"""The provisioning demo step runs against a real MEF and MAF on 127.0.0.1 and shows no key."""

from __future__ import annotations

import re
from pathlib import Path

from m2msec.demo_provisioning import fingerprint, run_provisioning


def test_run_provisioning(tmp_path: Path) -> None:
    rows = run_provisioning(tmp_path)
    table = dict(rows)
    assert len(table) == len(rows)  # unique names
    assert re.fullmatch(r"Cdemo-prov-ae1 KeID [0-9a-f]{32}@mef\.m2msec\.example", table["AE1 enrolled (PSK RSPF)"])
    # the MAF fetched the very Km the enrolee derived; AE2 derived the pairwiseESPrimKey AE1 holds
    assert table["MAF fetched Km from the MEF"] == f"SUID 21, fingerprint {table['AE1 Km for the MAF (10.3.2)']}"
    assert table["AE2 pairwiseESPrimKey from the retrieved Kc"] == table["pairwiseESPrimKey (C.6a.4)"]
    assert table["AE1 registered with the MAF"].startswith("MAF Client ID Cdemo-prov-ae1, KmID ")
    assert "2000 OK" in table["ESPrim AE1 -> AE2"]
    assert re.fullmatch(r"reading sealed with key [0-9a-f]{32}@maf\.m2msec\.example \(A128KW/A\d+GCM\)",
                        table["ESData AE1 -> AE2 (SUID 34)"])
    assert table["AE2 opened it"].endswith('{"temperature": 22.5}')
    for _name, value in rows:  # identifiers (16-octet hex) and 4-octet fingerprints only
        assert not re.search(r"[0-9a-f]{40,}", value)
    assert fingerprint(b"\x00" * 32) == "66687aad"
