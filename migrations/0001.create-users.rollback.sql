-- Roll back 0001: drop users (and with it every email and phone number).
-- squawk-ignore-file ban-drop-table
DROP TABLE IF EXISTS users;
