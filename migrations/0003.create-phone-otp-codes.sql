-- Create phone_otp_codes: one-time codes sent by SMS to sign in or to change a phone number.
-- depends: 0001.create-users
-- Only a hash of each code is kept; a code is spent once, expires quickly and allows a few attempts.
CREATE TABLE phone_otp_codes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    phone_e164 text NOT NULL,
    user_id bigint REFERENCES users (id) ON DELETE CASCADE,
    purpose text NOT NULL,
    code_hash bytea NOT NULL,
    -- a counter checked to 0..5, not an id that could run out
    -- squawk-ignore prefer-bigint-over-smallint
    attempts smallint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    consumed_at timestamptz,
    CONSTRAINT phone_otp_codes_phone_e164_format CHECK (phone_e164 ~ '^\+[1-9][0-9]{6,14}$'),
    CONSTRAINT phone_otp_codes_purpose_known CHECK (purpose IN ('sign_in', 'change_phone')),
    CONSTRAINT phone_otp_codes_code_hash_sha256 CHECK (octet_length(code_hash) = 32),
    CONSTRAINT phone_otp_codes_attempts_range CHECK (attempts BETWEEN 0 AND 5),
    CONSTRAINT phone_otp_codes_expiry_window
        CHECK (expires_at > created_at AND expires_at <= created_at + interval '15 minutes'),
    CONSTRAINT phone_otp_codes_consumed_in_window CHECK (consumed_at BETWEEN created_at AND expires_at)
);

-- The sign-in check reads the newest live code for a phone number.
CREATE INDEX phone_otp_codes_phone_created_idx
    ON phone_otp_codes (phone_e164, created_at DESC) WHERE consumed_at IS NULL;
CREATE INDEX phone_otp_codes_user_id_idx ON phone_otp_codes (user_id) WHERE user_id IS NOT NULL;
