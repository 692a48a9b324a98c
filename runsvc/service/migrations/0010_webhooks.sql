-- Webhooks: checkpointed consumers of the event log that POST matching events to a URL.
-- Configuration lives here, not in the log, so that the signing secret never reaches the
-- log (it is stored as given; encrypting secrets at rest is a later change).
--
-- `position` is the checkpoint: every matching event up to it was accepted (2xx) by the
-- receiver. It moves only under the delivering process's lease (`lease_owner` with
-- `lease_expires_at` in the future), so a process that lost its lease cannot move it.
-- `failing_since` is the first failed attempt of the current streak on the event after
-- `position`; past the retry window the webhook turns `failing` and waits to be resumed.
CREATE TABLE webhooks (
    id               text        PRIMARY KEY,
    url              text        NOT NULL,
    group_prefix     text        NOT NULL,
    types            text[]      NOT NULL,
    secret           text        NOT NULL,
    created_by       text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    position         bigint      NOT NULL,
    state            text        NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'failing')),
    attempts         integer     NOT NULL DEFAULT 0,
    failing_since    timestamptz,
    last_error       text,
    last_delivered_at timestamptz,
    lease_owner      text,
    lease_expires_at timestamptz
);

-- Recent delivery attempts of each webhook (never the response body); the newest few
-- hundred per webhook are kept.
CREATE TABLE webhook_deliveries (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id  text        NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    position    bigint      NOT NULL,
    event_type  text        NOT NULL,
    attempt     integer     NOT NULL,
    at          timestamptz NOT NULL,
    outcome     text        NOT NULL,
    latency_ms  double precision NOT NULL,
    status_code integer,
    error       text
);
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, id DESC);
