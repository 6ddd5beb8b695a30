-- Gateway users and API keys (gateway/users.py, `keel users create`).
-- The HMAC secret must be recoverable to verify signatures, so it is stored encrypted
-- (gateway/vault.py: HMAC-SHA256 keystream + HMAC tag under a master key that never
-- enters the database); a dump of these tables alone reveals no secret.
CREATE SEQUENCE gateway_user_ids START 1000;

CREATE TABLE gateway_users (
    user_id     bigint PRIMARY KEY DEFAULT nextval('gateway_user_ids'),
    name        text        NOT NULL UNIQUE,
    tier        text        NOT NULL DEFAULT 'standard' CHECK (tier IN ('standard', 'vip')),
    is_admin    boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE gateway_api_keys (
    api_key      text        PRIMARY KEY,
    user_id      bigint      NOT NULL REFERENCES gateway_users (user_id),
    secret_box   bytea       NOT NULL,          -- nonce || ciphertext || tag
    enabled      boolean     NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX gateway_api_keys_user ON gateway_api_keys (user_id);
