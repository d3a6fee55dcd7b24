"""Zn carries Ks_NAF (TS-0003 8.1.3, 3GPP TS 29.109): the MEF's Zn client refuses a plain
``http://`` BSF URL unless the host is a loopback address (the BSF simulator); ``https://`` is
always accepted (docs/threat-model.md 5.3)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from m2msec.mef.cli import app
from m2msec.mef.gba import BSFSimulator, GBAError, ZnClient, check_zn_url
from m2msec.store import KeyEncryptionKey

MEF_FQDN = "mef.m2m.example.com"


@pytest.mark.parametrize("url", ["http://127.0.0.1:8090", "http://127.3.4.5/zn", "http://[::1]:8090/",
                                 "http://localhost:8090", "HTTP://LOCALHOST:1", "https://bsf.operator.example",
                                 "https://10.0.0.7:8443/", "https://[2001:db8::1]/"])
def test_accepted(url: str) -> None:
    check_zn_url(url)
    assert ZnClient(url, MEF_FQDN, "t").bsf_url == url.rstrip("/")


@pytest.mark.parametrize(("url", "message"), [
    ("http://bsf.operator.example:8090", "plain http to a non-loopback host"),
    ("http://10.0.0.7", "plain http to a non-loopback host"),
    ("http://[2001:db8::1]:80", "plain http to a non-loopback host"),
    ("http://localhost.evil.example", "plain http to a non-loopback host"),
    ("http://127.0.0.1.nip.io", "plain http to a non-loopback host"),
    ("ftp://127.0.0.1/", "must be an https:// URL"),
    ("bsf.operator.example", "must be an https:// URL"),
    ("https://", "must be an https:// URL"),
    ("http://[::1", "not a URL"),
])
def test_refused(url: str, message: str) -> None:
    with pytest.raises(GBAError, match=message) as ei:
        ZnClient(url, MEF_FQDN, "t")
    assert int(ei.value.rsc) == 4000


def test_loopback_simulator_still_answers_over_http() -> None:
    sim = BSFSimulator("bsf.operator.example")
    sim.add_naf(MEF_FQDN, "zn-token")
    url = sim.start("127.0.0.1", 0)
    try:
        assert url.startswith("http://127.0.0.1:")
        zn = ZnClient(url.replace("127.0.0.1", "localhost"), MEF_FQDN, "zn-token")
        with pytest.raises(Exception) as ei:  # reaches the simulator: an unknown B-TID is refused by the BSF
            zn.lookup("AAAAAAAAAAAAAAAAAAAAAA==@bsf.operator.example")
        assert "B-TID" in str(ei.value)
    finally:
        sim.close()


def test_mef_serve_refuses_a_plain_http_remote_bsf(tmp_path: Path) -> None:
    KeyEncryptionKey.generate().write_file(tmp_path / "mef.kek")
    cfg = tmp_path / "mef.toml"
    cfg.write_text(f'[mef]\nfqdn = "{MEF_FQDN}"\nstore = "sqlite:///{tmp_path / "mef.db"}"\nkek_file = "mef.kek"\n'
                   'host = "127.0.0.1"\nport = 0\n[gba]\nbsf_url = "http://bsf.operator.example:8090"\n'
                   'naf_token = "zn-token"\n')
    r = CliRunner().invoke(app, ["serve", "--config", str(cfg)])
    assert r.exit_code == 2 and "use https://" in " ".join(r.output.split()), r.output
    assert "listening" not in r.output
