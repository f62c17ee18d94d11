-- Roll back 0005: drop categories, built-in ones included.
-- squawk-ignore-file ban-drop-table
DROP TABLE IF EXISTS categories;
