-- Uploaded documents sealed at rest (events/personal.py `seal_bytes`) under their owner's data key,
-- so destroying the key (erasure) makes every body unreadable like the log's sealed values.
-- key_id NULL marks a body stored in clear before this migration: `onething keys seal-documents`
-- seals those (the route still serves them to their owner meanwhile).
ALTER TABLE intake_documents ADD COLUMN key_id text;

-- Which case uses which uploaded document, and as which material: a department may download a
-- document only for a case it has a service on that declares that material (producers/api_documents.py).
CREATE TABLE intake_document_uses (
    ref             text        NOT NULL,
    case_id         text        NOT NULL,
    material_code   text        NOT NULL,
    applicant_token text        NOT NULL,
    used_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ref, case_id, material_code)
);
CREATE INDEX intake_document_uses_case ON intake_document_uses (case_id);
CREATE INDEX intake_document_uses_applicant ON intake_document_uses (applicant_token);
