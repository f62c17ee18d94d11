-- Devices: no push token survives (staging must never notify a real phone); device names can hold a person's
-- name ("Alice's iPhone").
UPDATE devices
SET push_token = NULL,
    name = CASE WHEN name IS NULL THEN NULL ELSE platform || ' device ' || id END;

-- One-time codes and revoked tokens are credentials (hashed or not): none is kept. Nothing references them.
TRUNCATE phone_otp_codes, revoked_auth_tokens;
