DROP TABLE unknown_sign_ins;
