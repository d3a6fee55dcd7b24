"""SQLite timestamp text: fixed width, the ``_TS_FORMAT`` layout, order-preserving, exact round trip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from m2msec.store._backends import _TS_FORMAT, SQLiteBackend

B = SQLiteBackend(":memory:")
aware = st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30),
                     timezones=st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m))))


@given(aware)
def test_ts_text_is_the_documented_layout_and_round_trips(dt: datetime) -> None:
    text = B.ts_in(dt)
    assert text == dt.astimezone(UTC).strftime(_TS_FORMAT)
    assert len(text) == 27 and text.endswith("Z")
    assert B.ts_out(text) == dt


@given(aware, aware)
def test_ts_text_order_is_time_order(a: datetime, b: datetime) -> None:
    assert (B.ts_in(a) < B.ts_in(b)) == (a < b)


def test_ts_text_none() -> None:
    assert B.ts_in(None) is None and B.ts_out(None) is None
