-- Version 15: governance (SPEC 8), the audit log and usage alerts.

-- Every configuration change, appended in the change's own transaction. `seq` orders the chain;
-- each entry's `hash` is SHA-256 over the previous entry's hash and the entry's canonical form
-- (store/audit.py), so an entry altered or removed breaks the chain at that entry.
CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY,
    at         TEXT NOT NULL,           -- the database's clock
    actor      TEXT NOT NULL,           -- the token's sub, or cli:<OS user>
    source     TEXT NOT NULL,           -- api | dashboard | cli | gateway
    client     TEXT,                    -- the client's address
    request_id TEXT,
    action     TEXT NOT NULL,           -- team.created, team.updated, webhook.retried, ...
    target     TEXT NOT NULL,           -- what changed: a team id, a webhook id
    team_id    TEXT,                    -- the team it concerns, for the team's history
    before     TEXT,                    -- JSON: the changed fields as they were (no secrets)
    after      TEXT,                    -- JSON: the changed fields as they are now
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX audit_team ON audit_log(team_id, seq);
CREATE INDEX audit_actor ON audit_log(actor, seq);
CREATE INDEX audit_action ON audit_log(action, seq);
CREATE INDEX audit_at ON audit_log(at);

-- The chain's head: the last entry's seq and hash. Every append moves it in the same
-- transaction, which serialises appends and lets `audit verify` notice a removed last entry.
CREATE TABLE audit_head (
    one  INTEGER PRIMARY KEY CHECK (one = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (one, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TRIGGER audit_log_append_only_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_append_only_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_head_kept BEFORE DELETE ON audit_head
BEGIN
    SELECT RAISE(ABORT, 'audit_head is kept');
END;

-- Usage alerts: each thresholds' crossing, and each refusal for a limit, at most once per team,
-- period and kind; the primary key is what makes it once, across replicas and concurrent sends.
ALTER TABLE teams ADD COLUMN alert_thresholds TEXT NOT NULL DEFAULT '[80,100]';
CREATE TABLE usage_alerts (
    team_id     TEXT NOT NULL REFERENCES teams(id),
    period      TEXT NOT NULL,          -- YYYY-MM-DD (daily) or YYYY-MM (monthly, budget)
    limit_kind  TEXT NOT NULL,          -- daily | monthly | budget
    type        TEXT NOT NULL,          -- usage.threshold_reached | usage.limit_reached
    threshold   INTEGER NOT NULL,       -- percent of the limit (100 for limit_reached)
    limit_value INTEGER NOT NULL,
    used        INTEGER NOT NULL,       -- the use the crossing send (or refusal) found
    at          TEXT NOT NULL,
    PRIMARY KEY (team_id, period, limit_kind, type, threshold)
) WITHOUT ROWID;
CREATE INDEX usage_alerts_at ON usage_alerts(at);

-- An alert's webhook belongs to no message: message_id becomes optional (SQLite rebuilds the
-- table to drop a NOT NULL).
CREATE TABLE webhooks_15 (
    id              TEXT PRIMARY KEY,
    message_id      TEXT REFERENCES messages(id),
    team_id         TEXT NOT NULL REFERENCES teams(id),
    type            TEXT NOT NULL,
    url             TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    delivered_at    TEXT,
    kind            TEXT NOT NULL DEFAULT 'webhook',  -- webhook | dlr | operator
    claimed_by      TEXT,
    claim_until     TEXT,
    trace           TEXT
);
INSERT INTO webhooks_15 (id, message_id, team_id, type, url, payload, status, attempts,
    next_attempt_at, last_status, last_error, created_at, delivered_at, kind, claimed_by,
    claim_until, trace)
SELECT id, message_id, team_id, type, url, payload, status, attempts, next_attempt_at,
    last_status, last_error, created_at, delivered_at, kind, claimed_by, claim_until, trace
FROM webhooks;
DROP TABLE webhooks;
ALTER TABLE webhooks_15 RENAME TO webhooks;
CREATE INDEX webhooks_status ON webhooks(status, id);
CREATE INDEX webhooks_message ON webhooks(message_id);
CREATE INDEX webhooks_claimed ON webhooks(claim_until) WHERE claim_until IS NOT NULL;
CREATE INDEX webhooks_pending ON webhooks(status, next_attempt_at) WHERE status = 'pending';
