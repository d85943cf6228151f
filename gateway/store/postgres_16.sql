-- Version 16: what a team may send, and to whom (SPEC 9); the same tables as schema_16.sql, and
-- gateway_reserve_group() storing a send's metadata, purpose and test flag (a test send touches
-- no counter and no limit).
ALTER TABLE teams ADD COLUMN senders TEXT NOT NULL DEFAULT '[]';
UPDATE teams SET senders = COALESCE(
    (SELECT jsonb_agg(sender ORDER BY used DESC, sender)::TEXT FROM (
        SELECT sender, COUNT(*) AS used FROM messages
        WHERE messages.team_id = teams.id AND sender IS NOT NULL
        GROUP BY sender) AS s),
    '[]');

ALTER TABLE messages ADD COLUMN metadata TEXT;
ALTER TABLE messages ADD COLUMN purpose TEXT;
ALTER TABLE messages ADD COLUMN test INTEGER NOT NULL DEFAULT 0;
CREATE INDEX messages_test ON messages(team_id, id) WHERE test = 1;

CREATE TABLE suppressions (
    team_id    TEXT COLLATE "C" NOT NULL,
    number     TEXT COLLATE "C" NOT NULL,
    reason     TEXT,
    created_at TEXT COLLATE "C" NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (team_id, number)
);

