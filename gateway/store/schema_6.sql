-- Version 6: process leases. A message is `sending`, an Idempotency-Key `in_flight` and a webhook
-- claimed only under the lease of a live process; any process sweeps what a lapsed lease left.
CREATE TABLE processes (
    id           TEXT PRIMARY KEY,      -- prc_ + ULID, new at every start
    host         TEXT NOT NULL,         -- hostname/boot id/pid namespace: where `pid` means something
    pid          INTEGER NOT NULL,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL          -- the lease runs until heartbeat_at + the lease time
);

ALTER TABLE messages ADD COLUMN owner TEXT;       -- the process sending it, while `sending`
ALTER TABLE idempotency ADD COLUMN owner TEXT;    -- the process answering it, while `in_flight`
CREATE INDEX idempotency_in_flight ON idempotency(owner) WHERE state = 'in_flight';

ALTER TABLE webhooks ADD COLUMN claimed_by TEXT;  -- the process delivering it now
ALTER TABLE webhooks ADD COLUMN claim_until TEXT; -- after this, any process may claim it again

-- Drop-in clients' passwords were kept in clear; from now on only encrypted. The old clear copies
-- are removed (their DLRs carry an empty password).
UPDATE messages SET client_dlr = json_remove(client_dlr, '$.password')
    WHERE client_dlr IS NOT NULL;
UPDATE webhooks SET payload = json_set(payload, '$.password', '')
    WHERE kind = 'dlr' AND json_extract(payload, '$.password') IS NOT NULL;

CREATE INDEX webhooks_claimed ON webhooks(claim_until) WHERE claim_until IS NOT NULL;
