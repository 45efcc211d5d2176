-- One row per scan: what was asked, the state each stage left (so a re-run worker redoes nothing
-- that is stored and re-emits the same events), and the result.
CREATE TABLE IF NOT EXISTS scan_scans (
    id             uuid PRIMARY KEY,
    user_id        text        NOT NULL,
    client_scan_id text,
    job_id         text        NOT NULL UNIQUE,
    image_key      text        NOT NULL DEFAULT '',
    hint           text        NOT NULL DEFAULT '',
    status         text        NOT NULL DEFAULT 'QUEUED',  -- eco2.scan.v1.ScanStatus name without prefix
    vision         jsonb,                                  -- the vision stage's outcome, written once
    answers        jsonb       NOT NULL DEFAULT '[]',      -- the user's answers to the scan's questions, in order
    pending_input  text        NOT NULL DEFAULT '',        -- input_id of the question waiting for ProvideScanInput
    reward         bytea,                                  -- eco2.character.v1.Reward, as GrantReward answered
    reward_pending boolean     NOT NULL DEFAULT false,     -- GrantReward was unavailable: a reward job retries it
    result         bytea,                                  -- eco2.scan.v1.ScanResult, once DONE
    error          text        NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS scan_scans_client_id ON scan_scans (user_id, client_scan_id) WHERE client_scan_id IS NOT NULL;
