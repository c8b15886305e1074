-- The intake API's record of actions taken and answers given (producers/api_idempotency.py).
--
-- api_requests: the first answer to each (caller, Idempotency-Key) of a write endpoint, written in
-- the transaction that recorded the action, so a retry gets the same answer and a different body
-- under the same key is refused. Submissions keep their own table (intake_idempotency, 0005).
CREATE TABLE IF NOT EXISTS api_requests (
    caller_token     text NOT NULL,
    idempotency_key  text NOT NULL,
    route            text NOT NULL,
    request_hash     text NOT NULL,
    status           integer NOT NULL,
    body             jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller_token, idempotency_key)
);

-- api_actions: one row per action that may be taken once (a supervisor's reply or resolution of an
-- escalation, a department's reply to a rectification; `value` the latest extension), claimed
-- under the case's row lock before the event is produced: a concurrent duplicate finds the row
-- and gets 409, whatever the read models have caught up with.
CREATE TABLE IF NOT EXISTS api_actions (
    subject_id   text NOT NULL,
    action       text NOT NULL,
    case_id      text NOT NULL,
    value        integer,
    taken_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject_id, action)
);
