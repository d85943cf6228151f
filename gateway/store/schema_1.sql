-- Version 1: teams, messages, per-period usage counters, gateway metadata.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE teams (
    id                    TEXT PRIMARY KEY,
    name                  TEXT NOT NULL,
    active                INTEGER NOT NULL DEFAULT 1,
    daily_limit           INTEGER,
    monthly_limit         INTEGER,
    monthly_budget        INTEGER,
    rate_limit_per_second REAL,
    callback_url          TEXT,
    webhook_secret        TEXT NOT NULL,
    created_at            TEXT NOT NULL
);

-- One row per recipient. `id` is a ULID, so ordering by id is ordering by creation time and every
-- list filter below is a range scan on one of these indexes.
CREATE TABLE messages (
    id                  TEXT PRIMARY KEY,
    batch_id            TEXT NOT NULL,
    team_id             TEXT NOT NULL REFERENCES teams(id),
    recipient           TEXT NOT NULL,
    text                TEXT NOT NULL,
    sender              TEXT,
    reference           TEXT,
    callback_url        TEXT,
    status              TEXT NOT NULL,
    segments            INTEGER NOT NULL,
    encoding            TEXT NOT NULL,
    charged_segments    INTEGER NOT NULL,   -- what this message counts against the quotas now
    cost                INTEGER NOT NULL,   -- RWF charged now (reserved estimate until settled)
    provider_message_id TEXT,
    error_code          TEXT,
    error_detail        TEXT,
    day                 TEXT NOT NULL,      -- quota periods the charge belongs to
    month               TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    sent_at             TEXT,
    completed_at        TEXT,
    events              TEXT NOT NULL       -- JSON list of {"status", "at"}
);
CREATE INDEX messages_team ON messages(team_id, id);
CREATE INDEX messages_team_status ON messages(team_id, status, id);
CREATE INDEX messages_team_recipient ON messages(team_id, recipient, id);
CREATE INDEX messages_team_reference ON messages(team_id, reference, id) WHERE reference IS NOT NULL;
CREATE INDEX messages_team_batch ON messages(team_id, batch_id, id);
CREATE INDEX messages_provider_id ON messages(provider_message_id) WHERE provider_message_id IS NOT NULL;
CREATE INDEX messages_sending ON messages(status) WHERE status = 'sending';

-- Usage counters: one row per team and period ('2026-11-24' for a day, '2026-11' for a month),
-- updated in the same transaction as the messages they count.
CREATE TABLE usage (
    team_id  TEXT NOT NULL REFERENCES teams(id),
    period   TEXT NOT NULL,
    messages INTEGER NOT NULL DEFAULT 0,
    segments INTEGER NOT NULL DEFAULT 0,
    cost     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (team_id, period)
) WITHOUT ROWID;
