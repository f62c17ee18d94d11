-- Add users.locale (nullable, so no table rewrite) and its format check, NOT VALID so no table scan.
-- depends: 0001.create-users
-- Existing rows are checked by 0010, in its own transaction, under a lock that lets writes through.
ALTER TABLE users ADD COLUMN locale text;
ALTER TABLE users
    ADD CONSTRAINT users_locale_format CHECK (locale ~ '^[a-z]{2}(-[A-Z]{2})?$') NOT VALID;
