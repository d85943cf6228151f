-- Version 7: the dashboard's sign-in sessions, kept on the server so that signing out (or the
-- admin token's expiry) ends them for every process.
CREATE TABLE dashboard_sessions (
    id_hash    TEXT PRIMARY KEY,  -- SHA-256 of the cookie's value; the value itself is not kept
    data       TEXT NOT NULL,     -- JSON: who signed in, until when, the CSRF token
    expires_at TEXT NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions(expires_at);
