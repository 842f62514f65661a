"""Cron expressions and zones: fire times across DST, month ends, leap days, bad input.

Every instant is explicit (no wall clock). Helpers read and show local wall-clock times with
their offsets, so a fall-back's two passes are told apart ("-04:00" then "-05:00").
"""

from __future__ import annotations

import calendar
import dataclasses
from datetime import UTC, date, datetime, timedelta, timezone
from importlib import resources
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zizq.queue import cron_expr
from zizq.queue.cron_expr import CronError, local_zone, parse_expression, zone_named
from zizq.queue.errors import InvalidInput

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")


def at(text: str, zone=UTC, fold: int = 0) -> int:
    """Epoch ms of local wall-clock `text` in `zone` (fold=1: the second of a repeated time)."""
    return int(datetime.fromisoformat(text).replace(tzinfo=zone, fold=fold).timestamp() * 1000)


def shown(ms: int | None, zone=UTC) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, zone).isoformat()


def fires(expression: str, start: str, zone=UTC, count: int = 4, fold: int = 0) -> list:
    """The next `count` fire times after local `start`, each found from the one before."""
    schedule, now, found = parse_expression(expression), at(start, zone, fold), []
    for _ in range(count):
        now = schedule.next_after(now, zone)
        found.append(shown(now, zone))
    return found


# DST: a fixed time skipped by a spring-forward fires once, at the end of the gap; one
# repeated by a fall-back fires once, at its first pass. Intervals keep real-time spacing.


def test_spring_forward_fixed_time_fires_once_at_the_end_of_the_gap():
    # London skips 01:00-02:00 on 2025-03-30; New York skips 02:00-03:00 on 2025-03-09.
    assert fires("30 1 * * *", "2025-03-29T12:00", LONDON, 3) == [
        "2025-03-30T02:00:00+01:00",
        "2025-03-31T01:30:00+01:00",
        "2025-04-01T01:30:00+01:00",
    ]
    assert fires("30 2 * * *", "2025-03-08T12:00", NEW_YORK, 2) == [
        "2025-03-09T03:00:00-04:00",
        "2025-03-10T02:30:00-04:00",
    ]
    # Seconds count as a fixed time too (croner's rule), and the gap end is exact.
    assert fires("15 30 2 * * *", "2025-03-09T01:59:00", NEW_YORK, 2) == [
        "2025-03-09T03:00:00-04:00",
        "2025-03-10T02:30:15-04:00",
    ]


def test_spring_forward_gap_of_half_an_hour():
    # Lord Howe Island moves from 02:00 to 02:30 on 2025-10-05.
    lord_howe = ZoneInfo("Australia/Lord_Howe")
    assert fires("15 2 * * *", "2025-10-04T12:00", lord_howe, 2) == [
        "2025-10-05T02:30:00+11:00",
        "2025-10-06T02:15:00+11:00",
    ]


def test_fall_back_fixed_time_fires_once_at_the_first_pass():
    # London repeats 01:00-02:00 on 2025-10-26; New York on 2025-11-02.
    assert fires("30 1 * * *", "2025-10-25T12:00", LONDON, 3) == [
        "2025-10-26T01:30:00+01:00",
        "2025-10-27T01:30:00+00:00",
        "2025-10-28T01:30:00+00:00",
    ]
    assert fires("30 1 * * *", "2025-11-01T12:00", NEW_YORK, 2) == [
        "2025-11-02T01:30:00-04:00",
        "2025-11-03T01:30:00-05:00",
    ]
    # From inside the second pass, before its wall time comes round again: not again.
    assert fires("30 1 * * *", "2025-11-02T01:10", NEW_YORK, 1, fold=1) == [
        "2025-11-03T01:30:00-05:00"
    ]


