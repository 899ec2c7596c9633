-- Users, their label and role index tables (for filtering), and the revision log.
-- Times are UTC without zone; JSON values are TEXT so both backends share one query code path.
CREATE TABLE users (
    id              TEXT PRIMARY KEY,
    username        TEXT,
    email           TEXT NOT NULL,
    email_key       TEXT NOT NULL,
    email_verified  BOOLEAN NOT NULL DEFAULT FALSE,
    given_name      TEXT NOT NULL DEFAULT '',
    family_name     TEXT NOT NULL DEFAULT '',
    phone_number    TEXT NOT NULL DEFAULT '',
    national_id     TEXT NOT NULL DEFAULT '',
    address         TEXT NOT NULL DEFAULT '',
    birth_date      TEXT NOT NULL DEFAULT '',
    language_code   TEXT NOT NULL DEFAULT '',
    region_code     TEXT NOT NULL DEFAULT '',
    time_zone       TEXT NOT NULL DEFAULT '',
    image_uri       TEXT NOT NULL DEFAULT '',
    description     TEXT NOT NULL DEFAULT '',
    disabled        BOOLEAN NOT NULL DEFAULT FALSE,
    disabled_reason TEXT NOT NULL DEFAULT '',
    labels          TEXT NOT NULL DEFAULT '{}',
    roles           TEXT NOT NULL DEFAULT '[]',
    memberships     TEXT NOT NULL DEFAULT '[]',
    attributes      TEXT,
    valid_from      TIMESTAMP,
    expire_time     TIMESTAMP,
    password_hash   TEXT,
    create_time     TIMESTAMP NOT NULL,
    update_time     TIMESTAMP NOT NULL,
    delete_time     TIMESTAMP,
    purge_time      TIMESTAMP,
    revision        INTEGER NOT NULL,
    CONSTRAINT users_email_key_unique UNIQUE (email_key),
    CONSTRAINT users_username_unique UNIQUE (username)
);
CREATE INDEX users_create_time_idx ON users (create_time, id);
CREATE INDEX users_update_time_idx ON users (update_time, id);
CREATE INDEX users_purge_time_idx ON users (purge_time) WHERE purge_time IS NOT NULL;

CREATE TABLE user_labels (
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    label_key   TEXT NOT NULL,
    label_value TEXT NOT NULL,
    PRIMARY KEY (user_id, label_key)
);
CREATE INDEX user_labels_key_value_idx ON user_labels (label_key, label_value);

CREATE TABLE user_roles (
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role    TEXT NOT NULL,
    PRIMARY KEY (user_id, role)
);
CREATE INDEX user_roles_role_idx ON user_roles (role);

CREATE TABLE user_revisions (
    user_id       TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    revision      INTEGER NOT NULL,
    actor         TEXT NOT NULL,
    update_mask   TEXT NOT NULL,
    create_time   TIMESTAMP NOT NULL,
    before_values TEXT NOT NULL,
    after_values  TEXT NOT NULL,
    PRIMARY KEY (user_id, revision)
);
