-- Version 2: idempotency keys, kept 24 hours per team.
CREATE TABLE idempotency (
    team_id      TEXT NOT NULL REFERENCES teams(id),
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    batch_id     TEXT,
    state        TEXT NOT NULL,          -- in_flight | done
    status       INTEGER,                -- the first answer, replayed while the key lives
    content_type TEXT,
    body         TEXT,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (team_id, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_created ON idempotency(created_at);