def test_intervals_fire_at_every_real_half_hour_across_a_fall_back():
    found = fires("*/30 * * * *", "2025-11-02T00:45", NEW_YORK, 6)
    assert found == [
        "2025-11-02T01:00:00-04:00",
        "2025-11-02T01:30:00-04:00",
        "2025-11-02T01:00:00-05:00",
        "2025-11-02T01:30:00-05:00",
        "2025-11-02T02:00:00-05:00",
        "2025-11-02T02:30:00-05:00",
    ]
    instants = [datetime.fromisoformat(text).timestamp() for text in found]
    assert {b - a for a, b in zip(instants, instants[1:], strict=False)} == {1800}
    assert fires("*/30 * * * *", "2025-10-26T00:45", LONDON, 3) == [
        "2025-10-26T01:00:00+01:00",
        "2025-10-26T01:30:00+01:00",
        "2025-10-26T01:00:00+00:00",
    ]


def test_intervals_skip_the_missing_hour_of_a_spring_forward():
    assert fires("*/30 * * * *", "2025-03-30T00:15", LONDON, 3) == [
        "2025-03-30T00:30:00+00:00",
        "2025-03-30T02:00:00+01:00",
        "2025-03-30T02:30:00+01:00",
    ]


def test_several_hours_are_an_interval_as_in_croner():
    # "0 0-6" is not one fixed time: its 02:00 does not exist on a spring-forward and its
    # 01:00 happens twice on a fall-back.
    assert fires("0 0-6 * * *", "2025-03-09T00:30", NEW_YORK, 3) == [
        "2025-03-09T01:00:00-05:00",
        "2025-03-09T03:00:00-04:00",
        "2025-03-09T04:00:00-04:00",
    ]
    assert fires("0 0-6 * * *", "2025-11-02T00:30", NEW_YORK, 3) == [
        "2025-11-02T01:00:00-04:00",
        "2025-11-02T01:00:00-05:00",
        "2025-11-02T02:00:00-05:00",
    ]
    assert not parse_expression("0 0-6 * * *").fixed_time
    assert parse_expression("30 2 * * *").fixed_time


def test_several_times_an_hour_around_a_gap_and_a_fall_back():
    # 02:40 comes after Lord Howe's 02:00-02:30 gap; 02:20 does not exist that day.
    lord_howe = ZoneInfo("Australia/Lord_Howe")
    assert fires("0 20,40 2 * * *", "2025-10-05T01:50", lord_howe, 2) == [
        "2025-10-05T02:40:00+11:00",
        "2025-10-06T02:20:00+11:00",
    ]
    # From the first pass, the second pass comes before the next day.
    assert fires("0 0,30 1 * * *", "2025-11-02T01:45", NEW_YORK, 3) == [
        "2025-11-02T01:00:00-05:00",
        "2025-11-02T01:30:00-05:00",
        "2025-11-03T01:00:00-05:00",
    ]


def test_half_hour_dst_changes_miss_no_minute():
    # Lord Howe moves by 30 minutes: 02:00 -> 02:30 on 2025-10-05, 02:00 -> 01:30 on
    # 2026-04-05. Stepping hour by hour in real time would land on :30 and miss 08:27.
    lord_howe = ZoneInfo("Australia/Lord_Howe")
    assert fires("27-51 8 * * *", "2025-10-05T01:00", lord_howe, 2) == [
        "2025-10-05T08:27:00+11:00",
        "2025-10-05T08:28:00+11:00",
    ]
    assert fires("*/20 * * * *", "2026-04-05T01:25", lord_howe, 5) == [
        "2026-04-05T01:40:00+11:00",
        "2026-04-05T01:40:00+10:30",
        "2026-04-05T02:00:00+10:30",
        "2026-04-05T02:20:00+10:30",
        "2026-04-05T02:40:00+10:30",
    ]


def test_a_midnight_lost_to_a_gap():
    # Santiago skips 00:00-01:00 on Sunday 2025-09-07.
    santiago = ZoneInfo("America/Santiago")
    assert fires("0 0,12 * * *", "2025-09-06T13:00", santiago, 1) == ["2025-09-07T12:00:00-03:00"]
    assert fires("0 0 * * *", "2025-09-06T13:00", santiago, 1) == ["2025-09-07T01:00:00-03:00"]
    assert fires("0 * * * SUN", "2025-09-06T13:00", santiago, 2) == [
        "2025-09-07T01:00:00-03:00",
        "2025-09-07T02:00:00-03:00",
    ]


