"""End-to-End Certificate-based Key Establishment - ESCertKE (TS-0003 8.7, 10.3.1;
TS-0004 7.5.1.2.12).

Public API::

    keys = ESCertKEKeys(clock=clock)                       # cache: ESPrim source + .esdata
    ini = InitiatingEndPoint(creds, clock=clock, keys=keys)
    proc = ini.initiate(TerminatorInfo(PeerCertInfo(...), anchors, identity="/id-in/Cae2"))
    result = await run_initiator(async_client, proc)         # or message_1/receive_message_2/4
    term = TerminatingEndPoint(creds, [InitiatorInfo(PeerCertInfo(...), anchors, "Cae1")], clock=clock)
    NotifyDispatcher(on_escertke_message=terminator_handler(term))   # or term.handle(from, m)

Modules: :mod:`.procedure` (state machines), :mod:`.messages` (flights), :mod:`.keys`
(result, cache, kid form, ESPrim/ESData use, certificate status of established keys), :mod:`.transport` (Notify glue),
:mod:`.errors` (reasons and RSCs).
"""

from __future__ import annotations

from m2msec.escertke.errors import ESCertKEError, Reason
from m2msec.escertke.keys import DroppedKey, ESCertKEKeys, ESCertKEResult, kid_for
from m2msec.escertke.messages import classify
from m2msec.escertke.procedure import (
    DEFAULT_PROCEDURE_TIMEOUT,
    DEFAULT_MAX_MESSAGE1_PER_WINDOW,
    DEFAULT_REPLAY_WINDOW,
    InitiatingEndPoint,
    Initiator,
    InitiatorInfo,
    InitiatorState,
    TerminatingEndPoint,
    TerminatorInfo,
    TerminatorState,
)
from m2msec.escertke.transport import (
    message_from_response,
    notify_request,
    run_initiator,
    run_initiator_sync,
    terminator_handler,
)

__all__ = [
    "DEFAULT_PROCEDURE_TIMEOUT",
    "DEFAULT_MAX_MESSAGE1_PER_WINDOW",
    "DEFAULT_REPLAY_WINDOW",
    "DroppedKey",
    "ESCertKEError",
    "ESCertKEKeys",
    "ESCertKEResult",
    "InitiatingEndPoint",
    "Initiator",
    "InitiatorInfo",
    "InitiatorState",
    "Reason",
    "TerminatingEndPoint",
    "TerminatorInfo",
    "TerminatorState",
    "classify",
    "kid_for",
    "message_from_response",
    "notify_request",
    "run_initiator",
    "run_initiator_sync",
    "terminator_handler",
]
