-- Rewards: who owns which character, and the answer given to each idempotency key.
-- Both invariants live in constraints so concurrent retries need no application lock:
--   * one ownership per (user, character): the primary key of character_ownership;
--   * one answer per (user, idempotency key): the primary key of character_reward_grant.
CREATE TABLE character_ownership (
    user_id        text        NOT NULL,
    character_code text        NOT NULL REFERENCES character_catalog (code),
    source         text        NOT NULL,  -- eco2.character.v1.RewardSource name without prefix
    acquired_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (user_id, character_code)
);
CREATE INDEX character_ownership_by_user ON character_ownership (user_id, acquired_at, character_code);

CREATE TABLE character_reward_grant (
    user_id         text        NOT NULL,
    idempotency_key text        NOT NULL,
    request_sha256  text        NOT NULL,  -- fingerprint of the request: a reused key with other content is refused
    outcome         text        NOT NULL,  -- eco2.character.v1.RewardOutcome name without prefix
    character_code  text        REFERENCES character_catalog (code),
    reason          text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, idempotency_key)
);
