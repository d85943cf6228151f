-- Version 11 (PostgreSQL): the send path's two server-side calls take a group of sends at once.
-- Sends that reach a replica together are reserved in one call (one round trip, one COMMIT), and
-- those that went out are settled in one call, instead of one call each (store/postgres.py,
-- PostgresStore.call_grouped). Each send in a group is decided on its own, by the same rules as
-- the single calls they replace: its refusal is its entry in the returned array ('GW403' team
-- disabled, 'GW429' over a limit or the budget, 'GW409' settle it the general way), and it
-- leaves nothing behind. Locks are taken in one order (Idempotency-Keys by team and key, then
-- counters by team, month before day; batch locks by their number), so two groups on two
-- replicas wait for each other but do not deadlock; a deadlock with any other transaction rolls
-- the whole group back, and the gateway runs it again.
-- gateway_reserve() and gateway_settle_sent() stay: replicas still running the previous version
-- keep sending through them while a rolling upgrade restarts the replicas one by one.

-- p_items: one object a send (messages._reserve_item): team, month, day, messages, segments,
-- cost, key, hash, batch, at, owner, text, sender, reference, callback_url, encoding, events,
-- client_dlr, status, due_at, expires_at, key_status, key_type, key_body, and `rows`, one
-- object a message (id, recipient, segments, cost). Each send's entry in the result:
-- 'reserved', 'key_taken' (another request holds its key: nothing changed), 'GW403', 'GW429'.
CREATE FUNCTION gateway_reserve_group(p_items JSONB) RETURNS TEXT[] LANGUAGE plpgsql AS $$
DECLARE
    n INTEGER := jsonb_array_length(p_items);
    results TEXT[] := array_fill(NULL::TEXT, ARRAY[n]);
    keyed BOOLEAN[] := array_fill(false, ARRAY[n]);
    item JSONB;
    i INTEGER;
    team teams%ROWTYPE;
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
            CASE WHEN item->>'key_body' IS NULL THEN 'in_flight' ELSE 'done' END, item->>'at',
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
        client_dlr, owner, due_at, next_attempt_at, expires_at)
    SELECT m.id, it->>'batch', it->>'team', m.recipient, it->>'text', it->>'sender',
        it->>'reference', it->>'callback_url', it->>'status', m.segments, it->>'encoding',
        m.segments, m.cost, it->>'day', it->>'month', it->>'at', it->>'events',
        it->>'client_dlr', CASE WHEN it->>'status' = 'sending' THEN it->>'owner' END,
        it->>'due_at', it->>'due_at', it->>'expires_at'
    FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(it, ord),
        jsonb_to_recordset(it->'rows') AS m(id TEXT, recipient TEXT, segments INTEGER, cost BIGINT)
    WHERE results[ord::INTEGER] = 'reserved';
    RETURN results;
END;
$$;

-- p_items: one object a batch whose messages all went out (messages.settle_sent): owner, batch,
-- team, month, day, at, and `rows`, one object a message (id, provider_id, charged, cost,
-- reserved_segments, reserved_cost). The same rows and counters as messages.settle_rows, with
-- each batch's lock (outbox.lock_batch) taken first. A batch that needs more (a delivery report
-- waiting for it, a row not `sending` under this owner) gets 'GW409' and is left unchanged: the
-- gateway settles it the general way. The others get 'settled'.
CREATE FUNCTION gateway_settle_sent_group(p_items JSONB) RETURNS TEXT[] LANGUAGE plpgsql AS $$
DECLARE
    n INTEGER := jsonb_array_length(p_items);
    results TEXT[] := array_fill('settled'::TEXT, ARRAY[n]);
    item JSONB;
    r JSONB;
    i INTEGER;
    lock_key INTEGER;
    batches TEXT[];
    waiting TEXT[];
    ids TEXT[];
    rows_found BIGINT;
BEGIN
    -- Arrays and loops by primary key, not joins on the JSON: the planner cannot see how few
    -- rows a JSON array holds, and may scan the whole table for them.
    batches := ARRAY(SELECT it->>'batch' FROM jsonb_array_elements(p_items) AS e(it));
    FOR lock_key IN SELECT DISTINCT hashtext(b) FROM unnest(batches) AS b ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(lock_key);
    END LOOP;
    waiting := ARRAY(
        SELECT DISTINCT batch_id FROM dlr_reports
        WHERE batch_id = ANY(batches) AND outcome IS NULL);
    FOR i IN 1 .. n LOOP
        item := p_items -> (i - 1);
        IF item->>'batch' = ANY(waiting) THEN
            results[i] := 'GW409';
            CONTINUE;
        END IF;
        ids := ARRAY(SELECT x->>'id' FROM jsonb_array_elements(item->'rows') AS e(x));
        SELECT count(*) INTO rows_found FROM (
            SELECT 1 FROM messages
            WHERE id = ANY(ids) AND status = 'sending' AND owner = item->>'owner'
            FOR UPDATE
        ) AS mine;
        IF rows_found <> cardinality(ids) THEN
            results[i] := 'GW409';
            CONTINUE;
        END IF;
        FOR r IN SELECT x FROM jsonb_array_elements(item->'rows') AS e(x) LOOP
            UPDATE messages SET status = 'sent', charged_segments = (r->>'charged')::INTEGER,
                cost = (r->>'cost')::BIGINT, provider_message_id = r->>'provider_id',
                error_code = NULL, error_detail = NULL, owner = NULL, sent_at = item->>'at',
                events = left(events, -1) || ','
                    || json_build_object('status', 'sent'::text, 'at', item->>'at')::text || ']'
            WHERE id = r->>'id';
        END LOOP;
    END LOOP;
    INSERT INTO usage AS u (team_id, period, messages, segments, cost)
    SELECT d.team, d.period, sum(d.messages), sum(d.segments), sum(d.cost)
    FROM (
        SELECT it->>'team' AS team, p.period,
            (CASE WHEN r.charged > 0 OR r.cost > 0 THEN 1 ELSE 0 END)
                - (CASE WHEN r.reserved_segments > 0 OR r.reserved_cost > 0 THEN 1 ELSE 0 END)
                AS messages,
            r.charged - r.reserved_segments AS segments, r.cost - r.reserved_cost AS cost
        FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(it, ord),
            jsonb_to_recordset(it->'rows') AS r(charged INTEGER, cost BIGINT,
                reserved_segments INTEGER, reserved_cost BIGINT),
            LATERAL (VALUES (it->>'month'), (it->>'day')) AS p(period)
        WHERE results[ord::INTEGER] = 'settled'
    ) AS d
    GROUP BY d.team, d.period
    HAVING sum(d.messages) <> 0 OR sum(d.segments) <> 0 OR sum(d.cost) <> 0
    ORDER BY d.team, d.period
    ON CONFLICT (team_id, period) DO UPDATE SET messages = u.messages + excluded.messages,
        segments = u.segments + excluded.segments, cost = u.cost + excluded.cost;
    RETURN results;
END;
$$;
