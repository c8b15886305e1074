-- 谁查看了我的数据: the read audit (projectors/read_audit.py), one row per PersonalDataRead on
-- `audit.reads`, in the log's order per data subject.
--
-- Append-only and tamper-evident. Each row carries the hash of the previous row of the same
-- subject (prev_hash; the first row of a chain: 64 zeros) and its own row_hash = sha256 over
-- prev_hash and the row's canonical content (projectors/audit_chain.py); `position` counts the
-- subject's rows 1, 2, … so a row taken out of the middle shows as a gap. `onething audit verify`
-- checks every chain. The component role may only SELECT and INSERT (infra/db_components.py), and
-- the trigger below refuses UPDATE and DELETE to everyone, the owner included: changing a row takes
-- a deliberate ALTER TABLE … DISABLE TRIGGER, and the next verify shows it.
CREATE TABLE audit_reads (
    subject         text        NOT NULL,   -- pseudonymous token of the person read (never a name or ID)
    position        bigint      NOT NULL,   -- 1, 2, … within the subject's chain
    event_id        text        NOT NULL UNIQUE,
    occurred_at     timestamptz NOT NULL,
    staff_id        text        NOT NULL,
    role            text        NOT NULL,   -- department | clerk | supervisor | register | system
    channel         text        NOT NULL,
    department      text,
    kind            text        NOT NULL,   -- case_view | worklist | escalation | … (see the schema)
    case_id         text,
    service_id      text,
    fields          text[]      NOT NULL DEFAULT '{}',
    document_id     text,
    purpose         text        NOT NULL,
    purpose_id      text,
    route           text        NOT NULL,
    correlation_id  text        NOT NULL,
    prev_hash       text        NOT NULL,
    row_hash        text        NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),  -- when the projection wrote it; not hashed
    PRIMARY KEY (subject, position)
);
CREATE INDEX audit_reads_case ON audit_reads (case_id, occurred_at) WHERE case_id IS NOT NULL;
CREATE INDEX audit_reads_staff ON audit_reads (staff_id, occurred_at);

CREATE FUNCTION audit_reads_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_reads is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_reads_append_only BEFORE UPDATE OR DELETE ON audit_reads
    FOR EACH ROW EXECUTE FUNCTION audit_reads_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_reads FROM PUBLIC;
