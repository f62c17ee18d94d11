-- Roll back 0009: drop users.locale (its check goes with it). Deploy code that no longer reads it first.
-- squawk-ignore-file ban-drop-column
ALTER TABLE users DROP COLUMN IF EXISTS locale;
