-- The case view read model (projectors/case_view.py): per case the bundle, every service's
-- state and department, what is missing, deadlines, outputs, and a human-readable timeline.
-- Dropped and rebuilt from the log by `onething replay case-view`.
--
-- Table names are unqualified on purpose: the projection can build the same tables in a
-- schema of its own (a test instance, or a shadow rebuild) by running this file with
-- `search_path` set to that schema (projectors.case_view.create_schema).
--
-- Every value here is a function of the events alone (times are the events' occurred_at,
-- never now()), so a rebuild gives exactly the rows the incremental run gave.

CREATE TABLE case_view (
    case_id          text PRIMARY KEY,
    receipt_no       text,
    bundle_code      text,                 -- NULL until ApplicationSubmitted is seen
    services         text[] NOT NULL DEFAULT '{}',
    applicant_token  text,                 -- pseudonymous subject token, never a resident ID
    channel          text,                 -- online | window | home_visit …
    staff_id         text,                 -- the clerk of an assisted channel (帮办代办)
    region_code      text,
    status           text NOT NULL DEFAULT 'open'
                     CHECK (status IN ('open', 'awaiting_applicant', 'completed', 'withdrawn')),
    due_date         date,                 -- the latest due date of its services
    submitted_at     timestamptz,
    updated_at       timestamptz,          -- occurred_at of the latest event applied
    completed_at     timestamptz,
    completed_rejected text[] NOT NULL DEFAULT '{}',  -- CaseCompleted.rejected (not approved)
    withdrawn_at     timestamptz
);
CREATE INDEX case_view_applicant ON case_view (applicant_token);
CREATE INDEX case_view_open_due ON case_view (due_date) WHERE status IN ('open', 'awaiting_applicant');

-- One row per service of a case. (attempt, rank) is the monotonic version of `status`:
-- an event changes the status only if its (attempt, rank) is >= the stored one, because the
-- view reads several topics and Kafka gives no order across them.
CREATE TABLE case_service_view (
    case_id      text     NOT NULL,
    service_id   text     NOT NULL,
    department   text,
    status       text     NOT NULL DEFAULT 'waiting'
                 CHECK (status IN ('waiting', 'dispatched', 'accepted', 'correction_requested',
                                   'approved', 'rejected', 'blocked', 'cancelled')),
    attempt      integer  NOT NULL DEFAULT 0,
    rank         smallint NOT NULL DEFAULT 0,
    task_id      text,
    dispatched_attempt integer NOT NULL DEFAULT 0,   -- the attempt due_date belongs to
    due_date     date,
    reason       text,
    missing      text[]   NOT NULL DEFAULT '{}',     -- material codes asked for (补正)
    outputs      jsonb    NOT NULL DEFAULT '{}',     -- may be personal data: the API decides who sees it
    updated_at   timestamptz,
    PRIMARY KEY (case_id, service_id)
);
-- a department's worklist: its services by status, soonest due first
CREATE INDEX case_service_view_worklist ON case_service_view (department, status, due_date);

-- Materials of a case and where each came from (uploaded, fetched e-licence, promised).
CREATE TABLE case_materials (
    case_id     text NOT NULL,
    code        text NOT NULL,
    source      text NOT NULL,
    updated_at  timestamptz,
    PRIMARY KEY (case_id, code)
);

-- Every event of a case as sentences a person can read. Never form values, names, resident
-- IDs or phone numbers. `entry_key` makes the same fact appear once even if it was emitted
-- twice with different event ids (a task is its task_id, a completion is the case).
CREATE TABLE case_timeline (
    case_id      text        NOT NULL,
    event_id     uuid        NOT NULL UNIQUE,
    entry_key    text        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    phase        smallint    NOT NULL,     -- cause before effect when two share occurred_at
    sequence     bigint      NOT NULL,
    event_type   text        NOT NULL,
    text_zh      text        NOT NULL,
    text_en      text        NOT NULL,
    actor_role   text,
    channel      text,
    department   text,
    service_id   text,
    UNIQUE (case_id, entry_key)
);
CREATE INDEX case_timeline_order ON case_timeline (case_id, occurred_at, phase, sequence, event_id);
