-- The deadline clock folds a case's events in any interleaving of their topics to the same rows
-- (projectors/deadlines_facts.py), so it keeps on the case what a clock opened later must know:
--   promised_due, submission_id  the case clock as its first submission set it
--   closed_at                    the earliest completion or withdrawal: every case and service
--                                clock of the case is closed by then, those opened afterwards too
--   pauses                       the case clock's 补正 facts, [[ISO time, pause|resume, event id]],
--                                worked out in time order whichever topic delivered them first
-- Rows written before this migration get the facts their case clock implies (below): its due date
-- and cause as they stand, its pause if it is paused, its close if it is closed; so a case in
-- flight resumes and closes as before. `onething replay deadlines` gives the exact facts.
-- Idempotent and unqualified on purpose: a test or a rebuild runs it in a schema of its own.
ALTER TABLE deadline_cases
    ADD COLUMN IF NOT EXISTS promised_due  date,
    ADD COLUMN IF NOT EXISTS submission_id text,
    ADD COLUMN IF NOT EXISTS closed_at     timestamptz,
    ADD COLUMN IF NOT EXISTS pauses        jsonb NOT NULL DEFAULT '[]';

UPDATE deadline_cases c
   SET promised_due = k.due_date, submission_id = k.cause_event_id, closed_at = k.closed_at,
       pauses = CASE WHEN k.paused_on IS NULL OR k.closed_at IS NOT NULL THEN '[]'::jsonb
                     ELSE jsonb_build_array(jsonb_build_array(
                          to_jsonb((k.paused_on::timestamp AT TIME ZONE 'Asia/Shanghai')), 'pause', 'migrated')) END
  FROM deadline_clocks k
 WHERE k.case_id = c.case_id AND k.scope = 'case' AND c.promised_due IS NULL;

-- an escalation's resolution limit as its latest extension set it (working days): a deadline's
-- escalation travels on `cases`, the extension on `applications`, and either may be read first
ALTER TABLE deadline_clocks ADD COLUMN IF NOT EXISTS extended_to integer;