def test_a_day_skipped_whole_fires_nothing():
    # Samoa skipped 2011-12-30 when it crossed the date line.
    apia = ZoneInfo("Pacific/Apia")
    assert fires("0 12 * * *", "2011-12-29T13:00", apia, 1) == ["2011-12-31T12:00:00+14:00"]
    assert fires("0 * * * *", "2011-12-29T23:30", apia, 1) == ["2011-12-31T00:00:00+14:00"]


# Calendars.


def test_day_31_skips_the_shorter_months():
    assert fires("0 0 31 * *", "2025-01-31T00:00", count=5) == [
        "2025-03-31T00:00:00+00:00",
        "2025-05-31T00:00:00+00:00",
        "2025-07-31T00:00:00+00:00",
        "2025-08-31T00:00:00+00:00",
        "2025-10-31T00:00:00+00:00",
    ]


def test_last_day_of_the_month():
    assert fires("0 0 L * *", "2027-12-31T00:00", count=4) == [
        "2028-01-31T00:00:00+00:00",
        "2028-02-29T00:00:00+00:00",
        "2028-03-31T00:00:00+00:00",
        "2028-04-30T00:00:00+00:00",
    ]
    assert fires("0 0 * * 5L", "2025-01-01T00:00", count=2) == [  # last Friday
        "2025-01-31T00:00:00+00:00",
        "2025-02-28T00:00:00+00:00",
    ]


def test_leap_day_next_after_2025_is_2028():
    assert fires("0 0 29 2 *", "2025-01-01T00:00", count=2) == [
        "2028-02-29T00:00:00+00:00",
        "2032-02-29T00:00:00+00:00",
    ]
    # 2100 is not a leap year.
    assert fires("0 0 29 2 *", "2096-03-01T00:00", count=1) == ["2104-02-29T00:00:00+00:00"]


@pytest.mark.parametrize("weekday", range(7))
def test_a_fifth_weekday_in_february_is_found_within_the_horizon(weekday):
    # The rarest expressions that can fire: a leap February starting on that weekday, up to
    # 40 years apart. The parse-time check and next_after must both find it.
    schedule = parse_expression(f"0 0 * 2 {weekday}#5")
    for year in (2025, 2090):
        expected = next(
            y
            for y in range(year + 1, year + 60)
            if calendar.isleap(y) and (date(y, 2, 1).isoweekday() % 7) == weekday
        )
        assert shown(schedule.next_after(at(f"{year}-03-01T00:00"), UTC)) == (
            f"{expected}-02-29T00:00:00+00:00"
        )


def test_six_fields_put_seconds_first():
    assert fires("*/5 * * * * *", "2025-06-01T12:00:03", count=3) == [
        "2025-06-01T12:00:05+00:00",
        "2025-06-01T12:00:10+00:00",
        "2025-06-01T12:00:15+00:00",
    ]
    assert fires("30 0 12 * * *", "2025-06-01T00:00", count=1) == ["2025-06-01T12:00:30+00:00"]


def test_the_same_expression_in_two_zones():
    schedule = parse_expression("0 6 * * *")
    now = at("2025-07-01T00:00")
    rome, tokyo = ZoneInfo("Europe/Rome"), ZoneInfo("Asia/Tokyo")
    assert shown(schedule.next_after(now, rome), UTC) == "2025-07-01T04:00:00+00:00"
    assert shown(schedule.next_after(now, tokyo), UTC) == "2025-07-01T21:00:00+00:00"
    # A fixed-offset timezone works as well (the fast path), and so does Etc/UTC.
    plus_two = timezone(timedelta(hours=2))
    assert shown(schedule.next_after(now, plus_two), UTC) == "2025-07-01T04:00:00+00:00"
    assert schedule.next_after(now, ZoneInfo("Etc/UTC")) == at("2025-07-01T06:00")


