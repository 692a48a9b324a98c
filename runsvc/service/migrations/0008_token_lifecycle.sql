-- Tokens managed through the API: labels an executor token is bound to, an optional
-- expiry, and when each was last used (updated at most once a minute per process).
ALTER TABLE tokens
    ADD COLUMN labels       jsonb       NOT NULL DEFAULT '{}',
    ADD COLUMN expires_at   timestamptz,
    ADD COLUMN last_used_at timestamptz;
