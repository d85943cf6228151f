-- Version 15 (PostgreSQL): governance (SPEC 8), as schema_15.sql describes: the audit log
-- (append-only: a trigger refuses UPDATE, DELETE and TRUNCATE), usage alerts, and
-- gateway_reserve_group() queueing an alert's webhooks in the reservation's own transaction.
CREATE TABLE audit_log (
    seq        BIGINT PRIMARY KEY,
    at         TEXT COLLATE "C" NOT NULL,
    actor      TEXT NOT NULL,
    source     TEXT NOT NULL,
    client     TEXT,
    request_id TEXT,
    action     TEXT COLLATE "C" NOT NULL,
    target     TEXT NOT NULL,
    team_id    TEXT COLLATE "C",
    before     TEXT,
    after      TEXT,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX audit_team ON audit_log(team_id, seq);
CREATE INDEX audit_actor ON audit_log(actor, seq);
CREATE INDEX audit_action ON audit_log(action, seq);
CREATE INDEX audit_at ON audit_log(at);

CREATE TABLE audit_head (
    one  INTEGER PRIMARY KEY CHECK (one = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (one, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE OR REPLACE FUNCTION gateway_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION gateway_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION gateway_append_only();
CREATE TRIGGER audit_head_kept BEFORE DELETE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION gateway_append_only();
CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION gateway_append_only();

ALTER TABLE teams ADD COLUMN alert_thresholds TEXT NOT NULL DEFAULT '[80,100]';
CREATE TABLE usage_alerts (
    team_id     TEXT COLLATE "C" NOT NULL REFERENCES teams(id),
    period      TEXT COLLATE "C" NOT NULL,
    limit_kind  TEXT COLLATE "C" NOT NULL,
    type        TEXT COLLATE "C" NOT NULL,
    threshold   INTEGER NOT NULL,
    limit_value BIGINT NOT NULL,
    used        BIGINT NOT NULL,
    at          TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (team_id, period, limit_kind, type, threshold)
);
CREATE INDEX usage_alerts_at ON usage_alerts(at);

ALTER TABLE webhooks ALTER COLUMN message_id DROP NOT NULL;

-- A ULID (store/ids.py's layout: 48 bits of milliseconds, 80 random bits, Crockford base32) for
-- the webhooks this schema's functions queue, so they sort by time among the others.
CREATE OR REPLACE FUNCTION gateway_ulid(p_at TIMESTAMPTZ) RETURNS TEXT LANGUAGE plpgsql AS $$
DECLARE
    alphabet CONSTANT TEXT := '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
    ms BIGINT := floor(extract(epoch FROM p_at) * 1000)::BIGINT;
    result TEXT := '';
    k INTEGER;
BEGIN
    FOR k IN REVERSE 9..0 LOOP
        result := result || substr(alphabet, ((ms >> (k * 5)) & 31)::INTEGER + 1, 1);
    END LOOP;
    FOR k IN 1..16 LOOP
        result := result || substr(alphabet, floor(random() * 32)::INTEGER + 1, 1);
    END LOOP;
    RETURN result;
END;
$$;

-- One alert: its row (the primary key makes it once per team, period, kind and threshold), and,
-- if the row is new, its webhook to the team's URL and to the operator's (kind `operator`,
-- signed with the operator's secret). store/alerts.py is the same rule for SQLite.
CREATE OR REPLACE FUNCTION gateway_usage_alert(p_team teams, p_period TEXT, p_kind TEXT,
    p_type TEXT, p_threshold INTEGER, p_limit BIGINT, p_used BIGINT, p_clock TIMESTAMPTZ,
    p_operator_url TEXT) RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
    v_at TEXT := to_char(p_clock AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
    v_payload TEXT;
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
END;
$$;

-- The thresholds a reservation carried use across: `before` to `after` of `p_limit`.
CREATE OR REPLACE FUNCTION gateway_usage_crossings(p_team teams, p_period TEXT, p_kind TEXT,
    p_limit BIGINT, p_before BIGINT, p_after BIGINT, p_clock TIMESTAMPTZ, p_operator_url TEXT)
    RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
    v_threshold INTEGER;
BEGIN
    IF p_limit IS NULL OR p_after = p_before THEN
        RETURN;
    END IF;
    FOR v_threshold IN
        SELECT value::INTEGER FROM jsonb_array_elements_text(p_team.alert_thresholds::jsonb)
    LOOP
        IF p_before * 100 < v_threshold * p_limit AND p_after * 100 >= v_threshold * p_limit THEN
            PERFORM gateway_usage_alert(p_team, p_period, p_kind, 'usage.threshold_reached',
                v_threshold, p_limit, p_after, p_clock, p_operator_url);
        END IF;
    END LOOP;
END;
$$;

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