def test_day_fields_combine_as_in_croner():
    # Both restricted: either matches (13th or a Friday).
    assert fires("0 0 13 * FRI", "2025-06-01T00:00", count=3) == [
        "2025-06-06T00:00:00+00:00",
        "2025-06-13T00:00:00+00:00",
        "2025-06-20T00:00:00+00:00",
    ]
    # "*/2" is not "*": still either (croner), where vixie cron would need both.
    assert fires("0 0 */2 * MON", "2025-06-01T00:00", count=3) == [
        "2025-06-02T00:00:00+00:00",  # a Monday, an even day
        "2025-06-03T00:00:00+00:00",
        "2025-06-05T00:00:00+00:00",
    ]
    # "?" is "*": only Mondays. Names in any case; FRI-SUN ends on Sunday.
    assert fires("0 0 ? * mon", "2025-06-01T00:00", count=2) == [
        "2025-06-02T00:00:00+00:00",
        "2025-06-09T00:00:00+00:00",
    ]
    assert fires("0 0 * * FRI-SUN", "2025-06-01T00:00", count=3) == [
        "2025-06-06T00:00:00+00:00",
        "2025-06-07T00:00:00+00:00",
        "2025-06-08T00:00:00+00:00",
    ]
    assert fires("0 0 1 jan-mar,dec *", "2025-04-01T00:00", count=2) == [
        "2025-12-01T00:00:00+00:00",
        "2026-01-01T00:00:00+00:00",
    ]


@pytest.mark.parametrize(
    ("macro", "same_as"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("  @DAILY ", "0 0 * * *"),
        ("@Hourly", "0 * * * *"),
    ],
)
def test_macros(macro, same_as):
    schedule, expanded = parse_expression(macro), parse_expression(same_as)
    assert schedule.text == macro
    for start in ("2025-06-04T10:20:30", "2025-12-31T23:59:59"):
        assert schedule.next_after(at(start), LONDON) == expanded.next_after(at(start), LONDON)


def test_weekly_is_sunday_midnight():
    assert fires("@weekly", "2025-06-04T10:00", count=1) == ["2025-06-08T00:00:00+00:00"]


def test_strictly_after_the_second():
    schedule = parse_expression("0 * * * *")
    assert shown(schedule.next_after(at("2025-06-01T10:00:00"), UTC)) == (
        "2025-06-01T11:00:00+00:00"
    )
    # Any millisecond of the fire second is that second.
    assert shown(schedule.next_after(at("2025-06-01T10:00:00") + 999, UTC)) == (
        "2025-06-01T11:00:00+00:00"
    )
    assert shown(schedule.next_after(at("2025-06-01T10:00:00") - 1, UTC)) == (
        "2025-06-01T10:00:00+00:00"
    )
    every_second = parse_expression("* * * * * *")
    assert every_second.next_after(at("2025-06-01T10:00:00") + 500, NEW_YORK) == (
        at("2025-06-01T10:00:01")
    )


def test_beyond_the_horizon_is_none():
    # Near datetime's end the search runs out of years: None, not an exception.
    assert parse_expression("0 0 29 2 *").next_after(at("9998-03-01T00:00"), LONDON) is None
    assert parse_expression("* * * * *").next_after(at("9999-12-31T23:59:30"), UTC) is None


