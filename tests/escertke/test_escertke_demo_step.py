"""The ESCertKE step of ``m2msec demo`` (src/m2msec/demo_escertke.py) runs and shows what it claims:
the agreed key works, stops working once AE1's certificate is revoked, and AE1 and the untrusted AE3
are refused."""

from __future__ import annotations

import logging

import pytest

from m2msec.demo_escertke import run_escertke


def test_demo_escertke_step(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="m2msec.escertke.keys"):
        rows = dict(run_escertke())
    assert rows["ESPrim RETRIEVE with that key"].startswith("2000 ")
    revoked = next(v for k, v in rows.items() if k.startswith("CA revokes AE1's certificate"))
    assert revoked.startswith("same ESPrim request now 4112 ESPRIM_UNKNOWN_KEY_ID")
    assert rows["new ESCertKE from AE1"].startswith("refused, 4106")
    assert rows["AE3 with a certificate from an untrusted CA"].startswith("refused, 4106")
    assert any("dropped" in r.getMessage() and "REVOKED" in r.getMessage() for r in caplog.records)
