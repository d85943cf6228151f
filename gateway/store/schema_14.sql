-- Version 14: indexes the workers' queries walk at any backlog (tests/test_worker_plans.py).
-- The webhook claim orders the pending by due time: with only webhooks_due (next_attempt_at,
-- partial) beside webhooks_status (status, id), SQLite took the latter and sorted every pending
-- row on each claim (50,000 waiting: 35 ms a claim; with this index 0.04 ms).
DROP INDEX webhooks_due;
CREATE INDEX webhooks_pending ON webhooks(status, next_attempt_at) WHERE status = 'pending';
-- Retention deletes delivery reports oldest first along their time, not by scanning the table.
CREATE INDEX dlr_reports_received ON dlr_reports(received_at);