# Invalid input: each class, with the field named.


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (5, "expression: must be a string"),
        (None, "expression: must be a string"),
        (["* * * * *"], "expression: must be a string"),
        ("", "expression: must not be empty"),
        ("  \t ", "expression: must not be empty"),
        ("0 " * 128 + "0", "expression: 256 characters allowed at most, got 257"),
        ("0 0 * * *\x00", "expression: only printable ASCII characters are allowed"),
        ("0 0 * * lun\u00e9", "expression: only printable ASCII characters are allowed"),
        ("* * * *", "expression: 5 fields expected at least, got 4"),
        ("* * * * * * *", "expression: 6 fields expected at most, got 7"),
        ("60 * * * * *", "expression: second value 60 out of range 0-59"),
        ("61 * * * *", "expression: minute value 61 out of range 0-59"),
        ("0 0-24 * * *", "expression: hour value 24 out of range 0-23"),
        ("0 0 0 * *", "expression: day-of-month value 0 out of range 1-31"),
        ("0 0 * 13 *", "expression: month value 13 out of range 1-12"),
        ("0 0 * * 1,8", "expression: day-of-week value 8 out of range 0-7"),
        ("*/0 * * * *", "expression: invalid minute field '*/0'"),
        ("5-1 * * * *", "expression: invalid minute field '5-1'"),
        ("a * * * *", "expression: invalid minute field 'a'"),
        ("0 0 * * 1#6", "expression: invalid day-of-week field '1#6'"),
        ("0 0 * * *,", "expression: invalid day-of-week field '*,'"),
        ("@reboot", "expression: unknown macro '@reboot'"),
        ("@every 5m", "expression: unknown macro '@every 5m'"),
        ("0 0 15W * *", "expression: nearest weekday ('W') is not supported: '15W'"),
        ("0 0 1 * +MON", "expression: the '+' (day-of-month AND day-of-week) modifier"),
        ("0 0 30 2 *", "expression: can never fire: day-of-month '30' does not occur"),
        ("0 0 31 4,6,9,11 *", "expression: can never fire"),
        ("0 0 30,31 FEB ?", "expression: can never fire"),
    ],
)
def test_invalid_expressions(text, message):
    with pytest.raises(CronError) as raised:
        parse_expression(text)
    assert str(raised.value).startswith(message)
    assert isinstance(raised.value, InvalidInput)


def test_the_field_name_is_the_callers():
    with pytest.raises(CronError, match=r"^entries\[2\]\.expression: 5 fields expected"):
        parse_expression("* *", "entries[2].expression")
    with pytest.raises(CronError, match=r"^entries\[2\]\.timezone: unknown time zone"):
        zone_named("Mars/Base", "entries[2].timezone")


def test_schedules_are_cached_immutable_and_hashable():
    first = parse_expression("*/7 * * * *")
    assert parse_expression("*/7 * * * *") is first
    assert first == cron_expr._compile.__wrapped__("*/7 * * * *")
    assert len({first, parse_expression("*/7 * * * *"), parse_expression("@daily")}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.text = "* * * * *"  # type: ignore[misc]
    # Each search clones a parsed cronsim instead of parsing: noticed if cronsim changes.
    assert cron_expr._FAST_COPY


# Zones.


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (5, "timezone: must be a string"),
        (None, "timezone: must be a string"),
        ("", "timezone: must not be empty"),
        ("A" * 65, "timezone: 64 characters allowed at most, got 65"),
        ("../../etc/passwd", "timezone: not a time zone name"),
        ("/usr/share/zoneinfo/UTC", "timezone: not a time zone name"),
        ("Europe/../Europe/London", "timezone: not a time zone name"),
        ("Europe//London", "timezone: not a time zone name"),
        ("Europe/London\x00", "timezone: not a time zone name"),
        ("zone.tab", "timezone: not a time zone name"),
        ("Mars/Base", "timezone: unknown time zone 'Mars/Base'"),
        ("America", "timezone: unknown time zone 'America'"),  # a directory
        ("leapseconds", "timezone: unknown time zone"),  # a file, not a zone
    ],
)
def test_zone_named_rejects(name, message):
    with pytest.raises(CronError) as raised:
        zone_named(name)
    assert str(raised.value).startswith(message)


def test_zone_named_accepts_and_caches():
    assert zone_named("Europe/London") is zone_named("Europe/London")
    assert zone_named("Etc/GMT+5").utcoffset(datetime(2025, 1, 1)) == timedelta(hours=-5)
    assert zone_named("America/Argentina/Buenos_Aires").key == "America/Argentina/Buenos_Aires"


@pytest.fixture
def fresh_local_zone():
    local_zone.cache_clear()
    yield
    local_zone.cache_clear()


