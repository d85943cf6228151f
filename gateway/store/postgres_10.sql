-- Version 10 (PostgreSQL): every change to `teams` (through any replica, or the CLI) notifies the
-- channel `gateway_teams`, at its commit. Each replica listens and drops the teams it cached for
-- the send path (store/postgres.py, TeamCache); what a send must not get wrong (the team being
-- active, its limits and budget) is checked again inside gateway_reserve() all the same.
CREATE FUNCTION gateway_teams_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gateway_teams', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER teams_changed AFTER INSERT OR UPDATE OR DELETE ON teams
    FOR EACH STATEMENT EXECUTE FUNCTION gateway_teams_changed();
