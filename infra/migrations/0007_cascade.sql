-- 一处变更、多处联动: register producers, the cascade projector, and the departments' register copies.

-- === producers/registers.py: one row per register key ======================================
-- The per-key sequence and the master entry as of the last confirmed change. A writer holds a
-- session advisory lock on the key while it records a change. Before producing it commits the
-- event it is about to produce into `pending_*` (an intent); after the broker acknowledged it
-- (acks=all) it folds it into `record`, moves `next_sequence` on and clears the intent. A writer
-- that finds an intent left by a crash or a failed acknowledgement produces it again first (same
-- event id: consumers drop the repeat), so a sequence number is never skipped and never reused.
CREATE TABLE register_keys (
    register          text    NOT NULL,
    register_key      text    NOT NULL,             -- USCC, or the person token (never a resident ID)
    next_sequence     bigint  NOT NULL DEFAULT 1,
    record            jsonb   NOT NULL DEFAULT '{}', -- master fields after sequence next_sequence - 1
    last_event_id     uuid,
    pending_event     bytea,                         -- the encoded RegisterChanged being produced
    pending_sequence  bigint,
    pending_event_id  uuid,
    pending_since     timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (register, register_key),
    CHECK ((pending_event IS NULL) = (pending_sequence IS NULL))
);
CREATE INDEX register_keys_pending ON register_keys (pending_since) WHERE pending_event IS NOT NULL;

-- A caller's change id (idempotency key): a retry of the same request answers with the change
-- recorded the first time; the same id with another request is refused.
CREATE TABLE register_change_requests (
    caller         text   NOT NULL,
    change_id      text   NOT NULL,
    request_hash   text   NOT NULL,
    register       text   NOT NULL,
    register_key   text   NOT NULL,
    sequence       bigint NOT NULL,
    event_id       uuid   NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, change_id)
);

-- === projectors/cascade.py: the cascade's state, also its status read model ================
-- `cascade` names a deployment of the projector (its consumer group and stored offsets), so
-- a second one (a rebuild, a test) never touches the first one's state.
CREATE TABLE cascade_changes (
    cascade          text    NOT NULL,
    change_event_id  uuid    NOT NULL,
    register         text    NOT NULL,
    register_key     text    NOT NULL,
    sequence         bigint  NOT NULL,
    change_kind      text    NOT NULL,
    changed_fields   text[]  NOT NULL,
    changes          jsonb,                 -- the values, kept only until every target applied them
    occurred_at      timestamptz NOT NULL,
    correlation_id   text    NOT NULL,
    region_code      text    NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    targets          integer NOT NULL,
    applied          integer NOT NULL DEFAULT 0,
    completed_at     timestamptz,           -- every target applied it
    PRIMARY KEY (cascade, change_event_id),
    UNIQUE (cascade, register, register_key, sequence)
);
CREATE INDEX cascade_changes_key ON cascade_changes (cascade, register_key, sequence);
CREATE INDEX cascade_changes_open ON cascade_changes (cascade, occurred_at) WHERE completed_at IS NULL;

-- One row per (change, subscribing department). held: an earlier change of the same key is not
-- yet applied there; sent: the task is out, no answer yet; failed: the department answered
-- `failed`, a new attempt is due at next_attempt_at; applied: done.
CREATE TABLE cascade_targets (
    cascade          text    NOT NULL,
    change_event_id  uuid    NOT NULL,
    department       text    NOT NULL,
    register         text    NOT NULL,
    register_key     text    NOT NULL,
    sequence         bigint  NOT NULL,
    fields           text[]  NOT NULL,      -- names of the fields sent (never values)
    state            text    NOT NULL CHECK (state IN ('held', 'sent', 'failed', 'applied')),
    attempt          integer NOT NULL DEFAULT 1,   -- task attempt: a new task id after each failure
    sends            integer NOT NULL DEFAULT 0,   -- every time a task went out, re-sends included
    failures         integer NOT NULL DEFAULT 0,
    silent_resends   integer NOT NULL DEFAULT 0,
    task_id          text    NOT NULL,
    first_sent_at    timestamptz,
    last_sent_at     timestamptz,
    next_attempt_at  timestamptz,
    applied_at       timestamptz,
    last_reason      text,
    escalated_at     timestamptz,
    PRIMARY KEY (cascade, change_event_id, department),
    FOREIGN KEY (cascade, change_event_id) REFERENCES cascade_changes ON DELETE CASCADE
);
CREATE INDEX cascade_targets_order ON cascade_targets (cascade, register, register_key, department, sequence)
    WHERE state <> 'applied';
CREATE INDEX cascade_targets_due ON cascade_targets (cascade, next_attempt_at) WHERE state IN ('sent', 'failed');
CREATE INDEX cascade_targets_backlog ON cascade_targets (cascade, department, state) WHERE state <> 'applied';

-- Every task id ever sent, so an acknowledgement finds its target (and an old attempt's is ignored).
CREATE TABLE cascade_tasks (
    cascade          text    NOT NULL,
    task_id          text    NOT NULL,
    change_event_id  uuid    NOT NULL,
    department       text    NOT NULL,
    attempt          integer NOT NULL,
    PRIMARY KEY (cascade, task_id)
);

-- When each department last answered a sync task: a target without an answer is "silent" (re-sent,
-- counted towards escalation) only while its department is quiet; a department working through a
-- backlog is busy, not silent, until the target has waited `stall` times the acknowledgement timeout.
CREATE TABLE cascade_departments (
    cascade          text NOT NULL,
    department       text NOT NULL,
    last_answer_at   timestamptz NOT NULL,
    PRIMARY KEY (cascade, department)
);

-- === department_adapters/reference/register_copy.py: each department's own copy ============
-- Every field carries the sequence of the change that wrote it: a department never lets an
-- older change overwrite a newer value, whatever order tasks arrive in.
CREATE TABLE register_copies (
    department       text    NOT NULL,
    register         text    NOT NULL,
    register_key     text    NOT NULL,
    fields           jsonb   NOT NULL DEFAULT '{}',
    field_sequences  jsonb   NOT NULL DEFAULT '{}',
    sequence         bigint  NOT NULL DEFAULT 0,   -- the newest change applied
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (department, register, register_key)
);

-- Each change a department applied, once (the unique key), in the order it applied them.
CREATE TABLE register_copy_applied (
    id               bigserial PRIMARY KEY,
    department       text    NOT NULL,
    register         text    NOT NULL,
    register_key     text    NOT NULL,
    sequence         bigint  NOT NULL,
    task_id          text    NOT NULL,
    change_event_id  uuid    NOT NULL,
    applied_fields   text[]  NOT NULL,
    stale_fields     text[]  NOT NULL DEFAULT '{}',  -- already newer in the copy: left alone
    applied_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (department, register, register_key, sequence)
);

-- What a department starts on its own when a register change reaches it (公民身后: a death
-- stops a pension, opens a household cancellation, …).
CREATE TABLE register_copy_follow_ups (
    department       text    NOT NULL,
    register         text    NOT NULL,
    register_key     text    NOT NULL,
    action           text    NOT NULL,
    change_event_id  uuid    NOT NULL,
    opened_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (department, register, register_key, action)
);

-- A simulated outage of a department's register backend (operators and tests switch it on):
-- unavailable = the backend cannot be reached (BackendUnavailable, retried by the adapter);
-- failing = it answers `failed` with the reason (retried by the cascade with a new attempt).
CREATE TABLE register_copy_outages (
    department  text PRIMARY KEY,
    mode        text NOT NULL CHECK (mode IN ('unavailable', 'failing')),
    reason      text,
    until       timestamptz NOT NULL
);
