-- Runs whose logs and artifacts retention has deleted (the run and its events stay).
CREATE TABLE output_deleted (
    run_id     text        PRIMARY KEY,
    deleted_at timestamptz NOT NULL DEFAULT now()
);
