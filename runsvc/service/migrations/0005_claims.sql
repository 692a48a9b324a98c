-- Claims in flight, kept by the command side beside the tables the run_state projection
-- derives from the log (`ready_tasks`, `run_timers`). A rebuild replaces those tables
-- wholesale; these survive it, so a claim or a timer tick in progress is never handed to a
-- second process because a rebuild ran.

-- An executor's claim reserves one attempt of the claim queue for a short while, so other
-- claims pass over it; once the attempt has started the reservation never expires (the
-- projection drops the queue entry when it folds the start). Rows whose queue entry is gone
-- are removed by the timer loop.
CREATE TABLE claim_reservations (
    task_id        text        NOT NULL,
    attempt        integer     NOT NULL,
    reserved_until timestamptz NOT NULL,
    PRIMARY KEY (task_id, attempt)
);

-- A service process ticking a run whose timer is due. The claim names the due time it
-- handled: when the projection writes a new due time, the run is claimable at once; when
-- a tick changed nothing, `claimed_until` moves to the run's next wake-up.
CREATE TABLE timer_claims (
    run_id        text        PRIMARY KEY,
    due_at        timestamptz NOT NULL,
    claimed_until timestamptz NOT NULL
);
