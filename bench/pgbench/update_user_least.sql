-- UpdateUser (2 fields) with the least SQL a client can send: in one transaction, one UPDATE of the row that
-- bumps its revision and returns it, and one INSERT of the revision record. No read, no full-row write: the
-- floor the service's own statements are compared with.
\set n random(0, :users - 1)
BEGIN;
UPDATE users SET given_name = 'pgbench ' || :n, description = 'pgbench ' || :n, update_time = now(), revision = revision + 1 WHERE id = '00000000-0000-4000-8000-' || lpad(to_hex(:n::bigint), 12, '0') RETURNING id, revision \gset
INSERT INTO user_revisions (user_id, revision, actor, update_mask, create_time, before_values, after_values) VALUES (:id, :revision, 'pgbench', '["given_name","description"]', now(), '{"given_name":"before","description":"before"}', '{"given_name":"after","description":"after"}');
COMMIT;
