-- Images are stored once per content (sha256) and owned by any number of users.
CREATE TABLE image_blob (
    sha256       text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    format       text   NOT NULL,          -- eco2.images.v1.ImageFormat name without prefix
    content_type text   NOT NULL,
    size_bytes   bigint NOT NULL CHECK (size_bytes > 0),
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE image_owner (
    user_id    text NOT NULL,
    sha256     text NOT NULL REFERENCES image_blob (sha256),
    channel    text NOT NULL,              -- ImageChannel name without prefix
    filename   text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, sha256)
);
