"""``m2msec pki serve-crl``: the development CA's CRLs over http (RFC 5280 4.2.1.13, RFC 2585), as a real
process, found through the leaves' cRLDistributionPoints, with revocations by ``m2msec pki revoke`` from
another process; checked by :class:`m2msec.pki.CRLFetcher` and ``openssl verify -crl_download``."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from _pkiproc import free_port, pki_env, read_line, run_pki

from m2msec.pki import CRLFetcher, CRLStore, DevCA, FetchOutcome, distribution_points
from m2msec.pki.cli import DevCRLSource
from m2msec.pki.crl import crl_number


PASS = "serve-crl-test"
ENV = pki_env(PASS)


def _pki(*args: str) -> subprocess.CompletedProcess[str]:
    return run_pki(ENV, *args)


_free_port = free_port
_line = read_line


def test_serve_crl_process(tmp_path: Path) -> None:
    port = _free_port()
    ca_dir = tmp_path / "ca"
    url = f"http://127.0.0.1:{port}/crl/intermediate.crl"
    r = _pki("init-ca", str(ca_dir), "--name", "Serve CRL", "--permit-uri", "m2m.example.com", "--intermediate",
             "--crl-url", url)
    assert r.returncode == 0, r.stderr
    r = _pki("issue", str(ca_dir), "--flavour", "ae-id", "--id", "//m2m.example.com/id-in/Cserved",
             "--out", str(tmp_path / "leaf"))
    assert r.returncode == 0, r.stderr + r.stdout
    leaf_pem = tmp_path / "leaf.crt.pem"
    chain = x509.load_pem_x509_certificates(leaf_pem.read_bytes())
    leaf = chain[0]
    assert distribution_points(leaf) == [url]
    ca = DevCA.load(ca_dir, PASS.encode())
    proc = subprocess.Popen([sys.executable, "-c", "from m2msec.pki.cli import app; app()", "serve-crl", str(ca_dir),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert _line(proc) == f"crl listening 127.0.0.1:{port}\n"
        store = CRLStore()
        fetcher = CRLFetcher(store, [ca.trust_anchor, ca.intermediate_cert])  # type: ignore[list-item]
        first = fetcher.fetch_sync(url)
        assert first.outcome is FetchOutcome.UPDATED, first.error
        (held,) = store.for_issuer(ca.intermediate_cert.subject)  # type: ignore[union-attr]
        assert held.get_revoked_certificate_by_serial_number(leaf.serial_number) is None
        assert fetcher.fetch_sync(url).outcome is FetchOutcome.NOT_MODIFIED
        # another process revokes the leaf: the next CRL served lists it, under the next number
        r = _pki("revoke", str(ca_dir), "--cert", str(leaf_pem), "--reason", "keyCompromise")
        assert r.returncode == 0, r.stderr
        again = fetcher.fetch_sync(url)
        assert again.outcome is FetchOutcome.UPDATED, again.error
        (held2,) = store.for_issuer(ca.intermediate_cert.subject)  # type: ignore[union-attr]
        assert held2.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None
        assert crl_number(held2) == crl_number(held) + 1
        if shutil.which("openssl"):
            (tmp_path / "inter.pem").write_bytes((ca_dir / "intermediate.crt.pem").read_bytes())
            root_url = f"http://127.0.0.1:{port}/crl/root.crl"
            root_crl = fetcher.fetch_sync(root_url)
            assert root_crl.outcome is FetchOutcome.UPDATED, root_crl.error
            v = subprocess.run(["openssl", "verify", "-crl_check", "-crl_download", "-CAfile",
                                str(ca_dir / "root.crt.pem"), "-untrusted", str(tmp_path / "inter.pem"),
                                str(leaf_pem)], capture_output=True, text=True, timeout=30)
            assert v.returncode != 0 and "certificate revoked" in v.stdout + v.stderr, v.stdout + v.stderr
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    assert _pki("init-ca", str(ca_dir), "--name", "Busy", "--permit-uri", "m2m.example.com").returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = _pki("serve-crl", str(ca_dir), "--port", str(s.getsockname()[1]))
    assert r.returncode == 1 and "cannot listen" in r.stderr


class _Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def test_dev_crl_source_reissues_and_keeps_numbers_monotonic(tmp_path: Path) -> None:
    clock = _Clock()
    ca = DevCA.create("Source", now=clock.now - timedelta(hours=1), permit_uri=["m2m.example.com"])
    ca.save(tmp_path, PASS.encode())
    src = DevCRLSource(DevCA.load(tmp_path, PASS.encode()), tmp_path, "root", timedelta(hours=2), clock=clock)
    first = src()
    assert src() is first and crl_number(first) == 1
    clock.now += timedelta(minutes=61)
    second = src()
    assert crl_number(second) == 2
    # another process that loaded the CA before and saves after us writes back an older next number
    stale = DevCA.load(tmp_path, PASS.encode())
    stale.next_crl_number["root"] = 1
    stale.revoke(12345, now=clock.now, signer="root")
    stale.save_revocations(tmp_path)
    third = src()
    assert crl_number(third) == 3 and third.get_revoked_certificate_by_serial_number(12345) is not None


@pytest.mark.parametrize("bad", [["--port", "70000"], ["--days", "0"]])
def test_bad_options(tmp_path: Path, bad: list[str]) -> None:
    r = _pki("serve-crl", str(tmp_path), *bad)
    assert r.returncode == 2
