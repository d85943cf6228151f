-- Version 5 (PostgreSQL): as schema_5.sql.
DROP INDEX IF EXISTS messages_provider_id;
