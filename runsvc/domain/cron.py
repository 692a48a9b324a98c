"""Cron expressions and the instants at which they fire, in an IANA time zone.

Pure: no clock is read here; every decision takes its times as parameters.

Syntax: five fields, ``minute hour day-of-month month day-of-week``, each ``*``, a number,
a range ``a-b``, a step ``*/n``, ``a-b/n`` or ``a/n`` (``a`` to the field's last value), or a
list of those separated by commas. Months may be written ``JAN``-``DEC`` and weekdays
``SUN``-``SAT`` (any case); weekdays run 0 (Sunday) to 6, and 7 is Sunday too. The aliases
``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily`` (``@midnight``) and
``@hourly`` stand for ``0 0 1 1 *``, ``0 0 1 * *``, ``0 0 * * 0``, ``0 0 * * *`` and
``0 * * * *``. Seconds, years, ``@reboot`` and the ``? L W #`` extensions are refused.

Days follow Vixie cron: when both day-of-month and day-of-week are restricted, a day matches
when either matches (``0 0 1 * MON`` fires on the 1st and on every Monday); when either field
starts with ``*`` (``*`` or ``*/n``), a day must match both.

Time zones and daylight saving time. A schedule is written in local wall-clock time of its
zone; the instants returned are UTC.

1. A local time that does not exist (the spring-forward gap, e.g. 02:30 on the day clocks go
   from 02:00 to 03:00) fires once, at the first instant after the gap (03:00 local, new
   offset). Several times of one schedule inside the gap collapse into that one firing, and
   a firing the schedule has at 03:00 anyway is the same instant: it fires once.
2. A local time that occurs twice (fall-back, e.g. 01:30 when clocks go from 02:00 back to
   01:00) fires once, at its first occurrence. Except when the hour field starts with ``*``
   (``*/15 * * * *``, ``@hourly``, ``0 */2 * * *``): such a schedule runs by elapsed time and
   fires at both occurrences, as Vixie cron does, so an every-15-minutes schedule keeps
   firing every 15 minutes through the repeated hour.
3. Instants are compared in UTC: two firings at the same instant are one firing.

Firings are decided per instant, so the firings in a window are the same whether it is
asked for at once or in consecutive pieces (``(a, b]`` then ``(b, c]``): a service that
restarts and asks again from where it stopped neither misses nor repeats a firing.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MAX_LENGTH = 200

# next_fire looks this far ahead before it concludes that a schedule never fires.
HORIZON = timedelta(days=5 * 366)

FIELD_NAMES = ("minute", "hour", "day-of-month", "month", "day-of-week")

# (lowest, highest) value a field accepts; day-of-week accepts 7 for Sunday.
_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"),
        start=1,
    )
}
_WEEKDAYS = {
    name: number for number, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))
}
_NAMES: tuple[dict[str, int], ...] = ({}, {}, {}, _MONTHS, _WEEKDAYS)

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*")


class CronError(ValueError):
    """A cron expression or timezone that cannot be used; str() is a message a person can act
    on, naming the field (e.g. "minute field '61': 61 is out of range 0-59")."""


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression. ``weekdays`` holds 0 (Sunday) to 6. The ``*_star`` flags say
    whether the field was written starting with ``*``: the day flags choose between the
    either-day and both-days rule, the hour flag makes repeated local times fire twice."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    hours_star: bool
    days_star: bool
    weekdays_star: bool

    def day_matches(self, day: date) -> bool:
        """Whether the schedule fires on this calendar day (at some of its times)."""
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.weekday() + 1) % 7 in self.weekdays
        if self.days_star or self.weekdays_star:
            return in_month and in_week
        return in_month or in_week


def parse_cron(text: str) -> Cron:
    """The cron expression ``text`` parsed; CronError names what is wrong."""
    if not isinstance(text, str):
        raise CronError(f"a cron expression is text, not {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise CronError(f"cron expression is {len(text)} characters long; at most {MAX_LENGTH}")
    stripped = text.strip()
    if not stripped:
        raise CronError(
            "empty cron expression; write five fields (minute hour day-of-month month "
            "day-of-week), e.g. '0 3 * * *', or an alias such as @daily"
        )
    if stripped.startswith("@"):
        alias = stripped.lower()
        if alias == "@reboot":
            raise CronError("@reboot is not supported: schedules fire on a clock, not at start-up")
        if alias not in ALIASES:
            raise CronError(f"unknown cron alias '{stripped}'; known: {', '.join(sorted(ALIASES))}")
        fields = ALIASES[alias].split()
    else:
        fields = stripped.split()
    if len(fields) != len(FIELD_NAMES):
        hint = ""
        if len(fields) in (6, 7):
            hint = "; seconds and years fields are not supported"
        raise CronError(
            f"cron expression '{stripped}' has {len(fields)} field"
            f"{'' if len(fields) == 1 else 's'}; expected 5 (minute hour day-of-month month "
            f"day-of-week){hint}"
        )
    values = [_parse_field(index, field) for index, field in enumerate(fields)]
    weekdays = frozenset(0 if day == 7 else day for day in values[4])
    return Cron(
        text=text,
        minutes=values[0],
        hours=values[1],
        days=values[2],
        months=values[3],
        weekdays=weekdays,
        hours_star=fields[1].startswith("*"),
        days_star=fields[2].startswith("*"),
        weekdays_star=fields[4].startswith("*"),
    )


def _parse_field(index: int, field: str) -> frozenset[int]:
    name = FIELD_NAMES[index]
    low, high = _BOUNDS[index]
    # `*` and `a/n` run to Saturday: 7 is accepted as a value but is not the week's end.
    last = 6 if index == 4 else high

    def fail(problem: str) -> CronError:
        return CronError(f"{name} field '{field}': {problem}")

    def value(token: str) -> int:
        names = _NAMES[index]
        if token.upper() in names:
            return names[token.upper()]
        if not token.isdigit() or not token.isascii():
            if not token:
                raise fail("a value is missing")
            for unsupported in "?LW#":
                if unsupported in token.upper():
                    raise fail(f"'{unsupported}' is not supported")
            if names:
                examples = "JAN-DEC" if index == 3 else "SUN-SAT"
                raise fail(f"'{token}' is neither a number nor a name ({examples})")
            raise fail(f"'{token}' is not a number")
        number = int(token)
        if not low <= number <= high:
            raise fail(f"{number} is out of range {low}-{high}")
        return number

    result: set[int] = set()
    for part in field.split(","):
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or not step_text.isascii():
                raise fail(f"step '{step_text}' is not a number")
            step = int(step_text)
            if step == 0:
                raise fail("step 0 never advances; a step is at least 1")
            if step > last - low:
                raise fail(f"step {step} is out of range 1-{last - low}")
        if base == "*":
            start, end = low, last
        elif "-" in base:
            first, _, second = base.partition("-")
            start, end = value(first), value(second)
            if start > end:
                raise fail(f"range '{base}' is reversed ({start} > {end})")
        else:
            start = value(base)
            end = last if slash else start
            if slash and start > end:
                raise fail(f"'{part}' starts after the field's last value {last}")
        result.update(range(start, end + 1, step))
    return frozenset(result)


def parse_timezone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (e.g. "Europe/Berlin"); CronError when unknown. Names are
    looked up in the time zone database only: no paths, no "localtime"."""
    if not isinstance(name, str) or not name:
        raise CronError("empty timezone; write an IANA name such as 'Europe/Berlin' or 'UTC'")
    if (
        len(name) > 64
        or ".." in name
        or not _ZONE_NAME.fullmatch(name)
        or name in ("localtime", "posixrules")
    ):
        raise CronError(
            f"unknown timezone '{name}'; write an IANA name such as 'Europe/Berlin' or 'UTC'"
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise CronError(f"unknown timezone '{name}'") from None


def fire_times(cron: Cron, zone: ZoneInfo, after: datetime, until: datetime) -> Iterator[datetime]:
    """Every instant ``t`` at which ``cron`` fires in ``zone`` with ``after < t <= until``,
    ascending, each once, as aware datetimes in UTC. ``after`` and ``until`` are aware, in
    any zone. Lazy: walks only the matching days, hours and minutes."""
    for argument, moment in (("after", after), ("until", until)):
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"{argument} must be an aware datetime, got {moment!r}")
    return _fire_times(cron, zone, after, until)


