"""Robustness of the ESCertKE end-points (TS-0003 8.7.2.2): garbage and mutated TLS flights in
Messages 1-4 give an ESCertKEError with a 4xxx RSC (BAD_REQUEST, ORIGINATOR_NOT_AUTHENTICATED,
...), never another exception, and a clean procedure still completes afterwards."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from _robust_support import FUZZ_SLOW, byte_mutation, refused_or_ok
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "escertke"))
from _escertke_support import INI_CERT_ID, INI_ID, PKI, SP, TER_CERT_ID, Clock, creds, initiator_info, terminator_info  # noqa: E402

from m2msec.escertke import ESCertKEError, ESCertKEKeys, InitiatingEndPoint, TerminatingEndPoint  # noqa: E402
from m2msec.pki import CertificateFlavour, DevCA  # noqa: E402

_now = datetime.now(UTC)
_CA = DevCA.create("Fuzz ESCertKE SP", now=_now, permit_uri=[SP], permit_dns=[SP])
_INI = creds(_CA.issue(CertificateFlavour.AE_ID, [INI_CERT_ID], now=_now))
_TER = creds(_CA.issue(CertificateFlavour.AE_ID, [TER_CERT_ID], now=_now))
PKI_ = PKI(_CA, _CA, _INI, _TER, _INI, b"", b"")
CLOCK = Clock()
INI = InitiatingEndPoint(PKI_.ini, clock=CLOCK, keys=ESCertKEKeys(clock=CLOCK))
TER = TerminatingEndPoint(PKI_.ter, [initiator_info(PKI_)], clock=CLOCK, keys=ESCertKEKeys(clock=CLOCK))


def _full_procedure() -> None:
    proc = INI.initiate(terminator_info(PKI_))
    m2 = TER.handle(INI_ID, proc.message_1())
    m4 = TER.handle(INI_ID, proc.receive_message_2(m2))
    res = proc.receive_message_4(m4)
    assert TER.keys.for_peer(INI_ID) is not None and len(res.key) == 32


def test_clean_procedure() -> None:
    _full_procedure()


@FUZZ_SLOW
@given(st.data(), st.sampled_from([INI_ID, None, "Cother", ""]))
def test_message_1_garbage_and_mutations(data: st.DataObject, originator: str | None) -> None:
    m1 = INI.initiate(terminator_info(PKI_)).message_1()
    msg = data.draw(byte_mutation(m1)) if data.draw(st.booleans()) else data.draw(st.binary(max_size=300))
    refused_or_ok(TER.handle, originator, msg, allowed=ESCertKEError)


@FUZZ_SLOW
@given(st.data(), st.integers(2, 4))
def test_later_messages_mutated(data: st.DataObject, which: int) -> None:
    proc = INI.initiate(terminator_info(PKI_))
    m2 = TER.handle(INI_ID, proc.message_1())
    if which == 2:
        refused_or_ok(proc.receive_message_2, data.draw(byte_mutation(m2)), allowed=ESCertKEError)
        return
    m3 = proc.receive_message_2(m2)
    if which == 3:
        refused_or_ok(TER.handle, INI_ID, data.draw(byte_mutation(m3)), allowed=ESCertKEError)
        return
    m4 = TER.handle(INI_ID, m3)
    refused_or_ok(proc.receive_message_4, data.draw(byte_mutation(m4)), allowed=ESCertKEError)


def test_still_works_after_garbage() -> None:
    for garbage in (b"", b"\x16\x03\x03\x00\x00", b"\x15\x03\x03\x00\x02\x02\x28", b"\x16" * 1000):
        refused_or_ok(TER.handle, INI_ID, garbage, allowed=ESCertKEError)
    _full_procedure()
