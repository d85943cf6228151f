-- Version 1 (PostgreSQL): as schema_1.sql. Text is compared byte by byte (COLLATE "C") as SQLite
-- does, so ULID and ISO-time ranges sort the same on both whatever the database's locale.
CREATE TABLE meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE teams (
    id                    TEXT COLLATE "C" PRIMARY KEY,
    name                  TEXT NOT NULL,
    active                INTEGER NOT NULL DEFAULT 1,
    daily_limit           BIGINT,
    monthly_limit         BIGINT,
    monthly_budget        BIGINT,
    rate_limit_per_second DOUBLE PRECISION,
    callback_url          TEXT,
    webhook_secret        TEXT NOT NULL,
    created_at            TEXT COLLATE "C" NOT NULL
);

CREATE TABLE messages (
    id                  TEXT COLLATE "C" PRIMARY KEY,
    batch_id            TEXT COLLATE "C" NOT NULL,
    team_id             TEXT COLLATE "C" NOT NULL REFERENCES teams(id),
    recipient           TEXT COLLATE "C" NOT NULL,
    text                TEXT NOT NULL,
    sender              TEXT,
    reference           TEXT COLLATE "C",
    callback_url        TEXT,
    status              TEXT COLLATE "C" NOT NULL,
    segments            INTEGER NOT NULL,
    encoding            TEXT NOT NULL,
    charged_segments    INTEGER NOT NULL,
    cost                BIGINT NOT NULL,
    provider_message_id TEXT COLLATE "C",
    error_code          TEXT,
    error_detail        TEXT,
    day                 TEXT COLLATE "C" NOT NULL,
    month               TEXT COLLATE "C" NOT NULL,
    created_at          TEXT COLLATE "C" NOT NULL,
    sent_at             TEXT COLLATE "C",
    completed_at        TEXT COLLATE "C",
    events              TEXT NOT NULL
);
CREATE INDEX messages_team ON messages(team_id, id);
CREATE INDEX messages_team_status ON messages(team_id, status, id);
CREATE INDEX messages_team_recipient ON messages(team_id, recipient, id);
CREATE INDEX messages_team_reference ON messages(team_id, reference, id) WHERE reference IS NOT NULL;
CREATE INDEX messages_team_batch ON messages(team_id, batch_id, id);
CREATE INDEX messages_provider_id ON messages(provider_message_id) WHERE provider_message_id IS NOT NULL;
CREATE INDEX messages_sending ON messages(status) WHERE status = 'sending';

CREATE TABLE usage (
    team_id  TEXT COLLATE "C" NOT NULL REFERENCES teams(id),
    period   TEXT COLLATE "C" NOT NULL,
    messages BIGINT NOT NULL DEFAULT 0,
    segments BIGINT NOT NULL DEFAULT 0,
    cost     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (team_id, period)
);
