-- The data subjects' keys (infra/keystore.py): crypto-shredding of personal data in the log.
--
-- data_keys: one active key per subject (the pseudonymous applicant token), wrapped by the master
-- key named in master_key_id; erasure sets wrapped to NULL and records who, when and why.
-- department_data_keys: the same key wrapped to a department's public key, one row per case (or
-- register change) and department it was sent to; a department reads only its own rows (row-level
-- security, infra/db_roles.py).
CREATE TABLE data_keys (
    key_id        text        PRIMARY KEY,
    subject       text        NOT NULL,
    master_key_id text,
    wrapped       bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    erased_at     timestamptz,
    erased_by     text,
    erase_reason  text,
    CHECK ((wrapped IS NULL) = (erased_at IS NOT NULL))
);
CREATE UNIQUE INDEX data_keys_active ON data_keys (subject) WHERE erased_at IS NULL;

CREATE TABLE department_data_keys (
    case_id     text        NOT NULL,
    department  text        NOT NULL,
    key_id      text        NOT NULL REFERENCES data_keys ON DELETE CASCADE,
    wrapped     bytea       NOT NULL,
    granted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (case_id, department)
);
CREATE INDEX department_data_keys_key ON department_data_keys (key_id, department);
