"""End-to-end key establishment between two AEs with certificates, then an ESPrim exchange
protected by the agreed key (TS-0003 8.7 ESCertKE, 10.3.1 "EXPORTER-oneM2M-ESCertKE";
8.4 ESPrim with SUID 43).

    .venv/bin/python examples/escertke_keys.py

Two AEs hold AE-ID certificates from the service provider's CA.  The Initiator runs the
four ESCertKE messages with the Terminator (a TLS 1.2 handshake whose flights travel as
``escertkeMessage`` in Notify requests through CSEs that cannot read or change them; here
the bytes are handed over directly, the sans-I/O way — ``m2msec demo`` step 9 sends them
through ACME and the gateway).  Both ends then hold the same pairwiseE2EKey and its ID, and
the Initiator sends an ESPrim-protected RETRIEVE that only the Terminator can open.  An
Initiator with a certificate from another CA is refused.  Key bytes are never printed (a
fingerprint at most).  The application code is between the ``----`` markers.
"""

from __future__ import annotations

import hashlib
import sys
from datetime import UTC, datetime

from m2msec.escertke import (
    ESCertKEError,
    ESCertKEKeys,
    InitiatingEndPoint,
    InitiatorInfo,
    TerminatingEndPoint,
    TerminatorInfo,
    classify,
)
from m2msec.esprim import Originator, OriginatorPolicy, Receiver, ReceiverPolicy
from m2msec.esprim.originator import SessionReady
from m2msec.esprim.state import MemoryReceiverState
from m2msec.onem2m import Operation, RequestPrimitive, ResponsePrimitive
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.pki import CertificateFlavour, DevCA, PeerCertInfo
from m2msec.tls import CertCredentials

SP = "sp.example.com"
METER, PORTAL = "Cmeter", "Cportal"  # AE-IDs as the Notify From carries them
METER_CERT_ID, PORTAL_CERT_ID = f"//{SP}/id-in/{METER}", f"//{SP}/id-in/{PORTAL}"


def now() -> datetime:
    return datetime.now(UTC)


def fingerprint(key: bytes) -> str:
    return f"sha256:{hashlib.sha256(key).hexdigest()[:16]}"


def credentials(ca: DevCA, identifier: str) -> CertCredentials:
    issued = ca.issue(CertificateFlavour.AE_ID, [identifier], now=now())
    assert issued.private_key is not None
    return CertCredentials(issued.private_key, issued.certificate, tuple(issued.chain))


def main() -> int:
    # Set-up: the SP's CA and each AE's certificate (8.1.2.3); another CA for the refusal.
    ca = DevCA.create("example SP CA", now=now(), permit_uri=[SP])
    other_ca = DevCA.create("someone else's CA", now=now(), permit_uri=[SP])
    portal = TerminatingEndPoint(
        credentials(ca, PORTAL_CERT_ID),
        [InitiatorInfo(PeerCertInfo(CertificateFlavour.AE_ID, METER_CERT_ID), (ca.trust_anchor,), identity=METER)],
        clock=now,
    )

    # ---- the meter: ESCertKE with the portal (8.7.2.2), four messages
    meter = InitiatingEndPoint(credentials(ca, METER_CERT_ID), clock=now, keys=ESCertKEKeys(clock=now))
    proc = meter.initiate(TerminatorInfo(PeerCertInfo(CertificateFlavour.AE_ID, PORTAL_CERT_ID), (ca.trust_anchor,),
                                         identity=PORTAL))
    m1 = proc.message_1()
    m2 = portal.handle(METER, m1)  # each message is the content of one Notify (securityInfoType 6)
    m3 = proc.receive_message_2(m2)
    m4 = portal.handle(METER, m3)
    result = proc.receive_message_4(m4)
    print("ESCertKE messages: " + ", ".join(f"#{classify(m)} {len(m)} octets" for m in (m1, m2, m3, m4)))
    theirs = portal.keys.for_peer(METER)
    assert theirs is not None
    print(f"meter:  pairwiseE2EKeyID {result.kid}, key {fingerprint(result.key)}, peer {result.peer_id}")
    print(f"portal: pairwiseE2EKeyID {theirs.kid}, key {fingerprint(theirs.key)}, peer {theirs.peer_id}")

    # ---- the meter asks the portal for data, protected with ESPrim under that key (8.4)
    receiver = Receiver(keys=portal.keys, state=MemoryReceiverState(clock=now), clock=now,
                        policy=ReceiverPolicy(supported_suids=(SUID.CERTIFICATE_ESPRIM,)))
    originator = Originator(clock=now, policy=OriginatorPolicy())
    step = originator.start(meter.keys.resolve(result.kid), receiver.e2e_sec_info())
    assert isinstance(step, SessionReady)
    request = RequestPrimitive(op=Operation.RETRIEVE, to=f"/id-in/{PORTAL}/tariff", fr=METER, rqi="r1", rvi="3")
    esprim_object, pending = originator.protect_request(request, step.session)
    print(f"ESPrim Object to the portal: {len(esprim_object)} characters of JWE compact, "
          f"readable: {'tariff' in esprim_object}")
    opened, ctx = receiver.open_request(esprim_object, outer_from=METER)
    reply = ResponsePrimitive(rsc=RSC.OK, rqi=opened.rqi, rvi="3", pc={"m2m:cin": {"con": "0.21 EUR/kWh"}})
    answer = originator.open_response(receiver.protect_response(ctx, reply), pending)
    print(f"portal opened {opened.op.name} {opened.to} from {opened.fr}; meter got {int(answer.rsc)} {answer.pc}")
    # ----

    intruder = InitiatingEndPoint(credentials(other_ca, METER_CERT_ID), clock=now)
    attempt = intruder.initiate(TerminatorInfo(PeerCertInfo(CertificateFlavour.AE_ID, PORTAL_CERT_ID),
                                               (ca.trust_anchor,), identity=PORTAL))
    try:
        attempt.receive_message_4(portal.handle(METER, attempt.receive_message_2(portal.handle(METER,
                                                                                             attempt.message_1()))))
        print("FAIL: an Initiator with a certificate from another CA got a key")
        return 1
    except ESCertKEError as exc:
        print(f"certificate from another CA refused: {exc.reason.value} (rsc {int(exc.rsc)})")

    if result.key != theirs.key or answer.rsc != RSC.OK:
        print("FAIL: the ends do not agree")
        return 1
    print("OK: ESCertKE key agreed by both AEs and used for ESPrim")
    return 0


if __name__ == "__main__":
    sys.exit(main())
