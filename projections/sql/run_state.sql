-- Current state of every run, as the API returns it (`view`, JSON) and as the command
-- side caches it (`state`, MessagePack), with the stream version and log position.
CREATE TABLE run_state (
    run_id          text        PRIMARY KEY,
    version         integer     NOT NULL,
    position        bigint      NOT NULL,
    phase           text        NOT NULL,
    concurrency_key text,
    -- Tasks waiting for an approval nobody has given yet: what `GET /runs?waiting_approval`
    -- filters on (the index's query reads it).
    waiting_approval integer    NOT NULL,
    state           bytea       NOT NULL,
    view            bytea       NOT NULL
);
-- Few runs wait for an approval at any time: the filter starts from them.
CREATE INDEX run_state_waiting_approval ON run_state (run_id) WHERE waiting_approval > 0;

-- The claim queue: attempts that are scheduled, with the labels an executor needs and the
-- time before which they may not start. Derived from the log; a claim re-checks the run.
-- Claims in progress are the command side's (`claim_reservations`), not columns here: a
-- rebuild replaces this table.
CREATE TABLE ready_tasks (
    task_id    text        PRIMARY KEY,
    run_id     text        NOT NULL,
    task       text        NOT NULL,
    attempt    integer     NOT NULL,
    not_before timestamptz,
    runs_on    jsonb       NOT NULL,
    position   bigint      NOT NULL
);
CREATE INDEX ready_tasks_order ON ready_tasks (position);

-- When a run next needs the scheduler without any new event (task and run timeouts).
-- Which process ticks a due run is the command side's (`timer_claims`).
CREATE TABLE run_timers (
    run_id text        PRIMARY KEY,
    due_at timestamptz NOT NULL
);
CREATE INDEX run_timers_due ON run_timers (due_at);

-- Tasks a recreated run carried over from an older run: they share their task ids (and so
-- their logs and artifacts), which retention must not delete while a newer run uses them.
CREATE TABLE carried_tasks (
    task_id text NOT NULL,
    run_id  text NOT NULL,
    PRIMARY KEY (task_id, run_id)
);
