-- Version 12: one clock. Every time that one process writes and another compares is now the
-- database's (store/shared.py, NOW). A lease lapses only when its process missed a whole lease
-- of renewals while the sweeper itself renewed without a gap since `renewed_since`, so an outage
-- that stopped every process's renewals makes no live process look dead once it ends.
ALTER TABLE processes ADD COLUMN renewed_since TEXT;
UPDATE processes SET renewed_since = heartbeat_at;
