-- Version 13: trace context (platform/tracing.py). A message keeps the W3C traceparent of the
-- request that sent it, and a webhook the one it continues, so its attempt joins the trace of
-- the send that caused it however much later (and on whichever replica) it is made. Null when
-- tracing is off.
ALTER TABLE messages ADD COLUMN trace TEXT;
ALTER TABLE webhooks ADD COLUMN trace TEXT;