def next_fire(cron: Cron, zone: ZoneInfo, after: datetime) -> datetime | None:
    """The first instant strictly after ``after`` at which ``cron`` fires, or None when it
    does not fire within about five years (e.g. ``0 0 30 2 *``)."""
    try:
        until = after + HORIZON
    except OverflowError:
        until = datetime.max.replace(tzinfo=UTC)
    return next(fire_times(cron, zone, after, until), None)


def _fire_times(cron: Cron, zone: ZoneInfo, after: datetime, until: datetime) -> Iterator[datetime]:
    after_utc = after.astimezone(UTC).replace(tzinfo=None)
    until_utc = until.astimezone(UTC).replace(tzinfo=None)
    if until_utc <= after_utc:
        return
    start = _first_wall(zone, after)
    try:
        # A wall time later than the local time of `until` can still fire before it (the
        # hour that repeats at a fall-back); no zone repeats more than two days.
        end = until.astimezone(zone).replace(tzinfo=None) + timedelta(days=2)
    except OverflowError:
        end = datetime.max
    # Wall times come in ascending order and their earliest instants ascend with them, but
    # the second occurrences of a repeated hour interleave with the first ones: a heap holds
    # the instants not yet certain to be the next.
    pending: list[datetime] = []
    last: datetime | None = None
    gaps = _Gaps(zone)
    for wall in _walls(cron, start, end):
        earliest, instants = _instants(cron, zone, wall, gaps)
        while pending and pending[0] <= earliest:
            moment = heapq.heappop(pending)
            if moment != last:
                last = moment
                yield moment.replace(tzinfo=UTC)
        if earliest > until_utc:
            break
        for moment in instants:
            if after_utc < moment <= until_utc:
                heapq.heappush(pending, moment)
    while pending:
        moment = heapq.heappop(pending)
        if moment != last:
            last = moment
            yield moment.replace(tzinfo=UTC)


