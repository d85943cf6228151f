-- Version 4: delivery reports forwarded to drop-in provider clients (POST /api/v2/sms/send).
ALTER TABLE messages ADD COLUMN client_dlr TEXT;  -- JSON {"url", "username", "password"}
ALTER TABLE webhooks ADD COLUMN kind TEXT NOT NULL DEFAULT 'webhook';  -- webhook | dlr
