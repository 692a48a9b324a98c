"""What a schedule fires, decided on a fake clock: every up moment of a timeline with
downtimes asks `next_action` until it owes nothing, and the runs made are compared with the
catchup policy worked out independently, fire time by fire time. Two deciders with stale
views of the stream (two processes) make the same runs as one; a replay folds the same
state."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runsvc.domain.config import RunConfig, TaskConfig
from runsvc.domain.events import Event, ScheduleCreated, ScheduleFired, ScheduleSkipped
from runsvc.domain.schedule_config import ScheduledRun, ScheduleSpec
from runsvc.domain.schedules import (
    Fire,
    ScheduleState,
    Skip,
    fold,
    fold_all,
    idempotency_key,
    next_action,
    times_between,
    timetable,
)

START = datetime(2026, 10, 24, 0, 0, tzinfo=UTC)  # the Saturday before Europe's fall-back
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
CRONS = st.one_of(
    st.sampled_from(
        ["*/5 * * * *", "0 * * * *", "30 2 * * *", "*/20 1-3 * * *", "@daily", "@every 7m"]
    ),
    st.builds(
        lambda minute, hours: f"{minute} {hours} * * *",
        st.integers(0, 59),
        st.sampled_from(["*", "*/2", "0-6", "1,2,3", "22-23"]),
    ),
)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def spec(cron: str, zone: str, catchup: str, limit: int, overlap: str = "allow") -> ScheduleSpec:
    return ScheduleSpec(
        name="s",
        group="/g",
        cron=cron,
        timezone=zone,
        run=ScheduledRun(config=RunConfig(tasks=[TaskConfig(name="t", run="true")])),
        catchup=catchup,  # type: ignore[arg-type]
        catchup_limit=limit,
        overlap=overlap,  # type: ignore[arg-type]
    )


def created(the_spec: ScheduleSpec) -> ScheduleState:
    event = ScheduleCreated(schedule_id="S", spec=the_spec, paused=False, at=START, created_by="u")
    return fold(None, event, 1)


def event_of(action: Fire | Skip, now: datetime) -> Event:
    if isinstance(action, Fire):
        return ScheduleFired(fire_at=action.fire_at, run_id=f"run-{action.fire_at}", at=now)
    reason = "overlap" if action.reason == "overlap" else "missed"
    return ScheduleSkipped(
        first=action.first, last=action.last, count=action.count, reason=reason, at=now
    )


def up_moments(hours: int, tick: timedelta, downtimes: list[tuple[int, int]]) -> list[datetime]:
    """The moments a process looks, every `tick`, except in the downtimes (minute ranges)."""
    moments = []
    moment = START + tick
    while moment <= START + timedelta(hours=hours):
        minute = (moment - START) / timedelta(minutes=1)
        if not any(begin <= minute < begin + length for begin, length in downtimes):
            moments.append(moment)
        moment += tick
    return moments


def expected_firings(
    the_spec: ScheduleSpec, moments: list[datetime], grace: timedelta
) -> list[datetime]:
    """The policy worked out per fire time: each belongs to the first look at or after it;
    on time when that look is within the grace; late ones per the catchup policy."""
    table = timetable(the_spec.cron, the_spec.timezone)
    fired: list[datetime] = []
    previous = START
    for moment in moments:
        owed = list(times_between(table, previous, moment))
        previous = moment
        late = [t for t in owed if moment - t > grace]
        on_time = [t for t in owed if moment - t <= grace]
        if the_spec.catchup == "latest" and late and not on_time:
            fired.append(late[-1])
        elif the_spec.catchup == "all":
            fired += late[-the_spec.catchup_limit :]
        fired += on_time
    return fired


def drive(
    state: ScheduleState,
    moments: list[datetime],
    grace: timedelta,
    *,
    deciders: int = 1,
    seed: int = 0,
) -> tuple[list[datetime], list[Event]]:
    """Ask `next_action` at every moment until nothing is owed. With several deciders,
    each holds a view of the stream that may be stale; an append from a stale view is
    refused (its version is not the stream's) and that decider reloads."""
    chooser = random.Random(seed)
    stream: list[Event] = []
    views = [state] * deciders
    fired: list[datetime] = []
    for now in moments:
        while True:
            which = chooser.randrange(deciders)
            view = views[which]
            action = next_action(view, now, grace=grace, previous_running=False)
            if action is None:
                if view.version == 1 + len(stream):
                    break
                views[which] = fold_all(iter([(e, i + 2) for i, e in enumerate(stream)]), state)
                continue
            if view.version != 1 + len(stream):  # a conflict: reload and decide again
                views[which] = fold_all(iter([(e, i + 2) for i, e in enumerate(stream)]), state)
                continue
            event = event_of(action, now)
            stream.append(event)
            views[which] = fold(view, event, view.version + 1)
            if isinstance(action, Fire):
                fired.append(action.fire_at)
    return fired, stream


@SETTINGS
@given(
    cron=CRONS,
    zone=st.sampled_from(ZONES),
    catchup=st.sampled_from(["none", "latest", "all"]),
    limit=st.integers(1, 5),
    grace_s=st.sampled_from([30, 60, 300]),
    downtimes=st.lists(st.tuples(st.integers(0, 60 * 40), st.integers(1, 60 * 8)), max_size=4),
)
def test_the_runs_made_are_the_ones_the_policy_says(
    *,
    cron: str,
    zone: str,
    catchup: str,
    limit: int,
    grace_s: int,
    downtimes: list[tuple[int, int]],
) -> None:
    the_spec = spec(cron, zone, catchup, limit)
    grace = timedelta(seconds=grace_s)
    moments = up_moments(48, timedelta(seconds=20), downtimes)
    fired, stream = drive(created(the_spec), moments, grace)
    assert fired == expected_firings(the_spec, moments, grace)
    keys = [idempotency_key("S", t) for t in fired]
    assert len(set(keys)) == len(keys)
    # A replay of the stream folds the same schedule.
    replayed = fold_all(iter([(e, i + 2) for i, e in enumerate(stream)]), created(the_spec))
    assert replayed == drive_state(the_spec, stream)


def drive_state(the_spec: ScheduleSpec, stream: list[Event]) -> ScheduleState:
    state = created(the_spec)
    for offset, event in enumerate(stream, start=2):
        state = fold(state, event, offset)
    return state


@SETTINGS
@given(
    cron=CRONS,
    zone=st.sampled_from(ZONES),
    catchup=st.sampled_from(["none", "latest", "all"]),
    downtimes=st.lists(st.tuples(st.integers(0, 60 * 20), st.integers(1, 60 * 6)), max_size=3),
    seed=st.integers(0, 2**32),
)
def test_two_deciders_with_stale_views_make_the_same_runs_as_one(
    cron: str, zone: str, catchup: str, downtimes: list[tuple[int, int]], seed: int
) -> None:
    the_spec = spec(cron, zone, catchup, 3)
    grace = timedelta(seconds=60)
    moments = up_moments(24, timedelta(seconds=30), downtimes)
    alone, _ = drive(created(the_spec), moments, grace)
    together, _ = drive(created(the_spec), moments, grace, deciders=2, seed=seed)
    assert together == alone


@SETTINGS
@given(
    cron=st.sampled_from(["*/5 * * * *", "*/10 * * * *", "0 * * * *", "@every 150s"]),
    run_minutes=st.integers(1, 90),
    downtimes=st.lists(st.tuples(st.integers(0, 60 * 10), st.integers(1, 60 * 3)), max_size=2),
)
def test_overlap_skip_never_fires_while_the_last_run_is_on_and_accounts_for_every_time(
    cron: str, run_minutes: int, downtimes: list[tuple[int, int]]
) -> None:
    the_spec = spec(cron, "UTC", "all", 1000, overlap="skip")
    grace = timedelta(seconds=60)
    state = created(the_spec)
    run_length = timedelta(minutes=run_minutes)
    ends: list[datetime] = []
    moments = up_moments(12, timedelta(seconds=30), downtimes)
    for now in moments:
        while True:
            running = bool(ends) and ends[-1] > now
            action = next_action(state, now, grace=grace, previous_running=running)
            if action is None:
                break
            if isinstance(action, Fire):
                assert not running
                ends.append(now + run_length)
            state = fold(state, event_of(action, now), state.version + 1)
    owed = list(times_between(timetable(cron, "UTC"), START, moments[-1]))
    assert state.fired + state.skipped == len(owed)
    assert state.fired == len(ends)


def test_a_clock_stepping_back_fires_nothing_twice() -> None:
    the_spec = spec("*/5 * * * *", "UTC", "all", 100)
    grace = timedelta(seconds=60)
    forward = [START + timedelta(minutes=m, seconds=1) for m in range(0, 31)]
    back = [START + timedelta(minutes=m, seconds=1) for m in range(10, 41)]
    fired, _ = drive(created(the_spec), forward + back, grace)
    assert len(fired) == len(set(fired)) == 8  # 00:05 ... 00:40


def test_catchup_latest_after_a_long_outage_fires_once() -> None:
    the_spec = spec("* * * * *", "UTC", "latest", 10)
    state = created(the_spec)
    now = START + timedelta(days=3, seconds=30)
    grace = timedelta(seconds=60)
    first = next_action(state, now, grace=grace, previous_running=False)
    assert isinstance(first, Skip)
    assert first.count == 3 * 24 * 60 - 1
    state = fold(state, event_of(first, now), 2)
    second = next_action(state, now, grace=grace, previous_running=False)
    assert second == Fire(fire_at=START + timedelta(days=3))


def test_every_counts_from_the_epoch_whatever_the_zone() -> None:
    table = timetable("@every 90s", "Europe/Berlin")
    after = datetime(2026, 10, 25, 0, 59, 0, tzinfo=UTC)  # across Berlin's fall-back
    until = after + timedelta(hours=2)
    times = list(times_between(table, after, until))
    step = timedelta(seconds=90)
    assert all(t.timestamp() % 90 == 0 for t in times)
    assert after < times[0] <= after + step
    assert until - step < times[-1] <= until
    assert all(b - a == step for a, b in itertools.pairwise(times))
