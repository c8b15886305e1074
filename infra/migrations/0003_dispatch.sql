-- The dispatch processor's fold of each case (projectors/case_state.py), with the ids of the
-- events already folded inside `state.seen`: the guard that makes a re-read event a no-op.
CREATE TABLE dispatch_cases (
    case_id     text PRIMARY KEY,
    state       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
