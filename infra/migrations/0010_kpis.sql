-- The KPIs read model (晴雨表), projectors/kpis.py: fact rows per case and per service, aggregated
-- by SQL at read time (read_kpis). Raw facts (kpi_case_materials, kpi_case_pauses,
-- kpi_service_attempts, kpi_breaches, kpi_escalations) are keyed by what they record, so an event
-- seen twice or in another cross-topic order ends in the same rows; kpi_cases and kpi_services
-- are recomputed from them ("settled") after every event that touches them. Every time is an
-- event's occurred_at; days are Beijing days. Unqualified names: a test builds them in its own schema.
CREATE TABLE kpi_cases (
    case_id             text PRIMARY KEY,
    bundle_code         text,
    region_code         text,
    submitted_at        timestamptz,
    received_on         date,                 -- Beijing day of submission: the cohort the case counts in
    completed_at        timestamptz,
    withdrawn_at        timestamptz,
    rejected_services   integer,              -- CaseCompleted.rejected
    promised_days       real,                 -- catalog: the bundle's promised total (else its critical path)
    statutory_days      real,                 -- catalog: statutory limits one after another
    due_date            date,                 -- promised total from receipt, pushed back by 补正 pauses
    paused_days         integer NOT NULL DEFAULT 0,
    paused_since        date,                 -- waiting for the applicant now (the clock stands still)
    ended_on            date,                 -- Beijing day of completion
    days_used           integer,              -- working days receipt → completion, pauses not counted
    materials_fetched   integer NOT NULL DEFAULT 0,   -- e-licences (电子证照): not uploaded
    materials_uploaded  integer NOT NULL DEFAULT 0,
    materials_promised  integer NOT NULL DEFAULT 0,   -- 容缺: still owed
    rating_id           text,
    rating_grade        text,
    rated_at            timestamptz
);
CREATE INDEX kpi_cases_received ON kpi_cases (received_on);

CREATE TABLE kpi_case_materials (           -- every material reference a case's events carried
    case_id   text NOT NULL,
    event_id  text NOT NULL,
    code      text NOT NULL,
    source    text NOT NULL,                  -- uploaded | fetched | promised
    at        timestamptz NOT NULL,
    PRIMARY KEY (case_id, event_id, code)
);

CREATE TABLE kpi_case_pauses (              -- 补正: a correction request stops the clock, a supplement restarts it
    case_id   text NOT NULL,
    event_id  text NOT NULL,
    kind      text NOT NULL CHECK (kind IN ('request', 'supply')),
    at        timestamptz NOT NULL,
    PRIMARY KEY (case_id, event_id)
);

CREATE TABLE kpi_service_attempts (         -- one row per task attempt (<case>:<service>:<attempt>)
    case_id        text    NOT NULL,
    service_id     text    NOT NULL,
    attempt        integer NOT NULL,
    department     text,
    region_code    text,
    dispatched_at  timestamptz,
    due_date       date,
    ended_at       timestamptz,               -- the decision that ended the attempt
    outcome        text,                      -- correction_requested | approved | rejected
    outcome_rank   integer NOT NULL DEFAULT 0,
    cancelled_at   timestamptz,
    fetched        text[] NOT NULL DEFAULT '{}',  -- e-licence materials the task carried
    PRIMARY KEY (case_id, service_id, attempt)
);

CREATE TABLE kpi_services (
    case_id            text NOT NULL,
    service_id         text NOT NULL,
    department         text,
    bundle_code        text,
    region_code        text,
    received_on        date,                  -- the case's cohort day (the first dispatch's day until known)
    first_dispatched_at timestamptz,
    status             text NOT NULL DEFAULT 'open',   -- open | approved | rejected | cancelled
    paused             boolean NOT NULL DEFAULT false, -- waiting for the applicant's correction
    due_date           date,                  -- the latest attempt's due date
    ended_on           date,                  -- Beijing day of the final decision
    days_used          integer,               -- working days at the department, summed over attempts
    promised_days      real,
    statutory_days     real,
    materials_fetched  integer NOT NULL DEFAULT 0,
    rating_grade       text,
    PRIMARY KEY (case_id, service_id)
);
CREATE INDEX kpi_services_department ON kpi_services (department, received_on);

CREATE TABLE kpi_breaches (                 -- DeadlineBreached, once per deadline and due date
    case_id     text NOT NULL,
    scope       text NOT NULL,
    subject_id  text NOT NULL DEFAULT '',
    due_date    date NOT NULL,
    department  text,
    PRIMARY KEY (case_id, scope, subject_id, due_date)
);

CREATE TABLE kpi_escalations (              -- 办不成事
    escalation_id  text PRIMARY KEY,
    case_id        text NOT NULL,
    origin         text,                      -- applicant | deadline
    service_id     text,
    department     text,
    opened_at      timestamptz,
    resolved_at    timestamptz
);
CREATE INDEX kpi_escalations_case ON kpi_escalations (case_id);
