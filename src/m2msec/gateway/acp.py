"""Access control for the ``m2m:seci`` Notifies the gateway relays to an AE (sans-I/O).

An unmodified CSE (ACME) refuses a NOTIFY whose Content is ``m2m:seci``, so the gateway
delivers those Notifies to the AE itself; this module makes the decision the Hosting CSE
would have made first: may the Originator NOTIFY the target <AE> (or <remoteCSE>)?

Clauses: TS-0001 9.6.2 (<accessControlPolicy>: privileges/selfPrivileges), 9.6.1.3.2 (a
resource without accessControlPolicyIDs), TS-0003 7.1.3 (rq_time, rq_ip; table 7.1.3-3
accessControlContexts), 7.1.4 (a result that cannot be derived is "Deny"), 7.1.5 (the
reference decision: ``res_acr = res_authn AND res_origs AND res_ops AND res_ctxts AND
res_objd``; ``res_ctxts`` ORs the contexts, ``res_context = res_time AND res_ip AND
res_loc``), TS-0004 7.3.3.15 (check authorization of the originator; table 7.3.3.15-1
accessControlOriginators incl. <group> resource IDs), TS-0004 6.3.5.26/6.3.5.27
(``m2m:setOfAcrs`` / ``m2m:accessControlRule``; short names ``acpi``, ``pv``, ``pvs``,
``acr``, ``acor``, ``acop``, ``acco``, ``actw``, ``acip``, ``ipv4``, ``ipv6``, ``aclr``,
``acaf``, ``acod``, ``aca``), TS-0004 6.3.3 (``m2m:ipv4``/``m2m:ipv6``), 7.4.9.1
(``m2m:scheduleEntry``, :mod:`m2msec.gateway.schedule`) and TS-0004 6.3.4.2.29
``m2m:accessControlOperations`` (NOTIFY = 16).

Decision (``may_notify``), in this order:

1. The originator is the target itself (its ``aei``/``csi``), the CSE administrator
   (``admin`` in any of its forms, as ACME's ``fullAccessAdmin`` treats it) or the hosting
   CSE's own CSE-ID (ACME grants the CSE full access): allowed.
2. The target has no ``acpi``: denied (TS-0001 9.6.1.3.2 leaves it to the creator/custodian,
   which for an <AE> is the AE itself, covered by 1).
3. Otherwise allowed iff one ``acr`` of the ``pv`` of one referenced ACP *grants*: its
   ``acop`` has the NOTIFY bit, its contexts match, nothing else in the rule restricts it
   that this module does not evaluate, and one ``acor`` entry matches the originator
   (directly, or as the resource ID of a <group> that has the originator as a member):

   * ``acco`` (accessControlContexts) present: the rule grants only if one of its contexts
     matches (OR across the list; an empty list: none matches).  A context matches only if
     it has at least one member and every member matches (AND):

     - ``actw``: a list of ``m2m:scheduleEntry``; matches when the request time (the
       injected clock, UTC, read when the gateway decides) falls in one of them; a
       malformed entry never matches (another entry may), an empty list never matches.
     - ``acip``: ``{"ipv4": [...], "ipv6": [...]}``, addresses or CIDR blocks (prefix
       length only, no host bits set, no zone; a malformed entry never matches); matches
       when the IP address of the TCP peer that sent the Notify to the gateway is in one
       entry (an IPv4-mapped IPv6 peer also against the IPv4 entries).  Through another
       CSE or gateway this is the address of the relaying node, not of the originator.
       No known peer address: no match.
     - ``aclr`` (location region), ``acui``, ``acec``, ``acl``, any unknown member, or a
       member of the wrong JSON type: the gateway cannot evaluate it, so the context does
       not match (fail closed, TS-0003 7.1.4).  ACME grants on those members without
       evaluating them (and ignores ``acip``); the gateway is stricter.
   * ``acaf`` true (accessControlAuthenticationFlag, TS-0003 7.1.5 table 7.1.5-1): the rule
     grants only when ``rq_authn`` is TRUE (``authenticated``): the caller says so when the
     Notify came on a SAEF association of the gateway's listener and its From is the identity
     that association authenticated (TS-0003 7.1.2 table 7.1.2-3: an AE or CSE is considered
     authenticated for the duration of its (D)TLS session).  On the plain listener nothing is
     authenticated and the rule does not grant (ACME, with no authenticated request, does the
     same).  The outer Notify of an ESPrim Object is not itself ESPrim-protected towards the
     gateway (the target AE opens it), so it does not count as authenticated.
   * ``aca`` (attribute-level rule): does not grant, as in ACME (a NOTIFY has no attributes).
   * ``acod``: the rule applies only if one entry has no ``ty`` or ``ty`` equal to the
     target's resource type (2 <AE>, 16 <remoteCSE>), and no ``spty`` (TS-0003 7.1.5);
     ACME ignores ``acod`` for a NOTIFY.
   * An ACP that could not be retrieved, or whose ``pv`` is malformed, contributes no rule;
     a malformed rule (``acco`` not a list included) is skipped.

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
* The resource ID or structured ID of a <group> of this CSE (TS-0001 9.6.2.1, TS-0004
  7.3.3.15): the rule grants to the group's members.  Which entries are looked up is
  :func:`group_candidates` (entries of rules otherwise granting, that do not name the
  originator directly, without wildcards, that resolve to this CSE: CSE-relative,
  ``/<csi>/…``, or ``//<sp>/<csi>/…`` with a known SP-ID, except AE-IDs (``C…`` and
  ``/<csi>/C…`` without a further ``/``, ``S…``; ACME names a group ``grp…``); at most 16
  per decision); the
  caller retrieves them (the gateway: as the admin, cached like the ACPs) and passes
  ``groups`` (entry -> ``mid``).  The originator matches a member ID with the identifier
  rule above (SP-relative equality, no wildcards).  Members that are themselves groups
  are not expanded (one level only); a resource that is not a <group>, or that cannot be
  retrieved, grants nothing; a <group> of another CSE is not retrieved (ACME also checks
  only its own groups).
* A domain (TS-0004 table 7.3.3.15-1): an M2M-SP-ID ``//<sp>`` alone (no CSE part; wildcards
  allowed, e.g. ``//*.example.com``, matched against the SP-ID, case-insensitive) grants every
  originator of that SP: an absolute ID ``//<sp>/…`` names its SP; an SP-relative or
  CSE-relative one is of this CSE's SP when ``sp_id`` is known (otherwise it matches no domain).
  ACME does not evaluate domains.
* Not supported (never match): Role-IDs.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntFlag
from functools import lru_cache

from m2msec.gateway.schedule import ScheduleEntry, ScheduleEntryError, parse_schedule_entry
from m2msec.onem2m.enums import ResourceType

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = [
    "AccessControlContext",
    "AccessControlOperation",
    "AccessControlRule",
    "AccessDecision",
    "LocalIds",
    "acor_matches",
    "context_matches",
    "group_candidates",
    "group_lookup_id",
    "is_local_resource_id",
    "may_notify",
    "parse_context",
    "peer_address",
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


_EVALUATED_MEMBERS = frozenset({"actw", "acip"})


@dataclass(frozen=True)
class AccessControlContext:
    """One entry of ``accessControlContexts`` (TS-0004 6.3.5.27) as the gateway evaluates it.

    ``windows``: the parsed ``actw`` entries (None for a malformed entry, which never
    matches), None when ``actw`` is absent; ``networks``: the ``acip`` ``ipv4``/``ipv6``
    entries (None for a malformed one), None when ``acip`` is absent; ``unevaluable``:
    the members the gateway cannot evaluate (``aclr``, ``acui``, ``acec``, ``acl``, any
    unknown name, or a member of the wrong type): the context then never matches."""

    windows: tuple[ScheduleEntry | None, ...] | None = None
    networks: tuple[IPNetwork | None, ...] | None = None
    unevaluable: tuple[str, ...] = ()


@dataclass(frozen=True)
class AccessControlRule:
    """One ``m2m:accessControlRule`` reduced to what the decision needs (``contexts`` is
    None when the rule has no ``acco``)."""

    originators: tuple[str, ...]
    operations: int
    contexts: tuple[AccessControlContext, ...] | None = None
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


def _domain_entry(entry: str) -> str | None:
    """The M2M-SP-ID of a ``domain`` entry (TS-0004 table 7.3.3.15-1): ``//<sp>`` with no
    CSE part (wildcards allowed), lower-cased; None for any other entry."""
    if not entry.startswith("//"):
        return None
    rest = entry[2:].rstrip("/")
    return rest.lower() if rest and "/" not in rest else None


def _domain_of(originator: str, ids: LocalIds) -> str | None:
    """The M2M-SP-ID of the originator's domain: written in an absolute ID, else this CSE's
    ``sp_id`` (None when it is not known)."""
    ident = originator.strip()
    if ident.startswith("//"):
        return ident[2:].split("/", 1)[0].lower() or None
    return ids.sp_id.strip("/").lower() if ids.sp_id else None


def acor_matches(entry: str, originator: str, ids: LocalIds) -> bool:
    """Does one ``accessControlOriginators`` entry match the originator?"""
    if not isinstance(entry, str) or not entry or not originator:
        return False
    if entry == "all":
        return True
    if entry == originator or sp_relative(entry, ids) == sp_relative(originator, ids):
        return True
    domain = _domain_entry(entry)
    if domain is not None:  # every originator of that M2M SP (its own absolute IDs, or ours with [cse] sp_id)
        own = _domain_of(originator, ids)
        return own is not None and (own == domain or (not _WILDCARDS.isdisjoint(domain)
                                                      and wildcard_match(own, domain)))
    if _WILDCARDS.isdisjoint(entry):
        return False
    return any(wildcard_match(form, entry) for form in {_acme_form(originator, ids), sp_relative(originator, ids)})


def peer_address(peer: object) -> IPAddress | None:
    """The IP address of a TCP peer (``"127.0.0.1"``, ``"::1"``, ``"[::1]"``, ``"fe80::1%eth0"``:
    the zone is dropped), or None if it is not an IP address."""
    if isinstance(peer, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return peer
    if not isinstance(peer, str) or not peer:
        return None
    text = peer.strip()
    bracketed = text.startswith("[") and text.endswith("]")
    if bracketed:
        text = text[1:-1]
    text = text.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    return None if bracketed and addr.version != 6 else addr


_PREFIX = re.compile(r"[0-9]{1,3}", re.ASCII)


def _network(entry: object, version: int) -> IPNetwork | None:
    """One ``m2m:ipv4``/``m2m:ipv6`` entry: an address or a CIDR block with a prefix length
    (no netmask form, no host bits set, no zone); None if malformed."""
    if not isinstance(entry, str) or not entry or "%" in entry or entry != entry.strip():
        return None
    if "/" in entry and not _PREFIX.fullmatch(entry.rsplit("/", 1)[1]):
        return None
    try:
        net = ipaddress.ip_network(entry, strict=True)
    except ValueError:
        return None
    return net if net.version == version else None


def parse_context(raw: object) -> AccessControlContext:
    """One ``accessControlContexts`` entry (short names ``actw``, ``acip`` with ``ipv4``/``ipv6``;
    TS-0004 6.3.5.27)."""
    if not isinstance(raw, Mapping):
        return AccessControlContext(unevaluable=("acco entry",))
    unevaluable: list[str] = [str(k)[:16] for k in raw if k not in _EVALUATED_MEMBERS]
    windows: tuple[ScheduleEntry | None, ...] | None = None
    networks: tuple[IPNetwork | None, ...] | None = None
    if "actw" in raw:
        actw = raw["actw"]
        if isinstance(actw, list):
            parsed: list[ScheduleEntry | None] = []
            for w in actw:
                try:
                    parsed.append(parse_schedule_entry(w) if isinstance(w, str) else None)
                except ScheduleEntryError:
                    parsed.append(None)
            windows = tuple(parsed)
        else:
            unevaluable.append("actw")
    if "acip" in raw:
        acip = raw["acip"]
        if isinstance(acip, Mapping):
            nets: list[IPNetwork | None] = []
            for key, version in (("ipv4", 4), ("ipv6", 6)):
                value = acip.get(key)
                if value is None:
                    continue
                if not isinstance(value, list):
                    unevaluable.append(f"acip/{key}")
                    continue
                nets.extend(_network(e, version) for e in value)
            unevaluable.extend(f"acip/{str(k)[:16]}" for k in acip if k not in ("ipv4", "ipv6"))
            networks = tuple(nets)
        else:
            unevaluable.append("acip")
    return AccessControlContext(windows=windows, networks=networks, unevaluable=tuple(unevaluable))


def _in_network(addr: IPAddress, net: IPNetwork) -> bool:
    if addr.version == net.version and addr in net:
        return True
    mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
    return mapped is not None and net.version == 4 and mapped in net


def context_matches(ctx: AccessControlContext, *, when: datetime | None, peer: IPAddress | None) -> bool:
    """TS-0003 7.1.5 ``res_context``: every member the context has must match (``res_time``
    AND ``res_ip``); a context with a member the gateway cannot evaluate, or with no member
    at all, does not match; no request time / no peer address: a window / an address list
    does not match."""
    if ctx.unevaluable or (ctx.windows is None and ctx.networks is None):
        return False
    if ctx.windows is not None:
        if when is None or not any(w is not None and w.matches(when) for w in ctx.windows):
            return False
    if ctx.networks is not None:
        if peer is None or not any(n is not None and _in_network(peer, n) for n in ctx.networks):
            return False
    return True


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
    acco = raw.get("acco")
    contexts: tuple[AccessControlContext, ...] | None = None
    if acco is not None:
        if not isinstance(acco, list):
            return None
        contexts = tuple(parse_context(c) for c in acco)
    return AccessControlRule(
        originators=tuple(a for a in acor if isinstance(a, str)),
        operations=acop,
        contexts=contexts,
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


def _eligible(rule: AccessControlRule, operation: int, target_type: int, when: datetime | None,
              peer: IPAddress | None, authenticated: bool) -> bool:
    """Everything but the originator: operation, contexts (OR), acaf (res_authn), aca, acod."""
    if not rule.operations & operation:
        return False
    if (rule.authentication_required and not authenticated) or rule.has_attributes:
        return False
    if not _applies_to(rule, target_type):
        return False
    if rule.contexts is not None and not any(context_matches(c, when=when, peer=peer) for c in rule.contexts):
        return False
    return True


def is_local_resource_id(entry: str, ids: LocalIds) -> bool:
    """Could ``entry`` be the resource ID (or structured ID) of a resource of this CSE, hence of
    a <group> the gateway may retrieve?  CSE-relative IDs, ``/<csi>/…`` and (SP-ID known)
    ``//<sp>/<csi>/…``; not ``all``, not a wildcard pattern, not another CSE's resource, and
    not an AE-ID (``C…`` or ``/<csi>/C…`` without a further ``/``, ``S…``: profile A2 reads
    those as AE-IDs)."""
    if not isinstance(entry, str) or not entry or entry == "all" or not _WILDCARDS.isdisjoint(entry):
        return False
    if any(c.isspace() for c in entry):
        return False
    sp = sp_relative(entry, ids)
    prefix = ids.csi + "/"
    if not sp.startswith(prefix) or len(sp) == len(prefix):
        return False
    rest = sp[len(prefix):]
    return not (rest.startswith("C") and "/" not in rest)


def group_lookup_id(entry: str, ids: LocalIds) -> str:
    """The ID to RETRIEVE for a <group> ``acor`` entry: as written, except an absolute ID
    in SP-relative form."""
    return sp_relative(entry, ids) if entry.startswith("//") else entry


def _same_id(member: str, originator: str, ids: LocalIds) -> bool:
    return bool(member) and (member == originator or sp_relative(member, ids) == sp_relative(originator, ids))


def _grants(rule: AccessControlRule, originator: str, ids: LocalIds, operation: int, target_type: int,
            when: datetime | None, peer: IPAddress | None,
            groups: Mapping[str, Sequence[str] | None], authenticated: bool) -> str | None:
    """None, or how the rule grants: ``""`` (an acor entry) or the <group> acor entry."""
    if not _eligible(rule, operation, target_type, when, peer, authenticated):
        return None
    if any(acor_matches(a, originator, ids) for a in rule.originators):
        return ""
    for a in rule.originators:
        members = groups.get(a)
        if members and any(isinstance(m, str) and _same_id(m, originator, ids) for m in members):
            return a
    return None


def group_candidates(
    originator: str | None,
    *,
    acpi: Sequence[str] | None,
    policies: Mapping[str, Iterable[AccessControlRule] | None],
    ids: LocalIds,
    target_type: int = int(ResourceType.AE),
    when: datetime | None = None,
    peer: IPAddress | None = None,
    authenticated: bool = False,
    limit: int = 16,
) -> tuple[str, ...]:
    """The ``acor`` entries whose <group> members the decision needs: entries of rules that
    grant NOTIFY in the request's context but whose entries do not name the originator
    directly, which could be a local resource ID (:func:`is_local_resource_id`); at most
    ``limit``, in rule order.  Empty when a rule grants without a group."""
    if not originator or not acpi:
        return ()
    op = int(AccessControlOperation.NOTIFY)
    out: list[str] = []
    for acp_id in acpi:
        for rule in policies.get(acp_id) or ():
            if not _eligible(rule, op, target_type, when, peer, authenticated):
                continue
            if any(acor_matches(a, originator, ids) for a in rule.originators):
                return ()
            for a in rule.originators:
                if a not in out and is_local_resource_id(a, ids):
                    out.append(a)
    return tuple(out[:limit])


def may_notify(
    originator: str | None,
    *,
    target_id: str | None,
    acpi: Sequence[str] | None,
    policies: Mapping[str, Iterable[AccessControlRule] | None],
    ids: LocalIds,
    target_type: int = int(ResourceType.AE),
    when: datetime | None = None,
    peer: IPAddress | str | None = None,
    groups: Mapping[str, Sequence[str] | None] | None = None,
    authenticated: bool = False,
) -> AccessDecision:
    """May ``originator`` NOTIFY the target whose own identifier is ``target_id`` (its
    ``aei``, or ``csi`` for a <remoteCSE>), with accessControlPolicyIDs ``acpi`` and the
    ``pv`` rules of those ACPs in ``policies`` (ACP id -> rules, None if not retrievable)?

    ``when``: the request time (aware; ``actw`` windows), ``peer``: the IP address of the
    TCP peer that sent the request (``acip``), ``groups``: ``acor`` entry -> the ``mid`` of
    that <group> (None or absent: not a group / not retrievable), ``authenticated``: rq_authn
    (TS-0003 table 7.1.2-3), for rules with ``acaf`` true."""
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
    addr = peer_address(peer) if peer is not None else None
    grp = groups or {}
    for acp_id in acpi:
        rules = policies.get(acp_id)
        if rules is None:
            continue
        for n, rule in enumerate(rules):
            how = _grants(rule, originator, ids, op, target_type, when, addr, grp, authenticated)
            if how is not None:
                return AccessDecision(True, f"acp {acp_id} rule {n}" + (f" via group {how}" if how else ""))
    return AccessDecision(False, "no accessControlRule grants NOTIFY")
