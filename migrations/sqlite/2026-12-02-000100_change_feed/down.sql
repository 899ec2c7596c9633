DROP TABLE user_events;
