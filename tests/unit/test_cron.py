"""Cron expressions: the parser's table, named daylight-saving cases, and properties of
fire_times against a brute-force oracle that walks every UTC minute."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runsvc.domain.cron import (
    HORIZON,
    Cron,
    CronError,
    fire_times,
    next_fire,
    parse_cron,
    parse_timezone,
)

MINUTE = timedelta(minutes=1)
ALL_MINUTES = set(range(60))
ALL_HOURS = set(range(24))
ALL_DAYS = set(range(1, 32))
ALL_MONTHS = set(range(1, 13))
ALL_WEEKDAYS = set(range(7))


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def fires(expr: str, zone: str, after: datetime, until: datetime) -> list[datetime]:
    return list(fire_times(parse_cron(expr), parse_timezone(zone), after, until))


# -- parsing -----------------------------------------------------------------------------

GOOD = [
    ("* * * * *", ALL_MINUTES, ALL_HOURS, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
    ("0 3 * * *", {0}, {3}, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
    ("*/15 * * * *", {0, 15, 30, 45}, ALL_HOURS, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
    ("5-20/5 1,2,22-23 * * *", {5, 10, 15, 20}, {1, 2, 22, 23}, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
    ("50/4 * * * *", {50, 54, 58}, ALL_HOURS, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
    ("0 0 1,15 * *", {0}, {0}, {1, 15}, ALL_MONTHS, ALL_WEEKDAYS),
    ("0 0 * JAN,mar-May *", {0}, {0}, ALL_DAYS, {1, 3, 4, 5}, ALL_WEEKDAYS),
    ("0 0 * * MON-FRI", {0}, {0}, ALL_DAYS, ALL_MONTHS, {1, 2, 3, 4, 5}),
    ("0 0 * * sun,Sat", {0}, {0}, ALL_DAYS, ALL_MONTHS, {0, 6}),
    ("0 0 * * 7", {0}, {0}, ALL_DAYS, ALL_MONTHS, {0}),
    ("0 0 * * 5-7", {0}, {0}, ALL_DAYS, ALL_MONTHS, {5, 6, 0}),
    ("0 0 * * */2", {0}, {0}, ALL_DAYS, ALL_MONTHS, {0, 2, 4, 6}),
    ("0 0 * * 1-7/2", {0}, {0}, ALL_DAYS, ALL_MONTHS, {1, 3, 5, 0}),
    ("0 0 * * MON/2", {0}, {0}, ALL_DAYS, ALL_MONTHS, {1, 3, 5}),
    ("0 0 */10 */4 *", {0}, {0}, {1, 11, 21, 31}, {1, 5, 9}, ALL_WEEKDAYS),
    ("  59\t23  31 12   6 ", {59}, {23}, {31}, {12}, {6}),
    ("@yearly", {0}, {0}, {1}, {1}, ALL_WEEKDAYS),
    ("@annually", {0}, {0}, {1}, {1}, ALL_WEEKDAYS),
    ("@monthly", {0}, {0}, {1}, ALL_MONTHS, ALL_WEEKDAYS),
    ("@weekly", {0}, {0}, ALL_DAYS, ALL_MONTHS, {0}),
    ("@daily", {0}, {0}, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
    ("@MIDNIGHT", {0}, {0}, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
    ("@hourly", {0}, ALL_HOURS, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
]


@pytest.mark.parametrize(("text", "sets"), [(row[0], row[1:]) for row in GOOD])
def test_parses(text: str, sets: tuple[set[int], ...]) -> None:
    cron = parse_cron(text)
    assert cron.text == text
    got = (cron.minutes, cron.hours, cron.days, cron.months, cron.weekdays)
    assert tuple(map(set, got)) == sets


def test_star_flags_and_hashing() -> None:
    cron = parse_cron("0 * */2 * MON")
    assert (cron.hours_star, cron.days_star, cron.weekdays_star) == (True, True, False)
    hourly = parse_cron("@hourly")
    assert (hourly.hours_star, hourly.days_star, hourly.weekdays_star) == (True, True, True)
    assert not parse_cron("0 0-23 1 * 1").hours_star
    assert parse_cron("0 3 * * *") == parse_cron("0 3 * * *")
    assert len({parse_cron("0 3 * * *"), parse_cron("0 3 * * *"), parse_cron("@daily")}) == 2


BAD = [
    ("", "empty cron expression"),
    ("   ", "empty cron expression"),
    ("* * * *", "has 4 fields; expected 5 (minute hour day-of-month month day-of-week)"),
    ("0 0 0 * * *", "seconds and years fields are not supported"),
    ("61 * * * *", "minute field '61': 61 is out of range 0-59"),
    ("0 24 * * *", "hour field '24': 24 is out of range 0-23"),
    ("0 0 0 * *", "day-of-month field '0': 0 is out of range 1-31"),
    ("0 0 32 * *", "day-of-month field '32': 32 is out of range 1-31"),
    ("0 0 * 13 *", "month field '13': 13 is out of range 1-12"),
    ("0 0 * * 8", "day-of-week field '8': 8 is out of range 0-7"),
    ("1,61 * * * *", "minute field '1,61': 61 is out of range 0-59"),
    ("*/0 * * * *", "minute field '*/0': step 0 never advances"),
    ("*/60 * * * *", "minute field '*/60': step 60 is out of range 1-59"),
    ("5-1 * * * *", "minute field '5-1': range '5-1' is reversed (5 > 1)"),
    ("0 0 * * FRI-SUN", "range 'FRI-SUN' is reversed"),
    ("0 0 * FOO *", "month field 'FOO': 'FOO' is neither a number nor a name (JAN-DEC)"),
    ("0 0 * * MONDAY", "day-of-week field 'MONDAY'"),
    ("x * * * *", "minute field 'x': 'x' is not a number"),
    ("0 0 * * MON", None),
    ("0 0 JAN * *", "day-of-month field 'JAN': 'JAN' is not a number"),
    ("1,,2 * * * *", "minute field '1,,2': a value is missing"),
    ("-5 * * * *", "a value is missing"),
    ("*/x * * * *", "step 'x' is not a number"),
    ("0 0 ? * MON", "day-of-month field '?': '?' is not supported"),
    ("0 0 L * *", "'L' is not supported"),
    ("0 0 * * 5#3", "'#' is not supported"),
    ("@reboot", "@reboot is not supported"),
    ("@fortnightly", "unknown cron alias '@fortnightly'"),
    ("0 " * 101, "at most 200"),
    ("٣ * * * *", "is not a number"),
]


@pytest.mark.parametrize(("text", "fragment"), BAD)
def test_refuses(text: str, fragment: str | None) -> None:
    if fragment is None:
        parse_cron(text)
        return
    with pytest.raises(CronError) as raised:
        parse_cron(text)
    assert fragment in str(raised.value)


def test_timezones() -> None:
    assert parse_timezone("Europe/Berlin") == ZoneInfo("Europe/Berlin")
    assert parse_timezone("UTC") == ZoneInfo("UTC")
    assert parse_timezone("Etc/GMT+5").key == "Etc/GMT+5"
    with pytest.raises(CronError, match=r"^unknown timezone 'Mars/Base'$"):
        parse_timezone("Mars/Base")
    for name in ["", "../zoneinfo/UTC", "/etc/localtime", "/usr/share/zoneinfo/UTC", "localtime"]:
        with pytest.raises(CronError, match="timezone"):
            parse_timezone(name)
    for name in ["Europe/../Europe/Berlin", "America", "Europe\\Berlin", "UTC\x00", "a" * 300]:
        with pytest.raises(CronError, match="unknown timezone"):
            parse_timezone(name)


def test_naive_times_are_refused() -> None:
    cron, zone = parse_cron("* * * * *"), parse_timezone("UTC")
    with pytest.raises(ValueError, match="aware"):
        fire_times(cron, zone, datetime(2026, 1, 1), utc(2026, 1, 2))
    with pytest.raises(ValueError, match="aware"):
        next_fire(cron, zone, datetime(2026, 1, 1))


# -- named cases ---------------------------------------------------------------------------


def test_berlin_spring_forward_gap_fires_once_after_it() -> None:
    # 2027-03-28: 02:00 CET -> 03:00 CEST at 01:00 UTC; 02:30 does not exist.
    assert fires("30 2 * * *", "Europe/Berlin", utc(2027, 3, 27), utc(2027, 3, 29, 12)) == [
        utc(2027, 3, 27, 1, 30),
        utc(2027, 3, 28, 1, 0),
        utc(2027, 3, 29, 0, 30),
    ]
    # Several gap times and 03:00 itself: one firing at 03:00 CEST.
    assert fires("0,20,40 2,3 * * *", "Europe/Berlin", utc(2027, 3, 28), utc(2027, 3, 28, 3)) == [
        utc(2027, 3, 28, 1, 0),
        utc(2027, 3, 28, 1, 20),
        utc(2027, 3, 28, 1, 40),
    ]


def test_berlin_fall_back_fixed_time_fires_at_first_occurrence() -> None:
    # 2026-10-25: 03:00 CEST -> 02:00 CET at 01:00 UTC; 02:30 happens twice.
    assert fires("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 12), utc(2026, 10, 25, 12)) == [
        utc(2026, 10, 25, 0, 30)
    ]
    # Asked from inside the repeated hour, after its first pass: nothing more that night.
    assert (
        fires("30 2 * * *", "Europe/Berlin", utc(2026, 10, 25, 0, 45), utc(2026, 10, 25, 12)) == []
    )


def test_berlin_fall_back_every_half_hour_fires_through_both_passes() -> None:
    got = fires("*/30 * * * *", "Europe/Berlin", utc(2026, 10, 24, 23), utc(2026, 10, 25, 2, 30))
    assert got == [
        utc(2026, 10, 24, 23, 30),
        *(utc(2026, 10, 25, 0) + k * 30 * MINUTE for k in range(6)),
    ]
    assert fires("@hourly", "Europe/Berlin", utc(2026, 10, 24, 23), utc(2026, 10, 25, 2)) == [
        utc(2026, 10, 25, 0),
        utc(2026, 10, 25, 1),
        utc(2026, 10, 25, 2),
    ]
    # A fixed hour with every minute: only the first pass.
    got = fires("*/20 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 23), utc(2026, 10, 25, 3))
    assert got == [utc(2026, 10, 25, 0), utc(2026, 10, 25, 0, 20), utc(2026, 10, 25, 0, 40)]


def test_asked_again_inside_the_repeated_hour() -> None:
    # A service restarting at 02:45 CEST (first pass) still has the second pass ahead.
    got = fires("*/30 * * * *", "Europe/Berlin", utc(2026, 10, 25, 0, 45), utc(2026, 10, 25, 2))
    assert got == [utc(2026, 10, 25, 1), utc(2026, 10, 25, 1, 30), utc(2026, 10, 25, 2)]


def test_new_york_spring_forward() -> None:
    # 2026-03-08: 02:00 EST -> 03:00 EDT at 07:00 UTC.
    assert fires("30 2 * * *", "America/New_York", utc(2026, 3, 7), utc(2026, 3, 9, 12)) == [
        utc(2026, 3, 7, 7, 30),
        utc(2026, 3, 8, 7, 0),
        utc(2026, 3, 9, 6, 30),
    ]
    got = fires("*/15 * * * *", "America/New_York", utc(2026, 3, 8, 6, 20), utc(2026, 3, 8, 7, 20))
    assert got == [
        utc(2026, 3, 8, 6, 30),
        utc(2026, 3, 8, 6, 45),
        utc(2026, 3, 8, 7, 0),
        utc(2026, 3, 8, 7, 15),
    ]


def test_lord_howe_half_hour_fall_back() -> None:
    # 2026-04-05: 02:00 +11 -> 01:30 +10:30 at 15:00 UTC the day before.
    assert fires("45 1 * * *", "Australia/Lord_Howe", utc(2026, 4, 4), utc(2026, 4, 5)) == [
        utc(2026, 4, 4, 14, 45)
    ]
    assert fires(
        "*/15 * * * *", "Australia/Lord_Howe", utc(2026, 4, 4, 14, 20), utc(2026, 4, 4, 15, 20)
    ) == [
        utc(2026, 4, 4, 14, 30),
        utc(2026, 4, 4, 14, 45),
        utc(2026, 4, 4, 15, 0),
        utc(2026, 4, 4, 15, 15),
    ]


def test_either_day_rule() -> None:
    # The 13th or a Friday (Vixie); with a `*` day-of-month, Fridays alone.
    either = [
        t.date().isoformat()
        for t in fires("0 12 13 * FRI", "UTC", utc(2026, 2, 1), utc(2026, 3, 1))
    ]
    assert either == ["2026-02-06", "2026-02-13", "2026-02-20", "2026-02-27"]
    either = [
        t.date().isoformat()
        for t in fires("0 12 12 * FRI", "UTC", utc(2026, 2, 1), utc(2026, 3, 1))
    ]
    assert either == ["2026-02-06", "2026-02-12", "2026-02-13", "2026-02-20", "2026-02-27"]
    both = [
        t.date().isoformat()
        for t in fires("0 12 */2 * FRI", "UTC", utc(2026, 2, 1), utc(2026, 3, 1))
    ]
    assert both == ["2026-02-13", "2026-02-27"]


def test_window_bounds_and_other_zones() -> None:
    after = datetime(2026, 6, 1, 12, 0, tzinfo=ZoneInfo("Asia/Kolkata"))  # 06:30 UTC
    assert fires("30 6 * * *", "UTC", after, after + timedelta(days=1)) == [utc(2026, 6, 2, 6, 30)]
    assert fires("30 6 * * *", "UTC", after - timedelta(seconds=1), after) == [
        utc(2026, 6, 1, 6, 30)
    ]
    assert fires("* * * * *", "UTC", after, after) == []
    assert fires("* * * * *", "UTC", after, after - timedelta(days=1)) == []
    assert next_fire(parse_cron("0 9 * * *"), parse_timezone("Asia/Kolkata"), after) == utc(
        2026, 6, 2, 3, 30
    )


def test_results_are_aware_utc() -> None:
    for moment in fires("0 * * * *", "Pacific/Chatham", utc(2026, 1, 1), utc(2026, 1, 2)):
        assert moment.tzinfo is UTC


# -- efficiency ----------------------------------------------------------------------------


def test_leap_day_is_found_and_impossible_dates_end() -> None:
    zone = parse_timezone("Europe/Berlin")
    began = time.perf_counter()
    assert next_fire(parse_cron("0 0 29 2 *"), zone, utc(2026, 1, 1)) == utc(2028, 2, 28, 23)
    assert next_fire(parse_cron("0 0 30 2 *"), zone, utc(2026, 1, 1)) is None
    assert next_fire(parse_cron("0 0 31 4,6,9,11 *"), zone, utc(2026, 1, 1)) is None
    assert time.perf_counter() - began < 1


def test_walks_matching_times_only() -> None:
    zone = parse_timezone("America/Sao_Paulo")
    began = time.perf_counter()
    yearly = fires("@yearly", "America/Sao_Paulo", utc(2026, 1, 1), utc(2036, 1, 1))
    assert len(yearly) == 10
    every = list(fire_times(parse_cron("* * * * *"), zone, utc(2026, 5, 1), utc(2026, 5, 2)))
    assert len(every) == 1440
    # Lazy: the first of a window of millennia comes at once.
    lazy = fire_times(parse_cron("* * * * *"), zone, utc(2026, 5, 1), utc(9000, 1, 1))
    assert next(lazy) == utc(2026, 5, 1, 0, 1)
    assert time.perf_counter() - began < 1


# -- the oracle ------------------------------------------------------------------------------


def wall_matches(cron: Cron, wall: datetime) -> bool:
    """The five fields read straight off the wall clock, with Vixie's either-day rule."""
    weekday = wall.isoweekday() % 7
    in_month = wall.day in cron.days
    in_week = weekday in cron.weekdays
    restricted = not cron.days_star and not cron.weekdays_star
    day = (in_month or in_week) if restricted else (in_month and in_week)
    return (
        wall.minute in cron.minutes
        and wall.hour in cron.hours
        and wall.month in cron.months
        and day
    )


