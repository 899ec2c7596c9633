-- UpdateUser (2 fields) with the least SQL a client can send once the change feed is part of the job: the
-- least script (update_user_least.sql) plus what the feed adds, the user's advisory lock before the row lock
-- (it keeps each user's events in revision order across transactions) and the event row holding the user as
-- the change left it (a snapshot the size of a seeded user's, about 700 bytes of JSON).
\set n random(0, :users - 1)
BEGIN;
SELECT pg_advisory_xact_lock(:n);
UPDATE users SET given_name = 'pgbench ' || :n, description = 'pgbench ' || :n, update_time = now(), revision = revision + 1 WHERE id = '00000000-0000-4000-8000-' || lpad(to_hex(:n::bigint), 12, '0') RETURNING id, revision \gset
INSERT INTO user_revisions (user_id, revision, actor, update_mask, create_time, before_values, after_values) VALUES (:id, :revision, 'pgbench', '["given_name","description"]', now(), '{"given_name":"before","description":"before"}', '{"given_name":"after","description":"after"}');
INSERT INTO user_events (user_id, revision, event_type, actor, update_mask, create_time, snapshot) VALUES (:id, :revision, 'UPDATED', 'pgbench', '["given_name","description"]', now(), '{"id":"' || :id || '","user":"' || repeat('x', 640) || '"}');
COMMIT;
