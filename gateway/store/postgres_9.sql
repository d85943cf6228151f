-- Version 9 (PostgreSQL): as schema_9.sql, and gateway_reserve() learns queued sends: the
-- messages' first status (`sending` under the owner's lease, or `queued`/`scheduled` with no
-- owner, a due time and an expiry), and an Idempotency-Key answered at once (a queued send's 202).
ALTER TABLE messages ADD COLUMN due_at TEXT COLLATE "C";
ALTER TABLE messages ADD COLUMN next_attempt_at TEXT COLLATE "C";
ALTER TABLE messages ADD COLUMN expires_at TEXT COLLATE "C";
ALTER TABLE messages ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
CREATE INDEX messages_next_attempt ON messages(next_attempt_at, id)
    WHERE status IN ('queued', 'scheduled');
CREATE INDEX messages_waiting_due ON messages(due_at) WHERE status IN ('queued', 'scheduled');
CREATE INDEX messages_expiring ON messages(expires_at) WHERE status IN ('queued', 'scheduled');

CREATE TABLE dispatcher (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT COLLATE "C",
    until  DOUBLE PRECISION NOT NULL
);
INSERT INTO dispatcher (id, holder, until) VALUES (1, NULL, 0);

DROP FUNCTION gateway_reserve(TEXT, TEXT, TEXT, BIGINT, BIGINT, BIGINT, TEXT, TEXT, TEXT, TEXT,
    TEXT, TEXT[], TEXT[], INTEGER[], BIGINT[], TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT);

CREATE FUNCTION gateway_reserve(
    p_team TEXT, p_month TEXT, p_day TEXT, p_messages BIGINT, p_segments BIGINT, p_cost BIGINT,
    p_key TEXT, p_request_hash TEXT, p_batch TEXT, p_created_at TEXT, p_owner TEXT,
    p_ids TEXT[], p_recipients TEXT[], p_message_segments INTEGER[], p_message_costs BIGINT[],
    p_text TEXT, p_sender TEXT, p_reference TEXT, p_callback_url TEXT, p_encoding TEXT,
    p_events TEXT, p_client_dlr TEXT,
    p_status TEXT, p_due_at TEXT, p_expires_at TEXT,
    p_key_status INTEGER, p_key_type TEXT, p_key_body TEXT
) RETURNS TEXT LANGUAGE plpgsql AS $$
DECLARE
    team teams%ROWTYPE;
BEGIN
    SELECT * INTO team FROM teams WHERE id = p_team;
    IF NOT FOUND OR team.active = 0 THEN
        RAISE EXCEPTION 'the team is disabled' USING ERRCODE = 'GW403';
    END IF;
    IF p_key IS NOT NULL THEN
        INSERT INTO idempotency (team_id, key, request_hash, batch_id, state, created_at, owner,
            status, content_type, body)
        VALUES (p_team, p_key, p_request_hash, p_batch,
            CASE WHEN p_key_body IS NULL THEN 'in_flight' ELSE 'done' END, p_created_at,
            CASE WHEN p_key_body IS NULL THEN p_owner END, p_key_status, p_key_type, p_key_body)
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            RETURN 'key_taken';  -- another request holds the key: nothing was changed
        END IF;
    END IF;
    INSERT INTO usage (team_id, period) VALUES (p_team, p_month), (p_team, p_day)
    ON CONFLICT DO NOTHING;
    UPDATE usage SET messages = messages + p_messages, segments = segments + p_segments,
        cost = cost + p_cost
    WHERE team_id = p_team AND period = p_month
        AND (team.monthly_limit IS NULL OR segments + p_segments <= team.monthly_limit)
        AND (team.monthly_budget IS NULL OR cost + p_cost <= team.monthly_budget);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'over the limit' USING ERRCODE = 'GW429';
    END IF;
    UPDATE usage SET messages = messages + p_messages, segments = segments + p_segments,
        cost = cost + p_cost
    WHERE team_id = p_team AND period = p_day
        AND (team.daily_limit IS NULL OR segments + p_segments <= team.daily_limit);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'over the limit' USING ERRCODE = 'GW429';
    END IF;
    INSERT INTO messages (id, batch_id, team_id, recipient, text, sender, reference, callback_url,
        status, segments, encoding, charged_segments, cost, day, month, created_at, events,
        client_dlr, owner, due_at, next_attempt_at, expires_at)
    SELECT m.id, p_batch, p_team, m.recipient, p_text, p_sender, p_reference, p_callback_url,
        p_status, m.segments, p_encoding, m.segments, m.cost, p_day, p_month, p_created_at,
        p_events, p_client_dlr, CASE WHEN p_status = 'sending' THEN p_owner END, p_due_at,
        p_due_at, p_expires_at
    FROM unnest(p_ids, p_recipients, p_message_segments, p_message_costs)
        AS m(id, recipient, segments, cost);
    RETURN 'reserved';
END;
$$;
