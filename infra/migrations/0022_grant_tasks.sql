-- 免申即享: a grant is told to its department on `tasks.<department>` when its decline window closes
-- without a decline (projectors/proactive.py's tick: a TaskDispatched of kind `benefit_grant`, task id
-- `grant:<item_id>`, its event id derived from the item). `task_sent_on` is set in the checkpoint that
-- sends it, so a second tick, a replay or a restarted member never sends it again; a decline folded
-- after it was sent (the API accepted it within the window, the processor read it late) sends
-- `TaskCancelled` and sets `task_cancelled_on`. The department's answer on `decisions.<department>`
-- (kind `benefit_grant`) is kept as `task_outcome` for the worklist and the inbox.
ALTER TABLE proactive_items ADD COLUMN IF NOT EXISTS task_sent_on date;
ALTER TABLE proactive_items ADD COLUMN IF NOT EXISTS task_cancelled_on date;
ALTER TABLE proactive_items ADD COLUMN IF NOT EXISTS task_outcome text;
ALTER TABLE proactive_items ADD COLUMN IF NOT EXISTS task_decided_at timestamptz;
-- what the tick looks for: granted, the window closed, nothing sent yet
CREATE INDEX IF NOT EXISTS proactive_items_grants_due ON proactive_items (closes_on)
    WHERE outcome = 'grant' AND state = 'granted' AND task_sent_on IS NULL;
