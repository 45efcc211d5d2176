-- The summary covers the conversation's messages up to summary_upto (chat_messages.n): the
-- worker loads only the messages after it, so summarising frees room for newer turns instead
-- of the same last messages being loaded (and summarised) again.
ALTER TABLE chat_conversations ADD COLUMN IF NOT EXISTS summary_upto bigint NOT NULL DEFAULT 0;
