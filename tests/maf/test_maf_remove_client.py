"""``m2msec maf remove-client`` / :meth:`MAFService.remove_client`: de-provisioning a MAF Client
(TS-0003 8.8.3 pre-conditions withdrawn, e.g. a compromised device) over a real MAF server and
real TLS-PSK sessions: its Km, registrations and the keys it registered go in one transaction;
its open sessions end at their next procedure (4106, ``Connection: close``, audited) - the next
Key Retrieval of a removed Target too - and its Km no longer completes a MAF Handshake."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from _mafhelp import ADMIN, AE1, AE2, AE3, KMS, MAF, FakeClock, connected, kmid, make_service, make_store, run, running
from typer.testing import CliRunner

from m2msec.maf import InMemoryMEF, MAFClient, MAFClientConfig
from m2msec.maf.cli import app
from m2msec.maf.protocol import MAFError
from m2msec.maf.service import NS
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.store import KeyEncryptionKey, open_store
from m2msec.tls import PSKCredentials, TLSHandshakeError


def _audit(svc, action: str) -> list:  # noqa: ANN001
    return [a for a in svc.store.list_audit(limit=None, newest_first=False) if a.action == action]


def test_removed_source_loses_keys_registrations_sessions_and_handshakes(tmp_path: Path) -> None:
    clock = FakeClock()
    svc = make_service(make_store(tmp_path / "maf.db", clock), clock)

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as src, connected(srv.port, AE2) as tgt:
            await src.register(clock.now + timedelta(days=1))
            await tgt.register(clock.now + timedelta(days=1))
            key = await src.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + timedelta(hours=1))
            assert (await tgt.retrieve_key(key.key_id)).key == key.key

            counts = svc.remove_client(AE1)
            assert counts == {"km_credentials": 1, "certificate_client": 0, "registrations": 1, "keys": 1,
                              "keids": 0}
            # the Target can no longer retrieve the key the removed Source registered
            with pytest.raises(MAFError) as ei:
                await tgt.retrieve_key(key.key_id)
            assert ei.value.rsc is RSC.NOT_FOUND
            assert tgt.connected  # the Target's own session is untouched
            # the Source's open session: its next procedure is refused and the MAF closes it
            with pytest.raises(MAFError) as ei:
                await src.register(clock.now + timedelta(days=1))  # would re-register the removed client
            assert ei.value.rsc is RSC.ORIGINATOR_NOT_AUTHENTICATED
            assert "no longer provisioned" in ei.value.args[0]
            assert not src.connected
            # and its Km no longer completes a MAF Handshake
            with pytest.raises(TLSHandshakeError):
                await MAFClient(src.config).connect()

    run(main)
    assert svc.store.find_record(NS.REG_IDX, svc._idx(ADMIN, AE1)) is None  # noqa: SLF001
    assert [c.metadata["client_id"] for c in svc.store.list_credentials(NS.KM)] == [
        cid for cid in KMS if cid != AE1]
    [row] = _audit(svc, "remove-client")
    assert row.subject == AE1 and row.actor == "maf-admin" and row.details["keys"] == 1
    refused = [a for a in _audit(svc, "client_registration") if a.outcome.startswith("refused")]
    assert refused and refused[-1].outcome == f"refused {int(RSC.ORIGINATOR_NOT_AUTHENTICATED)}"


def test_removed_target_session_ends_at_its_next_retrieval(tmp_path: Path) -> None:
    clock = FakeClock()
    svc = make_service(make_store(tmp_path / "maf.db", clock), clock)

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as src, connected(srv.port, AE2) as tgt, \
                connected(srv.port, AE3) as other:
            for c in (src, tgt, other):
                await c.register(clock.now + timedelta(days=1))
            key = await src.register_key(SUID.MAF_ESDATA_ENCRYPT, [AE2, AE3], clock.now + timedelta(hours=1))
            assert (await tgt.retrieve_key(key.key_id)).key == key.key  # cached for the Target now
            assert svc.remove_client(AE2)["registrations"] == 1
            with pytest.raises(MAFError) as ei:
                await tgt.retrieve_key(key.key_id)
            assert ei.value.rsc is RSC.ORIGINATOR_NOT_AUTHENTICATED and not tgt.connected
            # the Source's key stays (AE2 was only a Target), the other Target still retrieves it
            assert (await other.retrieve_key(key.key_id)).key == key.key

    run(main)


def test_removed_remotely_provisioned_client_loses_its_keid_sessions_and_handshakes(tmp_path: Path) -> None:
    """A client whose Km came from the MEF for a KeID: remove-client refuses that KeID until its
    Km expires (the MEF is not asked again) and ends every KeID session of the client opened
    before, registered or not; re-enrolling with the MEF (a new KeID) brings it back."""
    clock = FakeClock()
    mef = InMemoryMEF(MAF)
    svc = make_service(make_store(tmp_path / "maf.db", clock), clock, mef=mef)
    aer = "//sp.example.com/CAER"
    keid1, keid2, keid3 = ("11" * 16 + "@mef.example.com", "22" * 16 + "@mef.example.com",
                           "33" * 16 + "@mef.example.com")
    kms = {k: mef.enrol(k, bytes([i]) * 32, lifetime=timedelta(days=2), enrolee_id=aer)
           for i, k in enumerate((keid1, keid2, keid3), start=7)}

    def keid_client(port: int, keid: str) -> MAFClient:
        return MAFClient(MAFClientConfig(maf_fqdn=MAF, admin_fqdn=ADMIN, host="127.0.0.1", port=port,
                                         psk=PSKCredentials(keid.encode(), kms[keid]), timeout=5.0))

    async def main() -> None:
        async with running(svc) as srv:
            registered, idle = keid_client(srv.port, keid1), keid_client(srv.port, keid2)
            async with registered, idle:
                reg = await registered.register(clock.now + timedelta(days=1))
                assert reg.maf_client_id == aer and reg.assigned_symm_key_id
                clock.advance(seconds=1)
                counts = svc.remove_client(aer)
                assert counts["km_credentials"] == 1 and counts["registrations"] == 1 and counts["keids"] == 1
                # the registered KeID session: its KeID is gone
                with pytest.raises(MAFError) as ei:
                    await registered.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + timedelta(hours=1))
                assert ei.value.rsc is RSC.ORIGINATOR_NOT_AUTHENTICATED and "KeID" in ei.value.args[0]
                assert not registered.connected
                # a session with another KeID of the same Enrolee, opened before the removal
                with pytest.raises(MAFError) as ei:
                    await idle.register(clock.now + timedelta(days=1))
                assert ei.value.rsc is RSC.ORIGINATOR_NOT_AUTHENTICATED and "removed" in ei.value.args[0]
                assert not idle.connected
            calls = len(mef.calls)
            # the removed KeID no longer completes a MAF Handshake, and the MEF is not asked
            with pytest.raises(TLSHandshakeError):
                await keid_client(srv.port, keid1).connect()
            assert len(mef.calls) == calls
            # re-enrolment with the MEF (a KeID the MAF never saw) brings the client back
            clock.advance(seconds=1)
            async with keid_client(srv.port, keid3) as back:
                again = await back.register(clock.now + timedelta(days=1))
                assert again.maf_client_id == aer and again.assigned_symm_key_id != reg.assigned_symm_key_id

    run(main)
    assert svc.store.find_record(NS.KEID_GONE, keid1) is not None
    clock.advance(days=3)  # past the Km lifetime the MEF gave for keid1: the refusal ends with it
    assert svc.store.find_record(NS.KEID_GONE, keid1) is None
    [row] = _audit(svc, "remove-client")
    assert row.details["keids"] == 1
    refused = [a for a in _audit(svc, "key_registration") + _audit(svc, "client_registration")
               if a.outcome == f"refused {int(RSC.ORIGINATOR_NOT_AUTHENTICATED)}"]
    assert len(refused) == 2


def test_remove_unknown_client_is_not_found_and_changes_nothing(tmp_path: Path) -> None:
    clock = FakeClock()
    svc = make_service(make_store(tmp_path / "maf.db", clock), clock)
    before = svc.store.list_audit(limit=None)
    with pytest.raises(MAFError) as ei:
        svc.remove_client("//sp.example.com/Cnobody")
    assert ei.value.rsc is RSC.NOT_FOUND
    assert svc.store.list_audit(limit=None) == before
    assert len(svc.store.list_credentials(NS.KM)) == len(KMS)


def test_cli_remove_client(tmp_path: Path) -> None:
    KeyEncryptionKey.generate().write_file(tmp_path / "kek.hex")
    cfg = tmp_path / "maf.toml"
    cfg.write_text(f'fqdn = "{MAF}"\nstore = "sqlite:///{tmp_path / "maf.db"}"\nkek_file = "kek.hex"\n'
                   f'[[admin]]\nfqdn = "{ADMIN}"\n', encoding="utf-8")
    r = CliRunner().invoke(app, ["add-client", "-c", str(cfg), "--client-id", AE1, "--kmid", kmid(AE1),
                                 "--km-hex", KMS[AE1].hex()])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["remove-client", AE1, "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    assert f"removed {AE1}: 1 Km credential(s)" in r.output
    r = CliRunner().invoke(app, ["remove-client", AE1, "-c", str(cfg)])
    assert r.exit_code == 1 and "no MAF Client" in r.output
    with open_store(f"sqlite:///{tmp_path / 'maf.db'}", KeyEncryptionKey.from_file(tmp_path / "kek.hex")) as s:
        assert s.list_credentials(NS.KM) == []
        assert [a.action for a in s.list_audit(limit=None, newest_first=False)][-1] == "remove-client"
