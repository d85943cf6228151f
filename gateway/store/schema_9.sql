-- Version 9: queued and scheduled sends. A queued message keeps its reservation in the counters
-- (like a message `sending`) until it settles, expires or is canceled.
ALTER TABLE messages ADD COLUMN due_at TEXT;           -- queued: accepted, or its send_at
ALTER TABLE messages ADD COLUMN next_attempt_at TEXT;  -- not handed over before (retries move it)
ALTER TABLE messages ADD COLUMN expires_at TEXT;       -- `expired` if still unsent then
ALTER TABLE messages ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;  -- calls that certainly did not take it
CREATE INDEX messages_next_attempt ON messages(next_attempt_at, id) WHERE status IN ('queued', 'scheduled');
CREATE INDEX messages_waiting_due ON messages(due_at) WHERE status IN ('queued', 'scheduled');
CREATE INDEX messages_expiring ON messages(expires_at) WHERE status IN ('queued', 'scheduled');

-- With GATEWAY_PROVIDER_MAX_RATE, one process at a time sends the queue and paces it: this row
-- names it (a process of `processes`) and how long its claim runs (epoch seconds).
CREATE TABLE dispatcher (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT,
    until  REAL NOT NULL
);
INSERT INTO dispatcher (id, holder, until) VALUES (1, NULL, 0);
