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
-- endpoint's deliveries stay, as history, without it. Recover walks (endpoint, status, id); the
-- index holds the endpoints' deliveries only, so a callback_url's costs nothing more to update.
ALTER TABLE webhooks ADD COLUMN endpoint_id TEXT REFERENCES webhook_endpoints(id) ON DELETE SET NULL;
CREATE INDEX webhooks_endpoint ON webhooks(endpoint_id, status, id) WHERE endpoint_id IS NOT NULL;
-- Every attempt of the delivery, a JSON list appended by the statement that records the attempt
-- (when, the HTTP status or the error, how long, the first 1 KB of the answer): no table or
-- index more to write per attempt, and it goes with its delivery.
ALTER TABLE webhooks ADD COLUMN attempt_log TEXT;

-- The pending in due order, ties by id (oldest first: a recover queues many due at once).
DROP INDEX webhooks_pending;
CREATE INDEX webhooks_pending ON webhooks(status, next_attempt_at, id) WHERE status = 'pending';
