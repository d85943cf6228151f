-- Version 16: what a team may send, and to whom (SPEC 9).

-- The sender IDs granted to the team, a JSON list, the first the default; `[]`: the gateway's
-- GATEWAY_PROVIDER_SENDER only. The upgrade grants each team the senders its stored messages
-- used, most used first, so nothing that worked before is refused.
ALTER TABLE teams ADD COLUMN senders TEXT NOT NULL DEFAULT '[]';
UPDATE teams SET senders = COALESCE(
    (SELECT json_group_array(sender) FROM (
        SELECT sender, COUNT(*) AS used FROM messages
        WHERE messages.team_id = teams.id AND sender IS NOT NULL
        GROUP BY sender ORDER BY used DESC, sender)),
    '[]');

-- A send's own data (a JSON object of strings, returned in the message and its webhooks), what
-- it is for (`otp` passes the team's own suppressions) and whether a test token sent it.
ALTER TABLE messages ADD COLUMN metadata TEXT;
ALTER TABLE messages ADD COLUMN purpose TEXT;
ALTER TABLE messages ADD COLUMN test INTEGER NOT NULL DEFAULT 0;
CREATE INDEX messages_test ON messages(team_id, id) WHERE test = 1;

-- Numbers not to be texted: for one team, or for every team (team_id '*'). The primary key is
-- the send's lookup (team, number), whatever the list's size.
CREATE TABLE suppressions (
    team_id    TEXT NOT NULL,           -- a team's id, or '*' for every team
    number     TEXT NOT NULL,           -- E.164, normalised as a recipient is
    reason     TEXT,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,           -- the actor that added it
    PRIMARY KEY (team_id, number)
) WITHOUT ROWID;
