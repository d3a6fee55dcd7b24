"""ESCertKE errors (TS-0003 8.7.2.2, TS-0004 7.5.1.2.12), each with the RSC to answer with.

TS-0004 defines no ESCertKE-specific Response Status Code; the mapping (profile
decisions, see the package docstring) is:

* certificate verification or any other TLS handshake failure (wrong identifier,
  untrusted trust anchor, tampered message, bad Finished): ORIGINATOR_NOT_AUTHENTICATED (4106),
  as for every certificate-based framework (profile P12);
* an Initiating End-Point the Terminating End-Point is not configured for:
  ORIGINATOR_HAS_NO_PRIVILEGE (4103) - an authorisation decision, not an authentication one;
* a message that is not the expected TLS flight (malformed, truncated, out of order,
  replayed Message 1, Message 3 without a procedure): BAD_REQUEST (4000);
* Message 3 for a procedure that has expired: REQUEST_TIMEOUT (4008).
"""

from __future__ import annotations

import enum

from m2msec.errors import M2MSecError
from m2msec.onem2m.rsc import ResponseStatusCode as RSC

__all__ = ["ESCertKEError", "Reason"]


class Reason(str, enum.Enum):
    MALFORMED = "MALFORMED"  # not a TLS 1.2 handshake flight / truncated
    OUT_OF_ORDER = "OUT_OF_ORDER"  # a message that does not fit the procedure's state
    REPLAYED = "REPLAYED"  # a Message 1 already seen
    RATE_LIMITED = "RATE_LIMITED"  # too many Message 1 from this Initiator within the replay window
    NO_PROCEDURE = "NO_PROCEDURE"  # Message 3 without an unfinished procedure with that peer
    EXPIRED = "EXPIRED"  # the procedure timed out
    UNKNOWN_INITIATOR = "UNKNOWN_INITIATOR"  # Terminating End-Point not configured for this originator
    AUTHENTICATION_FAILED = "AUTHENTICATION_FAILED"  # the TLS handshake failed (certificate, Finished ...)
    PEER_REFUSED = "PEER_REFUSED"  # the other end-point answered an error
    TRANSPORT = "TRANSPORT"  # the Notify could not be delivered / answered without a message


_RSC: dict[Reason, RSC] = {
    Reason.MALFORMED: RSC.BAD_REQUEST,
    Reason.OUT_OF_ORDER: RSC.BAD_REQUEST,
    Reason.REPLAYED: RSC.BAD_REQUEST,
    Reason.RATE_LIMITED: RSC.NOT_ACCEPTABLE,
    Reason.NO_PROCEDURE: RSC.BAD_REQUEST,
    Reason.EXPIRED: RSC.REQUEST_TIMEOUT,
    Reason.UNKNOWN_INITIATOR: RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
    Reason.AUTHENTICATION_FAILED: RSC.ORIGINATOR_NOT_AUTHENTICATED,
    Reason.PEER_REFUSED: RSC.ORIGINATOR_NOT_AUTHENTICATED,
    Reason.TRANSPORT: RSC.TARGET_NOT_REACHABLE,
}


class ESCertKEError(M2MSecError):
    """The ESCertKE Procedure was aborted; ``reason`` says why, ``rsc`` what to answer.

    Like h11's ``ProtocolError``: the procedure that raised it is dead (nothing was
    cached); the message never contains key material.  For a handshake failure the
    :class:`~m2msec.tls.TLSHandshakeError` is the ``__cause__`` (and its own cause the
    :class:`~m2msec.pki.CertificateVerificationError` with its ``reason_code``).
    """

    def __init__(self, reason: Reason, message: str, *, rsc: RSC | None = None) -> None:
        super().__init__(f"{reason.value}: {message}", rsc=rsc if rsc is not None else _RSC[reason])
        self.reason = reason
