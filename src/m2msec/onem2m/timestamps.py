"""oneM2M time stamps: ``m2m:timestamp`` and ``m2m:absRelTimestamp``.

Implements TS-0004 V3.32.0 clause 6.3.3 (Table 6.3.3-1 and the text after it):

* ``m2m:timestamp`` is the ISO 8601 *Basic Format* ``YYYYMMDDThhmmss``, all
  components present, optionally followed by ``,`` and one to six fractional
  digits of a second.  "The timestamp string shall not contain Timezone
  information. All timestamps shall be interpreted as being in UTC."
* ``m2m:absRelTimestamp`` is the union of ``m2m:timestamp`` and ``xs:long``
  (a relative offset in milliseconds).

Profile decisions (m2msec):

* Parsing is strict by default: no time-zone designator.  ``allow_offset=True``
  additionally accepts a trailing ``Z`` or a basic-format offset ``+hh``/``+hhmm``
  /``-hh``/``-hhmm`` (converted to UTC) for peers that add one; it is never emitted.
* The fraction separator is the comma only (as the clause says); ``.`` is rejected.
* Formatting always emits UTC basic format; fractional seconds are emitted only
  when the microsecond part is non-zero, with trailing zeros removed.
* A relative ``m2m:absRelTimestamp`` is accepted as a JSON integer or as a string
  of decimal digits, must be >= 0, and is emitted as a JSON integer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Union

from m2msec.errors import ParseError

Clock = Callable[[], datetime]

_TS_RE = re.compile(
    r"(?P<Y>[0-9]{4})(?P<M>[0-9]{2})(?P<D>[0-9]{2})T"
    r"(?P<h>[0-9]{2})(?P<m>[0-9]{2})(?P<s>[0-9]{2})"
    r"(?:,(?P<frac>[0-9]{1,6}))?"
    r"(?P<tz>Z|[+-][0-9]{2}(?:[0-9]{2})?)?",
    re.ASCII,
)
_REL_RE = re.compile(r"[0-9]{1,19}", re.ASCII)
_INT64_MAX = 2**63 - 1


def _fail(path: str, problem: str) -> ParseError:
    return ParseError(f"{path}: {problem}" if path else problem)


def parse_timestamp(value: object, *, path: str = "", allow_offset: bool = False) -> datetime:
    """Parse an ``m2m:timestamp`` string into an aware UTC :class:`datetime`."""
    if not isinstance(value, str):
        raise _fail(path, f"expected an m2m:timestamp string, got {type(value).__name__}")
    m = _TS_RE.fullmatch(value)
    if m is None:
        raise _fail(path, f"not an m2m:timestamp (YYYYMMDDThhmmss[,ffffff]): {value!r}")
    tz = m.group("tz")
    if tz is not None and not allow_offset:
        raise _fail(path, f"m2m:timestamp must not carry time-zone information: {value!r}")
    frac = m.group("frac") or ""
    micro = int(frac.ljust(6, "0")) if frac else 0
    try:
        dt = datetime(
            int(m.group("Y")), int(m.group("M")), int(m.group("D")),
            int(m.group("h")), int(m.group("m")), int(m.group("s")), micro,
            tzinfo=timezone.utc,
        )
    except ValueError as exc:
        raise _fail(path, f"invalid date/time in m2m:timestamp {value!r}: {exc}") from None
    if tz is not None and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        hours = int(tz[1:3])
        minutes = int(tz[3:5]) if len(tz) == 5 else 0
        if hours > 23 or minutes > 59:
            raise _fail(path, f"invalid UTC offset in m2m:timestamp {value!r}")
        try:
            dt = dt - sign * timedelta(hours=hours, minutes=minutes)
        except OverflowError:
            raise _fail(path, f"m2m:timestamp out of range: {value!r}") from None
    return dt


def format_timestamp(dt: datetime) -> str:
    """Format an aware datetime as an ``m2m:timestamp`` (UTC, basic format)."""
    if not isinstance(dt, datetime) or dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("format_timestamp needs an aware datetime")
    u = dt.astimezone(timezone.utc)
    base = f"{u.year:04d}{u.month:02d}{u.day:02d}T{u.hour:02d}{u.minute:02d}{u.second:02d}"
    if u.microsecond:
        base += "," + f"{u.microsecond:06d}".rstrip("0")
    return base


def ensure_utc(dt: datetime, *, what: str = "datetime") -> datetime:
    """Return ``dt`` converted to UTC; naive datetimes are rejected (ValueError)."""
    if type(dt) is datetime and dt.tzinfo is timezone.utc:  # already UTC (the usual clock)
        return dt
    if not isinstance(dt, datetime) or dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{what} must be an aware datetime")
    return dt.astimezone(timezone.utc)


@dataclass(frozen=True)
class AbsRelTimestamp:
    """An ``m2m:absRelTimestamp``: exactly one of ``absolute`` / ``relative_ms``."""

    absolute: datetime | None = None
    relative_ms: int | None = None

    def __post_init__(self) -> None:
        if (self.absolute is None) == (self.relative_ms is None):
            raise ValueError("AbsRelTimestamp needs exactly one of absolute / relative_ms")
        if self.absolute is not None:
            object.__setattr__(self, "absolute", ensure_utc(self.absolute, what="absolute"))
        if self.relative_ms is not None:
            r = self.relative_ms
            if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= _INT64_MAX:
                raise ValueError("relative_ms must be an int in 0..2**63-1")

    @classmethod
    def at(cls, dt: datetime) -> AbsRelTimestamp:
        return cls(absolute=dt)

    @classmethod
    def after_ms(cls, ms: int) -> AbsRelTimestamp:
        return cls(relative_ms=ms)

    @property
    def is_relative(self) -> bool:
        return self.relative_ms is not None

    def resolve(self, now: datetime | Clock) -> datetime:
        """Absolute UTC time; a relative value is taken from ``now`` (a datetime or a clock)."""
        if self.absolute is not None:
            return self.absolute
        ref = now() if callable(now) else now
        assert self.relative_ms is not None
        return ensure_utc(ref, what="now") + timedelta(milliseconds=self.relative_ms)

    def to_json(self) -> Union[str, int]:
        if self.absolute is not None:
            return format_timestamp(self.absolute)
        assert self.relative_ms is not None
        return self.relative_ms

    @classmethod
    def from_json(cls, value: object, *, path: str = "", allow_offset: bool = False) -> AbsRelTimestamp:
        if isinstance(value, bool):
            raise _fail(path, "expected an m2m:absRelTimestamp, got bool")
        if isinstance(value, int):
            if not 0 <= value <= _INT64_MAX:
                raise _fail(path, f"relative m2m:absRelTimestamp out of range 0..2**63-1: {value}")
            return cls(relative_ms=value)
        if isinstance(value, str):
            if _REL_RE.fullmatch(value):
                n = int(value)
                if n > _INT64_MAX:
                    raise _fail(path, f"relative m2m:absRelTimestamp out of range: {value!r}")
                return cls(relative_ms=n)
            return cls(absolute=parse_timestamp(value, path=path, allow_offset=allow_offset))
        raise _fail(path, f"expected an m2m:absRelTimestamp (string or integer), got {type(value).__name__}")

    def __str__(self) -> str:
        return str(self.to_json())
