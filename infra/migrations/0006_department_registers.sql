-- Simulated department backends (department_adapters/reference): what each department keeps
-- in its OWN records. A real department holds these in its own system; here they share the
-- database, one table per register, written through the adapter SDK's transaction so a
-- decision and its effect in the register commit together (exactly-once effect).
--
-- Registers hold numbers and dates, not names: nothing downstream needs a name, and the
-- simulation should not multiply copies of personal data.

-- 办件库: every task a simulated backend decided, or was told to cancel (容缺/补正 attempts
-- are separate tasks: task id `<case_id>:<service_id>:<attempt>`).
CREATE TABLE department_work_items (
    department    text        NOT NULL,
    task_id       text        NOT NULL,
    case_id       text        NOT NULL,
    service_id    text        NOT NULL,
    attempt       integer     NOT NULL,
    kind          text        NOT NULL DEFAULT 'case_service',
    outcome       text        CHECK (outcome IN ('approved', 'correction_requested', 'rejected', 'applied', 'failed')),
    reason        text,
    missing       text[]      NOT NULL DEFAULT '{}',
    record_no     text,                            -- the register record issued on approval
    received_at   timestamptz NOT NULL DEFAULT now(),
    decided_at    timestamptz,
    cancelled_at  timestamptz,                     -- TaskCancelled: work stops, records are voided
    PRIMARY KEY (department, task_id)
);
CREATE INDEX department_work_items_case ON department_work_items (case_id);

-- Number ranges of the registers (gapless per counter; the row lock serialises issuers).
-- Resident-ID sequence codes use one counter per region, birth date and sex.
CREATE TABLE department_register_counters (
    counter  text   PRIMARY KEY,
    value    bigint NOT NULL DEFAULT 0
);

-- Every register below has the same head: the record's number in that register, the task and
-- case it came from, and `outputs` as returned in the decision. `status` turns 'cancelled'
-- when the applicant withdraws (TaskCancelled).

-- 卫健: 生育登记
CREATE TABLE health_childbirth_registrations (
    record_no     text PRIMARY KEY,                -- childbirth_registration_no
    task_id       text NOT NULL UNIQUE,
    case_id       text NOT NULL,
    service_id    text NOT NULL,
    region_code   text NOT NULL,
    outputs       jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'valid' CHECK (status IN ('valid', 'cancelled')),
    issued_at     timestamptz NOT NULL DEFAULT now(),
    cancelled_at  timestamptz
);

-- 卫健: 出生医学证明 (and its e-license)
CREATE TABLE health_birth_certificates (
    record_no     text PRIMARY KEY,                -- birth_certificate_no
    task_id       text NOT NULL UNIQUE,
    case_id       text NOT NULL,
    service_id    text NOT NULL,
    region_code   text NOT NULL,
    outputs       jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'valid' CHECK (status IN ('valid', 'cancelled')),
    issued_at     timestamptz NOT NULL DEFAULT now(),
    cancelled_at  timestamptz,
    e_license_no  text NOT NULL UNIQUE,            -- birth_medical_certificate
    birth_date    date,
    child_sex     text
);

-- 卫健: 新生儿家庭访视 / 育儿指导
CREATE TABLE health_parenting_guidance (
    record_no     text PRIMARY KEY,
    task_id       text NOT NULL UNIQUE,
    case_id       text NOT NULL,
    service_id    text NOT NULL,
    region_code   text NOT NULL,
    outputs       jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'valid' CHECK (status IN ('valid', 'cancelled')),
    issued_at     timestamptz NOT NULL DEFAULT now(),
    cancelled_at  timestamptz,
    birth_date    date,
    first_home_visit_by date                       -- 出院后 7 日内首次家庭访视
);

