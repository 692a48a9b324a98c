-- Secrets, sealed (AES-256-GCM) by runsvc.infra.sealing: one row per name and group, its
-- value's ciphertext, the nonce it was sealed with and the id of the key that sealed it.
-- A deleted secret keeps its row without a value, so that a name set again continues its
-- versions (the log records versions, which must never name two values).
CREATE TABLE secrets (
    name         text        NOT NULL,
    secret_group text        NOT NULL,
    version      integer     NOT NULL,
    key_id       text,
    nonce        bytea,
    ciphertext   bytea,
    updated_by   text,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (secret_group, name),
    CHECK ((ciphertext IS NULL) = (key_id IS NULL) AND (ciphertext IS NULL) = (nonce IS NULL))
);

-- A known plaintext sealed under the key ring's key, so that a process started with the
-- wrong keys refuses to start even when no secret is set.
CREATE TABLE secrets_canary (
    id         boolean     PRIMARY KEY DEFAULT true CHECK (id),
    key_id     text        NOT NULL,
    nonce      bytea       NOT NULL,
    ciphertext bytea       NOT NULL
);