def _first_wall(zone: ZoneInfo, after: datetime) -> datetime:
    """The earliest wall time that can fire after ``after``: its own local time to the minute,
    or, when ``after`` is in the first pass of a repeated hour, the start of that hour (whose
    second pass is still to come)."""
    local = after.astimezone(zone)
    wall = local.replace(tzinfo=None, second=0, microsecond=0)
    first = local.replace(fold=0).utcoffset()
    second = local.replace(fold=1).utcoffset()
    assert first is not None
    assert second is not None
    if local.fold == 0 and first > second:
        wall -= first - second
    return wall


def _walls(cron: Cron, start: datetime, end: datetime) -> Iterator[datetime]:
    """The naive local wall times from ``start`` to ``end`` that the schedule names."""
    hours = sorted(cron.hours)
    minutes = sorted(cron.minutes)
    day = start.date()
    last_day = end.date()
    one_day = timedelta(days=1)
    while day <= last_day:
        if day.month not in cron.months:
            # Skip to the first of the next month.
            if day.year == 9999 and day.month == 12:
                return
            day = date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)
            continue
        if cron.day_matches(day):
            for hour in hours:
                for minute in minutes:
                    wall = datetime(day.year, day.month, day.day, hour, minute)
                    if wall < start:
                        continue
                    if wall > end:
                        return
                    yield wall
        if day == date.max:
            return
        day += one_day


class _Gaps:
    """Finds the instant a spring-forward gap ends, remembering the last one found."""

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self.last: datetime | None = None

    def end_of(self, before: datetime, after: datetime) -> datetime:
        """The transition instant (naive UTC) in ``(before, after]``, where ``before`` is an
        instant with the old offset and ``after`` one with the new."""
        if self.last is not None and before < self.last <= after:
            return self.last
        old = self._offset(before)
        low, high = before, after
        while high - low > timedelta(seconds=1):
            middle = low + (high - low) / 2
            middle = middle.replace(microsecond=0)
            if middle <= low:
                middle = low + timedelta(seconds=1)
            if self._offset(middle) == old:
                low = middle
            else:
                high = middle
        self.last = high
        return high

    def _offset(self, moment: datetime) -> timedelta | None:
        return moment.replace(tzinfo=UTC).astimezone(self.zone).utcoffset()


def _instants(
    cron: Cron, zone: ZoneInfo, wall: datetime, gaps: _Gaps
) -> tuple[datetime, tuple[datetime, ...]]:
    """The earliest instant (naive UTC) that belongs to ``wall`` and the instants at which it
    fires, per the rules of the module's docstring."""
    local = wall.replace(tzinfo=zone)
    first = local.utcoffset()
    second = local.replace(fold=1).utcoffset()
    assert first is not None
    assert second is not None
    if first == second:
        moment = wall - first
        return moment, (moment,)
    if first > second:
        # Repeated: the first occurrence, and the second when the hour field is a `*`.
        early, late = wall - first, wall - second
        return early, ((early, late) if cron.hours_star else (early,))
    # In the gap: fold 0 reads it with the old offset (an instant after the transition),
    # fold 1 with the new one (an instant before it).
    moment = gaps.end_of(wall - second, wall - first)
    return moment, (moment,)