def oracle(cron: Cron, zone: ZoneInfo, after: datetime, until: datetime) -> list[datetime]:
    """Walk every UTC minute and decide it by the rules of the module's docstring: it fires
    when its wall time matches and was not seen before (or the hour field is a `*`), or when
    the wall clock jumped over a matching time to get there."""
    walk = after.astimezone(UTC).replace(second=0, microsecond=0) - timedelta(days=1)
    seen: set[datetime] = set()
    previous = walk.astimezone(zone).replace(tzinfo=None)
    result = []
    while walk <= until:
        walk += MINUTE
        wall = walk.astimezone(zone).replace(tzinfo=None)
        repeated = wall in seen
        seen.add(wall)
        fired = wall_matches(cron, wall) and (not repeated or cron.hours_star)
        skipped = previous + MINUTE
        while skipped < wall:
            fired = fired or wall_matches(cron, skipped)
            skipped += MINUTE
        previous = wall
        if fired and after < walk <= until:
            result.append(walk)
    return result


ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "America/Sao_Paulo",
    "Pacific/Chatham",
]


@cache
def transitions(name: str) -> list[datetime]:
    """The hours of 2026 and 2027 in which the zone's offset changes."""
    zone = ZoneInfo(name)
    hour, found = utc(2026, 1, 1), []
    offset = hour.astimezone(zone).utcoffset()
    while hour < utc(2028, 1, 1):
        hour += timedelta(hours=1)
        if (now := hour.astimezone(zone).utcoffset()) != offset:
            found.append(hour)
            offset = now
    return found or [utc(2026, 6, 1)]


