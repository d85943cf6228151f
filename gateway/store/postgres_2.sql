-- Version 2 (PostgreSQL): as schema_2.sql.
CREATE TABLE idempotency (
    team_id      TEXT COLLATE "C" NOT NULL REFERENCES teams(id),
    key          TEXT COLLATE "C" NOT NULL,
    request_hash TEXT NOT NULL,
    batch_id     TEXT COLLATE "C",
    state        TEXT COLLATE "C" NOT NULL,
    status       INTEGER,
    content_type TEXT,
    body         TEXT,
    created_at   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (team_id, key)
);
CREATE INDEX idempotency_created ON idempotency(created_at);
