-- Roll back 0006: drop transactions.
-- squawk-ignore-file ban-drop-table
DROP TABLE IF EXISTS transactions;
