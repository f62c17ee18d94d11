-- Roll back 0007: drop revoked_auth_tokens (signed-out tokens become valid again until they expire).
-- squawk-ignore-file ban-drop-table
DROP TABLE IF EXISTS revoked_auth_tokens;
