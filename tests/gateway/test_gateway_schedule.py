"""``m2m:scheduleEntry`` parsing and matching (TS-0004 7.4.9.1 table 7.4.9.1-4): known vectors,
the spec's own examples, and refusals of malformed entries (which never match)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from m2msec.errors import ParseError
from m2msec.gateway.schedule import ScheduleEntryError, parse_schedule_entry, schedule_matches
from m2msec.onem2m.rsc import ResponseStatusCode


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


@pytest.mark.parametrize(("when", "expected"), [
    ("2024-03-01T02:00:00", True),
    ("2024-03-01T02:05:59", True),
    ("2024-03-01T02:06:00", False),
    ("2024-03-01T06:03:17", True),
    ("2024-03-01T10:05:00", True),
    ("2024-03-01T03:00:00", False),
    ("2024-03-01T01:59:59", False),
])
def test_spec_example_1_windows_2_6_10_oclock(when: str, expected: bool) -> None:
    """TS-0004 7.4.9.1 EXAMPLE 1: 2:00-2:05, 6:00-6:05 and 10:00-10:05 every day."""
    assert schedule_matches("* 0-5 2,6,10 * * * *", t(when)) is expected


@pytest.mark.parametrize(("when", "expected"), [
    ("2024-03-01T08:00:00", True), ("2024-03-01T20:59:59", True),
    ("2024-03-01T21:00:00", False), ("2024-03-01T07:59:59", False),
])
def test_spec_example_2_eight_to_twenty(when: str, expected: bool) -> None:
    assert schedule_matches("* * 8-20 * * * *", t(when)) is expected


def test_range_with_step_equals_the_list_the_spec_gives() -> None:
    """"0-23/2" in the Hour field is equivalent to "0,2,4,...,22" (TS-0004 7.4.9.1)."""
    a = parse_schedule_entry("* * 0-23/2 * * * *")
    b = parse_schedule_entry("* * 0,2,4,6,8,10,12,14,16,18,20,22 * * * *")
    for h in range(24):
        when = t(f"2024-03-01T{h:02d}:30:00")
        assert a.matches(when) is b.matches(when) is (h % 2 == 0)


def test_star_with_step_counts_from_the_field_minimum() -> None:
    assert [s for s in range(60) if schedule_matches("*/15 * * * * * *", t(f"2024-03-01T00:00:{s:02d}"))] == [0, 15, 30, 45]
    # day of month starts at 1: */2 = 1, 3, 5 ... (crontab(5); ACME would take 2, 4, 6 ...)
    assert [d for d in range(1, 8) if schedule_matches("* * * */2 * * *", t(f"2024-03-{d:02d}T00:00:00"))] == [1, 3, 5, 7]
    # year from 2000: */3 = 2000, 2003, ... 2024
    assert schedule_matches("* * * * * * */3", t("2024-01-01T00:00:00"))
    assert not schedule_matches("* * * * * * */3", t("2025-01-01T00:00:00"))
    # a step larger than the range: only its start
    assert schedule_matches("* 5-9/10 * * * * *", t("2024-03-01T00:05:00"))
    assert not schedule_matches("* 5-9/10 * * * * *", t("2024-03-01T00:06:00"))


def test_day_of_week_zero_is_sunday() -> None:
    sunday, monday = t("2024-03-03T12:00:00"), t("2024-03-04T12:00:00")
    assert schedule_matches("* * * * * 0 *", sunday) and not schedule_matches("* * * * * 0 *", monday)
    assert schedule_matches("* * * * * 1 *", monday)
    assert schedule_matches("* * * * * 1-5 *", monday) and not schedule_matches("* * * * * 1-5 *", sunday)
    saturday = sunday - timedelta(days=1)
    assert schedule_matches("* * * * * 6 *", saturday)


def test_day_of_month_and_day_of_week_must_both_match() -> None:
    """All seven fields AND (crontab(5) would OR a restricted day of month and day of week)."""
    assert schedule_matches("* * * 1 * 1 *", t("2024-04-01T00:00:00"))  # the 1st and a Monday
    assert not schedule_matches("* * * 1 * 1 *", t("2024-05-01T00:00:00"))  # the 1st, a Wednesday
    assert not schedule_matches("* * * 1 * 1 *", t("2024-03-04T00:00:00"))  # a Monday, the 4th


def test_month_year_and_leap_day() -> None:
    assert schedule_matches("* * * 29 2 * 2024", t("2024-02-29T23:59:59"))
    assert not schedule_matches("* * * 29 2 * 2025", t("2024-02-29T23:59:59"))
    assert schedule_matches("* * * * * * 2000-2099/4", t("2024-06-01T00:00:00"))
    assert not schedule_matches("* * * * * * 2000-2099/4", t("2025-06-01T00:00:00"))
    assert schedule_matches("* * * * 1,6-8,12 * *", t("2024-07-01T00:00:00"))
    assert not schedule_matches("* * * * 1,6-8,12 * *", t("2024-09-01T00:00:00"))


def test_exact_second() -> None:
    e = "30 15 9 14 3 * 2025"
    assert schedule_matches(e, t("2025-03-14T09:15:30"))
    assert schedule_matches(e, t("2025-03-14T09:15:30.999999"))  # whole seconds
    assert not schedule_matches(e, t("2025-03-14T09:15:31"))
    assert not schedule_matches(e, t("2025-03-14T09:15:29"))
    assert schedule_matches("05 07 09 01 01 * 2030", t("2030-01-01T09:07:05"))  # leading zeros


def test_time_is_taken_in_utc() -> None:
    plus2 = datetime(2024, 3, 1, 10, 0, 0, tzinfo=timezone(timedelta(hours=2)))  # 08:00 UTC
    assert schedule_matches("* * 8 * * * *", plus2)
    assert not schedule_matches("* * 10 * * * *", plus2)
    with pytest.raises(ValueError, match="aware"):
        schedule_matches("* * * * * * *", datetime(2024, 3, 1, 8))


def test_spaces_and_tabs_separate_fields() -> None:
    assert schedule_matches("  *\t*   8  * * * *\t", t("2024-03-01T08:00:00"))


@pytest.mark.parametrize("entry", [
    "", " ", "* * * * * *", "* * * * * * * *",
    "60 * * * * * *", "* 60 * * * * *", "* * 24 * * * *", "* * * 0 * * *", "* * * 32 * * *",
    "* * * * 0 * *", "* * * * 13 * *", "* * * * * 7 *", "* * * * * * 1999", "* * * * * * 10000",
    "* * 5-1 * * * *", "*/0 * * * * * *", "* * 0-23/0 * * * *", "5/10 * * * * * *",
    "1,,2 * * * * * *", ",1 * * * * * *", "1, * * * * * *", "a * * * * * *", "* * * * * MON *",
    "* * * * JAN * *", "+5 * * * * * *", "-1 * * * * * *", "1- * * * * * *", "1-2-3 * * * * * *",
    "** * * * * * *", "*/ * * * * * *", "1-2/ * * * * * *", "? * * * * * *", "* * * L * * *",
    "* * * * * 5#2 *", "\u0663 * * * * * *", "* * * * * * *\n", "*\n* * * * * *", "00005 * * * * * *",
    "* * * * * * " + "1" * 600, "1 - 2 * * * * *",
])
def test_malformed_entries_are_refused_and_never_match(entry: str) -> None:
    with pytest.raises(ScheduleEntryError) as ei:
        parse_schedule_entry(entry)
    assert isinstance(ei.value, ParseError) and ei.value.rsc == ResponseStatusCode.BAD_REQUEST
    assert schedule_matches(entry, t("2024-03-01T08:00:00")) is False


@pytest.mark.parametrize("entry", [None, 5, ["* * * * * * *"], b"* * * * * * *"])
def test_non_strings_never_match(entry: object) -> None:
    assert schedule_matches(entry, t("2024-03-01T08:00:00")) is False
    with pytest.raises(ScheduleEntryError):
        parse_schedule_entry(entry)  # type: ignore[arg-type]


def test_always_open_window() -> None:
    assert all(schedule_matches("* * * * * * *", t(w)) for w in
               ("2000-01-01T00:00:00", "2024-02-29T12:34:56", "9999-12-31T23:59:59"))
    assert not schedule_matches("* * * * * * *", t("1999-12-31T23:59:59"))  # years start at 2000
