-- Version 17 (PostgreSQL): what schema_17.sql describes, and gateway_usage_alert()
-- queueing an alert for the team's endpoints that want it too.
CREATE TABLE webhook_endpoints (
    id              TEXT COLLATE "C" PRIMARY KEY,
    team_id         TEXT COLLATE "C" NOT NULL REFERENCES teams(id),
    url             TEXT NOT NULL,
    events          TEXT NOT NULL,
    description     TEXT,
    secret          TEXT NOT NULL,
    previous_secret TEXT,
    previous_until  TEXT COLLATE "C",
    enabled         INTEGER NOT NULL DEFAULT 1,
    disabled_reason TEXT,
    disabled_at     TEXT COLLATE "C",
    failing_since   TEXT COLLATE "C",
    created_at      TEXT COLLATE "C" NOT NULL,
    updated_at      TEXT COLLATE "C" NOT NULL
);
CREATE INDEX webhook_endpoints_team ON webhook_endpoints(team_id, id);

ALTER TABLE webhooks ADD COLUMN endpoint_id TEXT COLLATE "C"
    REFERENCES webhook_endpoints(id) ON DELETE SET NULL;
CREATE INDEX webhooks_endpoint ON webhooks(endpoint_id, status, id) WHERE endpoint_id IS NOT NULL;
ALTER TABLE webhooks ADD COLUMN attempt_log TEXT;

DROP INDEX webhooks_pending;
CREATE INDEX webhooks_pending ON webhooks(status, next_attempt_at, id) WHERE status = 'pending';

-- An alert also goes to each of the team's enabled endpoints that wants its type (the id of
-- such a delivery is the alert's own, then the endpoint's: store/outbox.py FAN_OUT).
CREATE OR REPLACE FUNCTION gateway_usage_alert(p_team teams, p_period TEXT, p_kind TEXT,
    p_type TEXT, p_threshold INTEGER, p_limit BIGINT, p_used BIGINT, p_clock TIMESTAMPTZ,
    p_operator_url TEXT) RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
    v_at TEXT := to_char(p_clock AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
    v_payload TEXT;
    v_id TEXT := 'whk_' || gateway_ulid(p_clock);
BEGIN
    INSERT INTO usage_alerts (team_id, period, limit_kind, type, threshold, limit_value, used, at)
    VALUES (p_team.id, p_period, p_kind, p_type, p_threshold, p_limit, p_used, v_at)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    v_payload := jsonb_build_object('type', p_type, 'timestamp', v_at, 'data',
        jsonb_build_object('team', p_team.id, 'period', p_period, 'limit_kind', p_kind,
            'threshold', p_threshold, 'limit', p_limit, 'used', p_used))::TEXT;
    INSERT INTO webhooks (id, message_id, team_id, type, url, payload, status, next_attempt_at,
        created_at, kind)
    SELECT 'whk_' || gateway_ulid(p_clock), NULL, p_team.id, p_type, t.url, v_payload,
        'pending', v_at, v_at, t.kind
    FROM (VALUES (p_team.callback_url, 'webhook'), (p_operator_url, 'operator')) AS t(url, kind)
    WHERE t.url IS NOT NULL AND t.url <> '';
    INSERT INTO webhooks (id, message_id, team_id, type, url, payload, status, next_attempt_at,
        created_at, kind, endpoint_id)
    SELECT v_id || '_' || substr(e.id, 5), NULL, p_team.id, p_type, e.url, v_payload,
        'pending', v_at, v_at, 'webhook', e.id
    FROM webhook_endpoints e
    WHERE e.team_id = p_team.id AND e.enabled = 1 AND e.events::jsonb ? p_type;
END;
$$;
