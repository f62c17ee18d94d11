-- Validate users_locale_format on existing rows (SHARE UPDATE EXCLUSIVE: reads and writes continue).
-- depends: 0009.add-users-locale
ALTER TABLE users VALIDATE CONSTRAINT users_locale_format;
