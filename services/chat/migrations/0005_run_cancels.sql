-- The runs with a cancel recorded. Every ECO2_CHAT_CANCEL_POLL_S a worker process reads which of
-- its running jobs have one (runs.py CancelWatch: `job_id = ANY(...) AND cancel_mode <> 0`);
-- through this index, which holds the cancelled runs only, that read visits no row of a job
-- without a cancel, however many jobs the process runs.
CREATE INDEX IF NOT EXISTS chat_runs_cancelled ON chat_runs (job_id) WHERE cancel_mode <> 0;
