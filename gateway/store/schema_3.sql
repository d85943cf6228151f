-- Version 3: delivery reports from the provider, and the webhook queue to the teams.

-- Every report the provider sent, kept even when its message is not (yet) known. `outcome` is
-- null while the report waits for its message, `applied` once it moved the message, `ignored`
-- when the message was already final (or failed) and the report could not change it.
CREATE TABLE dlr_reports (
    id                  INTEGER PRIMARY KEY,
    batch_id            TEXT NOT NULL,
    provider_message_id TEXT NOT NULL,
    recipient           TEXT NOT NULL,
    state               TEXT NOT NULL,      -- D | U
    received_at         TEXT NOT NULL,
    outcome             TEXT,
    settled_at          TEXT,
    message_id          TEXT,
    UNIQUE (batch_id, provider_message_id, state)
);
CREATE INDEX dlr_reports_pending ON dlr_reports(batch_id) WHERE outcome IS NULL;
CREATE INDEX messages_batch_provider ON messages(batch_id, provider_message_id);

-- The webhook outbox: queued in the transaction that changes the message, delivered by a worker.
CREATE TABLE webhooks (
    id              TEXT PRIMARY KEY,       -- the stable webhook-id
    message_id      TEXT NOT NULL REFERENCES messages(id),
    team_id         TEXT NOT NULL REFERENCES teams(id),
    type            TEXT NOT NULL,
    url             TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL,          -- pending | delivered | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    delivered_at    TEXT
);
CREATE INDEX webhooks_due ON webhooks(next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhooks_status ON webhooks(status, id);
CREATE INDEX webhooks_message ON webhooks(message_id);
