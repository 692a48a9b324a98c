-- The full run index. `group_path` uses the C collation so that a group prefix becomes a
-- plain byte range on the btree: `/a/b` and everything below it is
-- `group_path = '/a/b' OR (group_path >= '/a/b/' AND group_path < '/a/b0')`
-- ('0' is the byte after '/'), which never matches the sibling `/a/bc`.
CREATE TABLE runs_index (
    run_id           text        PRIMARY KEY,
    group_path       text        COLLATE "C" NOT NULL,
    name             text        NOT NULL,
    counter          bigint      NOT NULL,
    phase            text        NOT NULL,
    result           text        NOT NULL,
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    -- The position of the run's creation: unique and increasing, so it orders "newest
    -- first" and serves as the keyset cursor.
    created_position bigint      NOT NULL,
    updated_position bigint      NOT NULL
);
CREATE UNIQUE INDEX runs_index_created ON runs_index (created_position DESC);
CREATE INDEX runs_index_group ON runs_index (group_path, created_position DESC);
CREATE INDEX runs_index_phase ON runs_index (phase, created_position DESC);
CREATE INDEX runs_index_name ON runs_index (name, created_position DESC);
