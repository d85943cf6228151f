-- Version 5: delivery reports are matched by (batch_id, provider_message_id), which
-- messages_batch_provider covers; the index on provider_message_id alone only slowed writes.
DROP INDEX IF EXISTS messages_provider_id;
