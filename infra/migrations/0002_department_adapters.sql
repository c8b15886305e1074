-- What each department adapter decided per task: the adapter's idempotence on task id.
-- A task delivered again (after a crash or rebalance) re-emits these decisions, with the same
-- event ids, instead of reaching the department's backend a second time.
CREATE TABLE adapter_decisions (
    department   text    NOT NULL,
    task_id      text    NOT NULL,
    position     integer NOT NULL,
    event_id     uuid    NOT NULL,
    outcome      text    NOT NULL,
    reason       text,
    missing      text[]  NOT NULL DEFAULT '{}',
    outputs      jsonb   NOT NULL DEFAULT '{}',
    decided_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (department, task_id, position)
);

CREATE TABLE adapter_cancellations (
    department   text NOT NULL,
    task_id      text NOT NULL,
    cancelled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (department, task_id)
);
