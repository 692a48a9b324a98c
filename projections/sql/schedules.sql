-- Every schedule as its stream folds it (`state`, MessagePack), with what the firing loop
-- and the list need as columns: whether it is live and when it fires next by the clock.
CREATE TABLE schedules (
    schedule_id   text        PRIMARY KEY,
    group_path    text        NOT NULL,
    name          text        NOT NULL,
    deleted       boolean     NOT NULL,
    next_fire_at  timestamptz,
    version       integer     NOT NULL,
    position      bigint      NOT NULL,
    state         bytea       NOT NULL
);
-- The firing loop asks "which live schedules are due": few are, at any moment.
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE next_fire_at IS NOT NULL;
CREATE INDEX schedules_group ON schedules (group_path text_pattern_ops, name);
