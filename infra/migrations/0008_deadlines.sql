-- The deadline clock (projectors/deadlines.py): one row per running deadline of a case.
--   scope 'case'                  subject ''                 the bundle's promised total
--   scope 'service'               subject = service id       TaskDispatched.due_date of the latest attempt
--   scope 'escalation_reply'      subject = escalation id    3 working days
--   scope 'escalation_resolution' subject = escalation id    5, extendable to 10
--   scope 'rectification'         subject = rectification id 15 working days
-- Rows are upserted by events in whatever order the topics interleave ((attempt, closed) is
-- monotonic); the clock's tick reads the open, unpaused rows and emits DeadlineApproaching /
-- DeadlineBreached once per due date (warned_due / breached_due remember which).
-- Unqualified names on purpose: a test builds the same table in its own schema.
CREATE TABLE deadline_clocks (
    case_id          text    NOT NULL,
    scope            text    NOT NULL CHECK (scope IN ('case', 'service', 'escalation_reply',
                                                       'escalation_resolution', 'rectification')),
    subject_id       text    NOT NULL DEFAULT '',
    department       text,
    task_id          text,
    attempt          integer NOT NULL DEFAULT 0,
    due_date         date,
    paused_on        date,                 -- 补正: the clock stands still from this day
    closed_at        timestamptz,          -- decided, completed, replied, resolved, cancelled
    cause_event_id   text,                 -- the event that set due_date: derived ids hang off it
    correlation_id   text,
    region_code      text,
    warned_due       date,                 -- DeadlineApproaching emitted for this due date
    breached_due     date,                 -- DeadlineBreached emitted for this due date
    PRIMARY KEY (case_id, scope, subject_id)
);
CREATE INDEX deadline_clocks_running ON deadline_clocks (due_date) WHERE closed_at IS NULL AND paused_on IS NULL;

-- per case what the clock needs to know of the case itself (filled by ApplicationSubmitted)
CREATE TABLE deadline_cases (
    case_id       text PRIMARY KEY,
    bundle_code   text,
    submitted_on  date
);
