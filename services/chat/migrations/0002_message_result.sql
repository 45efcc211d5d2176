-- An assistant message keeps its job's ChatResult (serialized eco2.chat.v1.ChatResult), which
-- GetConversation returns: a reopened conversation shows its citations, character and places.
ALTER TABLE chat_messages ADD COLUMN IF NOT EXISTS result bytea;
