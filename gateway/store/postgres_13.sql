-- Version 13 (PostgreSQL): trace context, as schema_13.sql says; gateway_reserve_group() stores
-- the item's `trace` with its messages (a replica of the previous version passes none: null).
ALTER TABLE messages ADD COLUMN trace TEXT;
ALTER TABLE webhooks ADD COLUMN trace TEXT;

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
        ELSE
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
                    OR cost + (item->>'cost')::BIGINT <= team.monthly_budget);
            IF NOT FOUND THEN
                results[i] := 'GW429';
            ELSE
                UPDATE usage SET messages = messages + (item->>'messages')::BIGINT,
                    segments = segments + (item->>'segments')::BIGINT,
                    cost = cost + (item->>'cost')::BIGINT
                WHERE team_id = team.id AND period = item->>'day'
                    AND (team.daily_limit IS NULL
                        OR segments + (item->>'segments')::BIGINT <= team.daily_limit);
                IF FOUND THEN
                    results[i] := 'reserved';
                ELSE
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
        client_dlr, owner, due_at, next_attempt_at, expires_at, trace)
    SELECT m.id, it->>'batch', it->>'team', m.recipient, it->>'text', it->>'sender',
        it->>'reference', it->>'callback_url', it->>'status', m.segments, it->>'encoding',
        m.segments, m.cost, it->>'day', it->>'month', it->>'at', it->>'events',
        it->>'client_dlr', CASE WHEN it->>'status' = 'sending' THEN it->>'owner' END,
        q.due_at, q.due_at,
        COALESCE(it->>'expires_at', CASE WHEN it->>'status' <> 'sending' THEN
            to_char((v_clock + make_interval(secs => (it->>'validity')::float8))
                AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') END),
        it->>'trace'
    FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(it, ord),
        jsonb_to_recordset(it->'rows') AS m(id TEXT, recipient TEXT, segments INTEGER, cost BIGINT),
        LATERAL (SELECT CASE WHEN it->>'status' <> 'sending'
            THEN COALESCE(it->>'due_at', v_now) END AS due_at) AS q
    WHERE results[ord::INTEGER] = 'reserved';
    RETURN results;
END;
$$;
