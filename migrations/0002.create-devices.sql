-- Create devices: the phones and browsers a user has signed in from, with their push tokens.
-- depends: 0001.create-users
CREATE TABLE devices (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    platform text NOT NULL,
    name text,
    push_token text,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    CONSTRAINT devices_platform_known CHECK (platform IN ('ios', 'android', 'web')),
    CONSTRAINT devices_name_length CHECK (char_length(name) BETWEEN 1 AND 100),
    CONSTRAINT devices_push_token_length CHECK (char_length(push_token) BETWEEN 1 AND 4096),
    CONSTRAINT devices_revoked_after_created CHECK (revoked_at >= created_at)
);

CREATE INDEX devices_user_id_idx ON devices (user_id);
CREATE UNIQUE INDEX devices_push_token_key ON devices (push_token) WHERE push_token IS NOT NULL;
