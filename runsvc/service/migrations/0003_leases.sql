-- Executor leases: which executor runs which attempt, until when. A lease is current while
-- `state = 'active'`; every report names its lease, so a report on a lease that is no
-- longer current (lost, completed, released) is refused and changes nothing.
CREATE TABLE leases (
    lease_id       text        PRIMARY KEY,
    run_id         text        NOT NULL,
    task           text        NOT NULL,
    task_id        text        NOT NULL,
    attempt        integer     NOT NULL,
    executor       text        NOT NULL,
    state          text        NOT NULL DEFAULT 'active'
                   CHECK (state IN ('active', 'completed', 'lost', 'released')),
    expires_at     timestamptz NOT NULL,
    last_output_at timestamptz NOT NULL,
    log_bytes      bigint      NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    ended_at       timestamptz
);
CREATE UNIQUE INDEX leases_one_per_attempt ON leases (task_id, attempt);
CREATE INDEX leases_expiring ON leases (expires_at) WHERE state = 'active';

-- Output of attempts still running (or not yet moved to object storage), in chunks keyed
-- by byte offset so a chunk sent twice is stored once.
CREATE TABLE log_chunks (
    task_id text    NOT NULL,
    attempt integer NOT NULL,
    "offset" bigint NOT NULL,
    data    bytea   NOT NULL,
    PRIMARY KEY (task_id, attempt, "offset")
);
