-- Executors as they were last seen: the name each announces and the labels it claims by,
-- written when it claims or renews a lease (at most every few seconds per process), so
-- the status page can say which executors are about, idle ones included, whichever
-- process they talk to. Rows of executors gone for a week are deleted as others are seen.
CREATE TABLE executors_seen (
    name      text        PRIMARY KEY,
    labels    jsonb       NOT NULL DEFAULT '{}',
    last_seen timestamptz NOT NULL
);