MONTH_NAMES = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
DAY_NAMES = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


@st.composite
def field_part(
    draw: st.DrawFn, low: int, high: int, names: list[str] | None
) -> tuple[str, set[int]]:
    """One part of a field and the values it stands for; `high` is the last value of `*`."""
    top = 7 if names is DAY_NAMES else high

    offset = 1 if names is MONTH_NAMES else 0

    def number(value: int) -> str:
        if names and 0 <= value - offset < len(names) and draw(st.booleans()):
            name = names[value - offset]
            return draw(st.sampled_from([name, name.lower(), name.title()]))
        return str(value)

    kind = draw(st.sampled_from(["*", "*/n", "a", "a", "a-b", "a-b/n", "a/n"]))
    step = draw(st.integers(1, high - low))
    if kind == "*":
        return "*", set(range(low, high + 1))
    if kind == "*/n":
        return f"*/{step}", set(range(low, high + 1, step))
    a = draw(st.integers(low, top))
    if kind == "a":
        return number(a), {a}
    if kind == "a/n":
        a = min(a, high)
        return f"{number(a)}/{step}", set(range(a, high + 1, step))
    b = draw(st.integers(a, top))
    if kind == "a-b":
        return f"{number(a)}-{number(b)}", set(range(a, b + 1))
    return f"{number(a)}-{number(b)}/{step}", set(range(a, b + 1, step))


