"""Access control for the ``m2m:seci`` Notifies the gateway relays to an AE (sans-I/O).

An unmodified CSE (ACME) refuses a NOTIFY whose Content is ``m2m:seci``, so the gateway
delivers those Notifies to the AE itself; this module makes the decision the Hosting CSE
would have made first: may the Originator NOTIFY the target <AE> (or <remoteCSE>)?

Clauses: TS-0001 9.6.2 (<accessControlPolicy>: privileges/selfPrivileges), 9.6.1.3.2 (a
resource without accessControlPolicyIDs), TS-0003 7.1.5 (access control rules,
accessControlObjectDetails), TS-0004 7.3.3.15 (check authorization of the originator),
TS-0004 6.3.5.26/6.3.5.27 (``m2m:setOfAcrs`` / ``m2m:accessControlRule``; short names
``acpi``, ``pv``, ``pvs``, ``acr``, ``acor``, ``acop``, ``acco``, ``acaf``, ``acod``, ``aca``)
and TS-0004 6.3.4.2.29 ``m2m:accessControlOperations`` (NOTIFY = 16).

Decision (``may_notify``), in this order:

1. The originator is the target itself (its ``aei``/``csi``), the CSE administrator
   (``admin`` in any of its forms, as ACME's ``fullAccessAdmin`` treats it) or the hosting
   CSE's own CSE-ID (ACME grants the CSE full access): allowed.
2. The target has no ``acpi``: denied (TS-0001 9.6.1.3.2 leaves it to the creator/custodian,
   which for an <AE> is the AE itself, covered by 1).
3. Otherwise allowed iff one ``acr`` of the ``pv`` of one referenced ACP *grants*: its
   ``acop`` has the NOTIFY bit and one ``acor`` entry matches the originator, and nothing
   in the rule restricts it further that this module does not evaluate:

   * ``acco`` present (time windows, IP addresses, location, even an empty list): the rule
     does not grant.  ACME evaluates the time windows and ignores the other contexts
     (grants); the gateway is stricter.
   * ``acaf`` true: the rule does not grant (the gateway does not authenticate the
     originator of the outer Notify; ACME, with no authenticated request, does the same).
   * ``aca`` (attribute-level rule): does not grant, as in ACME (a NOTIFY has no attributes).
   * ``acod``: the rule applies only if one entry has no ``ty`` or ``ty`` equal to the
     target's resource type (2 <AE>, 16 <remoteCSE>), and no ``spty`` (TS-0003 7.1.5);
     ACME ignores ``acod`` for a NOTIFY.
   * An ACP that could not be retrieved, or whose ``pv`` is malformed, contributes no rule;
     a malformed rule is skipped.

``acor`` entries (TS-0004 7.3.3.15 table 7.3.3.15-1), as ACME matches them:

* ``all``: every originator.
* An identifier: equal to the originator once both are in SP-relative form (profile A2: a
  ``C…``/other stem gets the hosting CSE-ID, ``S…`` gets ``/``; ``//<sp>/…`` loses the
  SP-ID prefix when ``sp_id`` is known, otherwise is compared as written).  ACME compares
  the literal strings after turning an originator ``/<csi>/X`` into ``X``; the gateway
  also accepts the other written forms of the same identifier.
* A pattern with ACME's wildcards (``*`` zero or more characters, ``+`` one or more,
  ``?`` one, ``[abc]``/``[^abc]`` a character class, ``\\`` escapes the next character;
  the whole identifier must match): matched against the originator in the form ACME
  compares (CSE-relative when registered with this CSE: ``/<csi>/X`` -> ``X``) and against
  its SP-relative form.  TS-0004 names only ``*``.
* Not supported (never match): the resource-ID of a <group> (ACME expands its members),
  Role-IDs, and domain semantics beyond a wildcard pattern.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntFlag
from functools import lru_cache

from m2msec.onem2m.enums import ResourceType

__all__ = [
    "AccessControlOperation",
    "AccessControlRule",
    "AccessDecision",
    "LocalIds",
    "acor_matches",
    "may_notify",
    "parse_set_of_acrs",
    "sp_relative",
    "wildcard_match",
]


class AccessControlOperation(IntFlag):
    """``m2m:accessControlOperations`` bits (TS-0004 6.3.4.2.29)."""

    CREATE = 1
    RETRIEVE = 2
    UPDATE = 4
    DELETE = 8
    NOTIFY = 16
    DISCOVER = 32


@dataclass(frozen=True)
class LocalIds:
    """What the gateway knows about the hosting CSE: its CSE-ID (with or without ``/``),
    the administrator originator and, optionally, the SP-ID (``//sp`` or ``sp``)."""

    cse_id: str
    admin: str
    sp_id: str | None = None

    @property
    def csi(self) -> str:
        return "/" + self.cse_id.strip("/")


@dataclass(frozen=True)
class AccessControlRule:
    """One ``m2m:accessControlRule`` reduced to what the decision needs."""

    originators: tuple[str, ...]
    operations: int
    has_contexts: bool = False
    authentication_required: bool = False
    has_attributes: bool = False
    object_details: tuple[tuple[int | None, bool], ...] | None = None  # (ty, has spty) per acod entry


@dataclass(frozen=True)
class AccessDecision:
    """``allowed`` and why (``self``, ``admin``, ``cse``, ``acp <ri> rule <n>``, or the denial)."""

    allowed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


def sp_relative(identifier: str, ids: LocalIds) -> str:
    """``identifier`` in SP-relative form as far as ``ids`` allows (profile A2)."""
    ident = identifier.strip()
    if not ident:
        return ident
    if ident.startswith("//"):
        if ids.sp_id:
            sp = "//" + ids.sp_id.strip("/")
            if ident.startswith(sp + "/"):
                return ident[len(sp):]
        return ident
    if ident.startswith("/"):
        return ident
    if ident.startswith("S"):
        return "/" + ident
    return f"{ids.csi}/{ident}"


def _acme_form(originator: str, ids: LocalIds) -> str:
    """The originator as ACME compares it: ``/<csi>/X`` of this CSE becomes ``X``."""
    sp = sp_relative(originator, ids)
    prefix = ids.csi + "/"
    return sp[len(prefix):] if sp.startswith(prefix) else originator


_WILDCARDS = frozenset("*+?[\\")


@lru_cache(maxsize=512)
def _pattern(pattern: str) -> re.Pattern[str] | None:
    """ACME's simpleMatch pattern as a regular expression; None if it is malformed."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "+":
            out.append(".+")
        elif c == "?":
            out.append(".")
        elif c == "\\":
            if i + 1 >= n:
                return None
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            i += 1
            negate = i < n and pattern[i] == "^"
            if negate:
                i += 1
            chars: list[str] = []
            while i < n and pattern[i] != "]":
                if pattern[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(pattern[i])
                i += 1
            if i >= n:
                return None  # no closing ]
            body = "".join(re.escape(ch) for ch in chars)
            if not body:
                out.append("[^\\s\\S]" if not negate else "[\\s\\S]")
            else:
                out.append(f"[{'^' if negate else ''}{body}]")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def wildcard_match(value: str, pattern: str) -> bool:
    """Whole-string match of ``value`` against an ACME wildcard ``pattern``."""
    rx = _pattern(pattern)
    return rx is not None and rx.fullmatch(value) is not None


def acor_matches(entry: str, originator: str, ids: LocalIds) -> bool:
    """Does one ``accessControlOriginators`` entry match the originator?"""
    if not isinstance(entry, str) or not entry or not originator:
        return False
    if entry == "all":
        return True
    if entry == originator or sp_relative(entry, ids) == sp_relative(originator, ids):
        return True
    if _WILDCARDS.isdisjoint(entry):
        return False
    return any(wildcard_match(form, entry) for form in {_acme_form(originator, ids), sp_relative(originator, ids)})


def _rule(raw: object) -> AccessControlRule | None:
    if not isinstance(raw, Mapping):
        return None
    acor, acop = raw.get("acor"), raw.get("acop")
    if not isinstance(acor, list) or isinstance(acop, bool) or not isinstance(acop, int):
        return None
    acod = raw.get("acod")
    details: tuple[tuple[int | None, bool], ...] | None = None
    if acod is not None:
        if not isinstance(acod, list):
            return None
        entries = []
        for d in acod:
            if not isinstance(d, Mapping):
                return None
            ty = d.get("ty")
            entries.append((ty if isinstance(ty, int) and not isinstance(ty, bool) else (None if ty is None else -1),
                            d.get("spty") is not None))
        details = tuple(entries)
    return AccessControlRule(
        originators=tuple(a for a in acor if isinstance(a, str)),
        operations=acop,
        has_contexts="acco" in raw,
        authentication_required=raw.get("acaf") is True,
        has_attributes=raw.get("aca") is not None,
        object_details=details,
    )


def parse_set_of_acrs(pv: object) -> tuple[AccessControlRule, ...]:
    """The rules of an ``m2m:setOfAcrs`` (``{"acr": [...]}``); malformed rules are dropped
    (they can only ever deny)."""
    if not isinstance(pv, Mapping):
        return ()
    acr = pv.get("acr")
    if not isinstance(acr, list):
        return ()
    return tuple(r for r in (_rule(x) for x in acr) if r is not None)


def _applies_to(rule: AccessControlRule, target_type: int) -> bool:
    if rule.object_details is None:
        return True
    return any((ty is None or ty == target_type) and not spty for ty, spty in rule.object_details)


def _grants(rule: AccessControlRule, originator: str, ids: LocalIds, operation: int, target_type: int) -> bool:
    if not rule.operations & operation:
        return False
    if rule.has_contexts or rule.authentication_required or rule.has_attributes:
        return False
    if not _applies_to(rule, target_type):
        return False
    return any(acor_matches(a, originator, ids) for a in rule.originators)


def may_notify(
    originator: str | None,
    *,
    target_id: str | None,
    acpi: Sequence[str] | None,
    policies: Mapping[str, Iterable[AccessControlRule] | None],
    ids: LocalIds,
    target_type: int = int(ResourceType.AE),
) -> AccessDecision:
    """May ``originator`` NOTIFY the target whose own identifier is ``target_id`` (its
    ``aei``, or ``csi`` for a <remoteCSE>), with accessControlPolicyIDs ``acpi`` and the
    ``pv`` rules of those ACPs in ``policies`` (ACP id -> rules, None if not retrievable)?"""
    if not originator:
        return AccessDecision(False, "no originator")
    norm = sp_relative(originator, ids)
    if target_id and norm == sp_relative(target_id, ids):
        return AccessDecision(True, "self")
    if norm == sp_relative(ids.admin, ids):
        return AccessDecision(True, "admin")
    if norm == ids.csi:
        return AccessDecision(True, "cse")
    if not acpi:
        return AccessDecision(False, "target has no accessControlPolicyIDs")
    op = int(AccessControlOperation.NOTIFY)
    for acp_id in acpi:
        rules = policies.get(acp_id)
        if rules is None:
            continue
        for n, rule in enumerate(rules):
            if _grants(rule, originator, ids, op, target_type):
                return AccessDecision(True, f"acp {acp_id} rule {n}")
    return AccessDecision(False, "no accessControlRule grants NOTIFY")
