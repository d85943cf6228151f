-- Version 14 (PostgreSQL): the indexes schema_14.sql describes.
DROP INDEX webhooks_due;
CREATE INDEX webhooks_pending ON webhooks(status, next_attempt_at) WHERE status = 'pending';
CREATE INDEX dlr_reports_received ON dlr_reports(received_at);