@st.composite
def field(
    draw: st.DrawFn, low: int, high: int, names: list[str] | None = None, star: int = 1
) -> tuple[str, set[int]]:
    """A field: `*` with odds `star` in 4, else a list of one to three parts."""
    if draw(st.integers(0, 3)) < star:
        return "*", set(range(low, high + 1))
    parts = draw(st.lists(field_part(low, high, names), min_size=1, max_size=3))
    return ",".join(text for text, _ in parts), set().union(*(values for _, values in parts))


@st.composite
def crons(draw: st.DrawFn) -> tuple[str, list[set[int]]]:
    minute = draw(
        st.one_of(
            field(0, 59, star=0),
            st.sampled_from([("0", {0}), ("*/15", {0, 15, 30, 45}), ("30", {30})]),
        )
    )
    hour = draw(
        st.one_of(
            field(0, 23),
            st.sampled_from([("1-3", {1, 2, 3}), ("2", {2}), ("*/2", set(range(0, 24, 2)))]),
        )
    )
    day = draw(field(1, 31, star=3))
    month = draw(field(1, 12, MONTH_NAMES, star=3))
    weekday = draw(field(0, 6, DAY_NAMES, star=3))
    fields = [minute, hour, day, month, weekday]
    weekdays = {0 if value == 7 else value for value in weekday[1]}
    return " ".join(text for text, _ in fields), [*(values for _, values in fields[:4]), weekdays]


