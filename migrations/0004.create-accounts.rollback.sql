-- Roll back 0004: drop accounts.
-- squawk-ignore-file ban-drop-table
DROP TABLE IF EXISTS accounts;
