-- Version 8 (PostgreSQL): a send's reservation in one call, run as its own transaction.
--
-- The team's counter rows are the one place every send of a team meets, and a row lock is held
-- until COMMIT. Run from the gateway as statements in a transaction, the lock was held across a
-- client round trip (the UPDATE's answer back to a busy event loop, then COMMIT), which capped a
-- team at about 500 sends/s. Here the lock is taken by the last statements and released at the
-- commit that follows at once on the server, and a send that fits costs one round trip. Same
-- rules as messages._reserve on SQLite: a disabled team is refused (GW403), the key is claimed
-- ('key_taken' if another request holds it), each counter moves only if it stays within the
-- team's limit (the month's row, then the day's: every writer locks a team's counters in that
-- order; GW429 otherwise), the messages are stored `sending`. A raise keeps nothing of it.
CREATE FUNCTION gateway_reserve(
    p_team TEXT, p_month TEXT, p_day TEXT, p_messages BIGINT, p_segments BIGINT, p_cost BIGINT,
    p_key TEXT, p_request_hash TEXT, p_batch TEXT, p_created_at TEXT, p_owner TEXT,
    p_ids TEXT[], p_recipients TEXT[], p_message_segments INTEGER[], p_message_costs BIGINT[],
    p_text TEXT, p_sender TEXT, p_reference TEXT, p_callback_url TEXT, p_encoding TEXT,
    p_events TEXT, p_client_dlr TEXT
) RETURNS TEXT LANGUAGE plpgsql AS $$
DECLARE
    team teams%ROWTYPE;
BEGIN
    SELECT * INTO team FROM teams WHERE id = p_team;
    IF NOT FOUND OR team.active = 0 THEN
        RAISE EXCEPTION 'the team is disabled' USING ERRCODE = 'GW403';
    END IF;
    IF p_key IS NOT NULL THEN
        INSERT INTO idempotency (team_id, key, request_hash, batch_id, state, created_at, owner)
        VALUES (p_team, p_key, p_request_hash, p_batch, 'in_flight', p_created_at, p_owner)
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
        client_dlr, owner)
    SELECT m.id, p_batch, p_team, m.recipient, p_text, p_sender, p_reference, p_callback_url,
        'sending', m.segments, p_encoding, m.segments, m.cost, p_day, p_month, p_created_at,
        p_events, p_client_dlr, p_owner
    FROM unnest(p_ids, p_recipients, p_message_segments, p_message_costs)
        AS m(id, recipient, segments, cost);
    RETURN 'reserved';
END;
$$;

-- A batch whose messages all went out (`sent`, no error, no Idempotency-Key to answer) settles
-- in one call: the same rows and counters as messages.settle_rows, with the batch's lock (see
-- outbox.lock_batch) taken first. Anything that needs more (a delivery report already waiting
-- for the batch, a row not `sending` under this owner) raises GW409 and changes nothing; the
-- gateway then settles the batch the general way.
CREATE FUNCTION gateway_settle_sent(
    p_owner TEXT, p_batch TEXT, p_team TEXT, p_month TEXT, p_day TEXT, p_at TEXT,
    p_ids TEXT[], p_provider_ids TEXT[], p_charged INTEGER[], p_costs BIGINT[],
    p_reserved_segments INTEGER[], p_reserved_costs BIGINT[]
) RETURNS TEXT LANGUAGE plpgsql AS $$
DECLARE
    d_messages BIGINT := 0;
    d_segments BIGINT := 0;
    d_cost BIGINT := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(p_batch));
    IF EXISTS (SELECT 1 FROM dlr_reports WHERE batch_id = p_batch AND outcome IS NULL) THEN
        RAISE EXCEPTION 'delivery reports wait for this batch' USING ERRCODE = 'GW409';
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        UPDATE messages SET status = 'sent', charged_segments = p_charged[i], cost = p_costs[i],
            provider_message_id = p_provider_ids[i], error_code = NULL, error_detail = NULL,
            owner = NULL, sent_at = p_at,
            events = left(events, -1) || ','
                || json_build_object('status', 'sent'::text, 'at', p_at)::text || ']'
        WHERE id = p_ids[i] AND status = 'sending' AND owner = p_owner;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'a message is not being sent by this process' USING ERRCODE = 'GW409';
        END IF;
        d_messages := d_messages
            + (CASE WHEN p_charged[i] > 0 OR p_costs[i] > 0 THEN 1 ELSE 0 END)
            - (CASE WHEN p_reserved_segments[i] > 0 OR p_reserved_costs[i] > 0 THEN 1 ELSE 0 END);
        d_segments := d_segments + p_charged[i] - p_reserved_segments[i];
        d_cost := d_cost + p_costs[i] - p_reserved_costs[i];
    END LOOP;
    IF d_messages <> 0 OR d_segments <> 0 OR d_cost <> 0 THEN
        INSERT INTO usage AS u (team_id, period, messages, segments, cost)
        VALUES (p_team, p_month, d_messages, d_segments, d_cost),
               (p_team, p_day, d_messages, d_segments, d_cost)
        ON CONFLICT (team_id, period) DO UPDATE SET messages = u.messages + excluded.messages,
            segments = u.segments + excluded.segments, cost = u.cost + excluded.cost;
    END IF;
    RETURN 'settled';
END;
$$;
