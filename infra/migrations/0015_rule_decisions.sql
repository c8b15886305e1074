-- 免批秒办 (issue 14): a simulated department's record says who decided it — a clerk, or the
-- catalog's rule (auto_decision) — and, for a rule, the data the decision relied on.
ALTER TABLE department_generic_records
    ADD COLUMN IF NOT EXISTS decided_by text NOT NULL DEFAULT 'staff' CHECK (decided_by IN ('staff', 'rule')),
    ADD COLUMN IF NOT EXISTS basis jsonb;
