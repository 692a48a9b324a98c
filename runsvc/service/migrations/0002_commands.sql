-- State the command side keeps beside the log: what must be decided across runs
-- (counters, keys). Key rows are written in the same transaction as the events they
-- belong to. (Timers and the claim queue are derived from the log by the run_state
-- projection.)

-- Per-group run counters: the `counter` of a run (build #42 of /org/project).
CREATE TABLE group_counters (
    group_path text   PRIMARY KEY,
    counter    bigint NOT NULL
);

-- Idempotency keys: the run a key last created. A create with a key whose run is not yet
-- terminal returns that run instead of creating another.
CREATE TABLE idempotency_keys (
    key     text PRIMARY KEY,
    run_id  text NOT NULL
);

-- Concurrency keys: at most one active run per key; the others wait in `seq` order.
CREATE TABLE concurrency_slots (
    run_id     text        PRIMARY KEY,
    key        text        NOT NULL,
    active     boolean     NOT NULL,
    seq        bigserial   NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX concurrency_slots_one_active ON concurrency_slots (key) WHERE active;
CREATE INDEX concurrency_slots_queue ON concurrency_slots (key, seq) WHERE NOT active;
