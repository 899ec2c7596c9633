DROP TABLE user_revisions;
DROP TABLE user_roles;
DROP TABLE user_labels;
DROP TABLE users;
