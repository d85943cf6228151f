-- Version 7 (PostgreSQL): as schema_7.sql.
CREATE TABLE dashboard_sessions (
    id_hash    TEXT COLLATE "C" PRIMARY KEY,
    data       TEXT NOT NULL,
    expires_at TEXT COLLATE "C" NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions(expires_at);
