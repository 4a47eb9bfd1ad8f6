-- Run state shared by several secureclaw servers and workers. The database holds what a
-- state directory's vault.redb holds and no more: table and row names are keyed hashes, every
-- value and ledger record is sealed (AES-256-GCM) by the nodes, which alone hold the keys.
-- The only plain columns are those the work queue must read: states, lease owners (random
-- worker ids), deadlines, attempt counts and times.

-- The schema version the nodes check at start (sqlx's own table records the migrations).
CREATE TABLE sc_schema (
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    version integer NOT NULL
);
INSERT INTO sc_schema (version) VALUES (1);

-- The vault header every node unlocks with the shared passphrase: vault id, Argon2id
-- parameters and salt, key-check value and the wrapped root key. Nothing secret.
CREATE TABLE sc_vault (
    id         boolean PRIMARY KEY DEFAULT true CHECK (id),
    header     bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Sealed rows: runs, events, parked runs, retries, approvals, accounts... by keyed names.
CREATE TABLE sc_rows (
    tbl     text  NOT NULL,
    row_key bytea NOT NULL,
    value   bytea NOT NULL,
    PRIMARY KEY (tbl, row_key)
);

-- The ledger: one HMAC chain, each record `mac || canonical entry` sealed.
CREATE TABLE sc_ledger (
    seq    bigint PRIMARY KEY CHECK (seq > 0),
    record bytea  NOT NULL
);

-- The ledger's sealed head (count and last mac). Appends lock this row, so they are
-- serialised by the database and the chain never forks.
CREATE TABLE sc_ledger_head (
    id   boolean PRIMARY KEY DEFAULT true CHECK (id),
    head bytea NOT NULL
);

-- Encryptions under the current data key, counted for all nodes together so the random-nonce
-- limit holds for the whole cluster. Every commit locks and advances it.
CREATE TABLE sc_counter (
    id    boolean PRIMARY KEY DEFAULT true CHECK (id),
    epoch bigint NOT NULL CHECK (epoch >= 0),
    used  bigint NOT NULL CHECK (used >= 0)
);
INSERT INTO sc_counter (epoch, used) VALUES (0, 0);

-- The work queue. `payload` is sealed; `kind` is one of a few fixed words.
CREATE TABLE sc_jobs (
    id           uuid PRIMARY KEY,
    kind         text        NOT NULL,
    payload      bytea       NOT NULL,
    state        text        NOT NULL DEFAULT 'queued'
                 CHECK (state IN ('queued', 'running', 'done', 'interrupted')),
    owner        text,
    lease_until  timestamptz,
    attempts     integer     NOT NULL DEFAULT 0,
    -- A key the submitter chose (a webhook delivery id's keyed hash, a schedule's fire time):
    -- the same work submitted twice, by any replica, is queued once.
    dedup        bytea UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    claimed_at   timestamptz,
    finished_at  timestamptz
);
CREATE INDEX sc_jobs_queued ON sc_jobs (created_at) WHERE state = 'queued';
CREATE INDEX sc_jobs_leases ON sc_jobs (lease_until) WHERE state = 'running';