def test_local_zone_honours_tz(monkeypatch, fresh_local_zone):
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    assert local_zone() is ZoneInfo("Asia/Tokyo")
    # Computed once: a later change needs a restart (here, a cache clear).
    monkeypatch.setenv("TZ", "Europe/Paris")
    assert local_zone() is ZoneInfo("Asia/Tokyo")
    local_zone.cache_clear()
    monkeypatch.setenv("TZ", ":Europe/Paris")
    assert local_zone() is ZoneInfo("Europe/Paris")


def _zone_bytes(name: str) -> bytes:
    area, city = name.split("/")
    return resources.files("tzdata.zoneinfo").joinpath(area, city).read_bytes()


def test_local_zone_from_tz_and_etc_localtime(tmp_path):
    # /etc/localtime linking into a zoneinfo tree gives the zone by name.
    tree = tmp_path / "usr" / "zoneinfo" / "America"
    tree.mkdir(parents=True)
    (tree / "New_York").write_bytes(_zone_bytes("America/New_York"))
    link = tmp_path / "localtime"
    link.symlink_to(tree / "New_York")
    assert cron_expr.local_zone_from(None, link) is NEW_YORK
    # TZ that names no zone (a POSIX rule) falls back to /etc/localtime.
    assert cron_expr.local_zone_from("UTC0", link) is NEW_YORK
    assert cron_expr.local_zone_from("Asia/Tokyo", link) is ZoneInfo("Asia/Tokyo")
    # A plain file is read as it is, and keeps its DST rules.
    copy = tmp_path / "copied"
    copy.write_bytes(_zone_bytes("Europe/London"))
    zone = cron_expr.local_zone_from(None, copy)
    assert zone.utcoffset(datetime(2025, 7, 1)) == timedelta(hours=1)
    assert zone.utcoffset(datetime(2025, 1, 1)) == timedelta(0)
    assert cron_expr.local_zone_from(f":{copy}", tmp_path / "missing") is not None
    # Nothing usable: UTC.
    assert cron_expr.local_zone_from(None, tmp_path / "missing") is UTC
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a zone file")
    assert cron_expr.local_zone_from("Not/AZone", garbage) is UTC


# Properties, over simple expressions, instants near DST changes and several zones.

ZONES = [UTC, LONDON, NEW_YORK, ZoneInfo("Australia/Lord_Howe"), ZoneInfo("America/Santiago")]


