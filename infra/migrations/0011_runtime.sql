-- The batched runtime (projectors/runtime.py, projectors/keyed_fold.py).
-- A keyed fold's state row carries a version: a write that does not find the version it read
-- is refused, so a member that lost a partition cannot overwrite a newer member's state.
ALTER TABLE dispatch_cases ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 1;

-- Which generation of a read model is live (projectors/generations.py): its stored offsets and
-- processed ids live under `namespace`; a shadow rebuild swaps a new one in. No row: the name.
CREATE TABLE IF NOT EXISTS projection_generations (
    name        text PRIMARY KEY,
    namespace   text NOT NULL,
    swapped_at  timestamptz NOT NULL DEFAULT now()
);
