-- The change feed (WatchUsers): one row per committed change, written in the transaction of its revision.
-- No foreign key to users: a purge leaves its PURGED event behind, kept for the event retention like every other.
-- SQLite has one writer at a time, so the AUTOINCREMENT `seq` (never reused) is commit order; `txid` is always
-- 0 here and exists so both backends order by the same (txid, seq) key. See src/store/feed.rs.
CREATE TABLE user_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    txid        BIGINT NOT NULL DEFAULT 0,
    user_id     TEXT NOT NULL,
    revision    BIGINT NOT NULL,
    event_type  TEXT NOT NULL,
    actor       TEXT NOT NULL,
    update_mask TEXT NOT NULL,
    create_time TIMESTAMP NOT NULL,
    snapshot    TEXT
);
CREATE INDEX user_events_create_time_idx ON user_events (create_time);
