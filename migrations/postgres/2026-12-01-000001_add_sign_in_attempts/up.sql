-- Per user: consecutive failed sign-in checks (attempts under way included) and until when new ones are
-- refused. A table of its own: counting attempts never rewrites the user's row, and a new table is harmless
-- to the previous release.
CREATE TABLE user_sign_ins (
    user_id       TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until  TIMESTAMP
);