@st.composite
def windows(draw: st.DrawFn) -> tuple[ZoneInfo, datetime, datetime]:
    length = draw(st.integers(0, 3 * 24 * 60)) * MINUTE
    name = draw(st.sampled_from(ZONES))
    kind = draw(st.sampled_from(["across", "across", "across", "near", "anywhere"]))
    if kind == "anywhere":
        start = utc(2026, 1, 1) + draw(st.integers(0, 2 * 365 * 24 * 60)) * MINUTE
    else:
        # A transition inside the window, or within a day of it.
        anchor = draw(st.sampled_from(transitions(name)))
        minutes = int(length / MINUTE)
        inside = st.integers(1, max(1, minutes - 1))
        before = draw(inside if kind == "across" else st.integers(-1440, 1440))
        start = anchor - before * MINUTE
    start += timedelta(seconds=draw(st.sampled_from([0, 0, 0, 1, 59])))
    zone = ZoneInfo(name)
    # The window's ends may be written in any zone.
    shown_in = ZoneInfo(draw(st.sampled_from(ZONES)))
    return zone, start.astimezone(shown_in), (start + length).astimezone(shown_in)


ORACLE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@ORACLE
@given(crons(), windows())
def test_fire_times_equal_the_oracle(
    expression: tuple[str, list[set[int]]], window: tuple[ZoneInfo, datetime, datetime]
) -> None:
    text, expected = expression
    cron = parse_cron(text)
    assert [cron.minutes, cron.hours, cron.days, cron.months, cron.weekdays] == expected
    stars = [part.startswith("*") for part in text.split()]
    assert [cron.hours_star, cron.days_star, cron.weekdays_star] == stars[1:3] + stars[4:]
    zone, after, until = window
    got = list(fire_times(cron, zone, after, until))
    assert got == oracle(cron, zone, after, until)
    assert got == sorted(set(got))
    assert all(after < moment <= until and moment.tzinfo is UTC for moment in got)


@ORACLE
@given(crons(), windows(), st.floats(0, 1))
def test_split_windows_give_the_same_firings(
    expression: tuple[str, list[set[int]]],
    window: tuple[ZoneInfo, datetime, datetime],
    fraction: float,
) -> None:
    cron = parse_cron(expression[0])
    zone, first, last = window
    # In UTC: arithmetic on aware datetimes of one zone is wall-clock arithmetic and drops
    # `fold`, which would move the middle out of the window near a fall-back.
    start, end = first.astimezone(UTC), last.astimezone(UTC)
    middle = (start + (end - start) * fraction).astimezone(first.tzinfo)
    whole = list(fire_times(cron, zone, first, last))
    assert (
        list(fire_times(cron, zone, first, middle)) + list(fire_times(cron, zone, middle, last))
        == whole
    )


@ORACLE
@given(crons(), windows())
def test_next_fire_is_the_first_firing(
    expression: tuple[str, list[set[int]]], window: tuple[ZoneInfo, datetime, datetime]
) -> None:
    cron = parse_cron(expression[0])
    zone, after, _ = window
    following: Iterator[datetime] = fire_times(cron, zone, after, after + HORIZON)
    assert next_fire(cron, zone, after) == next(following, None)
