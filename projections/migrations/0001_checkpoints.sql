-- Where each projection is in the log, and which version of its tables and fold built it.
-- A projection whose code version differs from the stored one is rebuilt on start.
CREATE TABLE projection_checkpoints (
    name       text        PRIMARY KEY,
    position   bigint      NOT NULL DEFAULT 0,
    version    integer     NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
