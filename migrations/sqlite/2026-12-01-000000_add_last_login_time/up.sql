-- When the user last signed in (VerifyPassword); NULL until then. Nullable, so the previous release's inserts
-- still succeed during a rolling deploy.
ALTER TABLE users ADD COLUMN last_login_time TIMESTAMP;
