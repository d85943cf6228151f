-- Version 4 (PostgreSQL): as schema_4.sql.
ALTER TABLE messages ADD COLUMN client_dlr TEXT;
ALTER TABLE webhooks ADD COLUMN kind TEXT NOT NULL DEFAULT 'webhook';
