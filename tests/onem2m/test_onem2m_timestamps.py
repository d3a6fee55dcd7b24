"""m2m:timestamp / m2m:absRelTimestamp (TS-0004 clause 6.3.3)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from m2msec.errors import ParseError
from m2msec.onem2m import AbsRelTimestamp, format_timestamp, parse_timestamp

UTC = timezone.utc


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20141003T112032", datetime(2014, 10, 3, 11, 20, 32, tzinfo=UTC)),  # Table 6.3.3-1 example
        ("20141003T112032,5", datetime(2014, 10, 3, 11, 20, 32, 500000, tzinfo=UTC)),
        ("20141003T112032,000001", datetime(2014, 10, 3, 11, 20, 32, 1, tzinfo=UTC)),
        ("20240229T235959,123456", datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=UTC)),
    ],
)
def test_parse_basic_format(text: str, expected: datetime) -> None:
    got = parse_timestamp(text)
    assert got == expected
    assert got.tzinfo is UTC


def test_format_is_utc_basic_with_trimmed_fraction() -> None:
    assert format_timestamp(datetime(2014, 10, 3, 11, 20, 32, tzinfo=UTC)) == "20141003T112032"
    assert format_timestamp(datetime(2014, 10, 3, 11, 20, 32, 500000, tzinfo=UTC)) == "20141003T112032,5"
    assert format_timestamp(datetime(2014, 10, 3, 11, 20, 32, 120, tzinfo=UTC)) == "20141003T112032,00012"
    cet = timezone(timedelta(hours=1))
    assert format_timestamp(datetime(2014, 10, 3, 12, 20, 32, tzinfo=cet)) == "20141003T112032"
    with pytest.raises(ValueError):
        format_timestamp(datetime(2014, 10, 3, 12, 20, 32))  # naive


@pytest.mark.parametrize(
    "bad",
    [
        "2014-10-03T11:20:32",  # extended format
        "20141003112032",  # no T
        "20141003T1120",  # reduced representation
        "20141003t112032",
        "20141003T112032.5",  # '.' instead of ','
        "20141003T112032,",  # empty fraction
        "20141003T112032,1234567",  # > 6 fraction digits
        "20141303T112032",  # month 13
        "20140230T112032",  # 30 February
        "20141003T246032",
        "20141003T112060",  # leap second not representable
        " 20141003T112032",
        "20141003T112032Z",  # zone designator (strict mode)
        "20141003T112032+0100",
        "２０141003T112032",  # non-ASCII digits
        "",
    ],
)
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(ParseError):
        parse_timestamp(bad, path="ot")


@pytest.mark.parametrize("bad", [20141003, None, b"20141003T112032", True])
def test_parse_rejects_non_strings(bad: object) -> None:
    with pytest.raises(ParseError, match="ot: expected an m2m:timestamp string"):
        parse_timestamp(bad, path="ot")


def test_offsets_only_in_lenient_mode() -> None:
    assert parse_timestamp("20141003T112032Z", allow_offset=True) == datetime(2014, 10, 3, 11, 20, 32, tzinfo=UTC)
    assert parse_timestamp("20141003T122032+0100", allow_offset=True) == datetime(2014, 10, 3, 11, 20, 32, tzinfo=UTC)
    assert parse_timestamp("20141003T092032-02", allow_offset=True) == datetime(2014, 10, 3, 11, 20, 32, tzinfo=UTC)
    with pytest.raises(ParseError, match="offset"):
        parse_timestamp("20141003T092032+2400", allow_offset=True)
    with pytest.raises(ParseError, match="must not carry time-zone"):
        parse_timestamp("20141003T112032Z")


def test_abs_rel_timestamp() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    rel = AbsRelTimestamp.from_json(3600000)  # Table 6.3.3-1 example
    assert rel.is_relative and rel.relative_ms == 3600000
    assert rel.resolve(now) == now + timedelta(hours=1)
    assert rel.resolve(lambda: now) == now + timedelta(hours=1)
    assert rel.to_json() == 3600000
    assert AbsRelTimestamp.from_json("3600000") == rel  # digit string accepted, emitted as integer
    ab = AbsRelTimestamp.from_json("20141003T112032")
    assert not ab.is_relative and ab.resolve(now) == datetime(2014, 10, 3, 11, 20, 32, tzinfo=UTC)
    assert ab.to_json() == "20141003T112032"
    with pytest.raises(ValueError):
        rel.resolve(datetime(2026, 1, 1))  # naive "now"


@pytest.mark.parametrize("bad", [-1, "-1", True, 1.5, None, [], 2**63, "x123", "20141003T1120"])
def test_abs_rel_timestamp_rejects(bad: object) -> None:
    with pytest.raises(ParseError, match="^\\[4000 BAD_REQUEST\\] rqet"):
        AbsRelTimestamp.from_json(bad, path="rqet")


def test_abs_rel_timestamp_constructor_checks() -> None:
    with pytest.raises(ValueError):
        AbsRelTimestamp()
    with pytest.raises(ValueError):
        AbsRelTimestamp(absolute=datetime(2020, 1, 1, tzinfo=UTC), relative_ms=1)
    with pytest.raises(ValueError):
        AbsRelTimestamp(relative_ms=True)
