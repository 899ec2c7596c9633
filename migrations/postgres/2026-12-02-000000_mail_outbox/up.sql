-- E-mail verification (API §8). New tables only: the users table is at diesel's column limit, and tables the
-- previous release does not know are harmless to it.

-- Outstanding verification codes, stored only as their SHA-256 digest (the code itself is 256 random bits),
-- each bound to the address it was sent to (lower-cased, as `users.email_key`).
CREATE TABLE user_verification_codes (
    code_digest TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email_key   TEXT NOT NULL,
    create_time TIMESTAMP NOT NULL,
    expire_time TIMESTAMP NOT NULL
);
CREATE INDEX user_verification_codes_user ON user_verification_codes (user_id);

-- Per user: wrong codes since the last code was made (attempts under way included), and the last
-- SendVerificationEmail, for the once-a-minute limit. Stored, so both hold across processes.
CREATE TABLE user_verifications (
    user_id        TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    wrong_codes    INTEGER NOT NULL DEFAULT 0,
    last_sent_time TIMESTAMP
);

-- The transactional outbox: one row per mail to send, written in the transaction that asks for it. A job is
-- due when `next_attempt_time` has passed; a sender claims it by moving that time past its lease, so a crashed
-- sender's job is taken again once the lease ends. A sent job is deleted, so the table holds only what is
-- still to send and what was given up on (`failed_time`). No plaintext code is kept: the sender makes the code
-- when it renders the mail. No foreign key: a purged user's job is dropped by the sender, not by a cascade.
CREATE TABLE mail_outbox (
    id                TEXT PRIMARY KEY,
    user_id           TEXT NOT NULL,
    kind              TEXT NOT NULL,
    email             TEXT NOT NULL,
    create_time       TIMESTAMP NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_time TIMESTAMP NOT NULL,
    failed_time       TIMESTAMP,
    last_error        TEXT
);
CREATE INDEX mail_outbox_due ON mail_outbox (next_attempt_time) WHERE failed_time IS NULL;