def _transitions(zone, year: int) -> list[int]:
    """The epoch seconds at which `zone` changes offset in `year`."""
    found, second = [], int(datetime(year, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(year + 1, 1, 1, tzinfo=UTC).timestamp())
    offset = datetime.fromtimestamp(second, zone).utcoffset()
    while second < end:
        step = second + 86400
        if datetime.fromtimestamp(step, zone).utcoffset() != offset:
            low, high = second, step
            while high - low > 1:
                middle = (low + high) // 2
                if datetime.fromtimestamp(middle, zone).utcoffset() == offset:
                    low = middle
                else:
                    high = middle
            found.append(high)
            offset = datetime.fromtimestamp(high, zone).utcoffset()
        second = step
    return found


ZONE_CHANGES = [(zone, t) for zone in ZONES[1:] for t in _transitions(zone, 2025)]
NEAR_CHANGES = sorted({t for _, t in ZONE_CHANGES})


def _field(low: int, high: int):
    number = st.integers(low, high)
    return st.one_of(
        st.just("*"),
        number.map(str),
        st.integers(1, high - low + 1).map(lambda step: f"*/{step}"),
        st.tuples(number, number).map(lambda p: f"{min(p)}-{max(p)}"),
        st.lists(number, min_size=1, max_size=3).map(lambda xs: ",".join(map(str, xs))),
    )


expressions = st.one_of(
    st.tuples(_field(0, 59), _field(0, 23), _field(1, 28), _field(1, 12), _field(0, 6)),
    st.tuples(
        _field(0, 59), _field(0, 59), _field(0, 23), st.just("*"), st.just("*"), _field(0, 6)
    ),
).map(" ".join)
instants = st.one_of(
    st.integers(at("2000-01-01T00:00"), at("2040-01-01T00:00")),
    st.tuples(st.sampled_from(NEAR_CHANGES), st.integers(-2 * 86400_000, 2 * 86400_000)).map(
        lambda pair: pair[0] * 1000 + pair[1]
    ),
)


@settings(max_examples=250, deadline=None, derandomize=True)
@given(expressions, instants, st.sampled_from(ZONES))
def test_next_after_properties(expression, now, zone):
    schedule = parse_expression(expression)
    found = schedule.next_after(now, zone)
    assert found is not None
    assert found > now and found % 1000 == 0
    # Nothing fires in between: asking from just before gives the same time.
    assert schedule.next_after(found - 1, zone) == found
    # Jumping over a day's dead time changes nothing against plain cronsim stepping.
    assert schedule._next(now // 1000, zone, jump=False) == found


def _values(text: str, low: int, high: int) -> set[int]:
    """The values of a field as `_field` writes them, parsed independently of the module."""
    if text == "*":
        return set(range(low, high + 1))
    if text.startswith("*/"):
        return set(range(low, high + 1, int(text[2:])))
    if "-" in text:
        first, last = map(int, text.split("-"))
        return set(range(first, last + 1))
    return {int(value) for value in text.split(",")}


def _brute_force(fields, fixed: bool, after: int, zone, until: int) -> int | None:
    """The fire time by definition, trying every real minute (or each day) up to `until`.

    Fixed time: each day's time once, the first pass of a repeated time, the end of the gap
    for a skipped one (on the same day). Otherwise: every real minute whose wall time matches.
    """
    minutes, hours, weekdays = fields

    def matches(wall: datetime) -> bool:
        return wall.minute in minutes and wall.hour in hours and wall.weekday() in weekdays

    if not fixed:
        for minute in range(after // 60 + 1, until // 60 + 1):
            if matches(datetime.fromtimestamp(minute * 60, zone)):
                return minute * 60
        return None
    day = datetime.fromtimestamp(after, zone).date() - timedelta(days=1)
    while datetime.combine(day, datetime.min.time(), zone).timestamp() <= until:
        wall = datetime(day.year, day.month, day.day, min(hours), min(minutes))
        if matches(wall):
            instant = int(wall.replace(tzinfo=zone).timestamp())
            if datetime.fromtimestamp(instant, zone).replace(tzinfo=None) != wall:  # a gap
                instant = next(t for t in range(instant - 7200, instant + 1) if _change(t, zone))
                if datetime.fromtimestamp(instant, zone).date() != day:
                    instant = None
            if instant is not None and after < instant <= until:
                return instant
        day += timedelta(days=1)
    return None


def _change(instant: int, zone) -> bool:
    """Whether the offset at `instant` differs from the one a second before."""
    before = datetime.fromtimestamp(instant - 1, zone).utcoffset()
    return datetime.fromtimestamp(instant, zone).utcoffset() != before


WEEKDAYS = [("*", set(range(7))), ("0", {6}), ("1-5", {0, 1, 2, 3, 4})]  # cron -> Python


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    _field(0, 59),
    _field(0, 23),
    st.sampled_from(WEEKDAYS),
    st.sampled_from(ZONE_CHANGES),
    st.integers(-86400, 3600),
)
def test_next_after_agrees_with_brute_force_near_dst_changes(
    minute, hour, weekday, zone_change, shift
):
    (zone, change), (weekday_field, weekdays) = zone_change, weekday
    schedule = parse_expression(f"{minute} {hour} * * {weekday_field}")
    fields = (_values(minute, 0, 59), _values(hour, 0, 23), weekdays)
    after = change + shift
    until = after + 2 * 86400
    found = schedule.next_after(after * 1000, zone)
    expected = _brute_force(fields, schedule.fixed_time, after, zone, until)
    if found is not None and found // 1000 <= until:
        assert found // 1000 == expected
    else:
        assert expected is None
