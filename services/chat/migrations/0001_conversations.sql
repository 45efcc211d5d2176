CREATE TABLE IF NOT EXISTS chat_conversations (
    id            uuid PRIMARY KEY,
    user_id       text        NOT NULL,
    title         text        NOT NULL DEFAULT '',
    summary       text        NOT NULL DEFAULT '',
    message_count int         NOT NULL DEFAULT 0,
    last_preview  text        NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS chat_conversations_user_recent ON chat_conversations (user_id, updated_at DESC, id DESC);

CREATE TABLE IF NOT EXISTS chat_messages (
    id                uuid PRIMARY KEY,
    n                 bigserial   NOT NULL,
    conversation_id   uuid        NOT NULL REFERENCES chat_conversations (id) ON DELETE CASCADE,
    user_id           text        NOT NULL,
    role              smallint    NOT NULL,
    text              text        NOT NULL,
    image_key         text        NOT NULL DEFAULT '',
    intents           int[]       NOT NULL DEFAULT '{}',
    citations         bytea[]     NOT NULL DEFAULT '{}',
    job_id            text        NOT NULL,
    client_message_id text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, role)
);
CREATE UNIQUE INDEX IF NOT EXISTS chat_messages_client_id ON chat_messages (user_id, client_message_id) WHERE client_message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS chat_messages_conversation ON chat_messages (conversation_id, n DESC);
