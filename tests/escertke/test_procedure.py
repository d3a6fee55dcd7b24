"""ESCertKE state machines in-process (TS-0003 8.7.2.2): success, key use, every refusal."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import timedelta

import pytest
from _escertke_support import INI_ID, TER_ID, PKI, initiator_info, terminator_info  # type: ignore[import-not-found]

from m2msec.esdata import Source, Target
from m2msec.esprim import Originator, OriginatorPolicy, Receiver, ReceiverPolicy
from m2msec.esprim.errors import UnknownKeyID
from m2msec.esprim.originator import SessionReady
from m2msec.esprim.state import MemoryReceiverState
from m2msec.escertke import (
    ESCertKEError,
    ESCertKEKeys,
    InitiatingEndPoint,
    InitiatorState,
    Reason,
    TerminatingEndPoint,
    classify,
    message_from_response,
    terminator_handler,
)
from m2msec.keys import LABEL_ESCERTKE, split_exported
from m2msec.onem2m import Operation, RequestPrimitive, ResponsePrimitive
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.pki import CertificateVerificationError, VerificationReason


def run(ini: InitiatingEndPoint, ter: TerminatingEndPoint, pki: PKI, **kw: object):
    proc = ini.initiate(terminator_info(pki, **kw))  # type: ignore[arg-type]
    m1 = proc.message_1()
    m2 = ter.handle(INI_ID, m1)
    m3 = proc.receive_message_2(m2)
    m4 = ter.handle(INI_ID, m3)
    return proc, (m1, m2, m3, m4), proc.receive_message_4(m4)


def test_full_procedure_keys_agree(ends, pki):
    ini, ter = ends
    proc, msgs, res = run(ini, ter, pki)
    assert [classify(m) for m in msgs] == [1, 2, 3, 4]
    assert proc.state is InitiatorState.DONE
    tres = ter.keys.for_peer(INI_ID)
    assert tres is not None and res.peer_id == TER_ID and tres.peer_id == INI_ID
    assert res.key == tres.key and res.key_id == tres.key_id and len(res.key) == 32 and len(res.key_id) == 16
    assert res.kid == res.key_id.hex() and len(res.kid) == 32
    # the same value the TLS exporter gives (10.3.1), split by keys.split_exported
    assert split_exported(proc._engine.export_keying_material(LABEL_ESCERTKE, 48)) == (res.key, res.key_id)
    assert proc._engine.cipher_name == "ECDHE-ECDSA-AES128-SHA256" and proc._engine.protocol_version == "TLSv1.2"
    assert res.peer is not None and res.peer.identifier.endswith("Cae-ter")
    assert tres.peer is not None and tres.peer.identifier.endswith("Cae-ini")
    assert ter.unfinished() == {}
    assert "hidden" in repr(res) and res.key.hex() not in repr(res)
    # a second procedure gives a fresh key that replaces the first one for that peer
    _, _, res2 = run(ini, ter, pki)
    assert res2.key != res.key and ini.keys.for_peer(TER_ID) == res2
    with pytest.raises(UnknownKeyID):
        ini.keys.resolve(res.kid)


def test_key_protects_esprim_exchange(ends, pki, clock):
    ini, ter = ends
    _, _, res = run(ini, ter, pki)
    receiver = Receiver(keys=ter.keys, state=MemoryReceiverState(clock=clock), clock=clock,
                        policy=ReceiverPolicy(supported_suids=(SUID.CERTIFICATE_ESPRIM,)))
    originator = Originator(clock=clock, policy=OriginatorPolicy())
    key = ini.keys.resolve(res.kid)
    assert key.suid is SUID.CERTIFICATE_ESPRIM and key.peer_id == TER_ID
    step = originator.start(key, receiver.e2e_sec_info())
    assert isinstance(step, SessionReady)
    inner = RequestPrimitive(op=Operation.RETRIEVE, to=f"/id-in/{TER_ID}/cnt", fr=INI_ID, rqi="i1", rvi="3")
    obj, pending = originator.protect_request(inner, step.session)
    assert json.loads(base64.urlsafe_b64decode(obj.split(".")[0] + "==="))["kid"] == res.kid
    got, ctx = receiver.open_request(obj, outer_from=INI_ID)
    assert got.rqet is not None and replace(got, rqet=None) == inner  # + the sealed rqet (R11)
    reply = ResponsePrimitive(rsc=RSC.OK, rqi="i1", pc={"m2m:cin": {"con": "42"}}, rvi="3")
    assert originator.open_response(receiver.protect_response(ctx, reply), pending) == reply
    # impersonation: the key is bound to INI_ID
    from m2msec.esprim.errors import ESPrimError

    bad = RequestPrimitive(op=Operation.RETRIEVE, to="/x", fr="Cother", rqi="i2", rvi="3")
    obj2, _ = originator.protect_request(bad, step.session)
    with pytest.raises(ESPrimError) as ei:
        receiver.open_request(obj2, outer_from="Cother")
    assert ei.value.rsc == RSC.ESPRIM_IMPERSONATION_ERROR


def test_key_protects_esdata_envelope(ends, pki):
    ini, ter = ends
    _, _, res = run(ini, ter, pki)
    env = Source().seal(b"reading=21.5", serialization="compact", recipients=[res.esdata_recipient()])
    opened = Target(ter.keys.esdata).open(env)
    assert opened.payload == b"reading=21.5"
    # a MIC use needs a cache configured for SUID 45
    with pytest.raises(Exception):
        Target(ter.keys.esdata).open(Source().seal(b"x", serialization="compact", signers=[res.esdata_signer()]))


def test_esdata_mic_when_configured(pki, clock):
    ini = InitiatingEndPoint(pki.ini, clock=clock)
    ter = TerminatingEndPoint(pki.ter, [initiator_info(pki)], clock=clock, keys=ESCertKEKeys(clock=clock, esdata_suid=45))
    _, _, res = run(ini, ter, pki)
    env = Source().seal(b"x", serialization="compact", signers=[res.esdata_signer()])
    assert Target(ter.keys.esdata).open(env).payload == b"x"


def test_key_lifetime_expires_both_uses(pki, clock):
    keys = ESCertKEKeys(clock=clock, key_lifetime=timedelta(hours=1))
    ini = InitiatingEndPoint(pki.ini, clock=clock, keys=keys)
    ter = TerminatingEndPoint(pki.ter, [initiator_info(pki)], clock=clock)
    _, _, res = run(ini, ter, pki)
    assert keys.resolve(res.kid).expires_at == clock.now + timedelta(hours=1)
    clock.advance(hours=1)
    with pytest.raises(UnknownKeyID):
        keys.resolve(res.kid)
    with pytest.raises(Exception, match="unknown key identifier"):
        keys.esdata.resolve(res.kid)


# ------------------------------------------------------------------ refusals


def _nothing_cached(ini: InitiatingEndPoint, ter: TerminatingEndPoint) -> None:
    assert len(ini.keys) == 0 and len(ter.keys) == 0


def test_wrong_terminator_identifier_refused_by_initiator(ends, pki):
    ini, ter = ends
    proc = ini.initiate(terminator_info(pki, identifier=f"https://{SP_}/id-in/Cae-other"))
    m2 = ter.handle(INI_ID, proc.message_1())
    with pytest.raises(ESCertKEError) as ei:
        proc.receive_message_2(m2)
    assert ei.value.reason is Reason.AUTHENTICATION_FAILED and ei.value.rsc == RSC.ORIGINATOR_NOT_AUTHENTICATED
    cve = ei.value.__cause__.__cause__
    assert isinstance(cve, CertificateVerificationError) and cve.reason_code is VerificationReason.IDENTIFIER_MISMATCH
    assert proc.state is InitiatorState.FAILED
    _nothing_cached(ini, ter)


SP_ = "m2m.example.com"


def test_untrusted_anchor_refused_by_initiator(ends, pki):
    ini, ter = ends
    proc = ini.initiate(terminator_info(pki, anchor=pki.other))
    with pytest.raises(ESCertKEError) as ei:
        proc.receive_message_2(ter.handle(INI_ID, proc.message_1()))
    assert ei.value.__cause__.__cause__.reason_code is VerificationReason.UNTRUSTED_ROOT
    _nothing_cached(ini, ter)


def test_wrong_initiator_identifier_refused_by_terminator(pki, clock):
    ini = InitiatingEndPoint(pki.ini, clock=clock)
    ter = TerminatingEndPoint(pki.ter, [initiator_info(pki, identifier=f"https://{SP_}/id-in/Cae-x")], clock=clock)
    with pytest.raises(ESCertKEError) as ei:
        run(ini, ter, pki)
    assert ei.value.rsc == RSC.ORIGINATOR_NOT_AUTHENTICATED and "IDENTIFIER_MISMATCH" in str(ei.value)
    assert ter.unfinished() == {}
    _nothing_cached(ini, ter)


def test_untrusted_initiator_certificate_refused(pki, clock):
    rogue = InitiatingEndPoint(pki.rogue, clock=clock)  # right identifier, other CA
    ter = TerminatingEndPoint(pki.ter, [initiator_info(pki)], clock=clock)
    with pytest.raises(ESCertKEError) as ei:
        run(rogue, ter, pki)
    assert ei.value.rsc == RSC.ORIGINATOR_NOT_AUTHENTICATED and "UNTRUSTED_ROOT" in str(ei.value)
    _nothing_cached(rogue, ter)


def test_unconfigured_initiator_refused(ends, pki):
    ini, ter = ends
    proc = ini.initiate(terminator_info(pki))
    with pytest.raises(ESCertKEError) as ei:
        ter.handle("Cstranger", proc.message_1())
    assert ei.value.reason is Reason.UNKNOWN_INITIATOR and ei.value.rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    other = ini.initiate(terminator_info(pki)).message_1()
    with pytest.raises(ESCertKEError) as ei:
        ter.handle(None, other)  # a Notify without From
    assert ei.value.reason is Reason.UNKNOWN_INITIATOR
    assert ter.unfinished() == {}


def test_tampered_message_3_refused(ends, pki):
    ini, ter = ends
    proc = ini.initiate(terminator_info(pki))
    m3 = bytearray(proc.receive_message_2(ter.handle(INI_ID, proc.message_1())))
    m3[-1] ^= 0x01  # inside the encrypted Finished
    with pytest.raises(ESCertKEError) as ei:
        ter.handle(INI_ID, bytes(m3))
    assert ei.value.reason is Reason.AUTHENTICATION_FAILED and ei.value.rsc == RSC.ORIGINATOR_NOT_AUTHENTICATED
    assert ter.unfinished() == {}
    # the genuine Message 3 cannot be used afterwards either: the procedure is gone
    with pytest.raises(ESCertKEError) as ei2:
        ter.handle(INI_ID, bytes(m3[:-1]) + bytes([m3[-1] ^ 1]))
    assert ei2.value.reason is Reason.NO_PROCEDURE
    _nothing_cached(ini, ter)


@pytest.mark.parametrize("where", ["certificate", "verify"])
def test_tampered_message_3_body_refused(ends, pki, where):
    ini, ter = ends
    proc = ini.initiate(terminator_info(pki))
    m3 = bytearray(proc.receive_message_2(ter.handle(INI_ID, proc.message_1())))
    m3[len(m3) // 3 if where == "certificate" else len(m3) - 120] ^= 0x40
    with pytest.raises(ESCertKEError) as ei:
        ter.handle(INI_ID, bytes(m3))
    assert ei.value.rsc in (RSC.ORIGINATOR_NOT_AUTHENTICATED, RSC.BAD_REQUEST)
    _nothing_cached(ini, ter)


def test_out_of_order_messages(ends, pki):
    ini, ter = ends
    proc = ini.initiate(terminator_info(pki))
    m1 = proc.message_1()
    # Message 3 first: no procedure
    proc2 = ini.initiate(terminator_info(pki))
    m1b = proc2.message_1()
    m3b = proc2.receive_message_2(ter.handle(INI_ID, m1b))
    ter2 = TerminatingEndPoint(pki.ter, [initiator_info(pki)], clock=ter.clock)
    with pytest.raises(ESCertKEError) as ei:
        ter2.handle(INI_ID, m3b)
    assert ei.value.reason is Reason.NO_PROCEDURE and ei.value.rsc == RSC.BAD_REQUEST
    # Message 2 / 4 sent to the Terminator
    m2 = ter.handle(INI_ID, m1)
    with pytest.raises(ESCertKEError) as ei:
        ter.handle(INI_ID, m2)
    assert ei.value.reason is Reason.OUT_OF_ORDER
    # Message 4 where the Initiator waits for Message 2
    proc3 = ini.initiate(terminator_info(pki))
    proc3.message_1()
    with pytest.raises(ESCertKEError) as ei:
        proc3.receive_message_2(b"\x14\x03\x03\x00\x01\x01")
    assert ei.value.reason is Reason.OUT_OF_ORDER and proc3.state is InitiatorState.FAILED
    # calling the Initiator out of order
    with pytest.raises(ESCertKEError) as ei:
        proc.receive_message_4(m2)
    assert ei.value.reason is Reason.OUT_OF_ORDER
    _nothing_cached(ini, ter)


def test_replayed_message_1_refused_and_restart_replaces(ends, pki):
    ini, ter = ends
    p1 = ini.initiate(terminator_info(pki))
    m1 = p1.message_1()
    ter.handle(INI_ID, m1)
    with pytest.raises(ESCertKEError) as ei:
        ter.handle(INI_ID, m1)
    assert ei.value.reason is Reason.REPLAYED and ei.value.rsc == RSC.BAD_REQUEST
    # a restarted procedure (fresh Message 1) replaces the unfinished one
    p2 = ini.initiate(terminator_info(pki))
    m3 = p2.receive_message_2(ter.handle(INI_ID, p2.message_1()))
    assert len(ter.unfinished()) == 1
    res = p2.receive_message_4(ter.handle(INI_ID, m3))
    assert ter.keys.for_peer(INI_ID).key == res.key
    # the first procedure's Message 3 is now out of place
    m3_old = None
    with pytest.raises(ESCertKEError):
        m3_old = p1.receive_message_2(b"garbage")
    assert m3_old is None


def test_message_1_rate_capped_per_initiator_within_the_replay_window(pki, clock):
    """The replay table cannot grow without bound (even under a fixed clock): each configured
    Initiator has at most max_message1_per_window entries; the cap frees as entries expire."""
    ini = InitiatingEndPoint(pki.ini, clock=clock, keys=ESCertKEKeys(clock=clock))
    ter = TerminatingEndPoint(pki.ter, [initiator_info(pki)], clock=clock, keys=ESCertKEKeys(clock=clock),
                              max_message1_per_window=3, replay_window=timedelta(minutes=10))
    for _ in range(3):
        ter.handle(INI_ID, ini.initiate(terminator_info(pki)).message_1())
    with pytest.raises(ESCertKEError) as ei:
        ter.handle(INI_ID, ini.initiate(terminator_info(pki)).message_1())
    assert ei.value.reason is Reason.RATE_LIMITED and ei.value.rsc == RSC.NOT_ACCEPTABLE
    assert len(ter._seen) == 3  # noqa: SLF001 - the refused one was not recorded
    clock.advance(minutes=10)  # the three entries expire: room again, and a full procedure works
    _, _, res = run(ini, ter, pki)
    assert ter.keys.for_peer(INI_ID).key == res.key
    assert ter._seen_per_initiator == {INI_ID: 1}  # noqa: SLF001


def test_replayed_message_3_refused(ends, pki):
    ini, ter = ends
    _, (m1, m2, m3, m4), _ = run(ini, ter, pki)
    with pytest.raises(ESCertKEError) as ei:
        ter.handle(INI_ID, m3)
    assert ei.value.reason is Reason.NO_PROCEDURE


def test_procedure_expires(ends, pki, clock):
    ini, ter = ends
    proc = ini.initiate(terminator_info(pki))
    m3 = proc.receive_message_2(ter.handle(INI_ID, proc.message_1()))
    clock.advance(seconds=61)
    with pytest.raises(ESCertKEError) as ei:
        ter.handle(INI_ID, m3)
    assert ei.value.reason is Reason.EXPIRED and ei.value.rsc == RSC.REQUEST_TIMEOUT
    assert ter.unfinished() == {}
    _nothing_cached(ini, ter)


def test_concurrent_procedures_with_different_peers(pki, clock):
    ter = TerminatingEndPoint(pki.ter, [initiator_info(pki)], clock=clock)
    other_info = initiator_info(pki)
    from m2msec.escertke import InitiatorInfo

    ter.configure(InitiatorInfo(other_info.cert_info, other_info.trust_anchors, identity="Cae-ini-2"))
    a, b = InitiatingEndPoint(pki.ini, clock=clock), InitiatingEndPoint(pki.ini, clock=clock)
    pa, pb = a.initiate(terminator_info(pki)), b.initiate(terminator_info(pki))
    m2a = ter.handle(INI_ID, pa.message_1())
    m2b = ter.handle("Cae-ini-2", pb.message_1())
    assert set(ter.unfinished()) == {INI_ID, "Cae-ini-2"}
    m3b, m3a = pb.receive_message_2(m2b), pa.receive_message_2(m2a)
    rb = pb.receive_message_4(ter.handle("Cae-ini-2", m3b))
    ra = pa.receive_message_4(ter.handle(INI_ID, m3a))
    assert ra.key != rb.key
    assert ter.keys.for_peer(INI_ID).key == ra.key and ter.keys.for_peer("Cae-ini-2").key == rb.key
    # Message 3 of one peer is not accepted under the other's identity
    pc = a.initiate(terminator_info(pki))
    m3c = pc.receive_message_2(ter.handle(INI_ID, pc.message_1()))
    with pytest.raises(ESCertKEError) as ei:
        ter.handle("Cae-ini-2", m3c)
    assert ei.value.reason is Reason.NO_PROCEDURE


@pytest.mark.parametrize("bad", [b"", b"\x16\x03\x03\x00", b"not tls at all", b"\x17\x03\x03\x00\x02ab"])
def test_malformed_messages(ends, bad):
    _, ter = ends
    with pytest.raises(ESCertKEError) as ei:
        ter.handle(INI_ID, bad)
    assert ei.value.reason is Reason.MALFORMED and ei.value.rsc == RSC.BAD_REQUEST


def test_truncated_message_1_record(ends, pki):
    ini, ter = ends
    m1 = ini.initiate(terminator_info(pki)).message_1()
    with pytest.raises(ESCertKEError) as ei:
        ter.handle(INI_ID, m1[:-10])
    assert ei.value.reason is Reason.MALFORMED


# ------------------------------------------------------------------ Notify glue in-process


def _dispatch(ter, req):
    import asyncio

    from m2msec.net.endpoint import NotifyDispatcher

    wire = RequestPrimitive.from_json_bytes(req.to_json_bytes())
    rsp = asyncio.run(NotifyDispatcher(on_escertke_message=terminator_handler(ter))(wire))
    return ResponsePrimitive.from_json_bytes(rsp.to_json_bytes())


def test_notify_glue_in_process(ends, pki):
    from m2msec.escertke import notify_request

    ini, ter = ends
    proc = ini.initiate(terminator_info(pki, address="/id-in/cse-in/ter"))
    req1 = notify_request(proc, INI_ID, proc.message_1())
    assert req1.to == "/id-in/cse-in/ter" and req1.pc["m2m:seci"]["sit"] == 6
    m2 = message_from_response(_dispatch(ter, req1), 2, proc)
    m4 = message_from_response(_dispatch(ter, notify_request(proc, INI_ID, proc.receive_message_2(m2))), 4, proc)
    assert proc.receive_message_4(m4).key == ter.keys.for_peer(INI_ID).key


def test_notify_glue_errors(ends, pki):
    from m2msec.escertke import notify_request

    ini, ter = ends
    proc = ini.initiate(terminator_info(pki))
    req = notify_request(proc, "Cstranger", proc.message_1())
    rsp = _dispatch(ter, req)
    assert rsp.rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE and "UNKNOWN_INITIATOR" in rsp.pc["m2m:dbg"]
    with pytest.raises(ESCertKEError) as ei:
        message_from_response(rsp, 2, proc)
    assert ei.value.reason is Reason.PEER_REFUSED and ei.value.rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    assert proc.state is InitiatorState.FAILED
    # truncated base64 in eckm: the wire parser refuses it with 4000
    good = notify_request(ini.initiate(terminator_info(pki)), INI_ID, b"\x16\x03\x01\x00\x01\x01")
    raw = json.loads(good.to_json_bytes())
    raw["pc"]["m2m:seci"]["eckm"] = raw["pc"]["m2m:seci"]["eckm"][:-2]
    import asyncio

    from m2msec.net.endpoint import NotifyDispatcher

    rsp2 = asyncio.run(NotifyDispatcher(on_escertke_message=terminator_handler(ter))(RequestPrimitive.from_json(raw)))
    assert rsp2.rsc == RSC.BAD_REQUEST and ter.unfinished() == {}


def test_verification_cache_still_checks_validity_time(ends, pki, clock):
    ini, ter = ends
    run(ini, ter, pki)  # chains now cached on both sides
    clock.advance(days=400)  # past the leaves' notAfter (365 days)
    proc = ini.initiate(terminator_info(pki))
    with pytest.raises(ESCertKEError) as ei:
        proc.receive_message_2(ter.handle(INI_ID, proc.message_1()))
    assert "EXPIRED" in str(ei.value) and ei.value.rsc == RSC.ORIGINATOR_NOT_AUTHENTICATED
