"""``e2eSecInfo`` between clients and a CSE that types it as a string (TS-0004 6.3.5.52;
the ``esi`` attribute of ``<AE>`` 9.6.5, ``<remoteCSE>`` 9.6.4, ``<CSEBase>`` 9.6.3).

TS-0004 defines ``esi`` as the complex type ``m2m:e2eSecInfo``; ACME 2026.5.3 accepts it
only as a string (tests/net pin that).  The gateway therefore maps, in pure functions:

* towards the CSE (:func:`esi_to_cse`): an ``esi`` object in a Create/Update of
  ``m2m:ae`` / ``m2m:csr`` / ``m2m:cb`` is validated (:class:`~m2msec.onem2m.E2ESecInfo`,
  4000 if it does not parse) and replaced by its compact JSON text;
* towards clients (:func:`esi_from_cse`): every ``esi`` string found under an
  ``m2m:ae`` / ``m2m:csr`` / ``m2m:cb`` anywhere in a response Content (also inside
  discovery/child-resource results) that parses as an e2eSecInfo is replaced by the
  object; a string that does not parse is left as the CSE returned it;
* :func:`merge_cse_esi`: the gateway's own e2eSecInfo (the CSE as ESPrim Receiver, with
  its shared receiverESPrimRandObject) is set on ``m2m:cb`` in a RETRIEVE response.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from m2msec.errors import ParseError
from m2msec.onem2m.security import E2ESecInfo

__all__ = ["ESI_ROOTS", "esi_from_cse", "esi_to_cse", "merge_cse_esi"]

ESI_ROOTS = ("m2m:ae", "m2m:csr", "m2m:cb")


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def esi_to_cse(pc: Any) -> tuple[Any, bool]:
    """(Content for the CSE, changed?) -- an ``esi`` object becomes JSON text."""
    if not isinstance(pc, Mapping) or len(pc) != 1:
        return pc, False
    (root,) = pc.keys()
    res = pc[root]
    if root not in ESI_ROOTS or not isinstance(res, Mapping) or not isinstance(res.get("esi"), Mapping):
        return pc, False
    try:
        info = E2ESecInfo.from_json(res["esi"], path=f"pc.{root}.esi")
    except ValueError as exc:
        raise ParseError(f"e2eSecInfo does not parse: {exc}") from None
    out = dict(res)
    out["esi"] = _compact(info.to_json())
    return {root: out}, True


def _objectify(res: dict[str, Any]) -> bool:
    raw = res.get("esi")
    if not isinstance(raw, str):
        return False
    try:
        value = json.loads(raw)
        E2ESecInfo.from_json(value)
    except (ValueError, ParseError, RecursionError):
        return False
    res["esi"] = value
    return True


def _walk(node: Any) -> bool:
    changed = False
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ESI_ROOTS:
                items = value if isinstance(value, list) else [value]
                for item in items:
                    if isinstance(item, dict):
                        changed |= _objectify(item)
            changed |= _walk(value)
    elif isinstance(node, list):
        for item in node:
            changed |= _walk(item)
    return changed


def esi_from_cse(pc: Any) -> tuple[Any, bool]:
    """(Content for the client, changed?) -- ``esi`` JSON text becomes the object."""
    if not isinstance(pc, (dict, list)):
        return pc, False
    out = copy.deepcopy(pc)
    changed = _walk(out)
    return (out, True) if changed else (pc, False)


def merge_cse_esi(pc: Any, info: E2ESecInfo) -> tuple[Any, bool]:
    """Set ``esi`` of a ``{"m2m:cb": {...}}`` Content to the gateway's e2eSecInfo."""
    if not isinstance(pc, Mapping) or not isinstance(pc.get("m2m:cb"), Mapping) or len(pc) != 1:
        return pc, False
    cb = dict(pc["m2m:cb"])
    cb["esi"] = info.to_json()
    return {"m2m:cb": cb}, True
