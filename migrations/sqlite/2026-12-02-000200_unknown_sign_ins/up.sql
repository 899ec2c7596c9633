-- Sign-in attempts that named nobody (an unknown id, e-mail or username), counted like a user's in
-- user_sign_ins: an unknown login then costs the same database write as a wrong password and is locked out
-- after the same 5 failures, so neither the answer's time nor the lockout tells whether someone is registered.
-- Keyed by a SHA-256 of the normalized login, so the table holds no address. Rows are pruned by the purge loop
-- once their last attempt is older than the longest lockout. A new table is harmless to the previous release.
CREATE TABLE unknown_sign_ins (
    login_digest  TEXT PRIMARY KEY,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until  TIMESTAMP,
    update_time   TIMESTAMP NOT NULL
);
CREATE INDEX unknown_sign_ins_update_time_idx ON unknown_sign_ins (update_time);
