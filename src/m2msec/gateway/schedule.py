"""``m2m:scheduleEntry`` strings: parse and match a time against one (sans-I/O).

Clauses: TS-0004 7.4.9.1 table 7.4.9.1-4 (the string format: seven fields ``second minute
hour dayOfMonth month dayOfWeek year``, interpreted in UTC), TS-0004 6.3.3 (the simple type
``m2m:scheduleEntry``), TS-0004 6.3.5.27 (``accessControlWindow`` of an access-control
context is a list of them) and TS-0003 7.1.3/7.1.5 (``res_time``: the request time falls in
one window).

Grammar accepted (everything else is malformed; a malformed entry never matches):

* Exactly seven fields separated by runs of ASCII spaces or tabs; leading and trailing
  spaces/tabs are ignored, any other character (newline included) is malformed.
* A field is one element or a comma-separated list of elements (no empty element).
* An element is ``*`` (every valid value), ``*/s`` (every ``s``-th value from the field's
  minimum), ``n``, ``n-m`` (``n <= m``) or ``n-m/s``.  Numbers are 1 to 4 ASCII digits
  (leading zeros allowed), within the field's range (second 0-59, minute 0-59, hour 0-23,
  day of month 1-31, month 1-12, day of week 0-6 with 0 = Sunday, year 2000-9999); a step
  ``s`` is 1-9999.  Names (``MON``, ``JAN``), ``7`` for Sunday, ``n/s``, ``L``/``W``/``#``
  and ``?`` are not part of the format.
* The time matches when every one of the seven fields matches (day of month AND day of
  week; crontab(5) ORs those two when both are restricted, the oneM2M table does not say
  so and ACME ANDs them).
* ``*/s`` counts from the field's minimum as in crontab(5) (day of month ``*/2`` = 1, 3, 5,
  ...); ACME tests ``value % s == 0`` instead (2, 4, 6, ...), so the two differ for day of
  month, month and some year steps.

A window is a whole second: the time is truncated to the second (no sub-second part).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache

from m2msec.errors import ParseError

__all__ = ["FIELDS", "ScheduleEntry", "ScheduleEntryError", "parse_schedule_entry", "schedule_matches"]

#: (name, minimum, maximum) of the seven fields, in order.
FIELDS: tuple[tuple[str, int, int], ...] = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 6),
    ("year", 2000, 9999),
)

_MAX_LEN = 512
_SEP = re.compile(r"[ \t]+")
_ELEMENT = re.compile(r"(?:(\*)|([0-9]{1,4})(?:-([0-9]{1,4}))?)(?:/([0-9]{1,4}))?", re.ASCII)


class ScheduleEntryError(ParseError):
    """A malformed ``m2m:scheduleEntry`` (RSC 4000 BAD_REQUEST)."""


@dataclass(frozen=True)
class _Range:
    start: int
    end: int
    step: int

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.start <= value <= self.end and (value - self.start) % self.step == 0


@dataclass(frozen=True)
class ScheduleEntry:
    """A parsed entry: per field, the ranges any of which the value must fall in."""

    fields: tuple[tuple[_Range, ...], ...]

    def matches(self, when: datetime) -> bool:
        """Does the aware ``when`` (converted to UTC) fall in this window?"""
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError("a schedule is matched against an aware datetime (UTC)")
        t = when.astimezone(timezone.utc)
        values = (t.second, t.minute, t.hour, t.day, t.month, (t.weekday() + 1) % 7, t.year)
        return all(any(v in r for r in ranges) for v, ranges in zip(values, self.fields))


def _element(text: str, name: str, lo: int, hi: int) -> _Range:
    m = _ELEMENT.fullmatch(text)
    if m is None:
        raise ScheduleEntryError(f"scheduleEntry {name} field: malformed element {text[:16]!r}")
    star, first, last, step_s = m.groups()
    step = 1
    if step_s is not None:
        step = int(step_s)
        if step < 1:
            raise ScheduleEntryError(f"scheduleEntry {name} field: step must be at least 1")
        if star is None and last is None:
            raise ScheduleEntryError(f"scheduleEntry {name} field: a step follows only '*' or a range")
    if star is not None:
        return _Range(lo, hi, step)
    start = int(first)
    end = int(last) if last is not None else start
    if not (lo <= start <= hi and lo <= end <= hi):
        raise ScheduleEntryError(f"scheduleEntry {name} field: value out of range {lo}-{hi}")
    if start > end:
        raise ScheduleEntryError(f"scheduleEntry {name} field: range {start}-{end} is reversed")
    return _Range(start, end, step)


def parse_schedule_entry(text: str) -> ScheduleEntry:
    """Parse one ``m2m:scheduleEntry``; :class:`ScheduleEntryError` if it is malformed."""
    if not isinstance(text, str):
        raise ScheduleEntryError("scheduleEntry must be a string")
    return _parse(text)


@lru_cache(maxsize=256)
def _parse(text: str) -> ScheduleEntry:
    if len(text) > _MAX_LEN:
        raise ScheduleEntryError("scheduleEntry too long")
    body = text.strip(" \t")
    parts = _SEP.split(body) if body else []
    if len(parts) != len(FIELDS):
        raise ScheduleEntryError(f"scheduleEntry needs {len(FIELDS)} fields, got {len(parts)}")
    fields = []
    for part, (name, lo, hi) in zip(parts, FIELDS):
        fields.append(tuple(_element(e, name, lo, hi) for e in part.split(",")))
    return ScheduleEntry(tuple(fields))


def schedule_matches(entry: object, when: datetime) -> bool:
    """True iff ``entry`` is a well-formed ``m2m:scheduleEntry`` and ``when`` falls in it;
    a malformed entry never matches."""
    if not isinstance(entry, str):
        return False
    try:
        parsed = parse_schedule_entry(entry)
    except ScheduleEntryError:
        return False
    return parsed.matches(when)