CREATE OR REPLACE FUNCTION gateway_reserve_group(p_items JSONB) RETURNS TEXT[] LANGUAGE plpgsql AS $$
DECLARE
    n INTEGER := jsonb_array_length(p_items);
    results TEXT[] := array_fill(NULL::TEXT, ARRAY[n]);
    keyed BOOLEAN[] := array_fill(false, ARRAY[n]);
    item JSONB;
    i INTEGER;
    team teams%ROWTYPE;
    v_clock TIMESTAMPTZ := clock_timestamp();
    v_now TEXT := to_char(v_clock AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
    v_segments BIGINT;
    v_cost BIGINT;
    v_month_segments BIGINT;
    v_month_cost BIGINT;
    v_day_segments BIGINT;
BEGIN
    -- 1. Idempotency-Keys, in (team, key) order: a key another request holds ends that send.
    FOR i IN
        SELECT ord::INTEGER FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(it, ord)
        WHERE it->>'key' IS NOT NULL ORDER BY it->>'team', it->>'key', ord
    LOOP
        item := p_items -> (i - 1);
        INSERT INTO idempotency (team_id, key, request_hash, batch_id, state, created_at, owner,
            status, content_type, body)
        VALUES (item->>'team', item->>'key', item->>'hash', item->>'batch',
            CASE WHEN item->>'key_body' IS NULL THEN 'in_flight' ELSE 'done' END, v_now,
            CASE WHEN item->>'key_body' IS NULL THEN item->>'owner' END,
            (item->>'key_status')::INTEGER, item->>'key_type', item->>'key_body')
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            keyed[i] := true;
        ELSE
            results[i] := 'key_taken';
        END IF;
    END LOOP;
    -- 2. The team and its counters, in team order (month before day): a send that does not
    -- fit changes nothing (its month counter is put back, its key row removed).
    FOR i IN
        SELECT ord::INTEGER FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(it, ord)
        ORDER BY it->>'team', ord
    LOOP
        CONTINUE WHEN results[i] IS NOT NULL;
        item := p_items -> (i - 1);
        SELECT * INTO team FROM teams WHERE id = item->>'team';
        IF NOT FOUND OR team.active = 0 THEN
            results[i] := 'GW403';
        ELSIF (item->>'test')::BOOLEAN THEN
            results[i] := 'reserved';  -- a test token's send: no limit, counter or alert
        ELSE
            v_segments := (item->>'segments')::BIGINT;
            v_cost := (item->>'cost')::BIGINT;
            INSERT INTO usage (team_id, period)
            VALUES (team.id, item->>'month'), (team.id, item->>'day')
            ON CONFLICT DO NOTHING;
            UPDATE usage SET messages = messages + (item->>'messages')::BIGINT,
                segments = segments + (item->>'segments')::BIGINT,
                cost = cost + (item->>'cost')::BIGINT
            WHERE team_id = team.id AND period = item->>'month'
                AND (team.monthly_limit IS NULL
                    OR segments + (item->>'segments')::BIGINT <= team.monthly_limit)
                AND (team.monthly_budget IS NULL
                    OR cost + (item->>'cost')::BIGINT <= team.monthly_budget)
            RETURNING segments, cost INTO v_month_segments, v_month_cost;
            IF NOT FOUND THEN
                results[i] := 'GW429';
                SELECT segments, cost INTO v_month_segments, v_month_cost FROM usage
                WHERE team_id = team.id AND period = item->>'month';
                IF team.monthly_limit IS NOT NULL
                        AND v_month_segments + v_segments > team.monthly_limit THEN
                    PERFORM gateway_usage_alert(team, item->>'month', 'monthly',
                        'usage.limit_reached', 100, team.monthly_limit, v_month_segments,
                        v_clock, item->>'operator_url');
                ELSE
                    PERFORM gateway_usage_alert(team, item->>'month', 'budget',
                        'usage.limit_reached', 100, team.monthly_budget, v_month_cost,
                        v_clock, item->>'operator_url');
                END IF;
            ELSE
                UPDATE usage SET messages = messages + (item->>'messages')::BIGINT,
                    segments = segments + (item->>'segments')::BIGINT,
                    cost = cost + (item->>'cost')::BIGINT
                WHERE team_id = team.id AND period = item->>'day'
                    AND (team.daily_limit IS NULL
                        OR segments + (item->>'segments')::BIGINT <= team.daily_limit)
                RETURNING segments INTO v_day_segments;
                IF FOUND THEN
                    results[i] := 'reserved';
                    PERFORM gateway_usage_crossings(team, item->>'day', 'daily', team.daily_limit,
                        v_day_segments - v_segments, v_day_segments, v_clock,
                        item->>'operator_url');
                    PERFORM gateway_usage_crossings(team, item->>'month', 'monthly',
                        team.monthly_limit, v_month_segments - v_segments, v_month_segments,
                        v_clock, item->>'operator_url');
                    PERFORM gateway_usage_crossings(team, item->>'month', 'budget',
                        team.monthly_budget, v_month_cost - v_cost, v_month_cost, v_clock,
                        item->>'operator_url');
                ELSE
                    SELECT segments INTO v_day_segments FROM usage
                    WHERE team_id = team.id AND period = item->>'day';
                    PERFORM gateway_usage_alert(team, item->>'day', 'daily',
                        'usage.limit_reached', 100, team.daily_limit, v_day_segments, v_clock,
                        item->>'operator_url');
                    UPDATE usage SET messages = messages - (item->>'messages')::BIGINT,
                        segments = segments - (item->>'segments')::BIGINT,
                        cost = cost - (item->>'cost')::BIGINT
                    WHERE team_id = team.id AND period = item->>'month';
                    results[i] := 'GW429';
                END IF;
            END IF;
        END IF;
        IF results[i] <> 'reserved' AND keyed[i] THEN
            DELETE FROM idempotency WHERE team_id = item->>'team' AND key = item->>'key';
        END IF;
    END LOOP;
    -- 3. The messages of every send that was reserved.
    INSERT INTO messages (id, batch_id, team_id, recipient, text, sender, reference, callback_url,
        status, segments, encoding, charged_segments, cost, day, month, created_at, events,
        client_dlr, owner, due_at, next_attempt_at, expires_at, trace, metadata, purpose, test)
    SELECT m.id, it->>'batch', it->>'team', m.recipient, it->>'text', it->>'sender',
        it->>'reference', it->>'callback_url', it->>'status', m.segments, it->>'encoding',
        CASE WHEN (it->>'test')::BOOLEAN THEN 0 ELSE m.segments END, m.cost, it->>'day',
        it->>'month', it->>'at', it->>'events',
        it->>'client_dlr', CASE WHEN it->>'status' = 'sending' THEN it->>'owner' END,
        q.due_at, q.due_at,
        COALESCE(it->>'expires_at', CASE WHEN it->>'status' <> 'sending' THEN
            to_char((v_clock + make_interval(secs => (it->>'validity')::float8))
                AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') END),
        it->>'trace', it->>'metadata', it->>'purpose', CASE WHEN (it->>'test')::BOOLEAN THEN 1 ELSE 0 END
    FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(it, ord),
        jsonb_to_recordset(it->'rows') AS m(id TEXT, recipient TEXT, segments INTEGER, cost BIGINT),
        LATERAL (SELECT CASE WHEN it->>'status' <> 'sending'
            THEN COALESCE(it->>'due_at', v_now) END AS due_at) AS q
    WHERE results[ord::INTEGER] = 'reserved';
    RETURN results;
END;
$$;
