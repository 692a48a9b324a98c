-- The event log: one row per event, ordered globally by `position` and per stream by
-- `version`. Positions are assigned by eventlog_append() under a transaction-scoped
-- advisory lock, so a reader paging by position never passes over a gap that a slower
-- transaction fills later (see eventlog/store.py).
CREATE TABLE events (
    position  bigint  PRIMARY KEY,
    stream    text    NOT NULL,
    version   integer NOT NULL,
    event_id  uuid    NOT NULL,
    type      text    NOT NULL,
    data      bytea   NOT NULL,
    meta      bytea   NOT NULL,
    -- sha256 over the previous event's hash in the same stream and this event's content.
    hash      bytea   NOT NULL,
    -- An optional hierarchical label of the stream (the run service puts the run's group
    -- path here) so subscribers can filter by prefix without decoding payloads.
    scope     text,
    CONSTRAINT events_stream_version UNIQUE (stream, version),
    CONSTRAINT events_event_id UNIQUE (event_id),
    CONSTRAINT events_version_positive CHECK (version > 0)
);

-- Appends one group-committed batch. `head_streams`/`head_versions` name, for every stream
-- the batch writes to, the version the caller computed its hashes against. If any stream
-- is elsewhere (another process appended in between), nothing is written and the moved
-- streams are returned with their actual versions; the caller re-reads and retries.
-- On success one row comes back with conflict_stream NULL and the first position written.
CREATE FUNCTION eventlog_append(
    head_streams  text[],
    head_versions integer[],
    e_stream      text[],
    e_version     integer[],
    e_id          uuid[],
    e_type        text[],
    e_data        bytea[],
    e_meta        bytea[],
    e_hash        bytea[],
    e_scope       text[]
) RETURNS TABLE (conflict_stream text, actual_version integer, first_position bigint)
LANGUAGE plpgsql AS $$
DECLARE
    head bigint;
BEGIN
    -- The one serialization point of the log: held from here to commit, so positions are
    -- handed out in commit order. PostgreSQL makes a transaction visible before it releases
    -- its locks, so when the next appender reads max(position) below, everything up to it
    -- is already visible to every new snapshot.
    PERFORM pg_advisory_xact_lock(7310120241);

    RETURN QUERY
        SELECT h.s, coalesce(cur.version, 0), NULL::bigint
        FROM unnest(head_streams, head_versions) AS h(s, v)
        LEFT JOIN LATERAL (
            SELECT ev.version FROM events ev
            WHERE ev.stream = h.s ORDER BY ev.version DESC LIMIT 1
        ) cur ON true
        WHERE coalesce(cur.version, 0) <> h.v;
    IF FOUND THEN
        RETURN;
    END IF;

    SELECT coalesce(max(ev.position), 0) INTO head FROM events ev;

    INSERT INTO events (position, stream, version, event_id, type, data, meta, hash, scope)
    SELECT head + t.n, t.s, t.v, t.id, t.ty, t.d, t.m, t.h, t.sc
    FROM unnest(e_stream, e_version, e_id, e_type, e_data, e_meta, e_hash, e_scope)
        WITH ORDINALITY AS t(s, v, id, ty, d, m, h, sc, n);

    -- One notification per transaction, carrying only the new head; listeners read the
    -- events from the table, so a lost or coalesced notification loses nothing.
    PERFORM pg_notify('eventlog', (head + cardinality(e_stream))::text);

    RETURN QUERY SELECT NULL::text, NULL::integer, head + 1;
END
$$;
