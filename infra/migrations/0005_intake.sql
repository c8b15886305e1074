-- Intake (producers/intake_api.py): the e-licence library stand-in, the cases the API
-- accepted, idempotency keys, per-case sequences and uploaded documents.

-- 电子证照库: documents the government already holds (免证办). In production this is the
-- provincial e-licence platform; here a table seeded with synthetic people
-- (producers.e_license.seed_demo_people). `data` is the licence's face (names, numbers,
-- addresses): personal data, read only to prefill its own holder's form.
CREATE TABLE e_licenses (
    licence_no   text PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('id_card', 'household_register', 'marriage_certificate',
                                               'residence_permit', 'property_certificate')),
    issuer       text NOT NULL,          -- department code
    issued_on    date NOT NULL,
    valid_until  date,
    data         jsonb NOT NULL,
    demo         boolean NOT NULL DEFAULT false
);

-- Who a licence belongs to: one holder for an ID card, every member of a household
-- register, both spouses of a marriage certificate. `holder_token` is the pseudonymous
-- subject token (producers.identity.subject_token) the single sign-on gives that person:
-- the only key an applicant's request can look their own licences up by.
CREATE TABLE e_license_holders (
    licence_no          text NOT NULL REFERENCES e_licenses ON DELETE CASCADE,
    holder_resident_id  text NOT NULL,
    holder_token        text NOT NULL,
    relation            text NOT NULL,   -- holder | head | member | spouse
    PRIMARY KEY (licence_no, holder_resident_id)
);
CREATE INDEX e_license_holders_token ON e_license_holders (holder_token);
CREATE INDEX e_license_holders_resident_id ON e_license_holders (holder_resident_id);

-- Every case the intake API accepted. The row is written in the same transaction that waits
-- for Kafka's acknowledgement of ApplicationSubmitted and commits only after it: a row here
-- always has its event on the `applications` topic. It holds no form values (those live in
-- the event); it is what the API checks ownership and the per-case sequence against.
CREATE TABLE intake_cases (
    case_id          text PRIMARY KEY,
    receipt_no       text NOT NULL UNIQUE,
    applicant_token  text NOT NULL,
    bundle_code      text NOT NULL,
    services         text[] NOT NULL,
    departments      text[] NOT NULL,
    region_code      text NOT NULL,
    channel          text NOT NULL,
    staff_id         text,
    status           text NOT NULL DEFAULT 'submitted' CHECK (status IN ('submitted', 'withdrawn')),
    -- the envelope sequence of the next event the API writes for this case (submission = 0)
    next_sequence    bigint NOT NULL DEFAULT 1,
    submitted_at     timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX intake_cases_applicant ON intake_cases (applicant_token);

-- Idempotency-Key: one key of one caller names one case, forever. The primary key is what
-- makes two concurrent retries meet: the second INSERT waits for the first transaction and
-- then sees its row (or, if the first rolled back because Kafka failed, inserts its own).
CREATE TABLE intake_idempotency (
    caller_token     text NOT NULL,
    idempotency_key  text NOT NULL,
    request_hash     text NOT NULL,
    case_id          text NOT NULL REFERENCES intake_cases DEFERRABLE INITIALLY DEFERRED,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller_token, idempotency_key)
);

-- Uploaded documents (one upload serves every service that needs it). A stand-in for the
-- document store: a material's `ref` names a row here, usable only by the caller who uploaded it.
CREATE TABLE intake_documents (
    ref           text PRIMARY KEY,
    owner_token   text NOT NULL,
    content_type  text NOT NULL,
    size_bytes    integer NOT NULL,
    sha256        text NOT NULL,
    body          bytea NOT NULL,
    uploaded_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX intake_documents_owner ON intake_documents (owner_token);
