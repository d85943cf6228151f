-- Version 17: webhook endpoints (SPEC 10).

-- A team's endpoints: each wants some event types and signs with its own secret. The secrets
-- are sealed with GATEWAY_SECRET_KEY (platform/secretbox.py), never stored in clear; after a
-- rotation the previous one signs too until previous_until (the database's clock).
CREATE TABLE webhook_endpoints (
    id              TEXT PRIMARY KEY,               -- wep_<ULID>
    team_id         TEXT NOT NULL REFERENCES teams(id),
    url             TEXT NOT NULL,
    events          TEXT NOT NULL,                  -- a JSON list of event types
    description     TEXT,
    secret          TEXT NOT NULL,                  -- sealed whsec_ secret
    previous_secret TEXT,                           -- sealed; valid until previous_until
    previous_until  TEXT,
    enabled         INTEGER NOT NULL DEFAULT 1,
    disabled_reason TEXT,                           -- gone (410) | failing | operator
    disabled_at     TEXT,
    failing_since   TEXT,                           -- the first failure since the last success
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX webhook_endpoints_team ON webhook_endpoints(team_id, id);

-- A delivery to an endpoint names it (a delivery to a callback_url names none); a deleted
-- endpoint's deliveries stay, as history, without it. Recover walks (endpoint, status, id).
ALTER TABLE webhooks ADD COLUMN endpoint_id TEXT REFERENCES webhook_endpoints(id) ON DELETE SET NULL;
CREATE INDEX webhooks_endpoint ON webhooks(endpoint_id, status, id);
-- The last attempt's duration and the start of its answer, copied to the attempt log below.
ALTER TABLE webhooks ADD COLUMN last_attempt_at TEXT;
ALTER TABLE webhooks ADD COLUMN last_duration_ms INTEGER;
ALTER TABLE webhooks ADD COLUMN last_response TEXT;

-- The pending in due order, ties by id (oldest first: a recover queues many due at once).
DROP INDEX webhooks_pending;
CREATE INDEX webhooks_pending ON webhooks(status, next_attempt_at, id) WHERE status = 'pending';

-- Every attempt of every delivery: written by the trigger below as the worker records the
-- attempt (one statement, as before), deleted with its delivery.
CREATE TABLE webhook_attempts (
    id          INTEGER PRIMARY KEY,
    webhook_id  TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,                   -- 1, 2, ... (a retry or recover starts again)
    at          TEXT NOT NULL,
    http_status INTEGER,
    error       TEXT,
    duration_ms INTEGER,
    response    TEXT                                -- the first 1 KB of the answer
);
CREATE INDEX webhook_attempts_webhook ON webhook_attempts(webhook_id, id);

CREATE TRIGGER webhooks_attempt_log AFTER UPDATE OF attempts ON webhooks
WHEN NEW.attempts > OLD.attempts
BEGIN
    INSERT INTO webhook_attempts (webhook_id, attempt, at, http_status, error, duration_ms,
        response)
    VALUES (NEW.id, NEW.attempts, COALESCE(NEW.last_attempt_at, NEW.created_at),
        NEW.last_status, NEW.last_error, NEW.last_duration_ms, NEW.last_response);
END;
