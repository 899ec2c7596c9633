DROP TABLE mail_outbox;
DROP TABLE user_verifications;
DROP TABLE user_verification_codes;
