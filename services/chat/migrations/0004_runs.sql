-- A run is one turn: a user message and the job that answers it. Its row is the source of truth
-- for run control: SendMessage inserts it with the message (double-texting reads the
-- conversation's active runs under the conversation's row lock), a worker moves it to running /
-- waiting / succeeded / failed, and CancelRun records the cancel on it (cancel_mode) under the
-- same row lock the worker's transitions take, so a cancel and a finishing answer never both win.
-- status: 1 queued, 2 running, 3 waiting for input, 4 succeeded, 5 failed, 6 cancelled
-- (interrupt: answer so far kept), 7 rolled back (turn removed). cancel_mode: 0 none,
-- 1 interrupt, 2 rollback (eco2.chat.v1.RunStatus / CancelMode).
CREATE TABLE IF NOT EXISTS chat_runs (
    job_id          text        PRIMARY KEY,
    n               bigserial   NOT NULL,
    conversation_id uuid        NOT NULL REFERENCES chat_conversations (id) ON DELETE CASCADE,
    user_id         text        NOT NULL,
    status          smallint    NOT NULL DEFAULT 1,
    cancel_mode     smallint    NOT NULL DEFAULT 0,
    error_reason    text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS chat_runs_conversation ON chat_runs (conversation_id, n);
-- The active runs of a conversation (what double-texting and the queue order look at).
CREATE INDEX IF NOT EXISTS chat_runs_active ON chat_runs (conversation_id, n) WHERE status IN (1, 2, 3);

-- Turns stored before runs existed: answered ones succeeded; an unanswered one from the last hour
-- may still be in the job queue and stays queued (its worker runs it; if it is not there it
-- stops counting as active after ECO2_CHAT_RUN_STALE_S); older unanswered ones failed.
INSERT INTO chat_runs (job_id, conversation_id, user_id, status, created_at, updated_at)
SELECT u.job_id, u.conversation_id, u.user_id,
       CASE WHEN EXISTS (SELECT 1 FROM chat_messages a WHERE a.job_id = u.job_id AND a.role = 2) THEN 4
            WHEN u.created_at > now() - interval '1 hour' THEN 1
            ELSE 5 END,
       u.created_at, u.created_at
  FROM chat_messages u
 WHERE u.role = 1
 ORDER BY u.n
ON CONFLICT (job_id) DO NOTHING;
