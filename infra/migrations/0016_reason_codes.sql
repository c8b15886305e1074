-- 理由代码: a decision's reason code (DecisionRecorded.reason_code, catalog/data/reasons.yaml),
-- kept where the decision is kept: the adapter's stored decisions (re-emitted as they were when a
-- task is delivered again, department_adapters/sdk.py) and the case view's service rows (the
-- status page shows the code's sentence in the page's language, projectors/case_view.py).
--
-- Unqualified and IF EXISTS on purpose: projectors.case_view.create_schema runs this file inside a
-- schema of its own (a test instance, a shadow rebuild), which has the case view's tables only.
ALTER TABLE IF EXISTS adapter_decisions ADD COLUMN IF NOT EXISTS reason_code text;
ALTER TABLE IF EXISTS case_service_view ADD COLUMN IF NOT EXISTS reason_code text;
