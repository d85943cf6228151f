-- Version 6 (PostgreSQL): as schema_6.sql. (SQLite's version 6 also removes clear passwords
-- that older versions kept; no PostgreSQL database ever held any.)
CREATE TABLE processes (
    id           TEXT COLLATE "C" PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   TEXT COLLATE "C" NOT NULL,
    heartbeat_at TEXT COLLATE "C" NOT NULL
);

ALTER TABLE messages ADD COLUMN owner TEXT COLLATE "C";
ALTER TABLE idempotency ADD COLUMN owner TEXT COLLATE "C";
CREATE INDEX idempotency_in_flight ON idempotency(owner) WHERE state = 'in_flight';

ALTER TABLE webhooks ADD COLUMN claimed_by TEXT COLLATE "C";
ALTER TABLE webhooks ADD COLUMN claim_until TEXT COLLATE "C";
CREATE INDEX webhooks_claimed ON webhooks(claim_until) WHERE claim_until IS NOT NULL;
