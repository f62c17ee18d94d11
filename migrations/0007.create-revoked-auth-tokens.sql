-- Create revoked_auth_tokens: signed-out access tokens, refused until they would have expired anyway.
-- depends: 0002.create-devices
CREATE TABLE revoked_auth_tokens (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_id uuid NOT NULL,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_id bigint REFERENCES devices (id) ON DELETE SET NULL,
    reason text NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    CONSTRAINT revoked_auth_tokens_token_id_key UNIQUE (token_id),
    CONSTRAINT revoked_auth_tokens_reason_known
        CHECK (reason IN ('sign_out', 'device_revoked', 'password_reset', 'suspected_theft'))
);

-- The cleanup job deletes rows whose token has expired.
CREATE INDEX revoked_auth_tokens_expires_at_idx ON revoked_auth_tokens (expires_at);
CREATE INDEX revoked_auth_tokens_user_id_idx ON revoked_auth_tokens (user_id);
CREATE INDEX revoked_auth_tokens_device_id_idx ON revoked_auth_tokens (device_id) WHERE device_id IS NOT NULL;
