-- The supervisor queue of 办不成事 escalations and the departments' rectifications after a bad
-- rating (差评整改): read models of projectors/escalation_queue.py and projectors/rectifications.py.
-- Each event sets only its own columns, so they may arrive in any order (an auto-escalation comes
-- on `cases`, the supervisor's actions on `applications`). Times are the events' occurred_at.
CREATE TABLE escalation_queue (
    escalation_id     text PRIMARY KEY,
    case_id           text NOT NULL,
    origin            text,                 -- applicant | deadline
    reason            text,                 -- stuck | overdue | rejected | other
    service_id        text,
    department        text,
    comment           text,                 -- the applicant's words: shown to the supervisor only
    opened_at         timestamptz,
    reply_due         date,
    resolve_within    integer NOT NULL DEFAULT 5,
    resolve_due       date,
    replied_at        timestamptz,
    reply             text,
    extended_at       timestamptz,
    extension_reason  text,
    resolved_at       timestamptz,
    resolution        text
);
CREATE INDEX escalation_queue_case ON escalation_queue (case_id);
CREATE INDEX escalation_queue_open ON escalation_queue (resolve_due) WHERE resolved_at IS NULL;

CREATE TABLE rectifications (
    rectification_id  text PRIMARY KEY,
    case_id           text NOT NULL,
    rating_id         text,
    department        text,
    service_id        text,                 -- NULL: the case as a whole was rated
    grade             text,
    comment           text,
    due_date          date,
    opened_at         timestamptz,
    replied_at        timestamptz,
    reply             text
);
CREATE INDEX rectifications_department ON rectifications (department, due_date) WHERE replied_at IS NULL;
CREATE INDEX rectifications_case ON rectifications (case_id);

-- ratings as received (one per case), for the case page and to refuse a second rating at intake
CREATE TABLE case_ratings (
    case_id      text PRIMARY KEY,
    rating_id    text NOT NULL,
    grade        text NOT NULL,
    comment      text,
    services     jsonb NOT NULL DEFAULT '[]',
    rated_at     timestamptz NOT NULL
);

-- the intake's own record that a case was rated (written with the CaseRated it produces, under the
-- case's row lock): a second rating is refused at once, whatever the read models' lag
CREATE TABLE intake_ratings (
    case_id      text PRIMARY KEY,
    rating_id    text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
