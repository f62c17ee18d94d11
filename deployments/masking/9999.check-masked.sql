-- Fail the refresh (the masking transaction rolls back, the old staging stays) if anything personal is left.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM users
               WHERE phone_e164 <> '+1555' || lpad(id::text, 11, '0')
                  OR email <> 'user' || id || '@example.invalid'
                  OR display_name <> 'User ' || id) THEN
        RAISE EXCEPTION 'masking check failed: users holds unmasked phone numbers, emails or names';
    END IF;
    IF EXISTS (SELECT 1 FROM devices WHERE push_token IS NOT NULL) THEN
        RAISE EXCEPTION 'masking check failed: devices holds push tokens';
    END IF;
    IF EXISTS (SELECT 1 FROM phone_otp_codes) OR EXISTS (SELECT 1 FROM revoked_auth_tokens) THEN
        RAISE EXCEPTION 'masking check failed: one-time codes or revoked tokens are left';
    END IF;
END
$$;
