-- 免申即享 / 主动服务 (projectors/proactive.py): what the government offers or grants unasked, and
-- what people applied for. The processor's state is the citizen's inbox read model (like the
-- cascade's tables are the cascade status): rebuilt from the log by replaying `registry.*`,
-- `applications`, the rules' `decisions.<d>` and `proactive`.

-- One offer, grant or pre-service list. `item_id` is a name-based UUID of (rule, subject, trigger):
-- a replay or a second scan finds the row and offers nothing again; a declined or lapsed item stays
-- so, and the same trigger never makes it anew. No personal value is kept: tokens are pseudonymous,
-- the prefilled values are read from the e-licence library by their holder when the inbox is opened.
CREATE TABLE proactive_items (
    item_id          uuid PRIMARY KEY,
    rule             text NOT NULL,
    outcome          text NOT NULL CHECK (outcome IN ('grant', 'offer', 'pre_service')),
    recipient_token  text NOT NULL,
    subject_token    text NOT NULL,
    trigger_kind     text NOT NULL CHECK (trigger_kind IN ('register', 'decision', 'date')),
    trigger_key      text NOT NULL,
    trigger_on       date,
    bundle_code      text,
    services         text[] NOT NULL DEFAULT '{}',
    prefilled_fields text[] NOT NULL DEFAULT '{}',
    presets          jsonb NOT NULL DEFAULT '{}',
    items            jsonb NOT NULL DEFAULT '[]',
    department       text,
    service_id       text,
    benefit          jsonb,
    state            text NOT NULL CHECK (state IN ('offered', 'granted', 'accepted', 'declined', 'lapsed')),
    made_on          date NOT NULL,
    available_on     date NOT NULL,
    closes_on        date NOT NULL,        -- an offer lapses after it; a grant may be declined until it
    case_id          text,                 -- the case an accepted offer became
    receipt_no       text,
    decline_reason   text,
    region_code      text NOT NULL,
    event_id         uuid NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (rule, subject_token, trigger_key)
);
CREATE INDEX proactive_items_recipient ON proactive_items (recipient_token, made_on DESC);
CREATE INDEX proactive_items_grants ON proactive_items (department, state) WHERE outcome = 'grant';
CREATE INDEX proactive_items_open ON proactive_items (closes_on) WHERE state = 'offered';

-- What each person applied for (ApplicationSubmitted): `not_applied` conditions, and the
-- applicant of a case whose decision triggers a rule.
CREATE TABLE proactive_cases (
    case_id          text PRIMARY KEY,
    applicant_token  text NOT NULL,
    bundle_code      text NOT NULL,
    services         text[] NOT NULL,
    region_code      text NOT NULL
);
CREATE INDEX proactive_cases_applicant ON proactive_cases (applicant_token);

-- A decision read before its case's submission (two topics, no order between them): kept until
-- the submission arrives, then evaluated.
CREATE TABLE proactive_pending (
    case_id          text NOT NULL,
    rule             text NOT NULL,
    trigger_key      text NOT NULL,
    event_id         uuid NOT NULL,
    region_code      text NOT NULL,
    occurred_on      date NOT NULL,
    PRIMARY KEY (case_id, rule, trigger_key)
);

-- The e-licence library holds two more kinds the rules read: 退役军人 discharge notices (the
-- expected discharge date, sent ahead by the military: 三预清单) and 独生子女父母光荣证.
ALTER TABLE e_licenses DROP CONSTRAINT IF EXISTS e_licenses_kind_check;
ALTER TABLE e_licenses ADD CONSTRAINT e_licenses_kind_check CHECK (kind IN (
    'id_card', 'household_register', 'marriage_certificate', 'residence_permit', 'property_certificate',
    'discharge_notice', 'only_child_certificate'));