-- 疾控: 预防接种档案
CREATE TABLE disease_control_vaccination_records (
    record_no     text PRIMARY KEY,                -- vaccination_record_no
    task_id       text NOT NULL UNIQUE,
    case_id       text NOT NULL,
    service_id    text NOT NULL,
    region_code   text NOT NULL,
    outputs       jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'valid' CHECK (status IN ('valid', 'cancelled')),
    issued_at     timestamptz NOT NULL DEFAULT now(),
    cancelled_at  timestamptz,
    birth_date    date
);

-- 公安: 户籍 (the child's row, keyed by the resident ID it was given)
CREATE TABLE police_household_register (
    record_no     text PRIMARY KEY,                -- child_resident_id (GB 11643)
    task_id       text NOT NULL UNIQUE,
    case_id       text NOT NULL,
    service_id    text NOT NULL,
    region_code   text NOT NULL,                   -- the ID's region prefix
    outputs       jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'valid' CHECK (status IN ('valid', 'cancelled')),
    issued_at     timestamptz NOT NULL DEFAULT now(),
    cancelled_at  timestamptz,
    birth_date    date NOT NULL,
    child_sex     text NOT NULL,
    registration_parent text,
    birth_certificate_no text
);

-- 医保: 参保登记
CREATE TABLE medical_insurance_enrolments (
    record_no     text PRIMARY KEY,                -- medical_insurance_enrolment_no
    task_id       text NOT NULL UNIQUE,
    case_id       text NOT NULL,
    service_id    text NOT NULL,
    region_code   text NOT NULL,
    outputs       jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'valid' CHECK (status IN ('valid', 'cancelled')),
    issued_at     timestamptz NOT NULL DEFAULT now(),
    cancelled_at  timestamptz,
    child_resident_id text
);

-- 医保: 生育医疗费用报销
CREATE TABLE medical_insurance_reimbursements (
    record_no     text PRIMARY KEY,                -- settlement number
    task_id       text NOT NULL UNIQUE,
    case_id       text NOT NULL,
    service_id    text NOT NULL,
    region_code   text NOT NULL,
    outputs       jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'valid' CHECK (status IN ('valid', 'cancelled')),
    issued_at     timestamptz NOT NULL DEFAULT now(),
    cancelled_at  timestamptz,
    birth_certificate_no text
);

-- 人社: 社会保障卡
CREATE TABLE hrss_social_security_cards (
    record_no     text PRIMARY KEY,                -- social_security_card_no
    task_id       text NOT NULL UNIQUE,
    case_id       text NOT NULL,
    service_id    text NOT NULL,
    region_code   text NOT NULL,
    outputs       jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'valid' CHECK (status IN ('valid', 'cancelled')),
    issued_at     timestamptz NOT NULL DEFAULT now(),
    cancelled_at  timestamptz,
    child_resident_id text
);

-- 税务: 城乡居民医保缴费
CREATE TABLE tax_premium_declarations (
    record_no     text PRIMARY KEY,                -- premium_payment_no
    task_id       text NOT NULL UNIQUE,
    case_id       text NOT NULL,
    service_id    text NOT NULL,
    region_code   text NOT NULL,
    outputs       jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'valid' CHECK (status IN ('valid', 'cancelled')),
    issued_at     timestamptz NOT NULL DEFAULT now(),
    cancelled_at  timestamptz,
    child_resident_id text,
    medical_insurance_enrolment_no text,
    amount_yuan   numeric(10, 2)
);

-- Any other service of a simulated department (bundles beyond the newborn one).
CREATE TABLE department_generic_records (
    department    text NOT NULL,
    record_no     text NOT NULL,
    task_id       text NOT NULL,
    case_id       text NOT NULL,
    service_id    text NOT NULL,
    region_code   text NOT NULL,
    outputs       jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'valid' CHECK (status IN ('valid', 'cancelled')),
    issued_at     timestamptz NOT NULL DEFAULT now(),
    cancelled_at  timestamptz,
    PRIMARY KEY (department, record_no),
    UNIQUE (department, task_id)
);
