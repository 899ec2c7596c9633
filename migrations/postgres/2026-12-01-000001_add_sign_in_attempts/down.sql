DROP TABLE user_sign_ins;
