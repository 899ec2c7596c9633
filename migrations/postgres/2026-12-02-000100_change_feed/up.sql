-- The change feed (WatchUsers): one row per committed change, written by the same statement as its revision.
-- No foreign key to users: a purge leaves its PURGED event behind, kept for the event retention like every other.
-- `txid` is the writing transaction's id (64-bit, epoch-extended, so it never wraps): a reader delivers only rows
-- whose transaction is below the oldest one still running (pg_snapshot_xmin), so a row can never commit behind
-- a cursor already delivered; `seq` orders the rows of one transaction. See src/store/feed.rs.
-- A new table is harmless to the previous release during a rolling deploy.
CREATE TABLE user_events (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY,
    txid        BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    user_id     TEXT NOT NULL,
    revision    BIGINT NOT NULL,
    event_type  TEXT NOT NULL,
    actor       TEXT NOT NULL,
    update_mask TEXT NOT NULL,
    create_time TIMESTAMP NOT NULL,
    snapshot    TEXT,
    PRIMARY KEY (txid, seq)
);
CREATE INDEX user_events_create_time_idx ON user_events (create_time);
