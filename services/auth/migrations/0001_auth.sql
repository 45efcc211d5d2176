-- Users, their linked social identities, refresh-token families and (embedded) signing keys.
CREATE TABLE auth_users (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    display_name      text        NOT NULL,
    email             text        NOT NULL DEFAULT '',
    profile_image_url text        NOT NULL DEFAULT '',
    roles             text[]      NOT NULL DEFAULT '{user}',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- One row per (provider, provider's user id); 'dev' identities use the display name.
CREATE TABLE auth_identities (
    provider   text        NOT NULL,
    subject    text        NOT NULL,
    user_id    uuid        NOT NULL REFERENCES auth_users (id) ON DELETE CASCADE,
    email      text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, subject)
);
CREATE INDEX auth_identities_user ON auth_identities (user_id);

-- Every refresh token issued; a family is one sign-in's chain of rotations.
CREATE TABLE auth_refresh_tokens (
    jti        text        PRIMARY KEY,
    family_id  text        NOT NULL,
    user_id    uuid        NOT NULL REFERENCES auth_users (id) ON DELETE CASCADE,
    issued_at  timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    rotated_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX auth_refresh_tokens_family ON auth_refresh_tokens (family_id);
CREATE INDEX auth_refresh_tokens_user ON auth_refresh_tokens (user_id);

-- Signing keys of the embedded deployment (production reads PEM files: ECO2_AUTH_KEYS_DIR).
CREATE TABLE auth_signing_keys (
    kid         text        PRIMARY KEY,
    private_pem text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
